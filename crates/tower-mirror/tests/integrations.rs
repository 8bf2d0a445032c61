//! The layer mounted every way users mount it — axum `Router::layer`, `route_layer`, a nested
//! router, `tower::ServiceBuilder`, a bare hyper server and a tonic server — each against real
//! servers on 127.0.0.1, plus the service's type-level promises (`Clone + Send + Sync`, the
//! inner service's own error type, the primary response untouched).

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{AppendHeaders, IntoResponse};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_mirror::{Mirror, MirrorLayer, Options, ResponseBody, Target, TeeBody, X_MIRRORED_FROM};

use support::{DEADLINE, Shadow, eventually, refused_url, serve};

fn layer_for(shadow: &Shadow) -> MirrorLayer {
    MirrorLayer::new([shadow.url.clone()]).expect("a loopback target is a valid target")
}

/// Waits until the layer's only target has finished `n` mirrors with a response.
async fn responded(layer: &MirrorLayer, n: u64) {
    eventually(&format!("{n} mirrors answered"), || {
        layer.stats().targets[0].responded >= n
    })
    .await;
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("an ASCII header"))
}

// ---------------------------------------------------------------------------------------------
// axum
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn axum_router_layer_mirrors_path_and_query() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);
    let app = serve(
        Router::new()
            .route("/api/users", get(|| async { "alice, bob" }))
            .layer(layer.clone()),
    )
    .await;

    let answer = support::get(&format!("{}/api/users?page=2&sort=name", app.url)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"alice, bob");

    let received = shadow.wait_for(1).await;
    assert_eq!(received.len(), 1);
    let mirror = &received[0];
    assert_eq!(mirror.method, http::Method::GET);
    assert_eq!(mirror.uri.to_string(), "/api/users?page=2&sort=name");
    assert_eq!(mirror.version, Version::HTTP_11);
    assert_eq!(
        header(&mirror.headers, "host"),
        Some(&shadow.url["http://".len()..]),
        "Host names the target"
    );
    assert_eq!(
        header(&mirror.headers, X_MIRRORED_FROM.as_str()),
        Some(app.addr.to_string().as_str()),
        "X-Mirrored-From names the host the primary was sent to"
    );
    responded(&layer, 1).await;
    let stats = layer.stats().targets[0].clone();
    assert_eq!((stats.sampled, stats.sent, stats.failed), (1, 1, 0));
}

#[tokio::test]
async fn axum_route_layer_mirrors_matched_routes_but_not_404s() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);
    let app = serve(
        Router::new()
            .route("/users", get(|| async { "users" }))
            .route_layer(layer.clone()),
    )
    .await;

    // An unmatched path never reaches a route layer: axum answers 404 from its fallback.
    let missing = support::get(&format!("{}/no/such/route", app.url)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // The layer samples (and counts) a request before calling the inner service, so had the
    // 404 gone through it, `sampled` would already be 1 now that the answer is back.
    assert_eq!(
        layer.stats().targets[0].sampled,
        0,
        "the 404 was not sampled"
    );

    // A sentinel on a matched route is mirrored; once it is answered, it is the only request
    // the shadow has seen.
    let found = support::get(&format!("{}/users?sentinel=1", app.url)).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(&found.body[..], b"users");
    responded(&layer, 1).await;
    let received = shadow.received();
    let paths: Vec<String> = received.iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(paths, ["/users?sentinel=1"]);
    let stats = layer.stats().targets[0].clone();
    assert_eq!((stats.sampled, stats.sent, stats.responded), (1, 1, 1));
}

/// What a nested handler saw: the URI it was given.
async fn report_uri(uri: Uri) -> String {
    format!("uri={uri}")
}

