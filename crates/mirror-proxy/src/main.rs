//! The `mirror-proxy` command.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use mirror_proxy::{Cli, Command, Config, Proxy};

/// Exit code for configuration errors.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // clap's first line names the flag and the value; usage hints follow on others.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("mirror-proxy: {first}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    // The proxy's workers run their own runtimes; the main thread only serves the admin
    // listener, waits for signals and drains, so one thread does. The demo also runs its
    // apps and load in-process, on every core.
    let mut builder = match cli.command {
        Some(Command::Demo(_) | Command::Replay(_)) => tokio::runtime::Builder::new_multi_thread(),
        None => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mirror-proxy: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Demo(args)) => runtime.block_on(mirror_proxy::demo::run(args)),
        Some(Command::Replay(args)) => runtime.block_on(mirror_proxy::replay::run(*args)),
        None => runtime.block_on(run(cli)),
    }
}

async fn run(cli: Cli) -> ExitCode {
    let config = match Config::load(&cli.run) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mirror-proxy: error: {error}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    // Kept to the end: it flushes the last spans when dropped.
    let _exporter = match mirror_proxy::init_logging(
        config.log_format,
        config.otlp.as_ref(),
        &config.tls_roots,
    ) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("mirror-proxy: error: {error}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let proxy = match Proxy::bind_reloadable(config.clone(), cli.run).await {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("mirror-proxy: error: {error}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    // Before the ready lines: whoever sends SIGHUP after reading them gets a reload.
    #[cfg(unix)]
    if let Err(error) = mirror_proxy::reload_on_sighup(std::sync::Arc::clone(proxy.live())) {
        tracing::warn!(%error, "cannot listen for SIGHUP: reload with POST /reload instead");
    }
    // One line each on stdout, for scripts and tests that started us on port 0.
    println!("listening on {}", proxy.local_addr());
    if let Some(admin) = proxy.admin_addr() {
        println!("admin on {admin}");
    }
    tracing::info!(
        listen = %proxy.local_addr(),
        upstream = %config.upstream.url,
        mirrors = config.mirror.targets.len(),
        mode = if config.mirror.sync { "sync" } else { "async" },
        version = env!("CARGO_PKG_VERSION"),
        "mirror-proxy started"
    );
    // One line per target, so that each is a set of plain fields.
    for target in &config.mirror.targets {
        tracing::info!(
            target = %target.name(),
            url = %target.url,
            percentage = target.percentage,
            "mirror target"
        );
    }

    let report = proxy.serve(mirror_proxy::shutdown_signal()).await;
    if report.workers_failed > 0 {
        tracing::error!(
            workers = report.workers_failed,
            "stopped: workers failed to start or panicked"
        );
        return ExitCode::FAILURE;
    }
    let abandoned = report.mirrors.as_ref().map_or(0, |m| m.abandoned());
    if report.connections_abandoned > 0 || abandoned > 0 {
        tracing::warn!(
            connections = report.connections_abandoned,
            mirrors = abandoned,
            "shut down after the drain timeout, abandoning work in flight"
        );
        let per_target = report.mirrors.map(|m| m.in_flight).unwrap_or_default();
        for (target, in_flight) in per_target.iter().filter(|(_, n)| *n > 0) {
            tracing::warn!(
                target = %target,
                in_flight,
                "mirrors abandoned at shutdown"
            );
        }
    } else {
        tracing::info!("shut down cleanly: every request and mirror finished");
    }
    ExitCode::SUCCESS
}
