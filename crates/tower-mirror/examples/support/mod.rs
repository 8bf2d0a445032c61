//! Helpers shared by the examples: recording shadow servers on loopback, serving an app,
//! an HTTP client, and waiting for mirrors to finish.
//!
//! Everything here listens on or connects to `127.0.0.1` only, so the examples never send
//! traffic anywhere but to servers they started themselves.
// Each example uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_mirror::{MirrorLayer, MirrorStats, X_MIRRORED_FROM};

/// The error type of the helpers, the same as the examples' `main`.
pub(crate) type Error = Box<dyn std::error::Error>;

/// The longest any example waits for its mirrors before giving up with an error.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// A request as a shadow server received it.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    /// The request method.
    pub(crate) method: Method,
    /// The path and query the shadow saw.
    pub(crate) uri: Uri,
    /// The request headers.
    pub(crate) headers: HeaderMap,
    /// The request body.
    pub(crate) body: Bytes,
}

impl Received {
    /// The `X-Mirrored-From` header, or `-` when absent.
    pub(crate) fn mirrored_from(&self) -> &str {
        self.header(X_MIRRORED_FROM.as_str()).unwrap_or("-")
    }

    /// A header as text, if present and printable.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// One line: method, path and query, `X-Mirrored-From` and body length.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} {} (X-Mirrored-From: {}, body {} bytes)",
            self.method,
            self.uri,
            self.mirrored_from(),
            self.body.len()
        )
    }
}

/// What a [`Shadow`] answers.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    by_path: Vec<(&'static str, StatusCode)>,
    delay: Option<Duration>,
}

impl Reply {
    /// `200 OK` at once.
    pub(crate) fn ok() -> Self {
        Self {
            status: StatusCode::OK,
            by_path: Vec::new(),
            delay: None,
        }
    }

    /// `status` for every path (unless [`Reply::path_status`] says otherwise).
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            ..Self::ok()
        }
    }

    /// `status` for requests to exactly `path`.
    pub(crate) fn path_status(mut self, path: &'static str, status: u16) -> Self {
        let status = StatusCode::from_u16(status).expect("a valid status code");
        self.by_path.push((path, status));
        self
    }

    /// Answer only after `delay` (the request is recorded first).
    pub(crate) fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    fn status_for(&self, path: &str) -> StatusCode {
        self.by_path
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(self.status, |(_, status)| *status)
    }
}

struct ShadowState {
    reply: Reply,
    received: Mutex<Vec<Received>>,
}

/// A local server standing in for a shadow target (staging, canary, ...): it records every
/// request it receives and answers as its [`Reply`] says.
///
/// Like many real services it reports its own handling time in `X-Response-Time`
/// (for example `25.31ms`); the A/B analysis example reads it.
pub(crate) struct Shadow {
    /// The name printed in the examples' output, such as `staging`.
    pub(crate) name: &'static str,
    /// `http://127.0.0.1:PORT`: the target URL to mirror to.
    pub(crate) url: String,
    state: Arc<ShadowState>,
}

impl Shadow {
    /// A shadow answering `200 OK` at once.
    pub(crate) async fn start(name: &'static str) -> Result<Self, Error> {
        Self::start_with(name, Reply::ok()).await
    }

    /// A shadow answering as `reply` says.
    pub(crate) async fn start_with(name: &'static str, reply: Reply) -> Result<Self, Error> {
        let state = Arc::new(ShadowState {
            reply,
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&state));
        let url = serve(app).await?;
        Ok(Self { name, url, state })
    }

    /// Every request received so far, in order of arrival.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("not poisoned").clone()
    }

    /// How many requests were received so far.
    pub(crate) fn count(&self) -> usize {
        self.state.received.lock().expect("not poisoned").len()
    }
}

/// The shadow's only handler: record, wait if asked to, answer.
async fn record(State(state): State<Arc<ShadowState>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let status = state.reply.status_for(parts.uri.path());
    state.received.lock().expect("not poisoned").push(Received {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    });
    if let Some(delay) = state.reply.delay {
        tokio::time::sleep(delay).await;
    }
    let took = format!("{:.2}ms", started.elapsed().as_secs_f64() * 1000.0);
    let mut response = (status, format!("shadow answered {status}")).into_response();
    if let Ok(value) = HeaderValue::from_str(&took) {
        response.headers_mut().insert("x-response-time", value);
    }
    response
}

/// Serves `app` on `127.0.0.1` at a free port, in the background, and returns its base URL.
pub(crate) async fn serve(app: Router) -> Result<String, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// A loopback URL nothing listens on: a port was bound, noted and released, so connecting
/// to it is refused at once.
pub(crate) async fn refused_url() -> Result<String, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

/// What the primary answered.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    /// The response status.
    pub(crate) status: StatusCode,
    /// The response headers.
    pub(crate) headers: HeaderMap,
    /// The response body, as text.
    pub(crate) body: String,
    /// From sending the request to reading the whole response.
    pub(crate) took: Duration,
}

/// An HTTP/1.1 client for the app under test (hyper_util's legacy client).
pub(crate) struct Client {
    base: String,
    http: LegacyClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client sending every request to `base` (`http://127.0.0.1:PORT`).
    pub(crate) fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: LegacyClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Result<Answer, Error> {
        self.send(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub(crate) async fn post_json(&self, path: &str, json: &str) -> Result<Answer, Error> {
        self.send(Method::POST, path, Some(("application/json", json)))
            .await
    }

    /// `method path`, with a body of the given content type if any.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> Result<Answer, Error> {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        let body = match body {
            Some((content_type, text)) => {
                request = request.header("content-type", content_type);
                Full::new(Bytes::from(text.to_owned()))
            }
            None => Full::new(Bytes::new()),
        };
        let started = Instant::now();
        let response = self.http.request(request.body(body)?).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            took: started.elapsed(),
        })
    }
}

/// Waits until every mirror the layer has sent has finished (responded, failed or timed
/// out), with [`MirrorLayer::drain`]; an error after [`DEADLINE`].
///
/// Call it once the primary responses are in: by then every mirror of those requests has
/// been handed off (the primary read the body before answering), so none can start later.
/// Callbacks run before a mirror counts as finished, so their effects are visible too.
pub(crate) async fn wait_for_mirrors(layer: &MirrorLayer) -> Result<MirrorStats, Error> {
    let report = layer.drain(DEADLINE).await;
    if !report.is_complete() {
        return Err(format!("mirrors still unfinished after {DEADLINE:?}: {report:?}").into());
    }
    Ok(layer.stats())
}

/// Prints one line of counters per target; `names` name the targets in configured order.
pub(crate) fn print_stats(stats: &MirrorStats, names: &[&str]) {
    println!("layer stats:");
    for (i, t) in stats.targets.iter().enumerate() {
        let name = names.get(i).copied().unwrap_or("target");
        println!(
            "  {name} ({}): sampled {}, sent {} -> responded {}, failed {}, timed out {} \
             (dropped {}, skipped {})",
            t.url,
            t.sampled,
            t.sent,
            t.responded,
            t.failed,
            t.timed_out,
            t.dropped_overload,
            t.skipped.total(),
        );
    }
    let not_mirrored: u64 = stats.not_mirrored.iter().map(|(_, n)| n).sum();
    if not_mirrored > 0 {
        println!("  requests not eligible for mirroring: {not_mirrored}");
    }
}
