//! Fault injection: shadow targets on loopback that misbehave in the ways a network peer can,
//! and clients and inner services of the primary that misbehave too. For every fault the tests
//! prove that
//!
//! 1. the primary's answer (status and body bytes) is intact;
//! 2. the primary does not wait for the faulty mirror. No stopwatch: every slow fault server
//!    first *holds* the mirror, and only once the primary has answered do the tests find the
//!    server holding it and the layer counting it in flight with no outcome yet — so the
//!    primary's answer came first;
//! 3. the mirror's outcome is counted under the right reason and `on_error` classifies it;
//! 4. nothing leaks: after `drain` and once the fault server has seen its connections closed,
//!    the process has exactly the open file descriptors and the runtime exactly the alive tasks
//!    it had before the traffic; and after the layer, the primary and the servers are gone,
//!    exactly those it had before the test.
//!
//! # Isolation
//!
//! Open file descriptors are counted per process and alive tasks per runtime, so two tests
//! running at once would disturb each other's counts. Every test therefore runs through
//! [`isolated`], which takes one process-wide lock, builds a runtime of its own, runs the test
//! on it and drops the runtime — closing whatever its tasks still held — before it lets go of
//! the lock. Whatever `--test-threads` says, the tests of this binary never overlap and none
//! sees another's leftovers, so the leak checks can be exact equalities. (`#[tokio::test]` would
//! not do: its runtime is dropped after the test body, so a lock taken inside the body is
//! released while the runtime's sockets are still open.) The price is that the file runs its
//! tests one after another, in a few seconds each.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body as AxumBody;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{DEADLINE, eventually, pattern, settled};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, ServiceExt};
use tower_mirror::{
    HttpSender, MirrorLayer, Mode, Options, SkipStats, Target, TargetStats, TeeBody,
};

/// What the primary answers on `GET /hello`.
const HELLO: &str = "hello from the primary";

/// The timeout of layers whose mirror must time out: long enough that a mirror cannot time
/// out between the primary's answer and the check that it is still in flight (that would take
/// a stall of the whole process this long), short enough to keep the tests quick.
const SHORT_TIMEOUT: Duration = Duration::from_secs(2);

/// The timeout of layers whose mirror must not time out: never reached.
const LONG_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Isolation and leak accounting
// ---------------------------------------------------------------------------------------------

/// Runs one test alone, on a runtime of its own: see the crate docs.
fn isolated(test: impl Future<Output = ()>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed poisons the lock; the next one still runs, on a fresh runtime.
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(test);
    // Dropping the runtime ends its tasks and closes their sockets, and waits for its threads;
    // only then may the next test count anything.
    drop(runtime);
    drop(guard);
}

/// What the leak checks count.
#[derive(Clone, Debug)]
struct Census {
    /// Open file descriptors of the process: number → what it points to (for the report).
    fds: BTreeMap<String, String>,
    /// Alive tasks of the current runtime.
    tasks: usize,
}

