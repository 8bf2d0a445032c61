//! The primary path: forward each request to the upstream and stream its answer back.
//!
//! The upstream timeout counts the time spent waiting on the upstream, never on the client:
//! it runs from the end of the request body (at once for a bodiless request) to the response
//! head, and, while the body is still on its way, only while the upstream is not taking it
//! (so an upstream that stops reading mid-upload is still timed out, and a slow upload is not).
//! The request body goes upstream wrapped in an [`UpstreamBody`], which tells the exchange
//! where the body is; a body that fails is the client's fault (400, or 408 for a timeout),
//! counted as a rejection, never as an upstream error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tracing::Instrument;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;
use tower_mirror::client::tls;
use tower_mirror::outbound::hop;

use crate::config::Upstream;
use crate::limits::UpgradeGuard;
use crate::telemetry::{Rejection, Telemetry, UpstreamError};

/// The body of a response to the client: the upstream's, streamed, or a short error text.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where requests go and how long the upstream may take: swapped whole by a reload, read once
/// per request (one atomic load, no lock).
#[derive(Debug, Clone)]
pub struct UpstreamRoute {
    /// The upstream.
    pub upstream: Upstream,
    /// The longest wait for its response head (see the [module docs](self)).
    pub timeout: Duration,
}

/// The route every worker reads, and a reload replaces.
pub type LiveRoute = Arc<ArcSwap<UpstreamRoute>>;

impl UpstreamRoute {
    /// A route to `upstream`, ready to share and swap.
    pub fn live(upstream: Upstream, timeout: Duration) -> LiveRoute {
        Arc::new(ArcSwap::from_pointee(Self { upstream, timeout }))
    }
}

/// What every connection's forwarding service shares.
pub struct ForwardShared<B> {
    /// Pooled keep-alive clients: HTTP/1.1 (HTTP/2 where ALPN picks it), and HTTP/2 only for
    /// upstreams with `http2`. Both exist so that a reload can switch between them.
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody<B>>,
    client_http2: Client<HttpsConnector<HttpConnector>, UpstreamBody<B>>,
    route: LiveRoute,
    telemetry: Arc<Telemetry>,
}

impl<B> ForwardShared<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Pooled keep-alive clients to the upstream `route` names at each request: HTTP/1.1
    /// (HTTPS through rustls trusting `roots`, HTTP/2 where ALPN picks it), or HTTP/2 only
    /// when the upstream has `http2` (with prior knowledge on http://, whatever ALPN says on
    /// https://).
    pub fn new(
        route: LiveRoute,
        roots: rustls::RootCertStore,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Self> {
        // The TLS set-up and connector the mirrors use: one rule for every outbound leg.
        let https = tls::connector(tls::client_config(roots));
        let client = |http2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(http2)
                .build(https.clone())
        };
        Arc::new(Self {
            client: client(false),
            client_http2: client(true),
            route,
            telemetry,
        })
    }
}

/// Forwards normalised requests (see [`crate::normalize`]) to the upstream.
pub struct Forward<B> {
    shared: Arc<ForwardShared<B>>,
}

impl<B> Forward<B> {
    /// The service for one connection.
    pub fn new(shared: Arc<ForwardShared<B>>) -> Self {
        Self { shared }
    }
}

impl<B> Clone for Forward<B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B> Service<Request<B>> for Forward<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        // At debug, as tower-mirror's mirror spans: nothing but a level check unless spans
        // are exported (`--otlp-endpoint`).
        let span = tracing::debug_span!(
            "upstream",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            http.response.status_code = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let response = forward(&shared, request).await;
                shared.telemetry.record_primary(response.status());
                tracing::Span::current()
                    .record("http.response.status_code", response.status().as_u16());
                Ok(response)
            }
            .instrument(span),
        )
    }
}