#[tokio::test]
async fn axum_nested_router_mirrors_only_its_routes_with_the_stripped_path() {
    let plain = Shadow::start().await;
    let prefixed = Shadow::start().await;
    // The second target puts the nesting prefix back through its base path.
    let layer = MirrorLayer::with_options(Options {
        targets: vec![
            Target::new(plain.url.clone()),
            Target::new(format!("{}/api", prefixed.url)),
        ],
        ..Options::default()
    })
    .unwrap();
    let api = Router::new()
        .route("/users", get(report_uri))
        .layer(layer.clone());
    let app = serve(
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .nest("/api", api),
    )
    .await;

    // Outside the nested router: not mirrored, and not even sampled.
    let health = support::get(&format!("{}/health", app.url)).await;
    assert_eq!(
        (health.status, &health.body[..]),
        (StatusCode::OK, &b"ok"[..])
    );
    let stats = layer.stats();
    assert_eq!(
        (stats.targets[0].sampled, stats.targets[1].sampled),
        (0, 0),
        "/health is outside the nested router's layer"
    );

    let users = support::get(&format!("{}/api/users?page=3", app.url)).await;
    assert_eq!(users.status, StatusCode::OK);
    // axum 0.8 nests a router by adding its routes under the prefix, each wrapped in a
    // StripPrefix layer *outside* the nested router's own layers: the nested router's layers
    // and handlers see the URI without `/api` (the client's is kept in axum's `OriginalUri`).
    assert_eq!(
        std::str::from_utf8(&users.body).unwrap(),
        "uri=/users?page=3"
    );

    // The mirror is a copy of what the layer saw, so the plain target gets the stripped path,
    // exactly what the primary handler saw, and a target whose base path is the prefix gets
    // the path the client sent.
    let seen_plain = plain.wait_for(1).await;
    let seen_prefixed = prefixed.wait_for(1).await;
    assert_eq!(seen_plain.len(), 1);
    assert_eq!(seen_plain[0].uri.to_string(), "/users?page=3");
    assert_eq!(seen_prefixed.len(), 1);
    assert_eq!(seen_prefixed[0].uri.to_string(), "/api/users?page=3");

    eventually("both mirrors answered", || {
        layer.stats().targets.iter().all(|t| t.responded == 1)
    })
    .await;
    assert_eq!(
        plain.count() + prefixed.count(),
        2,
        "/health was never mirrored"
    );
}

#[tokio::test]
async fn tower_service_builder_stacks_the_layer_over_a_router() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);
    let router = Router::new().route(
        "/orders",
        post(|request: axum::extract::Request| async move {
            // The layer added outside the mirror is visible to both the primary and the mirror.
            let stamp = request.headers()["x-stamped"].clone();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            format!("{} bytes, stamp {}", body.len(), stamp.to_str().unwrap())
        }),
    );
    fn stamp(mut request: axum::extract::Request) -> axum::extract::Request {
        request
            .headers_mut()
            .insert("x-stamped", http::HeaderValue::from_static("outer"));
        request
    }
    // `axum::serve` wants axum's own response type; the layer wraps the response body (like
    // tower-http's layers), so turn it back with `IntoResponse` at the top of the stack.
    let service = ServiceBuilder::new()
        .map_response(axum::response::IntoResponse::into_response)
        .map_request(stamp)
        .layer(layer.clone())
        .service(router);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(service);
    tokio::spawn(async move { axum::serve(listener, make).await });

    let body = support::pattern(48 * 1024);
    let answer = support::send(
        Request::post(format!("http://{addr}/orders?id=9"))
            .header("content-type", "application/octet-stream")
            .body(Full::new(body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        std::str::from_utf8(&answer.body).unwrap(),
        format!("{} bytes, stamp outer", body.len())
    );

    let received = shadow.wait_for(1).await;
    let mirror = &received[0];
    assert_eq!(mirror.method, http::Method::POST);
    assert_eq!(mirror.uri.to_string(), "/orders?id=9");
    assert_eq!(mirror.body, body, "the body is mirrored intact");
    assert_eq!(
        header(&mirror.headers, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(
        header(&mirror.headers, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(header(&mirror.headers, "x-stamped"), Some("outer"));
    responded(&layer, 1).await;
}

// ---------------------------------------------------------------------------------------------
// hyper
// ---------------------------------------------------------------------------------------------

/// The primary: echoes the request body, saying which path it was sent to.
async fn echo(request: Request<TeeBody<Incoming>>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await?.to_bytes();
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert("x-echo-path", path.parse().unwrap());
    Ok(response)
}

#[tokio::test]
async fn hyper_http1_server_with_a_tower_service_fn() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);
    let service = layer.layer(tower::service_fn(echo));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    // Large enough that hyper hands the body to the primary in several frames.
    let body = support::pattern(256 * 1024);
    let answer = support::post(&format!("http://{addr}/echo?n=1"), body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, body, "the primary read the whole body");
    assert_eq!(header(&answer.headers, "x-echo-path"), Some("/echo"));

    let received = shadow.wait_for(1).await;
    let mirror = &received[0];
    assert_eq!(mirror.method, http::Method::POST);
    assert_eq!(mirror.uri.to_string(), "/echo?n=1");
    assert_eq!(mirror.body.len(), body.len());
    assert_eq!(mirror.body, body, "the mirror carries the same bytes");
    assert_eq!(
        header(&mirror.headers, X_MIRRORED_FROM.as_str()),
        Some(addr.to_string().as_str())
    );
    responded(&layer, 1).await;
    assert_eq!(
        layer.stats().buffered_bytes,
        0,
        "the body copy was released"
    );
}

#[tokio::test]
async fn hyper_auto_builder_h2c_primary_is_mirrored_over_http1() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);
    let service = layer.layer(tower::service_fn(echo));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let h2c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let body = support::pattern(100 * 1024);
    let response = tokio::time::timeout(
        DEADLINE,
        h2c.request(
            Request::post(format!("http://{addr}/h2/echo?stream=7"))
                .header("x-trace", "abc")
                .body(Full::new(body.clone()))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.version(), Version::HTTP_2, "the primary spoke h2c");
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, body);

    let received = shadow.wait_for(1).await;
    let mirror = &received[0];
    assert_eq!(
        mirror.version,
        Version::HTTP_11,
        "http:// targets get HTTP/1.1"
    );
    assert_eq!(mirror.method, http::Method::POST);
    assert_eq!(mirror.uri.to_string(), "/h2/echo?stream=7");
    assert_eq!(mirror.body, body);
    assert_eq!(header(&mirror.headers, "x-trace"), Some("abc"));
    // HTTP/2 carries the host in `:authority`, which is what X-Mirrored-From reports.
    assert_eq!(
        header(&mirror.headers, X_MIRRORED_FROM.as_str()),
        Some(addr.to_string().as_str())
    );
    responded(&layer, 1).await;
}

// ---------------------------------------------------------------------------------------------
// tonic
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tonic_server_layer_mirrors_a_grpc_health_check() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    const SERVICE: &str = "tower.mirror.Test";
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .layer(layer.clone())
        .add_service(health)
        .serve_with_incoming(incoming);
    tokio::spawn(server);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the tonic server accepts connections");
    let mut client = HealthClient::new(channel);
    let answer = tokio::time::timeout(
        DEADLINE,
        client.check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        }),
    )
    .await
    .expect("the check answered in time")
    .expect("the check succeeded");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);

    // The request message on the wire: protobuf field 1 (string), length-delimited, inside a
    // gRPC frame (uncompressed flag, big-endian u32 length).
    let mut message = vec![0x0a, SERVICE.len() as u8];
    message.extend_from_slice(SERVICE.as_bytes());
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);

    let received = shadow.wait_for(1).await;
    assert_eq!(received.len(), 1);
    let mirror = &received[0];
    assert_eq!(mirror.method, http::Method::POST);
    assert_eq!(mirror.uri.path(), "/grpc.health.v1.Health/Check");
    assert_eq!(
        mirror.body,
        Bytes::from(framed),
        "the gRPC frame, byte for byte"
    );
    assert_eq!(
        header(&mirror.headers, "content-type"),
        Some("application/grpc")
    );
    // `TE: trailers` is hop-by-hop and is not forwarded.
    assert_eq!(header(&mirror.headers, "te"), None);
    assert_eq!(
        header(&mirror.headers, X_MIRRORED_FROM.as_str()),
        Some(addr.to_string().as_str())
    );
    responded(&layer, 1).await;
}