impl Census {
    fn take() -> Self {
        let fds = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd is readable")
            .filter_map(Result::ok)
            .map(|entry| {
                let target = std::fs::read_link(entry.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                (entry.file_name().to_string_lossy().into_owned(), target)
            })
            .collect();
        Self {
            fds,
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        }
    }

    /// Waits until the process is back to this census: as many open file descriptors and alive
    /// tasks. Fails the test after [`DEADLINE`], naming what is left over.
    async fn restored(&self, when: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let now = Self::take();
            if now.fds.len() == self.fds.len() && now.tasks == self.tasks {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let diff = |a: &Self, b: &Self| -> Vec<String> {
                    a.fds
                        .iter()
                        .filter(|(fd, target)| b.fds.get(*fd) != Some(*target))
                        .map(|(fd, target)| format!("{fd} -> {target}"))
                        .collect()
                };
                panic!(
                    "leak {when}: {} open fds (expected {}), {} alive tasks (expected {}); \
                     opened since: {:?}; closed since: {:?}",
                    now.fds.len(),
                    self.fds.len(),
                    now.tasks,
                    self.tasks,
                    diff(&now, self),
                    diff(self, &now),
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A task aborted when this is dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The primary
// ---------------------------------------------------------------------------------------------

/// How the primary's `/collect` handler got on with the request body.
#[derive(Clone, Debug, PartialEq, Eq)]
enum BodyRead {
    /// Read to its end: this many bytes.
    Whole(usize),
    /// The body failed after this many bytes.
    Failed(usize),
    /// The handler was dropped after this many bytes, before the body ended.
    Dropped(usize),
}

/// Records how a handler read its body, and `Dropped` if it is dropped before it knows.
struct ReadLog {
    log: Arc<Mutex<Vec<BodyRead>>>,
    bytes: usize,
    done: bool,
}

impl ReadLog {
    fn finish(&mut self, read: BodyRead) {
        self.done = true;
        self.log.lock().unwrap().push(read);
    }
}

impl Drop for ReadLog {
    fn drop(&mut self) {
        if !self.done {
            let bytes = self.bytes;
            self.finish(BodyRead::Dropped(bytes));
        }
    }
}

async fn collect(log: Arc<Mutex<Vec<BodyRead>>>, mut body: AxumBody) -> &'static str {
    let mut read = ReadLog {
        log,
        bytes: 0,
        done: false,
    };
    loop {
        match body.frame().await {
            None => {
                let bytes = read.bytes;
                read.finish(BodyRead::Whole(bytes));
                return "collected";
            }
            Some(Ok(frame)) => read.bytes += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) => {
                let bytes = read.bytes;
                read.finish(BodyRead::Failed(bytes));
                return "failed";
            }
        }
    }
}

/// The primary app behind the layer, served by `axum::serve` on loopback until dropped.
struct Primary {
    url: String,
    addr: SocketAddr,
    /// What `/collect` saw of each body.
    reads: Arc<Mutex<Vec<BodyRead>>>,
    _serve: Task,
}

impl Primary {
    async fn start(layer: &MirrorLayer) -> Self {
        let reads: Arc<Mutex<Vec<BodyRead>>> = Arc::default();
        let log = Arc::clone(&reads);
        let router = Router::new()
            .route("/hello", get(|| async { HELLO }))
            .route("/fresh", get(|| async { "fresh from the primary" }))
            // Reads the body itself: no extractor limit on its size.
            .route(
                "/echo",
                post(|body: AxumBody| async move {
                    match body.collect().await {
                        Ok(collected) => collected.to_bytes().into_response(),
                        Err(_) => StatusCode::BAD_REQUEST.into_response(),
                    }
                }),
            )
            .route("/ignore", post(|| async { "ignored" }))
            .route(
                "/collect",
                post(move |body: AxumBody| collect(Arc::clone(&log), body)),
            )
            .layer(layer.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            reads,
            _serve: Task(serve),
        }
    }

    /// `GET /hello`, checking that the answer is the primary's, intact.
    async fn hello(&self) {
        let answer = support::get(&format!("{}/hello", self.url)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, HELLO, "the primary's answer is intact");
    }

    /// `POST /echo` with `body`, checking that every byte came back.
    async fn echo(&self, body: &Bytes) {
        let answer = support::post(&format!("{}/echo", self.url), body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body == *body, "the primary echoed every byte");
    }
}

// ---------------------------------------------------------------------------------------------
// What the layer reported
// ---------------------------------------------------------------------------------------------

/// How `on_error` classified a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Timeout,
    Connect,
    /// Neither a timeout nor a connect error: the exchange failed after connecting.
    Exchange,
}

#[derive(Clone, Debug)]
struct Failure {
    url: String,
    kind: Kind,
    message: String,
    /// The rustls error in the chain, if any.
    tls: Option<rustls::Error>,
}

/// What the callbacks were told.
#[derive(Default)]
struct Seen {
    failures: Mutex<Vec<Failure>>,
    /// `on_success`: status and the captured start of the body.
    answers: Mutex<Vec<(StatusCode, Bytes)>>,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Options for `target` with both callbacks recording here.
    fn options(self: &Arc<Self>, target: Target) -> Options {
        let failures = Arc::clone(self);
        let answers = Arc::clone(self);
        Options {
            targets: vec![target],
            on_error: Some(Arc::new(move |url, error| {
                let kind = match (error.is_timeout(), error.is_connect()) {
                    (true, false) => Kind::Timeout,
                    (false, true) => Kind::Connect,
                    (false, false) => Kind::Exchange,
                    (true, true) => panic!("both a timeout and a connect error: {error}"),
                };
                failures.failures.lock().unwrap().push(Failure {
                    url: url.to_owned(),
                    kind,
                    message: error.to_string(),
                    tls: rustls_error_in(error),
                });
            })),
            on_success: Some(Arc::new(move |_url, response| {
                answers
                    .answers
                    .lock()
                    .unwrap()
                    .push((response.status(), response.body().clone()));
            })),
            ..Options::default()
        }
    }

    fn failures(&self) -> Vec<Failure> {
        self.failures.lock().unwrap().clone()
    }

    fn kinds(&self) -> Vec<Kind> {
        self.failures().iter().map(|f| f.kind).collect()
    }

    fn answers(&self) -> Vec<(StatusCode, Bytes)> {
        self.answers.lock().unwrap().clone()
    }
}

/// The rustls error somewhere in `error`'s chain, looking inside `io::Error`s too (whose
/// `source()` skips the error they wrap).
fn rustls_error_in(error: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = rustls_error_in(inner)
        {
            return Some(tls);
        }
        current = err.source();
    }
    None
}

/// A target's counters, minus its URL, for whole-value assertions.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    sampled: u64,
    sent: u64,
    responded: u64,
    failed: u64,
    timed_out: u64,
    dropped_overload: u64,
    in_flight: usize,
    skipped: SkipStats,
}

fn counts(t: &TargetStats) -> Counts {
    Counts {
        sampled: t.sampled,
        sent: t.sent,
        responded: t.responded,
        failed: t.failed,
        timed_out: t.timed_out,
        dropped_overload: t.dropped_overload,
        in_flight: t.in_flight,
        skipped: t.skipped,
    }
}

/// One mirror sampled and sent, with this outcome.
fn one_sent() -> Counts {
    Counts {
        sampled: 1,
        sent: 1,
        ..Counts::default()
    }
}

fn skipped(set: impl FnOnce(&mut SkipStats)) -> SkipStats {
    let mut stats = SkipStats::default();
    set(&mut stats);
    stats
}

fn target_stats(layer: &MirrorLayer) -> TargetStats {
    layer.stats().targets[0].clone()
}

