//! One bounded connection pool per target, so that a mirror is admitted only when it can be
//! written at once (no queue hidden in a client):
//!
//! - an idle HTTP/1.1 connection is taken, or
//! - an HTTP/2 connection has a stream free under the peer's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §5.1.2), or
//! - a new connection may be opened under the target's connection limit.
//!
//! Otherwise [`Pool::reserve`] says no and the mirror is dropped and counted
//! (`dropped_no_connection`). HTTP/2 targets scale out: when every connection's streams are
//! taken, another connection is opened, up to the limit.
//!
//! Connections are kept per thread (a shard each), so that on mirror-proxy's single-threaded
//! workers a mirror, its connection and the connection's task stay on one thread; the limit
//! counts them all.

use std::cell::RefCell;
use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::OnceCell;
use tower_service::Service;

use crate::body::MirrorBody;
use crate::error::BoxError;

use super::ShadowBody;

/// How long an unused connection is kept open.
const IDLE_TIMEOUT: Duration = super::HttpSender::POOL_IDLE_TIMEOUT;
/// How often a shard with unused connections looks for expired ones.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Streams a new HTTP/2 connection takes until the peer's SETTINGS arrive. One, so that no
/// stream ever waits inside h2 for a limit the peer turns out to set lower (h2 then takes
/// the peer's value, or no limit when its first SETTINGS names none, RFC 9113 §6.5.2).
const INITIAL_MAX_STREAMS: usize = 1;

/// The protocol a pool speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 only (`http` targets).
    Http1,
    /// HTTP/2 only: prior knowledge on `http`, over TLS whatever ALPN says.
    Http2,
    /// Whichever ALPN chooses (`https` targets without `http2`).
    Negotiated,
}

