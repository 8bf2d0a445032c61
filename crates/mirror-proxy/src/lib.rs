//! `mirror-proxy`: a reverse proxy that forwards every request to one upstream and mirrors
//! copies to shadow targets with [`tower_mirror`], for services written in any language.
//!
//! The binary is the product; this library is its parts, so that the demo can run a proxy
//! in-process.
#![allow(missing_docs)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod diff_page;
pub mod forward;
pub mod limits;
pub mod normalize;
pub mod reload;
pub mod replay;
#[cfg(feature = "kafka")]
mod replay_kafka;
pub mod server;
pub mod telemetry;
pub mod tls;
mod units;

pub use config::{Cli, Command, Config, ConfigError, LogFormat};
pub use server::{Proxy, ShutdownReport};

/// Logs to stderr, as text or JSON; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Reloads the configuration on every SIGHUP, as `POST /reload` does, logging the outcome.
/// The handler is in place when this returns (from then on SIGHUP no longer ends the
/// process); call it within a Tokio runtime.
#[cfg(unix)]
pub fn reload_on_sighup(live: std::sync::Arc<reload::Live>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // Logged and counted by the reload itself.
            let _ = live.reload(reload::Source::Sighup);
        }
    });
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
