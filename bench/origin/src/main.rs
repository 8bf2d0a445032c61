//! `mirror-bench-origin`: the upstream and shadow server of `bench/run.sh`.
//!
//! ```sh
//! mirror-bench-origin --listen 127.0.0.1:19001 --stats 127.0.0.1:19101 \
//!                     [--delay 1s] [--mode normal|blackhole] [--expect-body FILE]
//! ```
//!
//! Prints `listening on ADDR` and `stats on ADDR` when ready; on SIGINT or SIGTERM prints the
//! final counters as one JSON line on stdout and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use mirror_bench_origin::{Behaviour, Mode, Stats, parse_duration, serve_origin, serve_stats};
use tokio::net::TcpListener;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "mirror-bench-origin",
    version,
    about = "Origin server for the mirror benchmark: a fast, slow or silent upstream or shadow, \
             with counters served as JSON."
)]
struct Cli {
    /// Address to serve requests on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Address to serve the counters on, as JSON (any path).
    #[arg(long, value_name = "ADDR")]
    stats: Option<SocketAddr>,
    /// Wait this long after reading a request before answering (0, 250ms, 1s, ...).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    delay: Duration,
    /// `normal` answers; `blackhole` accepts and reads but never answers.
    #[arg(long, value_enum, default_value_t = Mode::Normal)]
    mode: Mode,
    /// Count request bodies byte-identical to this file's content, and those that are not.
    #[arg(long, value_name = "FILE")]
    expect_body: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mirror-bench-origin: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let expect_body = match &cli.expect_body {
        Some(path) => match tokio::fs::read(path).await {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(error) => {
                eprintln!(
                    "mirror-bench-origin: --expect-body {}: {error}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let behaviour = Arc::new(Behaviour {
        mode: cli.mode,
        delay: cli.delay,
        expect_body,
    });
    let stats = Arc::new(Stats::default());

    let listener = match TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("mirror-bench-origin: --listen {}: {error}", cli.listen);
            return ExitCode::from(2);
        }
    };
    let stats_listener = match cli.stats {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("mirror-bench-origin: --stats {addr}: {error}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening on {addr}");
    }
    if let Some(stats_listener) = stats_listener {
        if let Ok(addr) = stats_listener.local_addr() {
            println!("stats on {addr}");
        }
        tokio::spawn(serve_stats(
            stats_listener,
            Arc::clone(&behaviour),
            Arc::clone(&stats),
        ));
    }
    tokio::spawn(serve_origin(
        listener,
        Arc::clone(&behaviour),
        Arc::clone(&stats),
    ));

    shutdown_signal().await;
    println!("{}", stats.to_json(&behaviour));
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
