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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
/// How often a shard with connections looks for expired ones.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Streams a new HTTP/2 connection takes until the peer's SETTINGS arrive. One, so that no
/// stream ever waits inside h2 for a limit the peer turns out to set lower (h2 then takes
/// the peer's value, or no limit when its first SETTINGS names none, RFC 9113 §6.5.2).
const INITIAL_MAX_STREAMS: usize = 1;
/// How long an HTTP/1.1 connection whose response was read may take to be ready for the
/// next request (its request body still going out) before it is closed instead of kept.
const READY_WAIT: Duration = Duration::from_secs(5);

/// The read buffer of an HTTP/1.1 connection, in bytes.
const READ_BUFFER: usize = 4096;

/// Milliseconds on a process-wide clock, for idle times kept in atomics.
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

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

    /// The target was removed: its unused connections close now, and those in use close
    /// when their exchange ends instead of going back to the pool.
    pub(crate) fn retire(&self) {
        for shard in lock(&self.shards).iter() {
            let mut state = shard.lock();
            state.retired = true;
            state.idle.clear();
            state.h2.clear();
        }
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
            // Its one stream is ours before anyone can see it. Registered at once, so that
            // once the peer's SETTINGS arrive the next mirrors share its streams.
            let conn = Arc::new(H2Conn::new(Some(guard), &shard));
            let slot = StreamSlot::take(Arc::clone(&conn));
            shard.push_h2(conn);
            LeaseKind::Stream(slot)
        } else {
            LeaseKind::Connect(guard)
        };
        Some(self.lease(shard, kind))
    }

    fn lease(self: &Arc<Self>, shard: Arc<Shard>, kind: LeaseKind) -> Lease {
        Lease {
            pool: Arc::clone(self),
            shard,
            kind: Some(kind),
        }
    }

    /// A free stream or idle connection of another thread's shard, looking first at the
    /// shard after this thread's, so that threads do not all raid the same one.
    fn steal(self: &Arc<Self>, own: &Arc<Shard>) -> Option<Lease> {
        let shards: Vec<Arc<Shard>> = {
            let shards = lock(&self.shards);
            if shards.len() < 2 {
                return None;
            }
            let start = shards
                .iter()
                .position(|shard| Arc::ptr_eq(shard, own))
                .map_or(0, |i| i + 1);
            shards[start..]
                .iter()
                .chain(&shards[..start])
                .filter(|shard| !Arc::ptr_eq(shard, own))
                .cloned()
                .collect()
        };
        shards.into_iter().find_map(|shard| {
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
            let mut all = lock(&self.shards);
            // A thread that ended leaves a shard no one will look up: forget it once empty.
            all.retain(|shard| Arc::strong_count(shard) > 1 || !shard.lock().is_empty());
            all.push(Arc::clone(&shard));
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
            // A slow target holds a connection per mirror in flight: read in 4 KiB steps
            // instead of hyper's adaptive 8 KiB and up, which halves the read buffer each
            // waiting connection keeps (its 8 KiB write buffer is fixed in hyper).
            let (send, connection) = http1::Builder::new()
                .read_buf_exact_size(Some(READ_BUFFER))
                .handshake(io)
                .await?;
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
type H2Connection = http2::Connection<Io, MirrorBody, TokioExecutor>;

// Short-lived: moved once, the connection into its task.
#[allow(clippy::large_enum_variant)]
enum Connected {
    Http1(
        http1::SendRequest<MirrorBody>,
        http1::Connection<Io, MirrorBody>,
    ),
    Http2(http2::SendRequest<MirrorBody>, H2Connection),
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
    /// The pool's target was removed: nothing goes back into this shard.
    retired: bool,
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
        if state.retired {
            return;
        }
        state.idle.push(Idle {
            send,
            since: Instant::now(),
        });
        self.sweep_later(&mut state);
    }

    fn push_h2(self: &Arc<Self>, conn: Arc<H2Conn>) {
        let mut state = self.lock();
        if state.retired {
            return;
        }
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
        // Cleared however the task ends, even dropped with its runtime, so that the next
        // connection starts another.
        let running = SweeperRunning(Arc::downgrade(self));
        runtime.spawn(async move {
            // Until the shard goes (its `stop` dropped), every SWEEP_EVERY.
            while tokio::time::timeout(SWEEP_EVERY, &mut stopped)
                .await
                .is_err()
            {
                let Some(shard) = running.0.upgrade() else {
                    return;
                };
                let mut state = shard.lock();
                state.sweep();
                if state.is_empty() {
                    return;
                }
            }
        });
    }
}

/// Owned by a shard's sweeper task: marks the shard as having none when the task ends.
struct SweeperRunning(Weak<Shard>);

impl Drop for SweeperRunning {
    fn drop(&mut self) {
        if let Some(shard) = self.0.upgrade() {
            shard.lock().sweeper = None;
        }
    }
}

impl ShardState {
    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.h2.is_empty()
    }

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
        self.h2.retain(|conn| conn.usable());
        let conn = self.h2.iter().find(|conn| conn.try_take())?;
        Some(StreamSlot::taken(Arc::clone(conn)))
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

    /// Drops idle HTTP/1.1 connections past [`IDLE_TIMEOUT`], and HTTP/2 connections that
    /// had no stream for as long, or that are closed or draining.
    fn sweep(&mut self) {
        self.idle
            .retain(|idle| idle.since.elapsed() < IDLE_TIMEOUT && !idle.send.is_closed());
        let now = now_ms();
        self.h2.retain(|conn| {
            conn.usable()
                && (conn.active.load(Ordering::Acquire) > 0
                    || now.saturating_sub(conn.last_used.load(Ordering::Relaxed))
                        < IDLE_TIMEOUT.as_millis() as u64)
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
    /// When a stream was last taken or given back ([`now_ms`]).
    last_used: AtomicU64,
    /// A stream was abandoned mid-exchange (a timeout, a body left unread): h2 still counts
    /// it until its RST_STREAM is written, so this connection takes no more streams and
    /// closes once its own end.
    draining: AtomicBool,
    /// What the connection's task reports. Not the `SendRequest`: holding that would keep
    /// the connection open after the pool let it go.
    shared: Arc<H2Shared>,
    /// The shard that lists it, which lets go of it when it starts draining.
    home: Weak<Shard>,
}

struct H2Shared {
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, as last read from the connection.
    max_streams: AtomicUsize,
    /// The peer's first SETTINGS have been seen (the limit is no longer the initial one).
    settled: AtomicBool,
    closed: AtomicBool,
    /// The connection, polled by its task. hyper drives the HTTP/2 frames in a task of its
    /// own, so the peer's SETTINGS change h2's state without this one being polled: the
    /// stream limit is read from here until they have arrived.
    connection: Mutex<Option<H2Connection>>,
}

impl H2Shared {
    /// Reads the peer's stream limit from the connection; `None` once it is gone.
    fn refresh(&self) -> Option<usize> {
        let max = lock(&self.connection).as_ref()?.current_max_send_streams();
        self.learn(max);
        Some(max)
    }

    fn learn(&self, max: usize) {
        self.max_streams.store(max, Ordering::Relaxed);
        if max != INITIAL_MAX_STREAMS {
            self.settled.store(true, Ordering::Relaxed);
        }
    }
}

impl H2Conn {
    fn new(guard: Option<OpenGuard>, home: &Arc<Shard>) -> Self {
        Self {
            home: Arc::downgrade(home),
            ready: OnceCell::new(),
            guard: Mutex::new(guard),
            active: AtomicUsize::new(0),
            last_used: AtomicU64::new(now_ms()),
            draining: AtomicBool::new(false),
            shared: Arc::new(H2Shared {
                max_streams: AtomicUsize::new(INITIAL_MAX_STREAMS),
                settled: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                connection: Mutex::new(None),
            }),
        }
    }

    /// May take new streams: neither closed nor draining.
    fn usable(&self) -> bool {
        !self.shared.closed.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
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
        let taken = take(cached)
            // Full as far as we know. Until the peer's first SETTINGS the limit is one
            // stream: see whether they have arrived. (Later changes are read whenever a
            // request goes through the connection's task.)
            || (!self.shared.settled.load(Ordering::Relaxed)
                && self
                    .shared
                    .refresh()
                    .is_some_and(|max| max != cached && take(max)));
        if taken {
            self.last_used.store(now_ms(), Ordering::Relaxed);
        }
        taken
    }

    /// The connection's sender, opening the connection if no one has yet.
    async fn sender(&self, pool: &Pool) -> Result<http2::SendRequest<MirrorBody>, BoxError> {
        let ready = self
            .ready
            .get_or_init(|| async {
                // If this is abandoned half-way (its mirror timed out), no one else may wait
                // for it: the next mirror opens a connection of its own.
                let abandoned = ClosedUnlessDone(&self.shared.closed, false);
                let guard = lock(&self.guard).take();
                let result = match guard {
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
                let result = result.map_err(|error| ConnectFailed(Arc::from(error)));
                abandoned.done(result.is_ok());
                result
            })
            .await;
        match ready {
            Ok(send) => Ok(send.clone()),
            Err(failed) => Err(Box::new(failed.clone())),
        }
    }
}

/// Sets a `closed` flag when dropped, unless told the work succeeded.
struct ClosedUnlessDone<'a>(&'a AtomicBool, bool);

impl ClosedUnlessDone<'_> {
    fn done(mut self, ok: bool) {
        self.1 = ok;
    }
}

impl Drop for ClosedUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs an HTTP/2 connection, reading the peer's stream limit each time it is polled.
fn spawn_http2(connection: H2Connection, guard: OpenGuard, shared: Arc<H2Shared>) {
    *lock(&shared.connection) = Some(connection);
    // Owned by the task: however it ends, even dropped with its runtime, the connection is
    // marked closed and let go, and stops counting.
    let running = H2Running {
        shared,
        _open: guard,
    };
    tokio::spawn(async move {
        poll_fn(|cx| {
            let mut connection = lock(&running.shared.connection);
            let Some(open) = connection.as_mut() else {
                return Poll::Ready(());
            };
            let polled = Pin::new(&mut *open).poll(cx);
            running.shared.learn(open.current_max_send_streams());
            polled.map(drop)
        })
        .await;
        drop(running);
    });
}

struct H2Running {
    shared: Arc<H2Shared>,
    _open: OpenGuard,
}

impl Drop for H2Running {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        lock(&self.shared.connection).take();
    }
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

/// A request the target's connection closed before it was written, and no other could
/// take it: it never went out (a connect error, with no latency).
#[derive(Debug)]
pub(crate) struct NotSent(pub(crate) hyper::Error);

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the connection closed before the request went out: {}",
            self.0
        )
    }
}

