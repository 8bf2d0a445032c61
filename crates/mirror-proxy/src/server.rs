//! The proxy as a whole: listeners bound, the mirror layer built, connections served by one
//! event loop per worker thread, and a graceful shutdown that reports what it abandoned.
//!
//! Each worker runs a single-threaded Tokio runtime with its own listener (`SO_REUSEPORT`
//! shares the address), its own upstream client and its own mirror connections, so a request,
//! its upstream exchange and its mirrors stay on one thread: no cross-thread wake-ups, which
//! cost as much CPU as the proxying itself under load. The mirror layer (sampling, limits,
//! counters) is one, shared by every worker. What a reload may change — the upstream route,
//! the layer's configuration, the admin token — lives in [`Live`], which every worker reads
//! per request without a lock.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, Service};
use tower_mirror::diff::Diff;
use tower_mirror::{DrainReport, MirrorLayer};

use crate::access_log::{AccessLog, Logged};
use crate::config::{Config, ConfigError, Edge, RunArgs};
use crate::forward::{Forward, ForwardShared, LiveRoute};
use crate::limits::{Activity, TimeoutBody, UpgradeGuard, Watched};
use crate::normalize::{Inbound, normalize};
use crate::reload::{Live, Mirroring, new_diff};
use crate::telemetry::Rejection;
use crate::telemetry::Telemetry;
use tower_mirror::Target;

/// A proxy with its listeners bound, ready to serve.
pub struct Proxy {
    config: Config,
    /// One per worker: its runtime, and its listener (all on the same address) registered
    /// with that runtime, so that everything fallible is done before serving.
    workers: Vec<(WorkerRuntime, TcpListener)>,
    admin: Option<TcpListener>,
    /// What can change while it runs: the mirror layer, the upstream, the admin token.
    live: Arc<Live>,
    telemetry: Arc<Telemetry>,
    edge: Arc<EdgeRuntime>,
    /// The access log, when one is written.
    access_log: Option<Arc<AccessLog>>,
}

/// What a shutdown left undone.
#[derive(Debug)]
pub struct ShutdownReport {
    /// Client connections still open when the drain timeout ran out (closed regardless).
    pub connections_abandoned: usize,
    /// Mirrors still in flight when the drain timeout ran out, per target.
    pub mirrors: Option<DrainReport>,
    /// Workers that could not be started or that panicked; a failed start also ends the
    /// serving at once, since the port would refuse part of its connections.
    pub workers_failed: usize,
}

impl Proxy {
    /// Binds the listeners and builds the mirror layer. An address in use is a configuration
    /// error naming the flag. Reloads have no file to re-read: see [`Proxy::bind_reloadable`].
    pub async fn bind(config: Config) -> Result<Self, ConfigError> {
        Self::bind_with(config, None).await
    }

    /// [`Proxy::bind`], for a `config` loaded from `args`: a reload (`POST /reload`, SIGHUP)
    /// re-reads the file they name under the same flags.
    pub async fn bind_reloadable(config: Config, args: RunArgs) -> Result<Self, ConfigError> {
        Self::bind_with(config, Some(args)).await
    }