/// Serves tonic's health service for `SERVICE` on loopback, behind `layer`; returns its address.
async fn grpc_server<L, B>(layer: L) -> std::net::SocketAddr
where
    L: Layer<tonic::service::Routes> + Send + Sync + Clone + 'static,
    L::Service: Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health)
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    addr
}

const GRPC_SERVICE: &str = "tower.mirror.Shadow";

#[tokio::test]
async fn grpc_is_mirrored_to_a_grpc_target_over_h2c() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // The shadow is a real gRPC server (HTTP/2 only), counting the calls it serves.
    let shadow_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&shadow_calls);
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<tonic::body::Body>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            request
        });
    let shadow = grpc_server(count).await;

    let answers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&answers);
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(format!("http://{shadow}")).with_http2()],
        on_success: Some(Arc::new(
            move |_: &str, resp: &tower_mirror::MirrorResponse| {
                seen.lock().unwrap().push((
                    resp.status().as_u16(),
                    resp.version(),
                    header(resp.headers(), "content-type").map(str::to_owned),
                ));
            },
        )),
        ..Options::default()
    })
    .unwrap();
    let primary = grpc_server(layer.clone()).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{primary}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: GRPC_SERVICE.to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);

    let report = layer.drain(DEADLINE).await;
    assert!(report.is_complete());
    assert_eq!(layer.stats().targets[0].responded, 1);
    assert_eq!(
        *answers.lock().unwrap(),
        [(200, Version::HTTP_2, Some("application/grpc".to_owned()))]
    );
    assert_eq!(shadow_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Type-level promises
// ---------------------------------------------------------------------------------------------

fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}

