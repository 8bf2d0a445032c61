//! `mirror-proxy`: a reverse proxy that forwards every request to one upstream and mirrors
//! copies to shadow targets with [`tower_mirror`], for services written in any language.
//!
//! The binary is the product; this library is its parts, so that the demo can run a proxy
//! in-process.
#![allow(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod config;
pub mod demo;
pub mod diff_page;
pub mod forward;
pub mod gor;
pub mod limits;
pub mod normalize;
#[cfg(feature = "otlp")]
pub mod otel;
pub mod reload;
pub mod replay;
#[cfg(feature = "kafka")]
mod replay_kafka;
pub mod server;
pub mod telemetry;
pub mod tls;
mod units;

pub use config::{
    AccessLogFormat, AccessLogSettings, Cli, Command, Config, ConfigError, LogFormat,
};
pub use server::{Proxy, ShutdownReport};

/// Logs to stderr, as text or JSON; `RUST_LOG` filters (default `info`). With `otlp`, also
/// exports spans there (feature `otlp`): the proxy's and tower-mirror's debug-level exchange
/// spans, whatever `RUST_LOG` says; keep the returned exporter until shutdown, when it
/// flushes.
///
/// # Errors
/// `otlp` is set but the endpoint is not a URL, or this build has no `otlp` feature.
pub fn init_logging(
    format: LogFormat,
    otlp: Option<&config::OtlpSettings>,
    roots: &rustls::RootCertStore,
) -> Result<Option<Exporter>, ConfigError> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    type Spans = Option<Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>>;
    let (spans, exporter): (Spans, _) = match otlp {
        None => (None, None),
        #[cfg(feature = "otlp")]
        Some(settings) => {
            let (layer, exporter) =
                otel::layer(&settings.endpoint, &settings.service_name, roots.clone())?;
            // The exchange spans are at debug, so that they cost nothing unless exported.
            let targets = tracing_subscriber::filter::Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("tower_mirror", tracing::Level::DEBUG)
                .with_target("mirror_proxy", tracing::Level::DEBUG);
            (Some(layer.with_filter(targets).boxed()), Some(exporter))
        }
        #[cfg(not(feature = "otlp"))]
        Some(_) => {
            let _ = roots;
            return Err(ConfigError(
                "--otlp-endpoint: this mirror-proxy was built without its `otlp` feature"
                    .to_owned(),
            ));
        }
    };
    let _ = tracing_subscriber::registry()
        .with(spans)
        .with(fmt.with_filter(filter))
        .try_init();
    Ok(exporter)
}

/// What [`init_logging`] returns to keep: the span exporter (feature `otlp`).
#[cfg(feature = "otlp")]
pub type Exporter = otel::Exporter;
/// What [`init_logging`] returns to keep (nothing without the `otlp` feature).
#[cfg(not(feature = "otlp"))]
pub type Exporter = ();

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