/// The causal proof that the primary did not wait for the mirror. Called once the primary has
/// answered: waits until the fault server holds the mirror, then finds it still in flight with
/// no outcome. The mirror was unfinished after the primary's answer, so that answer cannot
/// have waited for it.
async fn assert_still_in_flight(layer: &MirrorLayer, server: &Fault) {
    eventually("the target to hold the mirror", || server.log.held() == 1).await;
    let t = target_stats(layer);
    assert_eq!(
        counts(&t),
        Counts {
            in_flight: 1,
            ..one_sent()
        },
        "the primary has answered and the mirror is still in flight"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault servers
// ---------------------------------------------------------------------------------------------

/// What a fault server saw, connection by connection.
#[derive(Default)]
struct Log {
    accepted: AtomicUsize,
    /// Requests (or TLS handshakes) the server has received and now holds.
    held: AtomicUsize,
    /// Connections on which the server saw the peer go away: end of stream or an error, on
    /// reading or writing. The server itself never closes these first.
    peer_closed: AtomicUsize,
    /// Connection tasks that have ended, however.
    ended: AtomicUsize,
    /// Request body bytes read.
    body_read: AtomicUsize,
    /// Response bytes written.
    written: AtomicUsize,
    /// Failed TLS handshakes.
    failed_handshakes: AtomicUsize,
    /// Request lines, in order.
    requests: Mutex<Vec<String>>,
    /// Request bodies read in full.
    bodies: Mutex<Vec<Bytes>>,
}

impl Log {
    fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
    fn held(&self) -> usize {
        self.held.load(SeqCst)
    }
    fn peer_closed(&self) -> usize {
        self.peer_closed.load(SeqCst)
    }
    fn ended(&self) -> usize {
        self.ended.load(SeqCst)
    }
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Counts a connection task's end, however it ends.
struct Ended(Arc<Log>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, SeqCst);
    }
}

/// One accepted connection, as a fault behaviour gets it.
struct Conn {
    stream: TcpStream,
    log: Arc<Log>,
    gate: watch::Receiver<bool>,
}

impl Conn {
    /// Reads one request head; `None` (counted as the peer closing) if the peer closes first.
    /// Returns the head and the bytes read past it.
    async fn read_head(&mut self) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                let head = String::from_utf8_lossy(&buf).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                self.log.requests.lock().unwrap().push(line);
                return Some((head, rest));
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    self.log.peer_closed.fetch_add(1, SeqCst);
                    return None;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one request with its `Content-Length` body, recording the body.
    async fn read_request(&mut self) -> Option<String> {
        let (head, mut body) = self.read_head().await?;
        let len = content_length(&head);
        let mut chunk = vec![0u8; 64 * 1024];
        while body.len() < len {
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    self.log.peer_closed.fetch_add(1, SeqCst);
                    return None;
                }
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        self.log.body_read.fetch_add(body.len(), SeqCst);
        self.log.bodies.lock().unwrap().push(body.into());
        Some(head)
    }

    /// Counts the request as held, and waits for the gate to open.
    async fn hold(&mut self) {
        self.log.held.fetch_add(1, SeqCst);
        let _ = self.gate.wait_for(|open| *open).await;
    }

    /// Reads and discards until the peer closes, and counts that.
    async fn until_closed(&mut self) {
        until_closed(&mut self.stream).await;
        self.log.peer_closed.fetch_add(1, SeqCst);
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.log.written.fetch_add(bytes.len(), SeqCst);
        Ok(())
    }
}

async fn until_closed(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.trim().parse().unwrap())
}

/// A response that closes its connection, so that the client keeps nothing pooled.
fn closing_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A server on loopback whose every connection runs one fault behaviour, with a gate the
/// behaviours may wait for. Dropping it stops it and every connection it holds.
struct Fault {
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    url: String,
    log: Arc<Log>,
    gate: watch::Sender<bool>,
    _accept: Task,
}

impl Fault {
    async fn start<F, Fut>(behaviour: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), behaviour)
    }

    fn on<F, Fut>(listener: TcpListener, behaviour: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let (gate, _) = watch::channel(false);
        let accept = {
            let log = Arc::clone(&log);
            let gate = gate.clone();
            tokio::spawn(async move {
                // Connections live in the set, so stopping the server stops them too.
                let mut connections = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { return };
                            log.accepted.fetch_add(1, SeqCst);
                            let conn = Conn {
                                stream,
                                log: Arc::clone(&log),
                                gate: gate.subscribe(),
                            };
                            let ended = Ended(Arc::clone(&log));
                            let run = behaviour(conn);
                            connections.spawn(async move {
                                let _ended = ended;
                                run.await;
                            });
                        }
                        Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    }
                }
            })
        };
        Self {
            addr,
            url: format!("http://{addr}"),
            log,
            gate,
            _accept: Task(accept),
        }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

/// Reads the request and holds it until the peer goes away; never answers.
async fn never_answers(mut conn: Conn) {
    if conn.read_request().await.is_some() {
        conn.log.held.fetch_add(1, SeqCst);
        conn.until_closed().await;
    }
}

/// Answers `GET /fresh` at once; holds any other request until the gate opens (counting the
/// peer's close if it comes first), then answers it anyway.
async fn answers_late(mut conn: Conn) {
    let Some(head) = conn.read_request().await else {
        return;
    };
    if head.starts_with("GET /fresh ") {
        let _ = conn.write(closing_response("fresh").as_bytes()).await;
        return;
    }
    conn.log.held.fetch_add(1, SeqCst);
    let Conn { stream, log, gate } = &mut conn;
    let closed_first = tokio::select! {
        _ = gate.wait_for(|open| *open) => false,
        () = until_closed(stream) => true,
    };
    if closed_first {
        log.peer_closed.fetch_add(1, SeqCst);
        let _ = gate.wait_for(|open| *open).await;
    }
    let _ = conn.write(closing_response("late").as_bytes()).await;
}

/// Bytes a loopback TCP socket has sent that the peer's kernel has not acknowledged yet
/// (`tx_queue` in `/proc/net/tcp`); `None` while the socket is not listed.
fn unacknowledged(local: SocketAddr, peer: SocketAddr) -> Option<usize> {
    let hex = |addr: SocketAddr| match addr {
        // The kernel prints the address as the native-endian number of its network bytes.
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => unreachable!("the fault servers listen on 127.0.0.1"),
    };
    let (local, peer) = (hex(local), hex(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (tx_queue, _rx_queue) = fields[4].split_once(':')?;
        (fields[1] == local && fields[2] == peer)
            .then(|| usize::from_str_radix(tx_queue, 16).unwrap())
    })
}

