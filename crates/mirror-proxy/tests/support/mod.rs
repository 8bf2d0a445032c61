//! The harness for the end-to-end tests: the real `mirror-proxy` binary in a child process,
//! and real upstream and shadow servers on loopback that record what they receive.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long a test waits for anything that must happen before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mirror-proxy");

/// Polls `condition` until it holds; fails the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `future`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// The body every test server answers with.
pub type ServerBody = BoxBody<Bytes, Infallible>;

/// A request as a server received it (the body read to its end).
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// The value of `name`, as a string; panics when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }
}

/// When a shadow answers.
#[derive(Clone, Debug)]
pub enum Answer {
    Now,
    /// Once the gate opens, and then after the delay.
    AfterGate(Gate, Duration),
    Never,
}

/// Holds a shadow's answers back until opened.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    pub fn closed() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut open = self.0.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

#[derive(Clone, Debug)]
enum Role {
    /// Routes: `/hang*` never answers, `/ws` with `Upgrade: echo` upgrades and echoes,
    /// `/stream` records body bytes as they arrive, `/gated*` answers once the gate (if any)
    /// opens; otherwise `x-reply-status` (default 200).
    Upstream(Option<Gate>),
    /// Every path: 202 `shadow`, when `Answer` says.
    Shadow(Answer),
}

#[derive(Default)]
struct Record {
    received: Mutex<Vec<Received>>,
    /// Responses whose body hyper has taken to write.
    answered: AtomicUsize,
    /// Body bytes of `/stream` requests seen so far, as they arrive.
    streamed: AtomicUsize,
    /// Upgraded connections opened.
    upgrades: AtomicUsize,
}

/// A real HTTP server on loopback (HTTP/1.1 and h2c, upgrades allowed) that records every
/// request it receives.
pub struct Server {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    record: Arc<Record>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// The upstream: see [`Role::Upstream`].
    pub async fn upstream() -> Self {
        Self::on(bind().await, Role::Upstream(None))
    }

    /// The upstream, holding `/gated*` requests until `gate` opens.
    pub async fn upstream_gated(gate: &Gate) -> Self {
        Self::on(bind().await, Role::Upstream(Some(gate.clone())))
    }

    /// The upstream, serving on a listener the test already has.
    pub fn upstream_on(listener: TcpListener) -> Self {
        Self::on(listener, Role::Upstream(None))
    }

    /// A shadow that answers every request at once.
    pub async fn shadow() -> Self {
        Self::on(bind().await, Role::Shadow(Answer::Now))
    }

    /// A shadow that answers when `answer` says.
    pub async fn shadow_answering(answer: Answer) -> Self {
        Self::on(bind().await, Role::Shadow(answer))
    }