/// Compiles only when the layered service's error is the inner service's own, and its
/// response the inner one with the body wrapped in `ResponseBody`.
fn assert_same_types<S, B, R>(_: &Mirror<S>)
where
    B: http_body::Body,
    S: Service<Request<TeeBody<B>>, Response = Response<R>>,
    Mirror<S>: Service<Request<B>, Response = Response<ResponseBody<R>>, Error = S::Error>,
{
}

#[test]
fn layer_and_services_are_clone_send_sync() {
    assert_clone_send_sync::<MirrorLayer>();
    assert_clone_send_sync::<Mirror<Router>>();
    assert_clone_send_sync::<Mirror<axum::routing::Route>>();
    assert_clone_send_sync::<Mirror<tonic::service::Routes>>();

    // The error type is the inner one, so axum's `Infallible` requirement still holds.
    fn assert_infallible<S: Service<axum::extract::Request, Error = Infallible>>() {}
    assert_infallible::<Mirror<Router>>();
}

#[derive(Debug, Clone)]
struct MyError {
    /// Compared by pointer: the caller gets the very value the inner service returned.
    token: Arc<str>,
}

#[tokio::test]
async fn inner_errors_come_back_as_the_same_value() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow);
    let token: Arc<str> = Arc::from("inner failure #7");
    let inner = tower::service_fn({
        let token = Arc::clone(&token);
        move |_request: Request<TeeBody<Full<Bytes>>>| {
            let token = Arc::clone(&token);
            async move { Err::<Response<Full<Bytes>>, _>(MyError { token }) }
        }
    });
    let service = layer.layer(inner);
    assert_same_types::<_, Full<Bytes>, Full<Bytes>>(&service);

    let request = Request::get("http://primary.test/fails?x=1")
        .body(Full::<Bytes>::default())
        .unwrap();
    let result: Result<Response<ResponseBody<Full<Bytes>>>, MyError> =
        service.oneshot(request).await;
    let error = result.expect_err("the inner service's error is returned");
    assert!(
        Arc::ptr_eq(&error.token, &token),
        "the same error value, not a copy or a wrapper"
    );

    // A body-less request is mirrored at once, whatever the inner service answers.
    let received = shadow.wait_for(1).await;
    assert_eq!(received[0].uri.to_string(), "/fails?x=1");
    assert_eq!(
        header(&received[0].headers, X_MIRRORED_FROM.as_str()),
        Some("primary.test")
    );
    responded(&layer, 1).await;
}

/// Sends one raw HTTP/1.1 request and returns every byte of the answer.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the server answered and closed in time")
}

#[tokio::test]
async fn primary_response_is_byte_for_byte_untouched_when_the_target_refuses() {
    fn app() -> Router {
        Router::new().route(
            "/report",
            get(|| async {
                (
                    StatusCode::NON_AUTHORITATIVE_INFORMATION,
                    // A fixed Date, so that two servers answer with identical bytes.
                    AppendHeaders([
                        ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                        ("x-b", "2"),
                        ("x-a", "1"),
                        ("x-a", "again"),
                        ("cache-control", "no-store"),
                    ]),
                    support::pattern(10_000),
                )
                    .into_response()
            }),
        )
    }

    let refused = refused_url().await;
    let errors: Arc<Mutex<Vec<(String, bool, bool)>>> = Arc::default();
    let record = Arc::clone(&errors);
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(refused.clone())],
        on_error: Some(Arc::new(move |url, error| {
            record
                .lock()
                .unwrap()
                .push((url.to_owned(), error.is_connect(), error.is_timeout()));
        })),
        ..Options::default()
    })
    .unwrap();
    let bare = serve(app()).await;
    let mirrored = serve(app().layer(layer.clone())).await;

    let request = "GET /report?full=1 HTTP/1.1\r\nHost: reports.test\r\nConnection: close\r\n\r\n";
    let expected = raw_exchange(bare.addr, request).await;
    let actual = raw_exchange(mirrored.addr, request).await;
    assert!(expected.starts_with(b"HTTP/1.1 203 Non Authoritative Information\r\n"));
    assert!(expected.ends_with(&support::pattern(10_000)));
    assert_eq!(
        String::from_utf8_lossy(&actual[..actual.len() - 10_000]),
        String::from_utf8_lossy(&expected[..expected.len() - 10_000]),
        "the same status line and headers, in the same order"
    );
    assert!(actual == expected, "the same bytes, body included");

    eventually("the refused mirror to be counted", || {
        layer.stats().targets[0].failed == 1
    })
    .await;
    let stats = layer.stats().targets[0].clone();
    assert_eq!(
        (stats.sampled, stats.sent, stats.responded, stats.timed_out),
        (1, 1, 0, 0)
    );
    assert_eq!(*errors.lock().unwrap(), [(refused, true, false)]);
}