async fn forward<B>(shared: &ForwardShared<B>, request: Request<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // hyper's HTTP/1 server writes a response in the version it is given, and an HTTP/1.0
    // one without a length closes the connection: the upstream's version must not end the
    // client's keep-alive. (hyper answers an HTTP/1.0 client in HTTP/1.0 by itself, and
    // ignores the version on HTTP/2.)
    let client_version = match request.version() {
        Version::HTTP_2 => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut response = exchange(shared, request).await;
    *response.version_mut() = client_version;
    response
}

/// The upstream exchange for one request: the upstream's answer, or the proxy's own.
async fn exchange<B>(shared: &ForwardShared<B>, mut request: Request<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let upgrade = hop::is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let guard = request.extensions_mut().remove::<UpgradeGuard>();
    // The route in force when the request arrived serves the whole exchange.
    let route = shared.route.load_full();
    let (uri, http2, timeout) = (
        route.upstream.base.join(request.uri()),
        route.upstream.http2,
        route.timeout,
    );
    let Some(uri) = uri else {
        shared
            .telemetry
            .record_rejected(Rejection::NoPath, request.uri());
        return short(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the request target has no path\n",
        );
    };
    prepare_request(&mut request, uri, upgrade, http2);
    let (parts, body) = request.into_parts();
    let (body, progress) = UpstreamBody::new(body);
    let request = Request::from_parts(parts, body);

    let started = std::time::Instant::now();
    let mut response = match send(shared, request, progress, http2, timeout).await {
        Sent::Answered(response) => response,
        Sent::Unavailable(error) => {
            shared.telemetry.record_upstream_error(
                UpstreamError::Unavailable,
                &route.upstream.url,
                &error,
            );
            return short(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the upstream refused or dropped the connection\n",
            );
        }
        Sent::TimedOut => {
            let detail = "no response head within the upstream timeout";
            shared.telemetry.record_upstream_error(
                UpstreamError::Timeout,
                &route.upstream.url,
                &detail,
            );
            return short(
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout: the upstream did not answer in time\n",
            );
        }
        Sent::BodyFailed(failure) => {
            let (reason, status, text) = if failure.timeout {
                (
                    Rejection::BodyTimeout,
                    StatusCode::REQUEST_TIMEOUT,
                    "408 Request Timeout: the request body did not arrive in time\n",
                )
            } else {
                (
                    Rejection::BodyError,
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: the request body could not be read\n",
                )
            };
            shared.telemetry.record_rejected(reason, &failure.detail);
            return short(status, text);
        }
    };
    shared.telemetry.record_upstream_latency(started.elapsed());

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let telemetry = Arc::clone(&shared.telemetry);
        tokio::spawn(splice(client_upgrade, upstream_upgrade, guard, telemetry));
        // The 101 keeps its Connection and Upgrade headers: they are the answer.
        return response.map(|_| Either::Right(Full::default()));
    }
    hop::remove_hop_by_hop(response.headers_mut());
    response.map(Either::Left)
}

/// How an upstream exchange ended.
enum Sent {
    /// The upstream's response head arrived (possibly before the request body was done).
    Answered(Response<Incoming>),
    /// The upstream refused, reset or closed the connection.
    Unavailable(hyper_util::client::legacy::Error),
    /// The upstream kept the exchange waiting for longer than the upstream timeout.
    TimedOut,
    /// The request body failed on the client's side.
    BodyFailed(BodyFailure),
}

/// Sends `request` and waits for the response head. The upstream timeout runs while the
/// exchange waits on the upstream (see [`BodyProgress`]); a body failure ends it at once.
async fn send<B>(
    shared: &ForwardShared<B>,
    request: Request<UpstreamBody<B>>,
    progress: Option<Arc<BodyProgress>>,
    http2: bool,
    timeout: Duration,
) -> Sent
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let client = if http2 {
        &shared.client_http2
    } else {
        &shared.client
    };
    let sent = client.request(request);
    let Some(progress) = progress else {
        // No body: the wait is the upstream's from the start.
        return match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(response)) => Sent::Answered(response),
            Ok(Err(error)) => Sent::Unavailable(error),
            Err(_elapsed) => Sent::TimedOut,
        };
    };
    let mut sent = std::pin::pin!(sent);
    // The timer is checked lazily: when it fires, it is re-armed for one timeout after the
    // moment the exchange started waiting on the upstream, or one timeout later while the
    // body waits on the client. So a body frame costs two atomic stores, not a wake-up.
    let mut check_at = progress.origin + timeout;
    loop {
        tokio::select! {
            biased;
            () = progress.failed.notified() => {
                if let Some(failure) = progress.take_failure() {
                    return Sent::BodyFailed(failure);
                }
            }
            result = sent.as_mut() => {
                return match result {
                    Ok(response) => Sent::Answered(response),
                    // The body wrapper saw the client's body fail before hyper gave up.
                    Err(error) => match progress.take_failure() {
                        Some(failure) => Sent::BodyFailed(failure),
                        None => Sent::Unavailable(error),
                    },
                };
            }
            () = tokio::time::sleep_until(check_at) => {
                let now = Instant::now();
                match progress.upstream_since() {
                    None => check_at = now + timeout,
                    Some(since) if now >= since + timeout => return Sent::TimedOut,
                    Some(since) => check_at = since + timeout,
                }
            }
        }
    }
}