/// One target's connections. See the module documentation.
pub(crate) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority`, what is connected to.
    origin: Uri,
    protocol: Protocol,
    max_connections: usize,
    /// Connections open or being opened, across all shards.
    open: Arc<AtomicUsize>,
    /// Tells this pool's shards apart in each thread's list.
    id: usize,
    /// Keeps the shards (and so their idle connections) alive as long as the pool.
    shards: Mutex<Vec<Arc<Shard>>>,
    /// The [`HttpSender`](super::HttpSender) this pool was made from: a replacement keeps
    /// the pool only if it is the same.
    pub(crate) sender_id: usize,
}

thread_local! {
    /// This thread's shards, by pool id. Weak: a dropped pool's shards go with it.
    static SHARDS: RefCell<Vec<(usize, Weak<Shard>)>> = const { RefCell::new(Vec::new()) };
}

impl Pool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        origin: Uri,
        protocol: Protocol,
        max_connections: usize,
        sender_id: usize,
    ) -> Self {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        Self {
            connector,
            origin,
            protocol,
            max_connections,
            open: Arc::new(AtomicUsize::new(0)),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::new(Vec::new()),
            sender_id,
        }
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Connections open or being opened now.
    pub(crate) fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A place for one request that can be written at once, or `None` when every connection
    /// is busy and no other may be opened. Never waits.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Lease> {
        let shard = self.shard();
        let free = shard.lock().take_free();
        if let Some(kind) = free {
            return Some(self.lease(shard, kind));
        }
        // Nothing free here: another thread's connection before a new one, so that a
        // multi-threaded runtime does not open a set of connections per thread.
        if let Some(lease) = self.steal(&shard) {
            return Some(lease);
        }
        let guard = OpenGuard::try_new(&self.open, self.max_connections)?;
        let kind = if self.protocol == Protocol::Http2 {
            // Registered at once, so that once the peer's SETTINGS arrive the next mirrors
            // share its streams.
            let conn = Arc::new(H2Conn::connecting(guard));
            shard.push_h2(Arc::clone(&conn));
            LeaseKind::Stream(StreamSlot::take(conn))
        } else {
            LeaseKind::Connect(guard)
        };
        Some(self.lease(shard, kind))
    }

    fn lease(self: &Arc<Self>, shard: Arc<Shard>, kind: LeaseKind) -> Lease {
        Lease {
            pool: Arc::clone(self),
            shard,
            kind,
        }
    }

    /// A free stream or idle connection of another thread's shard.
    fn steal(self: &Arc<Self>, own: &Arc<Shard>) -> Option<Lease> {
        let shards: Vec<Arc<Shard>> = {
            let shards = lock(&self.shards);
            if shards.len() < 2 {
                return None;
            }
            shards.clone()
        };
        shards
            .into_iter()
            .filter(|shard| !Arc::ptr_eq(shard, own))
            .find_map(|shard| {
                let free = shard.lock().take_free();
                free.map(|kind| self.lease(shard, kind))
            })
    }

    /// This thread's shard of the pool.
    fn shard(&self) -> Arc<Shard> {
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            if let Some(shard) = shards
                .iter()
                .find(|(id, _)| *id == self.id)
                .and_then(|(_, shard)| shard.upgrade())
            {
                return shard;
            }
            shards.retain(|(id, shard)| *id != self.id && shard.strong_count() > 0);
            let shard = Arc::new(Shard::default());
            shards.push((self.id, Arc::downgrade(&shard)));
            lock(&self.shards).push(Arc::clone(&shard));
            shard
        })
    }

    async fn connect(&self) -> Result<Connected, BoxError> {
        let io = self.connector.clone().call(self.origin.clone()).await?;
        let h2 = match self.protocol {
            Protocol::Http1 => false,
            Protocol::Http2 => true,
            Protocol::Negotiated => io.connected().is_negotiated_h2(),
        };
        if h2 {
            let (send, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_max_send_streams(INITIAL_MAX_STREAMS)
                .handshake(io)
                .await?;
            Ok(Connected::Http2(send, connection))
        } else {
            let (send, connection) = http1::Builder::new().handshake(io).await?;
            Ok(Connected::Http1(send, connection))
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.origin)
            .field("protocol", &self.protocol)
            .field("max_connections", &self.max_connections)
            .field("open", &self.connections())
            .finish_non_exhaustive()
    }
}

type Io = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;

// Short-lived: moved once, the connection into its task.
#[allow(clippy::large_enum_variant)]
enum Connected {
    Http1(
        http1::SendRequest<MirrorBody>,
        http1::Connection<Io, MirrorBody>,
    ),
    Http2(
        http2::SendRequest<MirrorBody>,
        http2::Connection<Io, MirrorBody, TokioExecutor>,
    ),
}

/// One thread's connections of a pool.
#[derive(Default)]
struct Shard {
    state: Mutex<ShardState>,
}

#[derive(Default)]
struct ShardState {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// HTTP/2 connections, open or being opened; the first with a free stream is used, so
    /// that traffic packs onto the oldest and the newest go idle and are closed.
    h2: Vec<Arc<H2Conn>>,
    /// Held while a sweeper task runs for this shard; the task ends when it is dropped
    /// (with the shard), so that no task outlives the pool.
    sweeper: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Idle {
    send: http1::SendRequest<MirrorBody>,
    since: Instant,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        lock(&self.state)
    }

    fn push_idle(self: &Arc<Self>, send: http1::SendRequest<MirrorBody>) {
        let mut state = self.lock();
        state.idle.push(Idle {
            send,
            since: Instant::now(),
        });
        self.sweep_later(&mut state);
    }

    fn push_h2(self: &Arc<Self>, conn: Arc<H2Conn>) {
        let mut state = self.lock();
        state.h2.push(conn);
        self.sweep_later(&mut state);
    }

    /// Starts a task that closes this shard's expired connections, unless one runs.
    fn sweep_later(self: &Arc<Self>, state: &mut ShardState) {
        if state.sweeper.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        state.sweeper = Some(stop);
        let shard = Arc::downgrade(self);
        runtime.spawn(async move {
            // Until the shard goes (its `stop` dropped), every SWEEP_EVERY.
            while tokio::time::timeout(SWEEP_EVERY, &mut stopped)
                .await
                .is_err()
            {
                let Some(shard) = shard.upgrade() else { return };
                let mut state = shard.lock();
                state.sweep();
                if state.idle.is_empty() && state.h2.is_empty() {
                    state.sweeper = None;
                    return;
                }
            }
        });
    }
}

impl ShardState {
    /// A free HTTP/2 stream, else an idle HTTP/1.1 connection.
    fn take_free(&mut self) -> Option<LeaseKind> {
        if let Some(slot) = self.free_stream() {
            return Some(LeaseKind::Stream(slot));
        }
        self.idle_http1().map(LeaseKind::Http1)
    }

    fn free_stream(&mut self) -> Option<StreamSlot> {
        if self.h2.is_empty() {
            return None;
        }
        self.h2
            .retain(|conn| !conn.shared.closed.load(Ordering::Relaxed));
        self.h2
            .iter()
            .find(|conn| conn.try_take())
            .map(|conn| StreamSlot(Arc::clone(conn)))
    }

    fn idle_http1(&mut self) -> Option<http1::SendRequest<MirrorBody>> {
        while let Some(idle) = self.idle.pop() {
            // Not ready: the target closed it while it waited. Either way it is dropped.
            if idle.send.is_ready() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.send);
            }
        }
        None
    }

    /// Drops idle HTTP/1.1 connections past [`IDLE_TIMEOUT`] and HTTP/2 connections that
    /// had no stream for as long (three sweeps in a row).
    fn sweep(&mut self) {
        self.idle
            .retain(|idle| idle.since.elapsed() < IDLE_TIMEOUT && !idle.send.is_closed());
        let unused_sweeps = (IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs()) as u32;
        self.h2.retain(|conn| {
            if conn.shared.closed.load(Ordering::Relaxed) {
                return false;
            }
            if conn.active.load(Ordering::Acquire) > 0 {
                conn.unused_sweeps.store(0, Ordering::Relaxed);
                return true;
            }
            conn.unused_sweeps.fetch_add(1, Ordering::Relaxed) + 1 < unused_sweeps
        });
    }
}

/// An HTTP/2 connection, open or being opened.
struct H2Conn {
    /// Set once the handshake ends; `Err` when it failed.
    ready: OnceCell<Result<http2::SendRequest<MirrorBody>, ConnectFailed>>,
    /// Counts the connection among the pool's; moved into its task once it is open.
    guard: Mutex<Option<OpenGuard>>,
    /// Streams taken, by mirrors sending or about to.
    active: AtomicUsize,
    unused_sweeps: AtomicU32,
    /// What the connection's task reports. Not the `SendRequest`: holding that would keep
    /// the connection open after the pool let it go.
    shared: Arc<H2Shared>,
}

struct H2Shared {
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, as last read from the connection.
    max_streams: AtomicUsize,
    closed: AtomicBool,
    /// The connection, polled by its task. hyper drives the HTTP/2 frames in a task of its
    /// own, so the peer's SETTINGS change h2's state without this one being polled: the
    /// stream limit is read from here when the cached value may be stale.
    connection: Mutex<Option<H2Connection>>,
}

type H2Connection = http2::Connection<Io, MirrorBody, TokioExecutor>;

impl H2Shared {
    /// The peer's stream limit now, cached; `None` once the connection is gone.
    fn refresh(&self) -> Option<usize> {
        let max = lock(&self.connection).as_ref()?.current_max_send_streams();
        self.max_streams.store(max, Ordering::Relaxed);
        Some(max)
    }
}

impl H2Conn {
    fn connecting(guard: OpenGuard) -> Self {
        Self {
            ready: OnceCell::new(),
            guard: Mutex::new(Some(guard)),
            active: AtomicUsize::new(0),
            unused_sweeps: AtomicU32::new(0),
            shared: Arc::new(H2Shared {
                max_streams: AtomicUsize::new(INITIAL_MAX_STREAMS),
                closed: AtomicBool::new(false),
                connection: Mutex::new(None),
            }),
        }
    }

    /// Takes a stream if one is free.
    fn try_take(&self) -> bool {
        let take = |max: usize| {
            self.active
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        };
        let cached = self.shared.max_streams.load(Ordering::Relaxed);
        if take(cached) {
            return true;
        }
        // Full as far as we know. Until the peer's first SETTINGS the limit is one stream;
        // look whether they have arrived. (Later changes are read whenever a request goes
        // through the connection's task.)
        cached == INITIAL_MAX_STREAMS
            && self
                .shared
                .refresh()
                .is_some_and(|max| max != cached && take(max))
    }

    /// The connection's sender, opening the connection if no one has yet.
    async fn sender(&self, pool: &Pool) -> Result<http2::SendRequest<MirrorBody>, BoxError> {
        let ready = self
            .ready
            .get_or_init(|| async {
                let guard = lock(&self.guard).take();
                let result = match guard {
                    // An earlier attempt was abandoned half-way (its mirror timed out).
                    None => Err("connecting was abandoned".into()),
                    Some(guard) => match pool.connect().await {
                        Ok(Connected::Http2(send, connection)) => {
                            spawn_http2(connection, guard, Arc::clone(&self.shared));
                            Ok(send)
                        }
                        Ok(Connected::Http1(..)) => Err("the target did not speak HTTP/2".into()),
                        Err(error) => Err(error),
                    },
                };
                result.map_err(|error| {
                    self.shared.closed.store(true, Ordering::Relaxed);
                    ConnectFailed(Arc::from(error))
                })
            })
            .await;
        match ready {
            Ok(send) => Ok(send.clone()),
            Err(failed) => Err(Box::new(failed.clone())),
        }
    }
}

/// Runs an HTTP/2 connection, reading the peer's stream limit each time it is polled.
fn spawn_http2(connection: H2Connection, guard: OpenGuard, shared: Arc<H2Shared>) {
    *lock(&shared.connection) = Some(connection);
    tokio::spawn(async move {
        let _open = guard;
        poll_fn(|cx| {
            let mut connection = lock(&shared.connection);
            let Some(running) = connection.as_mut() else {
                return Poll::Ready(());
            };
            let polled = Pin::new(&mut *running).poll(cx);
            let max = running.current_max_send_streams();
            shared.max_streams.store(max, Ordering::Relaxed);
            polled.map(drop)
        })
        .await;
        shared.closed.store(true, Ordering::Relaxed);
        lock(&shared.connection).take();
    });
}

fn spawn_http1(connection: http1::Connection<Io, MirrorBody>, guard: OpenGuard) {
    tokio::spawn(async move {
        let _open = guard;
        let _ = connection.await;
    });
}

/// An HTTP/2 connection's failed handshake, shared by every mirror that waited for it.
#[derive(Clone, Debug)]
struct ConnectFailed(Arc<dyn StdError + Send + Sync>);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to the target failed: {}", self.0)
    }
}

impl StdError for ConnectFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// One of the pool's connections, counted while it is open or being opened.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn try_new(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        Some(Self(Arc::clone(open)))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream taken on an HTTP/2 connection, given back when dropped.
struct StreamSlot(Arc<H2Conn>);

impl StreamSlot {
    fn take(conn: Arc<H2Conn>) -> Self {
        conn.active.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place for one request, from [`Pool::reserve`]. Dropping it gives the place back.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    shard: Arc<Shard>,
    kind: LeaseKind,
}

enum LeaseKind {
    Http1(http1::SendRequest<MirrorBody>),
    Stream(StreamSlot),
    Connect(OpenGuard),
}

impl Lease {
    /// The connection, opened if the lease is for a new one. Errors are connect errors: the
    /// request has not gone out.
    pub(crate) async fn connect(self) -> Result<Ready, BoxError> {
        let Self { pool, shard, kind } = self;
        match kind {
            LeaseKind::Http1(send) => Ok(Ready(ReadyKind::Http1 { send, shard })),
            LeaseKind::Stream(slot) => {
                let send = slot.0.sender(&pool).await?;
                Ok(Ready(ReadyKind::Http2 { send, slot }))
            }
            LeaseKind::Connect(guard) => match pool.connect().await? {
                Connected::Http1(send, connection) => {
                    spawn_http1(connection, guard);
                    Ok(Ready(ReadyKind::Http1 { send, shard }))
                }
                Connected::Http2(send, connection) => {
                    // ALPN chose HTTP/2: from now on this connection takes the target's
                    // mirrors by streams.
                    let conn = Arc::new(H2Conn::connecting(guard));
                    let guard = lock(&conn.guard).take().expect("just made");
                    spawn_http2(connection, guard, Arc::clone(&conn.shared));
                    let _ = conn.ready.set(Ok(send.clone()));
                    let slot = StreamSlot::take(Arc::clone(&conn));
                    shard.push_h2(conn);
                    Ok(Ready(ReadyKind::Http2 { send, slot }))
                }
            },
        }
    }
}

/// An open connection with room for one request.
pub(crate) struct Ready(ReadyKind);

enum ReadyKind {
    Http1 {
        send: http1::SendRequest<MirrorBody>,
        shard: Arc<Shard>,
    },
    Http2 {
        send: http2::SendRequest<MirrorBody>,
        slot: StreamSlot,
    },
}

impl Ready {
    /// Writes `request` and resolves to the response head. The connection (or stream) is
    /// given back when the response body is dropped; an HTTP/1.1 connection goes back to the
    /// idle list only if its response was read to the end.
    pub(crate) fn send(self, mut request: Request<MirrorBody>) -> Sending {
        match self.0 {
            ReadyKind::Http1 { mut send, shard } => {
                to_origin_form(&mut request);
                *request.version_mut() = Version::HTTP_11;
                let response = send.send_request(request);
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|body| KeptBody::boxed(body, Keep::Http1(send, shard))))
                })
            }
            ReadyKind::Http2 { mut send, slot } => {
                *request.version_mut() = Version::HTTP_2;
                let response = send.send_request(request);
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|body| KeptBody::boxed(body, Keep::Http2(slot))))
                })
            }
        }
    }
}

/// A request on its way: resolves to the response head.
pub(crate) type Sending =
    Pin<Box<dyn Future<Output = Result<Response<ShadowBody>, BoxError>> + Send + 'static>>;

/// HTTP/1.1 wants the origin form (`/path?query`) and a `Host` header (RFC 9112 §3.2);
/// HTTP/2 takes both from the absolute URI (`:authority`).
fn to_origin_form(request: &mut Request<MirrorBody>) {
    let uri = request.uri().clone();
    if !request.headers().contains_key(header::HOST) {
        if let Some(host) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
}

/// What a response body gives back when dropped.
enum Keep {
    Http1(http1::SendRequest<MirrorBody>, Arc<Shard>),
    /// Held only to be dropped with the body.
    Http2(#[allow(dead_code)] StreamSlot),
}

/// A response body that gives its connection (or stream) back when dropped.
struct KeptBody {
    body: Incoming,
    keep: Option<Keep>,
    /// The body was read to its end.
    ended: bool,
}

impl KeptBody {
    fn boxed(body: Incoming, keep: Keep) -> ShadowBody {
        Self {
            body,
            keep: Some(keep),
            ended: false,
        }
        .boxed_unsync()
    }
}

impl Body for KeptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for KeptBody {
    fn drop(&mut self) {
        let Some(Keep::Http1(mut send, shard)) = self.keep.take() else {
            return;
        };
        if send.is_ready() {
            shard.push_idle(send);
        } else if !send.is_closed() && (self.ended || self.body.is_end_stream()) {
            // Read to the end, but the connection's task has not yet taken note: wait for it
            // off the request path.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if send.ready().await.is_ok() {
                        shard.push_idle(send);
                    }
                });
            }
        }
        // Otherwise the body was left unread: dropping `send` closes the connection.
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `scheme://authority` a target's base URL connects to.
pub(crate) fn origin(url: &Uri) -> Option<Uri> {
    let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
    let authority = url.authority()?.clone();
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query("/")
        .build()
        .ok()
}