    fn on(listener: TcpListener, role: Role) -> Self {
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let shared = Arc::clone(&record);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = Arc::clone(&shared);
                let role = role.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(Arc::clone(&record), role.clone(), request)
                    });
                    // Room for more header fields than hyper's default 100, as nginx allows:
                    // the proxy's own limits are what the tests look at.
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http1().max_headers(1024);
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            url: format!("http://{addr}"),
            record,
            task,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.record.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.record.received.lock().unwrap().len()
    }

    /// Responses sent so far (their body taken by hyper to write).
    pub fn answered(&self) -> usize {
        self.record.answered.load(Ordering::SeqCst)
    }

    /// Body bytes of `/stream` requests seen so far.
    pub fn streamed(&self) -> usize {
        self.record.streamed.load(Ordering::SeqCst)
    }

    /// Upgraded connections opened.
    pub fn upgrades(&self) -> usize {
        self.record.upgrades.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived and returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{} to receive {n} requests", self.url), || {
            self.count() >= n
        })
        .await;
        self.received()
    }

    /// The one request received for `path_and_query`; panics unless there is exactly one.
    pub fn only(&self, path_and_query: &str) -> Received {
        let matching: Vec<_> = self
            .received()
            .into_iter()
            .filter(|r| r.uri.path_and_query().map(|p| p.as_str()) == Some(path_and_query))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{} received {path_and_query} {} times",
            self.url,
            matching.len()
        );
        matching.into_iter().next().unwrap()
    }
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn handle(
    record: Arc<Record>,
    role: Role,
    request: Request<Incoming>,
) -> Result<Response<ServerBody>, Infallible> {
    let path = request.uri().path().to_owned();
    if matches!(role, Role::Upstream(_)) {
        let upgrade = request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v == "echo");
        if path == "/ws" && upgrade {
            return Ok(upgrade_and_echo(record, request));
        }
        if path == "/stream" {
            return Ok(stream(record, request).await);
        }
    }
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(Response::new(Empty::new().boxed())),
    };
    let body_len = body.len();
    record.received.lock().unwrap().push(Received {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    match role {
        Role::Upstream(gate) => {
            if path.starts_with("/hang") {
                std::future::pending::<()>().await;
            }
            if let (true, Some(gate)) = (path.starts_with("/gated"), gate) {
                gate.wait().await;
            }
            let status = parts
                .headers
                .get("x-reply-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let text = serde_json::json!({
                "served_by": "upstream",
                "method": parts.method.as_str(),
                "path_and_query": parts.uri.path_and_query().map(|p| p.as_str()),
                "body_len": body_len,
            })
            .to_string();
            let mut response = Response::new(counted(&record, Bytes::from(text)));
            *response.status_mut() = status;
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-served-by", HeaderValue::from_static("upstream"));
            h.append("x-multi", HeaderValue::from_static("one"));
            h.append("x-multi", HeaderValue::from_static("two"));
            // Hop-by-hop on the way back: the proxy must not pass these to the client.
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("x-upstream-hop"),
            );
            h.insert("x-upstream-hop", HeaderValue::from_static("1"));
            Ok(response)
        }
        Role::Shadow(answer) => {
            match answer {
                Answer::Now => {}
                Answer::AfterGate(gate, delay) => {
                    gate.wait().await;
                    tokio::time::sleep(delay).await;
                }
                Answer::Never => std::future::pending::<()>().await,
            }
            let mut response = Response::new(counted(&record, Bytes::from_static(b"shadow")));
            *response.status_mut() = StatusCode::ACCEPTED;
            response
                .headers_mut()
                .insert("x-served-by", HeaderValue::from_static("shadow"));
            Ok(response)
        }
    }
}

/// Answers 101 and echoes every byte on the upgraded connection.
fn upgrade_and_echo(record: Arc<Record>, mut request: Request<Incoming>) -> Response<ServerBody> {
    record.received.lock().unwrap().push(Received {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
        body: Bytes::new(),
    });
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        record.upgrades.fetch_add(1, Ordering::SeqCst);
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("echo"));
    response
}

/// Reads the body frame by frame, counting bytes as they arrive, then answers.
async fn stream(record: Arc<Record>, request: Request<Incoming>) -> Response<ServerBody> {
    let (parts, mut body) = request.into_parts();
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Response::new(Empty::new().boxed());
        };
        if let Ok(data) = frame.into_data() {
            record.streamed.fetch_add(data.len(), Ordering::SeqCst);
            all.extend_from_slice(&data);
        }
    }
    let len = all.len();
    record.received.lock().unwrap().push(Received {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::from(all),
    });
    Response::new(counted(&record, Bytes::from(format!("streamed {len}"))))
}

fn counted(record: &Arc<Record>, data: Bytes) -> ServerBody {
    Counted {
        data: Some(data),
        record: Some(Arc::clone(record)),
    }
    .boxed()
}

/// A body that counts the response as answered when hyper takes it to write.
struct Counted {
    data: Option<Bytes>,
    record: Option<Arc<Record>>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(record) = this.record.take() {
            record.answered.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(this.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.record.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// The `mirror-proxy` binary running in a child process (killed when dropped).
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stderr_task: Option<JoinHandle<()>>,
    /// Stdout after the `listening on` and `admin on` lines.
    stdout: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy with `args` plus `--listen 127.0.0.1:0 --admin 127.0.0.1:0`.
    pub async fn start(args: &[&str]) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::spawn(&all, true).await
    }

    /// Starts the proxy with exactly `args` and waits for its `listening on` line (and its
    /// `admin on` line when `admin`).
    pub async fn spawn(args: &[&str], admin: bool) -> Self {
        Self::spawn_with_env(args, &[], admin).await
    }