/// A request body that failed on the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BodyFailure {
    /// The failure was a timeout (the client was too slow): 408 rather than 400.
    timeout: bool,
    /// The error and its sources, for the log.
    detail: String,
}

/// Where a request body is on its way upstream, shared by its [`UpstreamBody`] and the
/// exchange waiting for the response.
#[derive(Debug)]
struct BodyProgress {
    origin: Instant,
    /// Since when the exchange has been waiting on the upstream, in microseconds after
    /// `origin` plus one; 0 while the body waits on the client for more bytes.
    upstream_since: AtomicU64,
    failure: Mutex<Option<BodyFailure>>,
    failed: Notify,
}

impl BodyProgress {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            // Connecting and sending the head are the upstream's part.
            upstream_since: AtomicU64::new(1),
            failure: Mutex::new(None),
            failed: Notify::new(),
        }
    }

    /// The upstream asked for more of the body: waiting on the client.
    fn wait_on_client(&self) {
        self.upstream_since.store(0, Relaxed);
    }

    /// The upstream has a frame (or the whole body) to take: waiting on the upstream.
    fn wait_on_upstream(&self) {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.upstream_since.store(micros + 1, Relaxed);
    }

    /// Since when the exchange has waited on the upstream; `None` while it waits on the client.
    fn upstream_since(&self) -> Option<Instant> {
        match self.upstream_since.load(Relaxed) {
            0 => None,
            n => Some(self.origin + Duration::from_micros(n - 1)),
        }
    }

    fn fail(&self, error: &(dyn std::error::Error + 'static)) {
        let failure = BodyFailure {
            timeout: is_timeout(error),
            detail: chain(error),
        };
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
        self.failed.notify_one();
    }

    fn take_failure(&self) -> Option<BodyFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// The request body on its way upstream: the client's frames, unchanged, while it keeps the
/// exchange informed (see `BodyProgress`). Its error is the client's, boxed.
#[derive(Debug)]
pub struct UpstreamBody<B> {
    inner: B,
    /// Until the body ends or fails; `None` from the start for a bodiless request.
    progress: Option<Arc<BodyProgress>>,
}

impl<B: Body> UpstreamBody<B> {
    /// The wrapped body, and the exchange's view of it (`None` when there is no body).
    fn new(inner: B) -> (Self, Option<Arc<BodyProgress>>) {
        let progress = (!inner.is_end_stream()).then(|| Arc::new(BodyProgress::new()));
        let body = Self {
            inner,
            progress: progress.clone(),
        };
        (body, progress)
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(progress) = &this.progress {
            progress.wait_on_client();
        }
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match polled {
            Some(Ok(frame)) => {
                if let Some(progress) = &this.progress {
                    progress.wait_on_upstream();
                    // Readers may stop at `is_end_stream` without polling for the end.
                    if this.inner.is_end_stream() {
                        this.progress = None;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                if let Some(progress) = this.progress.take() {
                    progress.fail(&*error);
                }
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some(progress) = this.progress.take() {
                    progress.wait_on_upstream();
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for UpstreamBody<B> {
    fn drop(&mut self) {
        // Dropped unfinished (the upstream answered early, or its connection closed): whatever
        // is left of the exchange is the upstream's.
        if let Some(progress) = self.progress.take()
            && progress.upstream_since().is_none()
        {
            progress.wait_on_upstream();
        }
    }
}

/// True when `error` or one of its sources is a timeout: an I/O error of kind `TimedOut`,
/// tokio's (or, by its text, tower's) `Elapsed`, a hyper timeout, or any error that says it
/// elapsed or timed out.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<tokio::time::error::Elapsed>()
            || error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
            // `io::Error::source` skips the error it wraps: look at that one too.
            if let Some(inner) = io.get_ref()
                && is_timeout(inner)
            {
                return true;
            }
        }
        let text = error.to_string().to_ascii_lowercase();
        if text.contains("elapsed") || text.contains("timed out") {
            return true;
        }
        next = error.source();
    }
    false
}

/// `error: source: source ...`, for the log.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        text.push_str(": ");
        text.push_str(&source.to_string());
        next = source.source();
    }
    text
}

/// Joins the client's and the upstream's upgraded connections until either side closes, or
/// the client connection's idle or send deadline passes; `guard` holds the connection's place
/// among `--max-connections` until then.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Option<UpgradeGuard>,
    telemetry: Arc<Telemetry>,
) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    match guard {
        Some(guard) => {
            tokio::select! {
                _ = copy => {}
                reason = guard.expired() => {
                    let detail = "an upgraded connection went quiet or stopped reading";
                    telemetry.record_rejected(reason, &detail);
                }
            }
        }
        None => drop(copy.await),
    }
}

fn short(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Turns the normalised request (see [`crate::normalize`]) into the upstream's: the upstream's
/// URI, hop-by-hop headers out (but for an upgrade's own), HTTP/1.1; or, to an HTTP/2
/// upstream, HTTP/2 with `TE: trailers` kept when the client sent it (gRPC needs it) and no
/// `Host` (`:authority` names the upstream, RFC 9113 §8.3.1; `X-Forwarded-Host` carries the
/// client's host).
fn prepare_request<B>(request: &mut Request<B>, uri: Uri, upgrade: bool, http2: bool) {
    let upgrade_protocol = request.headers().get(header::UPGRADE).cloned();
    let trailers = http2 && hop::asks_for_trailers(request.headers());
    *request.uri_mut() = uri;
    *request.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = request.headers_mut();
    hop::remove_hop_by_hop(headers);
    if http2 {
        // HTTP/2 has no Upgrade: an upgrade request goes as the plain request it also is.
        headers.remove(header::HOST);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    } else if let (true, Some(protocol)) = (upgrade, upgrade_protocol) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_prepared_for_the_upstream() {
        let mut request = Request::post("/orders")
            .header("host", "shop.example")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic eA==")
            .header("te", "trailers")
            .header("x-forwarded-for", "10.0.0.1")
            .header("accept", "a")
            .header("accept", "b")
            .body(())
            .unwrap();
        let uri: Uri = "http://u:3000/orders".parse().unwrap();
        prepare_request(&mut request, uri, false, false);
        let h = request.headers();
        for gone in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-authorization",
            "te",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["host"], "shop.example");
        assert_eq!(
            h["x-forwarded-for"], "10.0.0.1",
            "set by the normalisation, kept"
        );
        assert_eq!(h.get_all("accept").iter().count(), 2);
        assert_eq!(request.version(), Version::HTTP_11);
    }

    #[test]
    fn http2_upstream_requests_keep_te_trailers_and_drop_host() {
        let prepared = |te: Option<&str>| {
            let mut request = Request::post("/grpc.health.v1.Health/Check")
                .version(Version::HTTP_11)
                .header("host", "client.example")
                .header("x-forwarded-host", "client.example")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "1")
                .header("content-type", "application/grpc");
            if let Some(te) = te {
                request = request.header("te", te);
            }
            let mut request = request.body(()).unwrap();
            let uri: Uri = "http://u:50051/grpc.health.v1.Health/Check"
                .parse()
                .unwrap();
            prepare_request(&mut request, uri, false, true);
            request
        };
        let request = prepared(Some("trailers, deflate;q=0.5"));
        let h = request.headers();
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(
            h.get_all("te").iter().collect::<Vec<_>>(),
            ["trailers"],
            "only the one value HTTP/2 allows"
        );
        assert!(!h.contains_key("host"), "`:authority` names the upstream");
        assert_eq!(h["x-forwarded-host"], "client.example");
        assert!(!h.contains_key("connection") && !h.contains_key("x-hop"));
        assert_eq!(request.uri().authority().unwrap(), "u:50051");

        assert!(!prepared(Some("deflate")).headers().contains_key("te"));
        assert!(!prepared(None).headers().contains_key("te"));
    }

    #[test]
    fn connection_options_with_obs_text_are_not_forwarded() {
        // The drift this crate once had from tower-mirror: a `Connection` value with one
        // non-ASCII byte was ignored as a whole, so the headers it named went upstream.
        let mut request = Request::get("/")
            .header("host", "h")
            .header(
                "connection",
                HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap(),
            )
            .header("x-secret", "1")
            .body(())
            .unwrap();
        let uri: Uri = "http://u/".parse().unwrap();
        prepare_request(&mut request, uri, false, false);
        assert!(!request.headers().contains_key("x-secret"));
    }

    #[test]
    fn upgrades_keep_their_own_headers() {
        let mut request = Request::get("/ws")
            .header("host", "h")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(hop::is_upgrade(request.headers()));
        let uri: Uri = "http://u/ws".parse().unwrap();
        prepare_request(&mut request, uri, true, false);
        assert_eq!(request.headers()["connection"], "upgrade");
        assert_eq!(request.headers()["upgrade"], "websocket");
    }

    #[test]
    fn timeouts_are_found_anywhere_in_the_chain() {
        #[derive(Debug)]
        struct Wrapper(BoxError);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("body failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&*self.0)
            }
        }
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow client");
        assert!(is_timeout(&timed_out));
        assert!(is_timeout(&Wrapper(Box::new(timed_out))));
        // An io::Error wrapping another error hides it from `source`.
        let elapsed = std::io::Error::other(Wrapper("deadline has elapsed".into()));
        assert!(is_timeout(&Wrapper(Box::new(elapsed))));
        assert!(is_timeout(&Wrapper("request timed out".into())));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!is_timeout(&Wrapper(Box::new(reset))));
        assert_eq!(
            chain(&Wrapper("truncated".into())),
            "body failed: truncated"
        );
    }

    /// A body that yields one chunk, then fails with `error` once `release` is notified.
    struct FailingBody {
        chunk: Option<Bytes>,
        release: Arc<Notify>,
        waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        error: Option<std::io::Error>,
    }

    impl FailingBody {
        fn new(error: std::io::Error, release: Arc<Notify>) -> Self {
            Self {
                chunk: Some(Bytes::from_static(b"first")),
                release,
                waiting: None,
                error: Some(error),
            }
        }
    }

    impl Body for FailingBody {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if let Some(chunk) = self.chunk.take() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            let release = Arc::clone(&self.release);
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(async move { release.notified().await }));
            ready!(waiting.as_mut().poll(cx));
            Poll::Ready(self.error.take().map(Err))
        }
    }

    /// A loopback upstream that reads whatever comes and never answers; it tells `got` when
    /// the first bytes arrived.
    async fn silent_upstream(got: Arc<Notify>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let got = Arc::clone(&got);
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        got.notify_one();
                    }
                });
            }
        });
        Upstream::parse(&url).unwrap()
    }

    /// A body error from a timeout wrapper around the client's body (what a body timeout on
    /// the inbound connection produces) is a 408 and a `body_timeout` rejection; any other
    /// body error a 400 and a `body_error`; neither is an upstream error, and neither waits
    /// for the upstream timeout.
    #[tokio::test]
    async fn a_failing_body_is_the_clients_fault() {
        for (error, status, reason) in [
            (
                std::io::Error::new(std::io::ErrorKind::TimedOut, "body timeout"),
                StatusCode::REQUEST_TIMEOUT,
                Rejection::BodyTimeout,
            ),
            (
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client went away"),
                StatusCode::BAD_REQUEST,
                Rejection::BodyError,
            ),
        ] {
            let got = Arc::new(Notify::new());
            let upstream = silent_upstream(Arc::clone(&got)).await;
            let telemetry = Arc::new(Telemetry::new([], false));
            let shared = ForwardShared::<FailingBody>::new(
                // Far beyond the test's deadline: the answer must not wait for it.
                UpstreamRoute::live(upstream, Duration::from_secs(60)),
                tls::webpki_roots(),
                Arc::clone(&telemetry),
            );
            let release = Arc::new(Notify::new());
            let request = Request::post("/upload")
                .header("host", "client.example")
                .body(FailingBody::new(error, Arc::clone(&release)))
                .unwrap();
            let mut service = Forward::new(shared);
            let call = tokio::spawn(service.call(request));
            tokio::time::timeout(Duration::from_secs(10), got.notified())
                .await
                .expect("the head and first chunk reach the upstream");
            release.notify_one();
            let response = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("answered at once")
                .unwrap()
                .unwrap();
            assert_eq!(response.status(), status);
            let primary = &telemetry.primary;
            assert_eq!(primary.rejected.get(reason), 1, "{reason:?}");
            assert_eq!(primary.upstream_unavailable.load(Relaxed), 0);
            assert_eq!(primary.upstream_timeouts.load(Relaxed), 0);
            assert_eq!(primary.responses.get("4xx"), 1);
        }
    }
}