impl StdError for NotSent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
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

/// A stream taken on an HTTP/2 connection, given back when dropped. One dropped before its
/// exchange finished leaves the connection draining.
struct StreamSlot {
    conn: Arc<H2Conn>,
    finished: bool,
}

impl StreamSlot {
    /// Takes a stream on a connection no one else can see yet.
    fn take(conn: Arc<H2Conn>) -> Self {
        conn.active.fetch_add(1, Ordering::AcqRel);
        Self::taken(conn)
    }

    /// The stream [`H2Conn::try_take`] took.
    fn taken(conn: Arc<H2Conn>) -> Self {
        Self {
            conn,
            finished: false,
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if !self.finished && !self.conn.draining.swap(true, Ordering::Relaxed) {
            // Out of the list now, so that once its streams end nothing holds it and the
            // connection closes.
            if let Some(shard) = self.conn.home.upgrade() {
                shard.lock().h2.retain(|c| !Arc::ptr_eq(c, &self.conn));
            }
        }
        self.conn.last_used.store(now_ms(), Ordering::Relaxed);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place for one request, from [`Pool::reserve`]. Dropping it unused gives the place back.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    shard: Arc<Shard>,
    kind: Option<LeaseKind>,
}

enum LeaseKind {
    Http1(http1::SendRequest<MirrorBody>),
    Stream(StreamSlot),
    Connect(OpenGuard),
}

impl Lease {
    /// The connection, opened if the lease is for a new one: at once when it is open (no
    /// allocation), else a boxed future. Errors are connect errors: the request has not
    /// gone out.
    pub(crate) fn connect(mut self) -> Connecting {
        let pool = Arc::clone(&self.pool);
        let shard = Arc::clone(&self.shard);
        let kind = match self.kind.take() {
            None => return Connecting::Done(Some(Err("the lease was used".into()))),
            Some(LeaseKind::Http1(send)) => ReadyKind::Http1 { send, shard },
            Some(LeaseKind::Stream(slot)) => match slot.conn.ready.get() {
                Some(Ok(send)) => ReadyKind::Http2 {
                    send: send.clone(),
                    slot,
                },
                _ => return Connecting::Opening(Box::pin(open_stream(pool, slot))),
            },
            Some(LeaseKind::Connect(guard)) => {
                return Connecting::Opening(Box::pin(open(pool, shard, guard)));
            }
        };
        Connecting::Done(Some(Ok(Ready { pool, kind })))
    }
}

/// A stream on an HTTP/2 connection being opened (by this mirror or another).
async fn open_stream(pool: Arc<Pool>, mut slot: StreamSlot) -> Result<Ready, BoxError> {
    match slot.conn.sender(&pool).await {
        Ok(send) => Ok(Ready {
            pool,
            kind: ReadyKind::Http2 { send, slot },
        }),
        Err(error) => {
            // Nothing was sent on it: no reset to wait for.
            slot.finished = true;
            Err(error)
        }
    }
}

/// A new connection, HTTP/1.1 or (as ALPN or the target says) HTTP/2.
async fn open(pool: Arc<Pool>, shard: Arc<Shard>, guard: OpenGuard) -> Result<Ready, BoxError> {
    let kind = match pool.connect().await? {
        Connected::Http1(send, connection) => {
            spawn_http1(connection, guard);
            ReadyKind::Http1 { send, shard }
        }
        Connected::Http2(send, connection) => {
            // ALPN chose HTTP/2: from now on this connection takes the target's mirrors by
            // streams.
            let conn = Arc::new(H2Conn::new(None, &shard));
            spawn_http2(connection, guard, Arc::clone(&conn.shared));
            let _ = conn.ready.set(Ok(send.clone()));
            let slot = StreamSlot::take(Arc::clone(&conn));
            shard.push_h2(conn);
            ReadyKind::Http2 { send, slot }
        }
    };
    Ok(Ready { pool, kind })
}

/// What [`Lease::connect`] returns.
pub(crate) enum Connecting {
    Done(Option<Result<Ready, BoxError>>),
    Opening(Pin<Box<dyn Future<Output = Result<Ready, BoxError>> + Send>>),
}

impl Future for Connecting {
    type Output = Result<Ready, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Done(done) => {
                Poll::Ready(done.take().unwrap_or_else(|| Err("polled again".into())))
            }
            Self::Opening(opening) => opening.as_mut().poll(cx),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.kind.take() {
            // Taken and never used: an idle connection goes back as it was.
            Some(LeaseKind::Http1(send)) => self.shard.push_idle(send),
            Some(LeaseKind::Stream(mut slot)) => slot.finished = true,
            _ => {}
        }
    }
}

/// An open connection with room for one request.
pub(crate) struct Ready {
    pool: Arc<Pool>,
    kind: ReadyKind,
}

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

/// Why a request got no response: it came back unsent, or it failed.
enum Unsent {
    // Boxed: the rare case, kept off the size of every send future.
    Back(Box<Request<MirrorBody>>, hyper::Error),
    Failed(BoxError),
}

impl Ready {
    /// Writes `request` and resolves to the response head. The connection (or stream) is
    /// given back when the response body is dropped; an HTTP/1.1 connection goes back to the
    /// idle list only if its response was read to the end.
    ///
    /// If the connection closed before the request could be written (a target that closes
    /// idle connections races with us), it is sent once more on another connection the
    /// pool can give at once; failing that, the error is [`NotSent`].
    pub(crate) fn send(self, request: Request<MirrorBody>) -> Sending {
        Box::pin(async move {
            let Self { pool, kind } = self;
            let (request, closed) = match kind.send(request, &pool.origin).await {
                Ok(response) => return Ok(response),
                Err(Unsent::Failed(error)) => return Err(error),
                Err(Unsent::Back(request, closed)) => (request, closed),
            };
            let Some(lease) = pool.reserve() else {
                return Err(Box::new(NotSent(closed)) as BoxError);
            };
            let ready = lease.connect().await?;
            match ready.kind.send(*request, &pool.origin).await {
                Ok(response) => Ok(response),
                Err(Unsent::Failed(error)) => Err(error),
                Err(Unsent::Back(_, closed)) => Err(Box::new(NotSent(closed)) as BoxError),
            }
        })
    }
}

impl ReadyKind {
    async fn send(
        self,
        mut request: Request<MirrorBody>,
        origin: &Uri,
    ) -> Result<Response<ShadowBody>, Unsent> {
        let unsent = |mut error: hyper::client::conn::TrySendError<Request<MirrorBody>>| match error
            .take_message()
        {
            Some(request) => Unsent::Back(Box::new(request), error.into_error()),
            None => Unsent::Failed(error.into_error().into()),
        };
        match self {
            Self::Http1 { mut send, shard } => {
                to_origin_form(&mut request);
                *request.version_mut() = Version::HTTP_11;
                match send.try_send_request(request).await {
                    Ok(response) => {
                        Ok(response.map(|body| KeptBody::boxed(body, Keep::Http1(send, shard))))
                    }
                    Err(error) => Err(unsent(error)),
                }
            }
            Self::Http2 { mut send, mut slot } => {
                to_absolute_form(&mut request, origin);
                *request.version_mut() = Version::HTTP_2;
                match send.try_send_request(request).await {
                    Ok(response) => {
                        Ok(response.map(|body| KeptBody::boxed(body, Keep::Http2(slot))))
                    }
                    Err(error) => {
                        // The stream failed or never opened: h2 no longer counts it.
                        slot.finished = true;
                        Err(unsent(error))
                    }
                }
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
    if !request.headers().contains_key(header::HOST)
        && let Some(host) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
}

/// HTTP/2 takes the scheme and authority from the URI (`:scheme`, `:authority`, RFC 9113
/// §8.3.1): a request that came back from an HTTP/1.1 connection has the origin form.
fn to_absolute_form(request: &mut Request<MirrorBody>, origin: &Uri) {
    if request.uri().authority().is_some() {
        return;
    }
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = origin.scheme().cloned();
    parts.authority = origin.authority().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// What a response body gives back when dropped.
enum Keep {
    Http1(http1::SendRequest<MirrorBody>, Arc<Shard>),
    Http2(StreamSlot),
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
        let ended = self.ended || self.body.is_end_stream();
        let (mut send, shard) = match self.keep.take() {
            Some(Keep::Http1(send, shard)) => (send, shard),
            // A stream whose body was read to its end is closed in h2 too; one left unread
            // is reset, and counts there until the reset is written.
            Some(Keep::Http2(mut slot)) => {
                slot.finished = ended;
                return;
            }
            None => return,
        };
        if send.is_ready() {
            shard.push_idle(send);
        } else if !send.is_closed() && ended {
            // Read to the end, but the connection's task has not yet taken note (or the
            // request body is still going out): wait for it off the request path, a while.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let shard = Arc::downgrade(&shard);
                runtime.spawn(async move {
                    let ready = tokio::time::timeout(READY_WAIT, send.ready()).await;
                    if let (Ok(Ok(())), Some(shard)) = (ready, shard.upgrade()) {
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