/// Holds the request until the gate opens, then sends a response head declaring 100 000 bytes
/// and 1 000 of them, waits until the peer's kernel has acknowledged them (so the reset cannot
/// overtake them: the peer reads them before the error), and resets the connection
/// (`SO_LINGER` 0, then close).
async fn resets_mid_response(mut conn: Conn) {
    if conn.read_request().await.is_none() {
        return;
    }
    conn.hold().await;
    let mut response = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
    response.extend_from_slice(&pattern(1000));
    if conn.write(&response).await.is_err() {
        return;
    }
    let (local, peer) = (
        conn.stream.local_addr().unwrap(),
        conn.stream.peer_addr().unwrap(),
    );
    eventually("the partial response to be acknowledged", || {
        unacknowledged(local, peer) == Some(0)
    })
    .await;
    conn.stream.set_zero_linger().unwrap();
}

/// Holds the request until the gate opens, then answers with bytes that are not HTTP, and
/// keeps the connection open until the peer closes it.
async fn answers_garbage(mut conn: Conn) {
    if conn.read_request().await.is_none() {
        return;
    }
    conn.hold().await;
    let garbage = b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe\x01 this is not HTTP at all\r\n\r\n";
    if conn.write(garbage).await.is_ok() {
        conn.until_closed().await;
    }
}

/// The body length [`answers_huge`] declares.
const HUGE: usize = 100 << 20;

/// How much of a response body the layer reads before it drops the connection.
const DRAIN_LIMIT: usize = 1 << 20;

/// Holds the request until the gate opens, then answers `200` with a body of [`HUGE`] bytes
/// (generated as it goes), writing until done or until the peer goes away.
async fn answers_huge(mut conn: Conn) {
    if conn.read_request().await.is_none() {
        return;
    }
    conn.hold().await;
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\n\r\n");
    if conn.write(head.as_bytes()).await.is_err() {
        conn.log.peer_closed.fetch_add(1, SeqCst);
        return;
    }
    let chunk = pattern(64 * 1024);
    let mut sent = 0;
    while sent < HUGE {
        if conn.write(&chunk).await.is_err() {
            conn.log.peer_closed.fetch_add(1, SeqCst);
            return;
        }
        sent += chunk.len();
    }
}

/// How long [`reads_slowly`] waits between two bytes.
const SLOW_BYTE: Duration = Duration::from_millis(2);

/// Reads the request head, then the body one byte every [`SLOW_BYTE`] until the gate opens,
/// then the rest at full speed, and answers `200 ok` (closing the connection).
async fn reads_slowly(mut conn: Conn) {
    let Some((head, mut body)) = conn.read_head().await else {
        return;
    };
    let len = content_length(&head);
    conn.log.body_read.fetch_add(body.len(), SeqCst);
    conn.log.held.fetch_add(1, SeqCst);
    let mut byte = [0u8; 1];
    while body.len() < len && !*conn.gate.borrow() {
        if conn.stream.read_exact(&mut byte).await.is_err() {
            conn.log.peer_closed.fetch_add(1, SeqCst);
            return;
        }
        body.push(byte[0]);
        conn.log.body_read.fetch_add(1, SeqCst);
        tokio::time::sleep(SLOW_BYTE).await;
    }
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < len {
        match conn.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                conn.log.peer_closed.fetch_add(1, SeqCst);
                return;
            }
            Ok(n) => {
                body.extend_from_slice(&chunk[..n]);
                conn.log.body_read.fetch_add(n, SeqCst);
            }
        }
    }
    conn.log.bodies.lock().unwrap().push(body.into());
    let _ = conn.write(closing_response("ok").as_bytes()).await;
}

/// Reads the request and answers `200 ok`, closing the connection.
async fn answers_ok(mut conn: Conn) {
    if conn.read_request().await.is_some() {
        let _ = conn.write(closing_response("ok").as_bytes()).await;
    }
}

/// Answers every request on the connection with `200 back`, keeping it alive, until the peer
/// closes it.
async fn answers_keep_alive(mut conn: Conn) {
    while conn.read_request().await.is_some() {
        let response = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nback";
        if conn.write(response.as_bytes()).await.is_err() {
            conn.log.peer_closed.fetch_add(1, SeqCst);
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_target_that_refuses_connections_is_a_connect_failure() {
    isolated(async {
        let start = Census::take();
        let url = support::refused_url().await;
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(seen.options(Target::new(url.clone()))).unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        // A refusal is immediate: there is nothing to hold, so nothing for the primary to wait
        // for either (the mirror starts only once the primary has its request).
        primary.hello().await;
        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                failed: 1,
                ..one_sent()
            }
        );
        let failures = seen.failures();
        assert_eq!(seen.kinds(), [Kind::Connect]);
        assert_eq!(failures[0].url, url);
        assert!(
            failures[0].message.contains("refused"),
            "{}",
            failures[0].message
        );
        assert!(seen.answers().is_empty());

        ready.restored("once the mirror failed").await;
        drop((primary, layer));
        start.restored("after teardown").await;
    });
}

#[test]
fn a_target_that_never_answers_times_out_after_the_primary_answered() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(never_answers).await;
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: SHORT_TIMEOUT,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        primary.hello().await;
        assert_still_in_flight(&layer, &server).await;

        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                timed_out: 1,
                ..one_sent()
            }
        );
        let failures = seen.failures();
        assert_eq!(seen.kinds(), [Kind::Timeout]);
        assert_eq!(failures[0].message, "mirror request timed out after 2s");
        assert!(seen.answers().is_empty());
        eventually("the target to see the layer close the connection", || {
            server.log.peer_closed() == 1
        })
        .await;
        assert_eq!(server.log.accepted(), 1);

        ready.restored("once the mirror timed out").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

