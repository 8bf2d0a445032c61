//! The proxy as a whole: listeners bound, the mirror layer built, connections served, and a
//! graceful shutdown that reports what it had to abandon.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::{Layer, Service};
use tower_mirror::{DrainReport, HttpSender, MirrorLayer, Options, TeeBody};

use crate::config::{Config, ConfigError};
use crate::forward::{Forward, ForwardShared};
use crate::telemetry::Telemetry;

/// A proxy with its listeners bound, ready to serve.
pub struct Proxy {
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    mirror: Option<MirrorLayer>,
    telemetry: Arc<Telemetry>,
}

/// What a shutdown left undone.
#[derive(Debug)]
pub struct ShutdownReport {
    /// Client connections still open when the drain timeout ran out (closed regardless).
    pub connections_abandoned: usize,
    /// Mirrors still in flight when the drain timeout ran out, per target.
    pub mirrors: Option<DrainReport>,
}

impl Proxy {
    /// Binds the listeners and builds the mirror layer. An address in use is a configuration
    /// error naming the flag.
    pub async fn bind(config: Config) -> Result<Self, ConfigError> {
        let listener = bind(config.listen, "--listen").await?;
        let admin = match config.admin {
            Some(addr) => Some(bind(addr, "--admin").await?),
            None => None,
        };
        let telemetry = Arc::new(Telemetry::new(
            config.mirror.targets.iter().map(|t| t.url.as_str()),
            admin.is_some(),
        ));
        let mirror = if config.mirror.targets.is_empty() {
            None
        } else {
            let (on_success, on_error) = (Arc::clone(&telemetry), Arc::clone(&telemetry));
            let on_comparison = Arc::clone(&telemetry);
            let mut diff = config.mirror.diff.clone();
            diff.on_comparison = Some(Arc::new(move |comparison: &_| {
                on_comparison.compared(comparison)
            }));
            let options = Options {
                on_success: Some(Arc::new(move |target: &str, response: &_| {
                    on_success.mirror_succeeded(target, response)
                })),
                on_error: Some(Arc::new(move |target: &str, error: &_| {
                    on_error.mirror_failed(target, error)
                })),
                sender: Some(Arc::new(if config.danger_accept_invalid_certs {
                    tracing::warn!(
                        "--danger-accept-invalid-certs is on: certificates of https mirror \
                         targets are NOT verified, so mirrored traffic can be read and altered \
                         in transit"
                    );
                    HttpSender::dangerous_accept_invalid_certificates()
                } else {
                    HttpSender::with_root_certificates(config.tls_roots.clone())
                })),
                diff,
                ..config.mirror.options()
            };
            Some(MirrorLayer::with_options(options).map_err(|e| ConfigError(e.to_string()))?)
        };
        Ok(Self {
            config,
            listener,
            admin,
            mirror,
            telemetry,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the admin listener is, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The mirror layer, unless this is a plain proxy.
    pub fn mirror(&self) -> Option<&MirrorLayer> {
        self.mirror.as_ref()
    }

    /// The proxy's counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// and mirrors drain (each for at most the drain timeout), and reports what was left.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> ShutdownReport {
        let (stop, stopped) = watch::channel(false);
        if let Some(admin) = self.admin {
            let router = crate::admin::router(Arc::clone(&self.telemetry), self.mirror.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let _ = axum::serve(admin, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            });
        }

        let drain_timeout = self.config.drain_timeout;
        let timeout = self.config.upstream_timeout;
        let upstream = self.config.upstream.clone();
        let roots = self.config.tls_roots.clone();
        // Requests, then mirrors, share one drain timeout from the moment shutdown begins.
        let (connections_abandoned, deadline) = match &self.mirror {
            Some(mirror) => {
                let shared: Arc<ForwardShared<TeeBody<Incoming>>> =
                    ForwardShared::new(upstream, timeout, roots, Arc::clone(&self.telemetry));
                let mirror = mirror.clone();
                accept(
                    self.listener,
                    stopped,
                    shutdown,
                    drain_timeout,
                    move |addr| mirror.layer(Forward::new(Arc::clone(&shared), addr)),
                )
                .await
            }
            None => {
                let shared: Arc<ForwardShared<Incoming>> =
                    ForwardShared::new(upstream, timeout, roots, Arc::clone(&self.telemetry));
                accept(
                    self.listener,
                    stopped,
                    shutdown,
                    drain_timeout,
                    move |addr| Forward::new(Arc::clone(&shared), addr),
                )
                .await
            }
        };
        let _ = stop.send(true);

        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mirrors = match &self.mirror {
            Some(mirror) => Some(mirror.drain(left).await),
            None => None,
        };
        ShutdownReport {
            connections_abandoned,
            mirrors,
        }
    }
}

async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError(format!("{flag} {addr}: cannot listen: {e}")))
}

/// Accepts connections until `shutdown`, serving each with the service `make` builds for its
/// client address; then asks every connection to close after its in-flight requests, and
/// waits for them up to `drain_timeout`. Returns how many connections were still open then,
/// and when the drain timeout ends.
async fn accept<S, M, B>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
    drain_timeout: Duration,
    make: M,
) -> (usize, tokio::time::Instant)
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    // Each connection task holds a sender; when all are gone, every connection has closed.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let (close, closing) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            _ = stopped.changed() => break,
        };
        let (stream, client_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before accept: keep serving.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(make(client_addr));
        let builder = builder.clone();
        let (open, mut closing) = (open.clone(), closing.clone());
        tokio::spawn(async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { drop(closing.wait_for(|close| *close).await) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let _ = close.send(true);
    drop(open);
    let abandoned = match tokio::time::timeout_at(deadline, all_closed.recv()).await {
        Ok(_) => 0,
        Err(_) => all_closed.sender_strong_count(),
    };
    (abandoned, deadline)
}