    async fn bind_with(config: Config, args: Option<RunArgs>) -> Result<Self, ConfigError> {
        let workers = bind_workers(config.listen, config.workers)?;
        let admin = match config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| ConfigError(format!("--admin {addr}: cannot listen: {e}")))?,
            ),
            None => None,
        };
        let telemetry = Arc::new(Telemetry::new(
            config.mirror.targets.iter().map(Target::name),
            admin.is_some(),
        ));
        let diff = if config.mirror.compares() {
            Some(new_diff(&config.mirror, &telemetry)?)
        } else {
            None
        };
        if config.danger_accept_invalid_certs {
            tracing::warn!(
                "--danger-accept-invalid-certs is on: certificates of https mirror targets are \
                 NOT verified, so mirrored traffic can be read and altered in transit"
            );
        }
        // The engine needs a target to build a layer: a proxy started without one stays a
        // plain proxy, and adding the first target takes a restart.
        let mirroring = if config.mirror.targets.is_empty() {
            None
        } else {
            Some(Mirroring::new(&config, &telemetry, diff.as_ref())?)
        };
        let edge = Arc::new(EdgeRuntime::new(
            config.edge.clone(),
            Arc::clone(&telemetry),
        )?);
        let access_log = match &config.access_log {
            Some(settings) => Some(AccessLog::open(settings, Arc::clone(&telemetry))?),
            None => None,
        };
        let live = Arc::new(Live::new(
            config.clone(),
            Arc::clone(&telemetry),
            mirroring,
            diff,
            args,
        ));
        Ok(Self {
            config,
            workers,
            admin,
            live,
            telemetry,
            edge,
            access_log,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.workers[0]
            .1
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
        self.live.layer()
    }

    /// The comparisons, when a target is compared with the primary.
    pub fn diff(&self) -> Option<Diff> {
        self.live.diff()
    }

    /// What can change while it runs, and the reload.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The proxy's counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// and mirrors drain (within one drain timeout in all), and reports what was left.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> ShutdownReport {
        let (stop, stopped) = watch::channel(false);
        let (exit, exiting) = watch::channel(false);
        if let Some(admin) = self.admin {
            let router = crate::admin::router(Arc::clone(&self.live))
                .into_make_service_with_connect_info::<SocketAddr>();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let _ = axum::serve(admin, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            });
        }

        // Dropped mirrors are counted by tower-mirror on the request path; once a second,
        // those since the last look are logged at warn, per target and reason.
        if let Some(mirror) = self.live.mirror() {
            let (mirror, telemetry) = (mirror.clone(), Arc::clone(&self.telemetry));
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(crate::telemetry::LOG_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = every.tick() => telemetry.log_drops(&mirror),
                        _ = stopped.wait_for(|s| *s) => break,
                    }
                }
                // The last drops before the shutdown still get their line.
                telemetry.log_drops(&mirror);
            });
        }

        // Every connection task holds a sender; when all are gone, every connection closed.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        let signals = Signals {
            stopped,
            exiting,
            open,
            edge: Arc::clone(&self.edge),
        };
        let body_timeout = self.config.edge.body_timeout;
        let upstream = UpstreamClients {
            route: Arc::clone(self.live.route()),
            roots: self.config.tls_roots.clone(),
            telemetry: Arc::clone(&self.telemetry),
        };
        // The access log sees the request as the client sent it, before normalisation.
        let log = self.access_log.clone();
        let workers = match self.live.layer() {
            Some(mirror) => {
                let mirror = mirror.clone();
                spawn_workers(self.workers, signals, move || {
                    let shared = upstream.for_worker();
                    let (mirror, log) = (mirror.clone(), log.clone());
                    move |inbound: Inbound, guard| {
                        let forward = mirror.layer(Forward::new(Arc::clone(&shared)));
                        let service = normalized(forward, inbound, guard, body_timeout);
                        Logged::new(service, log.clone(), inbound.client)
                    }
                })
            }
            None => spawn_workers(self.workers, signals, move || {
                let shared = upstream.for_worker();
                let log = log.clone();
                move |inbound: Inbound, guard| {
                    let service = normalized(
                        Forward::new(Arc::clone(&shared)),
                        inbound,
                        guard,
                        body_timeout,
                    );
                    Logged::new(service, log.clone(), inbound.client)
                }
            }),
        };

        let started = workers.iter().filter(|w| w.is_some()).count();
        let mut workers_failed = workers.len() - started;
        if workers_failed == 0 {
            shutdown.await;
        } else {
            tracing::error!(workers_failed, "stopping: not every worker could start");
        }
        // Requests, then mirrors, share one drain timeout from the moment shutdown begins.
        let deadline = tokio::time::Instant::now() + self.live.drain_timeout();
        let _ = stop.send(true);
        let connections_abandoned = match tokio::time::timeout_at(deadline, all_closed.recv()).await
        {
            Ok(_) => 0,
            Err(_) => all_closed.sender_strong_count(),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mirrors = match self.live.layer() {
            // The workers keep running their mirror tasks until told to exit.
            Some(mirror) => Some(mirror.drain(left).await),
            None => None,
        };
        let _ = exit.send(true);
        let panicked = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .flatten()
                .map(std::thread::JoinHandle::join)
                .filter(Result::is_err)
                .count()
        })
        .await
        .unwrap_or(0);
        workers_failed += panicked;
        if let Some(log) = self.access_log {
            // Every request has ended: its line is queued; write them out before exiting.
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(5))).await;
        }
        ShutdownReport {
            connections_abandoned,
            mirrors,
            workers_failed,
        }
    }
}

/// `service` behind the normalisation step, so the mirror layer and the upstream see the same
/// request.
/// Its request bodies may stall for at most `body_timeout` between two pieces.
/// A request that asks for an upgrade carries the connection's [`UpgradeGuard`], which the
/// forwarder keeps for as long as the upgraded connection lives.
fn normalized<S>(
    service: S,
    inbound: Inbound,
    guard: UpgradeGuard,
    body_timeout: Duration,
) -> tower::util::MapRequest<
    S,
    impl FnMut(Request<Incoming>) -> Request<TimeoutBody<Incoming>> + Clone,