#[test]
fn an_answer_after_the_timeout_is_discarded_with_its_connection() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_late).await;
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: SHORT_TIMEOUT,
            capture_response_body: 64,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        primary.hello().await;
        assert_still_in_flight(&layer, &server).await;
        eventually("the mirror to time out", || {
            target_stats(&layer).timed_out == 1
        })
        .await;
        // The layer gave the connection up when it timed out, before any answer existed...
        eventually("the target to see the layer close the connection", || {
            server.log.peer_closed() == 1
        })
        .await;
        // ...so the late answer goes nowhere.
        server.open();
        eventually("the late answer to be attempted", || {
            server.log.ended() == 1
        })
        .await;

        // The next mirror gets its own answer, not the stale one.
        let answer = support::get(&format!("{}/fresh", primary.url)).await;
        assert_eq!(answer.body, "fresh from the primary");
        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 2,
                sent: 2,
                responded: 1,
                timed_out: 1,
                ..Counts::default()
            }
        );
        assert_eq!(seen.kinds(), [Kind::Timeout]);
        assert_eq!(
            seen.answers(),
            [(StatusCode::OK, Bytes::from_static(b"fresh"))]
        );
        assert_eq!(
            server.log.requests(),
            ["GET /hello HTTP/1.1", "GET /fresh HTTP/1.1"]
        );
        assert_eq!(
            server.log.accepted(),
            2,
            "the timed-out connection was not reused"
        );
        eventually("both connections to end", || server.log.ended() == 2).await;

        ready.restored("once both mirrors ended").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

#[test]
fn a_connection_reset_mid_response_is_a_failure() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(resets_mid_response).await;
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: LONG_TIMEOUT,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        let body = pattern(10_000);
        primary.echo(&body).await;
        assert_still_in_flight(&layer, &server).await;
        server.open();

        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                failed: 1,
                ..one_sent()
            }
        );
        let failures = seen.failures();
        assert_eq!(seen.kinds(), [Kind::Exchange], "{failures:?}");
        // The head arrived: the exchange failed while reading the body.
        assert!(
            failures[0]
                .message
                .starts_with("reading the mirror response body failed: Connection reset"),
            "{failures:?}"
        );
        assert!(seen.answers().is_empty());
        assert_eq!(stats.buffered_bytes, 0);
        assert_eq!(server.log.bodies.lock().unwrap()[..], [body]);
        eventually("the resetting connection to end", || {
            server.log.ended() == 1
        })
        .await;

        ready.restored("once the mirror failed").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

#[test]
fn an_answer_that_is_not_http_is_a_failure_and_its_connection_is_closed() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_garbage).await;
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: LONG_TIMEOUT,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        primary.hello().await;
        assert_still_in_flight(&layer, &server).await;
        server.open();

        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                failed: 1,
                ..one_sent()
            }
        );
        assert_eq!(seen.kinds(), [Kind::Exchange], "{:?}", seen.failures());
        assert!(seen.answers().is_empty());
        // The server keeps its side open: only the layer can have closed it.
        eventually("the target to see the layer close the connection", || {
            server.log.peer_closed() == 1
        })
        .await;

        ready.restored("once the mirror failed").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

/// A figure from `/proc/self/status`, in bytes.
fn proc_status(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// How much the peak resident memory may grow while a 100 MiB answer streams in. The layer
/// holds at most hyper's read buffer and one frame at a time; buffering the body (or just its
/// first [`DRAIN_LIMIT`] bytes more than once) would show. Measured: under 1 MiB.
const HUGE_PEAK_GROWTH: usize = 16 << 20;

#[test]
fn a_100_mib_answer_is_read_to_1_mib_then_its_connection_dropped() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_huge).await;
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: LONG_TIMEOUT,
            capture_response_body: 16,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        primary.hello().await;
        assert_still_in_flight(&layer, &server).await;
        // Reset the peak resident set size to the current one (Linux `clear_refs`, value 5).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let rss_before = proc_status("VmRSS:");
        server.open();

        let stats = settled(&layer).await;
        let peak_growth = proc_status("VmHWM:").saturating_sub(rss_before);
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                responded: 1,
                ..one_sent()
            }
        );
        assert!(seen.failures().is_empty(), "{:?}", seen.failures());
        assert_eq!(
            seen.answers(),
            [(StatusCode::OK, pattern(64 * 1024).slice(..16))],
            "a response, whatever its size"
        );
        eventually("the target to see the layer drop the connection", || {
            server.log.peer_closed() == 1
        })
        .await;
        let written = server.log.written.load(SeqCst);
        assert!(
            (DRAIN_LIMIT..HUGE).contains(&written),
            "the target got {written} bytes out: at least the 1 MiB the layer reads, far from \
             all {HUGE}"
        );
        assert!(
            peak_growth < HUGE_PEAK_GROWTH,
            "peak RSS grew by {peak_growth} bytes while a {HUGE}-byte answer streamed in"
        );
        eprintln!(
            "100 MiB answer: target wrote {} KiB before the layer dropped the connection; \
             peak RSS growth {} KiB",
            written / 1024,
            peak_growth / 1024
        );

        ready.restored("once the mirror was answered").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

