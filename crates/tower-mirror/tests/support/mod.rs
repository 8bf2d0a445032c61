//! Real servers on loopback for the integration tests: shadow targets that record what they
//! receive, targets that misbehave, and the primary app under test.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// How long any test waits for something that must happen before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A request as a shadow target received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A gate that holds responses back until opened.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn closed() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// What a [`Shadow`] answers.
#[derive(Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Held back until this gate opens (the request is recorded first).
    pub gate: Option<Gate>,
    /// Waits this long before answering (the request is recorded first).
    pub delay: Option<Duration>,
    /// HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS for each connection (hyper's default: 200).
    pub max_streams: Option<u32>,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from_static(b"shadow ok"),
            gate: None,
            delay: None,
            max_streams: None,
        }
    }
}

struct Recorder {
    received: Mutex<Vec<Received>>,
    arrived: Notify,
    connections: AtomicUsize,
}

/// A shadow target on loopback that records every request, speaking HTTP/1.1 and h2c.
pub struct Shadow {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    recorder: Arc<Recorder>,
}

impl Shadow {
    /// Answers `200 shadow ok` at once.
    pub async fn start() -> Self {
        Self::with_reply(Reply::default()).await
    }

    pub async fn with_status(status: u16) -> Self {
        Self::with_reply(Reply {
            status: StatusCode::from_u16(status).unwrap(),
            ..Reply::default()
        })
        .await
    }

    pub async fn gated(gate: &Gate) -> Self {
        Self::with_reply(Reply {
            gate: Some(gate.clone()),
            ..Reply::default()
        })
        .await
    }

    pub async fn with_reply(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder {
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            connections: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&recorder);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let recorder = Arc::clone(&shared);
                let reply = reply.clone();
                let max_streams = reply.max_streams;
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        record_and_reply(Arc::clone(&recorder), reply.clone(), request)
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some(max) = max_streams {
                        builder.http2().max_concurrent_streams(max);
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            url: format!("http://{addr}"),
            recorder,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.recorder.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.recorder.received.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.recorder.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived and returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let wait = async {
            loop {
                let arrived = self.recorder.arrived.notified();
                let received = self.received();
                if received.len() >= n {
                    return received;
                }
                arrived.await;
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(received) => received,
            Err(_) => panic!(
                "shadow {} received {} requests, expected at least {n}",
                self.url,
                self.count()
            ),
        }
    }
}

async fn record_and_reply(
    recorder: Arc<Recorder>,
    reply: Reply,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    recorder.received.lock().unwrap().push(Received {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    });
    recorder.arrived.notify_waiters();
    if let Some(gate) = &reply.gate {
        gate.wait().await;
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(reply.body.clone()));
    *response.status_mut() = reply.status;
    for (name, value) in &reply.headers {
        response.headers_mut().append(*name, value.parse().unwrap());
    }
    Ok(response)
}

/// A target that accepts connections and reads requests but never answers.
pub struct Blackhole {
    pub url: String,
    connections: Arc<AtomicUsize>,
}

impl Blackhole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        Self { url, connections }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A loopback URL where nothing listens: connections are refused.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// The primary app, served by `axum::serve` on loopback.
pub struct App {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

pub async fn serve(router: axum::Router) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    App {
        addr,
        url: format!("http://{addr}"),
    }
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A plain HTTP/1.1 client for driving the primary app.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(request: Request<Full<Bytes>>) -> Answer {
    send_with(&client(), request).await
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Answer {
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .expect("the primary answered in time")
        .expect("the primary answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Answer {
    send(Request::post(url).body(Full::new(body.into())).unwrap()).await
}

/// A deterministic body of `len` bytes that is not all one value.
pub fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// Waits until every mirror the layer has sent has finished, and returns the stats then.
pub async fn settled(layer: &tower_mirror::MirrorLayer) -> tower_mirror::MirrorStats {
    let report = layer.drain(DEADLINE).await;
    assert!(
        report.is_complete(),
        "mirrors unfinished after {DEADLINE:?}: {report:?}"
    );
    layer.stats()
}

/// The primary app, served by `axum::serve` on loopback with each connection's peer address
/// in the request extensions as axum's `ConnectInfo<SocketAddr>`.
pub async fn serve_with_connect_info(router: axum::Router) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    App {
        addr,
        url: format!("http://{addr}"),
    }
}

/// A plain HTTP/1.1 client whose connections leave from `local` (any 127.0.0.0/8 address is
/// loopback on Linux, so a test can be many distinct clients).
pub fn client_from(local: std::net::IpAddr) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    Client::builder(TokioExecutor::new()).build(connector)
}