> {
    tower::util::MapRequest::new(service, move |mut request: Request<Incoming>| {
        normalize(&mut request, inbound);
        if request.headers().contains_key(http::header::UPGRADE) {
            request.extensions_mut().insert(guard.clone());
        }
        request.map(|body| TimeoutBody::new(body, body_timeout))
    })
}

/// What each worker's own pooled client to the upstream is built from.
struct UpstreamClients {
    route: LiveRoute,
    roots: rustls::RootCertStore,
    telemetry: Arc<Telemetry>,
}

impl UpstreamClients {
    /// A new client for the calling worker, for request bodies of type `B` (the tee'd body
    /// when mirroring, the plain one otherwise).
    fn for_worker<B>(&self) -> Arc<ForwardShared<B>>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<tower_mirror::BoxError>,
    {
        ForwardShared::new(
            Arc::clone(&self.route),
            self.roots.clone(),
            Arc::clone(&self.telemetry),
        )
    }
}

/// Builds `workers` runtimes, each with a listener on `addr` registered with it, the
/// listeners sharing the address with `SO_REUSEPORT`.
///
/// A plain bind comes first: it fails when anyone else listens there, even another process
/// that also sets `SO_REUSEPORT` (which would otherwise silently share our port), and it
/// decides the port when `addr`'s is 0.
fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<(WorkerRuntime, TcpListener)>, ConfigError> {
    let error = |e: std::io::Error| ConfigError(format!("--listen {addr}: cannot listen: {e}"));
    let shared = {
        let probe = std::net::TcpListener::bind(addr).map_err(error)?;
        probe.local_addr().map_err(error)?
    };
    (0..workers)
        .map(|_| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| WorkerRuntime(Some(runtime)))
                .map_err(|e| ConfigError(format!("--workers: cannot start a worker: {e}")))?;
            let listener = reuseport_listener(shared).map_err(error)?;
            let listener = {
                let _context = runtime.get().enter();
                TcpListener::from_std(listener).map_err(error)?
            };
            Ok((runtime, listener))
        })
        .collect()
}

/// A worker's runtime. It may be dropped on an async thread (a failed bind or thread spawn),
/// where dropping a runtime normally panics, so it is shut down in the background instead.
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl WorkerRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// What the workers hear from the main thread, and tell it.
#[derive(Clone)]
struct Signals {
    /// Stop accepting; close connections once their requests are done.
    stopped: watch::Receiver<bool>,
    /// Leave: the mirrors have drained (or the drain timeout has passed).
    exiting: watch::Receiver<bool>,
    /// Held by every accept loop and connection.
    open: mpsc::Sender<()>,
    /// The edge limits, shared by every worker.
    edge: Arc<EdgeRuntime>,
}

/// Starts one thread per worker, each running `build`'s service maker on its own runtime;
/// `None` for a thread that could not be started.
fn spawn_workers<B, M, S, ResBody>(
    workers: Vec<(WorkerRuntime, TcpListener)>,
    signals: Signals,
    build: B,
) -> Vec<Option<std::thread::JoinHandle<()>>>
where
    B: Fn() -> M + Send + Sync + 'static,
    M: Fn(Inbound, UpgradeGuard) -> S + 'static,
    S: Service<Request<Incoming>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let build = Arc::new(build);
    workers
        .into_iter()
        .enumerate()
        .map(|(index, (runtime, listener))| {
            let (build, signals) = (Arc::clone(&build), signals.clone());
            std::thread::Builder::new()
                .name(format!("mirror-proxy-worker-{index}"))
                .spawn(move || runtime.get().block_on(worker(listener, signals, build())))
                .inspect_err(|error| tracing::error!(%error, "worker {index} could not start"))
                .ok()
        })
        .collect()
}