    /// [`spawn`](Self::spawn), with these environment variables set for the process.
    pub async fn spawn_with_env(args: &[&str], env: &[(&str, &str)], admin: bool) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the mirror-proxy binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut stderr_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = Arc::clone(&stderr);
        let stderr_task = tokio::spawn(async move {
            while let Ok(Some(line)) = stderr_lines.next_line().await {
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut proxy = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            stderr,
            stderr_task: Some(stderr_task),
            stdout: Arc::default(),
        };
        match next_addr(&mut stdout, "listening on ").await {
            Some(addr) => proxy.addr = addr,
            None => {
                let (status, stderr) = proxy.wait_exit().await;
                panic!("mirror-proxy {args:?} did not start ({status}); stderr:\n{stderr}");
            }
        }
        if admin {
            proxy.admin = Some(
                next_addr(&mut stdout, "admin on ")
                    .await
                    .expect("an `admin on` line on stdout"),
            );
        }
        // The rest of stdout (an access log on `-`) is kept, and the pipe drained.
        let collected = Arc::clone(&proxy.stdout);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        proxy
    }

    /// `http://ADDR{path}` on the proxy's listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("started with an admin listener")
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the proxy is running")
    }

    /// GET /stats, parsed.
    pub async fn stats(&self) -> serde_json::Value {
        let (status, _, body) = get(&self.admin_url("/stats")).await;
        assert_eq!(status, StatusCode::OK, "/stats");
        serde_json::from_slice(&body).expect("/stats is JSON")
    }

    /// GET /metrics.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(&self.admin_url("/metrics")).await;
        assert_eq!(status, StatusCode::OK, "/metrics");
        String::from_utf8(body.to_vec()).expect("/metrics is UTF-8")
    }

    /// Polls /stats until `condition` holds on it; returns that document.
    pub async fn wait_stats(
        &self,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let stats = self.stats().await;
            if condition(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for /stats to show {what}; last:\n{stats:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls /metrics until `condition` holds on it; returns that text.
    pub async fn wait_metrics(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let text = self.metrics().await;
            if condition(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for /metrics to show {what}; last:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stdout so far, after the address lines.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.pid(), "-TERM");
    }

    /// Waits until the listen address refuses connections (after SIGTERM, every worker has
    /// stopped accepting), failing the test after [`DEADLINE`].
    pub async fn wait_refusing(&self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy still accepts connections after {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the process to exit; returns its status and all of its stderr.
    pub async fn wait_exit(&mut self) -> (ExitStatus, String) {
        let status = within("the proxy to exit", self.child.wait())
            .await
            .expect("waiting for the proxy");
        if let Some(task) = self.stderr_task.take() {
            within("the proxy's stderr to close", task).await.unwrap();
        }
        (status, self.stderr())
    }
}

/// The address on the next stdout line, which must start with `prefix`; `None` at EOF.
async fn next_addr(
    stdout: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> Option<SocketAddr> {
    let line = within("a line on the proxy's stdout", stdout.next_line())
        .await
        .ok()??;
    let addr = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected a line starting {prefix:?} on stdout, got {line:?}"));
    Some(addr.parse().unwrap())
}

/// `kill SIGNAL PID`, with the system's `kill`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Runs the binary with `args` to its exit: status, stdout, stderr.
pub async fn run_to_exit(args: &[&str]) -> (ExitStatus, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the mirror-proxy binary starts");
    let output = within(
        &format!("mirror-proxy {args:?} to exit"),
        child.wait_with_output(),
    )
    .await
    .unwrap();
    (
        output.status,
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request`, reads the whole response.
pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Response<Bytes> {
    let what = format!("{} {}", request.method(), request.uri());
    within(&what, async {
        let response = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{what}: body: {e}"))
            .to_bytes();
        Response::from_parts(parts, body)
    })
    .await
}

/// A GET with a fresh client: status, headers, body.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, Bytes) {
    let request = Request::get(url).body(Full::default()).unwrap();
    let (parts, body) = send(&client(), request).await.into_parts();
    (parts.status, parts.headers, body)
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mirror-proxy-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of the Prometheus sample `series` (name and labels exactly as rendered).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Every sampled mirror of every target in a /stats document has ended (responded, failed,
/// timed out, skipped or dropped), so its counts are final.
pub fn settled(stats: &serde_json::Value) -> bool {
    stats["mirror"]["targets"]
        .as_array()
        .expect("mirror targets in /stats")
        .iter()
        .all(|t| {
            let n = |key: &str| t[key].as_u64().unwrap();
            let skipped: u64 = t["skipped"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            n("in_flight") == 0
                && n("responded") + n("failed") + n("timed_out") == n("sent")
                && n("sent") + n("dropped_overload") + n("dropped_rate_limited") + skipped
                    == n("sampled")
        })
}

/// The target named `name` in a /stats document.
pub fn target_named<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["mirror"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no target {name:?} in {stats:#}"))
}
