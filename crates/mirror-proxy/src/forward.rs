//! The primary path: forward each request to the upstream and stream its answer back.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::Service;
use tower_mirror::client::tls;
use tower_mirror::outbound::hop;

use crate::config::Upstream;
use crate::telemetry::{Rejection, Telemetry, UpstreamError};

/// The body of a response to the client: the upstream's, streamed, or a short error text.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection's forwarding service shares.
pub struct ForwardShared<B> {
    client: Client<HttpsConnector<HttpConnector>, B>,
    upstream: Upstream,
    timeout: Duration,
    telemetry: Arc<Telemetry>,
}

impl<B> ForwardShared<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A pooled keep-alive client to `upstream` (HTTP/1.1; HTTPS through rustls trusting
    /// `roots`, HTTP/2 where ALPN picks it).
    pub fn new(
        upstream: Upstream,
        timeout: Duration,
        roots: rustls::RootCertStore,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Self> {
        // The TLS set-up and connector the mirrors use: one rule for every outbound leg.
        let https = tls::connector(tls::client_config(roots));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Arc::new(Self {
            client,
            upstream,
            timeout,
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
        Box::pin(async move {
            let response = forward(&shared, request).await;
            shared.telemetry.record_primary(response.status());
            Ok(response)
        })
    }
}

async fn forward<B>(shared: &ForwardShared<B>, mut request: Request<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let upgrade = hop::is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let Some(uri) = shared.upstream.base.join(request.uri()) else {
        shared
            .telemetry
            .record_rejected(Rejection::NoPath, request.uri());
        return short(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the request target has no path\n",
        );
    };
    prepare_request(&mut request, uri, upgrade);

    let started = Instant::now();
    let sent = tokio::time::timeout(shared.timeout, shared.client.request(request)).await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::debug!(%error, "upstream unavailable");
            shared
                .telemetry
                .record_upstream_error(UpstreamError::Unavailable);
            return short(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the upstream refused or dropped the connection\n",
            );
        }
        Err(_elapsed) => {
            shared
                .telemetry
                .record_upstream_error(UpstreamError::Timeout);
            return short(
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout: the upstream did not answer in time\n",
            );
        }
    };
    shared.telemetry.record_upstream_latency(started.elapsed());

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(client_upgrade, upstream_upgrade));
            // The 101 keeps its Connection and Upgrade headers: they are the answer.
            return response.map(|_| Either::Right(Full::default()));
        }
    }
    hop::remove_hop_by_hop(response.headers_mut());
    response.map(Either::Left)
}

/// Joins the client's and the upstream's upgraded connections until either side closes.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let _ =
        tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
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
/// URI, hop-by-hop headers out (but for an upgrade's own), HTTP/1.1.
fn prepare_request<B>(request: &mut Request<B>, uri: Uri, upgrade: bool) {
    let upgrade_protocol = request.headers().get(header::UPGRADE).cloned();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    hop::remove_hop_by_hop(headers);
    if let (true, Some(protocol)) = (upgrade, upgrade_protocol) {
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
        prepare_request(&mut request, uri, false);
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
        prepare_request(&mut request, uri, false);
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
        prepare_request(&mut request, uri, true);
        assert_eq!(request.headers()["connection"], "upgrade");
        assert_eq!(request.headers()["upgrade"], "websocket");
    }
}