/// One worker: accepts until told to stop, asks its connections to close once their
/// requests are done, and keeps running (for the mirrors' sake) until told to exit.
async fn worker<M, S, ResBody>(listener: TcpListener, signals: Signals, make: M)
where
    M: Fn(Inbound, UpgradeGuard) -> S,
    S: Service<Request<Incoming>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Signals {
        mut stopped,
        mut exiting,
        open,
        edge,
    } = signals;
    let builder = edge.http_builder();
    let mut backoff = AcceptBackoff::default();
    loop {
        // A place among max_connections first. At the limit the proxy stops accepting, so new
        // connections wait in the kernel's backlog until one closes.
        let permit = match Arc::clone(&edge.connections).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                edge.telemetry.record_connection_limit();
                tokio::select! {
                    permit = Arc::clone(&edge.connections).acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let (stream, client_addr) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(error) => {
                // Out of file descriptors, or a connection reset before accept: keep serving,
                // count it, log at most once a second, and back off so a lasting failure does
                // not spin.
                edge.telemetry.record_accept_error(&error);
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inbound = Inbound {
            client: client_addr,
            https: edge.tls.is_some(),
        };
        let (io, activity) = Watched::new(stream);
        let permit = Arc::new(permit);
        let settings = &edge.settings;
        let guard = UpgradeGuard::new(
            Arc::clone(&permit),
            Arc::clone(&activity),
            settings.idle_timeout,
            settings.send_timeout,
        );
        let service = TowerToHyperService::new(make(inbound, guard));
        let (builder, edge) = (builder.clone(), Arc::clone(&edge));
        let (open, closing) = (open.clone(), stopped.clone());
        tokio::spawn(async move {
            match &edge.tls {
                None => serve_connection(&builder, &edge, io, &activity, service, closing).await,
                Some(tls) => {
                    let handshake = tls.accept(io);
                    match tokio::time::timeout(edge.settings.header_timeout, handshake).await {
                        Ok(Ok(io)) => {
                            serve_connection(&builder, &edge, io, &activity, service, closing)
                                .await;
                        }
                        Ok(Err(error)) => {
                            edge.telemetry
                                .record_rejected(Rejection::TlsHandshake, &error);
                        }
                        Err(_elapsed) => {
                            let detail = "the TLS handshake took longer than the header timeout";
                            edge.telemetry
                                .record_rejected(Rejection::TlsHandshake, &detail);
                        }
                    }
                }
            }
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = exiting.wait_for(|e| *e).await;
}

/// Serves one client connection until it ends, its limits expire, or shutdown asks it to
/// close; counts why the proxy ended it, when it did.
async fn serve_connection<IO, S, ResBody>(
    builder: &auto::Builder<TokioExecutor>,
    edge: &EdgeRuntime,
    io: IO,
    activity: &Activity,
    service: TowerToHyperService<S>,
    mut closing: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let settings = &edge.settings;
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result
                && let Some(reason) = classify(&*error) {
                    edge.telemetry.record_rejected(reason, &error);
                }
        }
        reason = activity.expired(settings.idle_timeout, settings.send_timeout) => {
            // Dropping the connection closes it, and with it any upstream exchange it holds.
            let detail = match reason {
                Rejection::SendTimeout => "the client stopped reading its response",
                _ => "no traffic on the connection",
            };
            edge.telemetry.record_rejected(reason, &detail);
        }
        () = async { drop(closing.wait_for(|close| *close).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Why a connection that ended with `error` was the proxy's refusal, if it was: a head it
/// could not parse (hyper answered 400) or too large (431), a head not received in time.
/// A client that went away is no refusal.
fn classify(error: &(dyn std::error::Error + 'static)) -> Option<Rejection> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            return if hyper.is_parse_too_large() {
                Some(Rejection::HeadTooLarge)
            } else if hyper.is_parse() || hyper.is_parse_version_h2() {
                Some(Rejection::BadRequest)
            } else if hyper.is_timeout() {
                Some(Rejection::HeaderTimeout)
            } else if hyper.is_incomplete_message()
                || hyper.is_canceled()
                || hyper.is_closed()
                || hyper.is_body_write_aborted()
                || hyper.is_user()
            {
                None
            } else {
                hyper_h2_error(hyper)
            };
        }
        current = error.source();
    }
    None
}

/// An HTTP/2 connection error the client caused (a protocol violation), as opposed to an IO
/// error (the client went away).
fn hyper_h2_error(error: &hyper::Error) -> Option<Rejection> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(source) = current {
        if source.downcast_ref::<std::io::Error>().is_some() {
            return None;
        }
        current = source.source();
    }
    Some(Rejection::ProtocolError)
}

/// The pause after a failed accept: 10 ms, doubling to at most 1 s while failures last.
#[derive(Debug, Default)]
struct AcceptBackoff(u32);

impl AcceptBackoff {
    fn next(&mut self) -> Duration {
        let pause = Duration::from_millis(10 << self.0.min(7)).min(Duration::from_secs(1));
        self.0 = self.0.saturating_add(1);
        pause
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// What every worker's connections share: the edge settings, the connection count, TLS.
struct EdgeRuntime {
    settings: Edge,
    telemetry: Arc<Telemetry>,
    connections: Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
}

impl EdgeRuntime {
    fn new(settings: Edge, telemetry: Arc<Telemetry>) -> Result<Self, ConfigError> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(crate::tls::acceptor(cert, key)?),
            None => None,
        };
        Ok(Self {
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            telemetry,
            tls,
        })
    }

    /// hyper's server, with the edge limits: head timeout (with a timer, without which hyper
    /// silently has none), head size and field count, HTTP/2 streams and header list size.
    fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let settings = &self.settings;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .max_buf_size(settings.max_header_bytes)
            .max_headers(settings.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }
}