/// `tcp_wmem`'s maximum: the most a TCP socket's send buffer grows to.
fn tcp_wmem_max() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
    wmem.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn a_target_that_reads_the_body_slowly_holds_up_only_the_mirror() {
    isolated(async {
        let start = Census::take();
        // A small receive buffer, set before `listen` so that accepted sockets inherit it (and
        // the kernel does not grow it): the target takes in the body as slowly as it reads it.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let rcvbuf = socket.recv_buffer_size().unwrap() as usize;
        let server = Fault::on(socket.listen(16).unwrap(), reads_slowly);
        // More than the kernel can hold between the mirror and the target (the mirror's send
        // buffer at its largest, and the target's receive buffer), with a margin: while the
        // target reads slowly, part of the body must still be in the mirror's hands.
        let in_kernel = tcp_wmem_max() + rcvbuf;
        let len = in_kernel + (1 << 20);
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: LONG_TIMEOUT,
            max_body_bytes: len,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        let body = pattern(len);
        primary.echo(&body).await;
        assert_still_in_flight(&layer, &server).await;
        eventually("the target to start reading the body", || {
            server.log.body_read.load(SeqCst) > 0
        })
        .await;
        let read = server.log.body_read.load(SeqCst);
        assert!(
            read + in_kernel < len,
            "the mirror is still uploading: the target has read {read} of {len} bytes, and at \
             most {in_kernel} more can be in kernel buffers"
        );
        assert_eq!(target_stats(&layer).in_flight, 1);
        server.open();

        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                responded: 1,
                ..one_sent()
            }
        );
        assert_eq!(stats.buffered_bytes, 0, "the body's budget is given back");
        assert!(
            server.log.bodies.lock().unwrap()[0] == body,
            "every byte arrived"
        );
        assert_eq!(seen.answers(), [(StatusCode::OK, Bytes::new())]);
        eventually("the connection to end", || server.log.ended() == 1).await;

        ready.restored("once the mirror was answered").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

/// A private CA, and a certificate it signed for another name than the target's.
struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Pki {
    fn for_name(name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tower-mirror faults CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            ca: ca.der().clone(),
            chain: vec![cert.der().clone(), ca.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// A sender that trusts this CA, and only it.
    fn sender(&self) -> Arc<HttpSender> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        Arc::new(HttpSender::with_root_certificates(roots))
    }
}

#[test]
fn a_certificate_that_does_not_verify_is_a_connect_failure() {
    isolated(async {
        let start = Census::take();
        // Signed by a CA the sender trusts, but for another name than the target's address.
        let pki = Pki::for_name("other.example");
        let acceptor = pki.acceptor();
        // Holds each connection before the handshake until the gate opens, then lets it fail
        // and waits for the client to close.
        let server = Fault::start(move |mut conn: Conn| {
            let acceptor = acceptor.clone();
            async move {
                conn.hold().await;
                let Conn { stream, log, .. } = conn;
                match acceptor.accept(stream).into_fallible().await {
                    Ok(_) => panic!("the handshake must fail"),
                    Err((_, mut stream)) => {
                        log.failed_handshakes.fetch_add(1, SeqCst);
                        until_closed(&mut stream).await;
                        log.peer_closed.fetch_add(1, SeqCst);
                    }
                }
            }
        })
        .await;
        let url = format!("https://{}", server.addr);
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(Options {
            timeout: LONG_TIMEOUT,
            sender: Some(pki.sender()),
            ..seen.options(Target::new(url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        primary.hello().await;
        assert_still_in_flight(&layer, &server).await;
        server.open();

        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                failed: 1,
                ..one_sent()
            }
        );
        let failures = seen.failures();
        assert_eq!(seen.kinds(), [Kind::Connect], "{failures:?}");
        assert_eq!(failures[0].url, url);
        assert!(
            matches!(
                failures[0].tls,
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{failures:?}"
        );
        eventually(
            "the target to see the handshake fail and the connection close",
            || server.log.failed_handshakes.load(SeqCst) == 1 && server.log.peer_closed() == 1,
        )
        .await;
        assert!(server.log.requests().is_empty(), "no request was sent");

        ready.restored("once the mirror failed").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

/// UDP datagrams sent from this network namespace so far, over IPv4 and IPv6 (`/proc/net/snmp`
/// and `/proc/net/snmp6`): loopback included, so this counts any DNS query at all.
fn udp_datagrams_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut total = 0;
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.windows(2) {
        let (names, values) = (pair[0], pair[1]);
        for prefix in ["Udp:", "UdpLite:"] {
            if names.starts_with(prefix) && values.starts_with(prefix) && names != values {
                let column = names
                    .split_whitespace()
                    .position(|n| n == "OutDatagrams")
                    .unwrap();
                let value: u64 = values
                    .split_whitespace()
                    .nth(column)
                    .unwrap()
                    .parse()
                    .unwrap();
                total += value;
            }
        }
    }
    let snmp6 = std::fs::read_to_string("/proc/net/snmp6").unwrap_or_default();
    for line in snmp6.lines() {
        let mut fields = line.split_whitespace();
        if let (Some("Udp6OutDatagrams" | "UdpLite6OutDatagrams"), Some(value)) =
            (fields.next(), fields.next())
        {
            total += value.parse::<u64>().unwrap();
        }
    }
    total
}

#[test]
fn a_host_name_that_cannot_resolve_fails_at_once_without_dns_traffic() {
    isolated(async {
        // The counter sees this namespace's datagrams, loopback included.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = udp_datagrams_sent();
        probe
            .send_to(b"probe", probe.local_addr().unwrap())
            .unwrap();
        assert!(udp_datagrams_sent() > before, "the UDP counter works");
        drop(probe);

        let start = Census::take();
        // A 64-character label is one more than DNS allows: glibc refuses to build the query,
        // so `getaddrinfo` fails without a packet (after looking in /etc/hosts).
        let url = format!("http://{}.invalid", "a".repeat(64));
        let seen = Seen::new();
        // glibc waits 5 s (RES_TIMEOUT) for a nameserver's answer: had it asked one that does
        // not answer, the mirror would time out instead of failing.
        let layer = MirrorLayer::with_options(Options {
            timeout: Duration::from_secs(5),
            ..seen.options(Target::new(url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        // The UDP counter is shared with every process in the namespace: a lookup of ours that
        // sent a query would do so every time, so one attempt without any datagram from
        // anyone proves ours sent none.
        let mut quiet = None;
        let mut elapsed = Vec::new();
        for attempt in 1..=3 {
            let before = udp_datagrams_sent();
            let started = Instant::now();
            primary.hello().await;
            let stats = settled(&layer).await;
            elapsed.push(started.elapsed());
            assert_eq!(
                counts(&stats.targets[0]),
                Counts {
                    sampled: attempt,
                    sent: attempt,
                    failed: attempt,
                    ..Counts::default()
                }
            );
            if udp_datagrams_sent() == before {
                quiet = Some(attempt);
                break;
            }
        }
        assert!(
            quiet.is_some(),
            "UDP datagrams were sent during every lookup"
        );
        let failures = seen.failures();
        assert!(
            failures
                .iter()
                .all(|f| f.kind == Kind::Connect && f.url == url),
            "{failures:?}"
        );
        eprintln!(
            "unresolvable name: {} (request and failed mirror took {elapsed:?})",
            failures[0].message
        );

        ready.restored("once the mirrors failed").await;
        drop((primary, layer));
        start.restored("after teardown").await;
    });
}

// ---------------------------------------------------------------------------------------------
// Client and inner-service faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_client_that_aborts_mid_upload_gets_no_mirror_sent() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_ok).await;
        let seen = Seen::new();
        let layer =
            MirrorLayer::with_options(seen.options(Target::new(server.url.clone()))).unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        let mut client = TcpStream::connect(primary.addr).await.unwrap();
        let head = "POST /collect HTTP/1.1\r\nhost: primary\r\ncontent-length: 100000\r\n\r\n";
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(&pattern(1000)).await.unwrap();
        drop(client);

        eventually("the handler to see the body end", || {
            !primary.reads.lock().unwrap().is_empty()
        })
        .await;
        let read = primary.reads.lock().unwrap()[0].clone();
        let stats = settled(&layer).await;
        // The counter follows what the inner service saw: an error, or its own end first.
        let reason = match read {
            BodyRead::Failed(1000) => skipped(|s| s.body_error = 1),
            BodyRead::Dropped(n) if n <= 1000 => skipped(|s| s.body_unread = 1),
            other => panic!("the handler saw {other:?}"),
        };
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 1,
                skipped: reason,
                ..Counts::default()
            }
        );
        assert_eq!(stats.buffered_bytes, 0, "the copy's budget is given back");
        assert!(seen.failures().is_empty(), "a skip is not an error");
        // The primary carries on.
        primary.hello().await;
        let stats = settled(&layer).await;
        assert_eq!((stats.targets[0].sent, stats.targets[0].responded), (1, 1));
        assert_eq!(
            server.log.requests(),
            ["GET /hello HTTP/1.1"],
            "nothing of the aborted upload was sent"
        );
        eventually("the connection to end", || server.log.ended() == 1).await;

        ready.restored("after the aborted upload").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

/// A request body sent in chunks of unknown total length (chunked on HTTP/1.1).
struct Chunks(std::collections::VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[test]
fn a_body_over_max_body_bytes_is_not_mirrored_and_reaches_the_primary_whole() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_ok).await;
        let seen = Seen::new();
        let max = 64 * 1024;
        let layer = MirrorLayer::with_options(Options {
            max_body_bytes: max,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        let body = pattern(1 << 20);
        // With a Content-Length: skipped before anything is copied.
        primary.echo(&body).await;
        // Chunked: skipped once the copy passes the limit, while the primary keeps streaming.
        let client = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
        let chunks = Chunks(body.chunks(10_000).map(Bytes::copy_from_slice).collect());
        let response = client
            .request(
                Request::post(format!("{}/echo", primary.url))
                    .body(chunks)
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echoed = response.collect().await.unwrap().to_bytes();
        assert!(echoed == body, "the primary echoed every chunked byte");
        drop(client);

        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 2,
                skipped: skipped(|s| s.body_too_large = 2),
                ..Counts::default()
            }
        );
        assert_eq!(stats.buffered_bytes, 0);
        assert!(seen.failures().is_empty(), "a skip is not an error");
        assert_eq!(server.log.accepted(), 0, "nothing was sent");

        ready.restored("after the oversized bodies").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

/// The inner service's error; the test checks it gets back the very same one.
#[derive(Debug)]
struct Boom(Arc<str>);

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Boom {}

/// The decision this test documents: an inner service's error reaches the caller untouched,
/// and does not touch the mirror either. In async mode a mirror is a copy of the *request*,
/// sent once the request's body has been read to its end, whatever the inner service then
/// answers — an error included; if the inner service fails without reading the body, there is
/// no complete body to mirror (`skipped.body_unread`). In sync mode the mirror has finished
/// before the inner service is even called.
#[test]
fn an_inner_service_error_is_returned_as_is_and_the_mirror_follows_the_body() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_ok).await;
        let token: Arc<str> = Arc::from("the inner service failed");
        let inner = {
            let token = Arc::clone(&token);
            tower::service_fn(move |request: Request<TeeBody<Full<Bytes>>>| {
                let token = Arc::clone(&token);
                async move {
                    if request.uri().path() == "/read-then-fail" {
                        request.into_body().collect().await.unwrap();
                    }
                    Err::<Response<Full<Bytes>>, _>(Boom(token))
                }
            })
        };
        let seen = Seen::new();
        let async_layer =
            MirrorLayer::with_options(seen.options(Target::new(server.url.clone()))).unwrap();
        let sync_layer = MirrorLayer::with_options(Options {
            mode: Mode::Sync,
            ..seen.options(Target::new(server.url.clone()))
        })
        .unwrap();
        let ready = Census::take();

        let call = |layer: &MirrorLayer, request: Request<Full<Bytes>>| {
            let service = layer.layer(inner.clone());
            let token = Arc::clone(&token);
            async move {
                let error = service.oneshot(request).await.unwrap_err();
                assert!(Arc::ptr_eq(&error.0, &token), "the very same error");
            }
        };
        let post = |path: &str, body: &'static [u8]| {
            Request::post(path)
                .body(Full::new(Bytes::from_static(body)))
                .unwrap()
        };

        // (Settled after each call, so that the target sees them in order.)
        // No body: the mirror leaves as the request arrives.
        call(
            &async_layer,
            Request::get("/fail").body(Full::default()).unwrap(),
        )
        .await;
        settled(&async_layer).await;
        // Read to its end, then an error: the mirror carries the whole body.
        call(&async_layer, post("/read-then-fail", b"read it all")).await;
        settled(&async_layer).await;
        // An error without reading the body: nothing complete to mirror.
        call(&async_layer, post("/fail", b"never read")).await;
        let stats = settled(&async_layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 3,
                sent: 2,
                responded: 2,
                skipped: skipped(|s| s.body_unread = 1),
                ..Counts::default()
            }
        );
        assert_eq!(stats.buffered_bytes, 0);

        // Sync mode: the mirror is answered before the inner service runs and fails.
        call(&sync_layer, post("/fail", b"read ahead")).await;
        assert_eq!(
            counts(&target_stats(&sync_layer)),
            Counts {
                responded: 1,
                ..one_sent()
            },
            "answered before the error came back"
        );

        assert!(seen.failures().is_empty(), "{:?}", seen.failures());
        assert_eq!(
            server.log.requests(),
            [
                "GET /fail HTTP/1.1",
                "POST /read-then-fail HTTP/1.1",
                "POST /fail HTTP/1.1"
            ]
        );
        assert_eq!(
            server.log.bodies.lock().unwrap()[..],
            [
                Bytes::new(),
                Bytes::from_static(b"read it all"),
                Bytes::from_static(b"read ahead")
            ]
        );
        eventually("every connection to end", || server.log.ended() == 3).await;

        ready.restored("after the failing calls").await;
        drop((async_layer, sync_layer, inner, server));
        start.restored("after teardown").await;
    });
}

#[test]
fn an_inner_service_that_drops_the_body_unread_gets_no_mirror_sent() {
    isolated(async {
        let start = Census::take();
        let server = Fault::start(answers_ok).await;
        let seen = Seen::new();
        let layer =
            MirrorLayer::with_options(seen.options(Target::new(server.url.clone()))).unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        let answer = support::post(&format!("{}/ignore", primary.url), pattern(256 * 1024)).await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (StatusCode::OK, &b"ignored"[..])
        );
        eventually("the unread body to be counted", || {
            target_stats(&layer).skipped.body_unread == 1
        })
        .await;
        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 1,
                skipped: skipped(|s| s.body_unread = 1),
                ..Counts::default()
            }
        );
        assert_eq!(stats.buffered_bytes, 0);
        assert!(seen.failures().is_empty(), "a skip is not an error");
        assert_eq!(server.log.accepted(), 0, "nothing was sent");

        ready.restored("after the unread body").await;
        drop((primary, layer, server));
        start.restored("after teardown").await;
    });
}

// ---------------------------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------------------------

#[test]
fn a_target_that_comes_back_gets_later_mirrors_over_one_pooled_connection() {
    isolated(async {
        let start = Census::take();
        let url = support::refused_url().await;
        let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let seen = Seen::new();
        let layer = MirrorLayer::with_options(seen.options(Target::new(url.clone()))).unwrap();
        let primary = Primary::start(&layer).await;
        let ready = Census::take();

        // Down: every mirror is refused.
        for _ in 0..3 {
            primary.hello().await;
        }
        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 3,
                sent: 3,
                failed: 3,
                ..Counts::default()
            }
        );
        assert_eq!(seen.kinds(), [Kind::Connect; 3]);
        ready.restored("while the target is down").await;

        // Back, on the same port.
        let server = Fault::on(TcpListener::bind(addr).await.unwrap(), answers_keep_alive);
        for n in 1..=3 {
            primary.hello().await;
            eventually(
                &format!("mirror {n} after the comeback to be answered"),
                || target_stats(&layer).responded == n,
            )
            .await;
        }
        let stats = settled(&layer).await;
        assert_eq!(
            counts(&stats.targets[0]),
            Counts {
                sampled: 6,
                sent: 6,
                failed: 3,
                responded: 3,
                ..Counts::default()
            }
        );
        assert_eq!(seen.kinds(), [Kind::Connect; 3], "no new failures");
        assert_eq!(
            seen.answers(),
            vec![(StatusCode::OK, Bytes::new()); 3],
            "three answers"
        );
        assert_eq!(server.log.requests().len(), 3);
        assert_eq!(
            server.log.accepted(),
            1,
            "one connection, re-established once and reused"
        );

        // The pooled connection belongs to the layer: it goes when the layer goes.
        drop((primary, layer));
        eventually("the target to see the pooled connection closed", || {
            server.log.peer_closed() == 1
        })
        .await;
        drop(server);
        start.restored("after teardown").await;
    });
}
