//! Each point of the layer's semantics, proven against real servers on loopback.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    Blackhole, Gate, Reply, Shadow, eventually, get as http_get, pattern, post as http_post, serve,
    settled,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use tower_mirror::{
    Mirror, MirrorError, MirrorLayer, MirrorResponse, Mode, Options, Target, TeeBody,
    X_MIRRORED_FROM, percentage,
};

fn app(layer: MirrorLayer) -> Router {
    Router::new()
        .route("/test", get(|| async { "primary" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/ignore", post(|| async { "ignored" }))
        .fallback(any(|| async { "fallback" }))
        .layer(layer)
}

fn options(targets: Vec<Target>) -> Options {
    Options {
        targets,
        ..Options::default()
    }
}

fn layer_for(url: &str) -> MirrorLayer {
    MirrorLayer::new([url]).unwrap()
}

/// A request body sent in chunks of unknown total length (chunked on HTTP/1.1).
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn of(body: &Bytes, chunk: usize) -> Self {
        Self(body.chunks(chunk).map(Bytes::copy_from_slice).collect())
    }
}

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

async fn post_chunked(url: &str, body: &Bytes) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
    let response = client
        .request(Request::post(url).body(Chunks::of(body, 1000)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (status, response.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn the_url_join_table_holds_against_a_live_target() {
    let shadow = Shadow::start().await;
    let bases = ["", "/", "/api", "/api/", "/deep/er/"];
    let layer = MirrorLayer::new(bases.map(|b| format!("{}{b}", shadow.url))).unwrap();
    let primary = serve(app(layer.clone())).await;

    http_get(&format!("{}/v1/items?a=1&b=%20x", primary.url)).await;
    let mut seen: Vec<String> = shadow
        .wait_for(5)
        .await
        .iter()
        .map(|r| r.uri.path_and_query().unwrap().to_string())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "/api/v1/items?a=1&b=%20x",
            "/api/v1/items?a=1&b=%20x",
            "/deep/er/v1/items?a=1&b=%20x",
            "/v1/items?a=1&b=%20x",
            "/v1/items?a=1&b=%20x",
        ]
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_and_end_to_end_ones_are() {
    let shadow = Shadow::start().await;
    let primary = serve(app(layer_for(&shadow.url))).await;

    let request = Request::post(format!("{}/echo", primary.url))
        .header("host", "shop.example:8443")
        .header("connection", "keep-alive, x-hop-secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("x-hop-secret", "do not forward")
        .header("accept", "text/html")
        .header("accept", "application/json")
        .header("x-request-id", "42")
        .header("authorization", "Bearer end-to-end")
        .body(Full::new(Bytes::from_static(b"body")))
        .unwrap();
    support::send(request).await;

    let received = &shadow.wait_for(1).await[0];
    let h = &received.headers;
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "x-hop-secret",
        "transfer-encoding",
        "upgrade",
        "expect",
    ] {
        assert!(!h.contains_key(name), "{name} was forwarded");
    }
    assert!(
        !h.contains_key("connection"),
        "the client's Connection header is not forwarded"
    );
    let accept: Vec<_> = h.get_all("accept").iter().collect();
    assert_eq!(
        accept,
        ["text/html", "application/json"],
        "values kept, in order"
    );
    assert_eq!(h["x-request-id"], "42");
    assert_eq!(h["authorization"], "Bearer end-to-end");
    assert_eq!(h["host"], shadow.addr.to_string().as_str());
    assert_eq!(h["x-mirrored-from"], "shop.example:8443");
    assert_eq!(h["content-length"], "4");
    assert_eq!(received.body, "body");
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_primary_and_not_forwarded() {
    let shadow = Shadow::start().await;
    let primary = serve(app(layer_for(&shadow.url))).await;
    let request = Request::post(format!("{}/echo", primary.url))
        .header("expect", "100-continue")
        .body(Full::new(Bytes::from_static(b"after continue")))
        .unwrap();
    let answer = support::send(request).await;
    assert_eq!(answer.body, "after continue");
    let received = &shadow.wait_for(1).await[0];
    assert!(!received.headers.contains_key("expect"));
    assert_eq!(received.body, "after continue");
}

#[tokio::test]
async fn a_client_supplied_mirrored_from_is_replaced_when_the_loop_guard_is_off() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        loop_guard: false,
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer)).await;
    let request = Request::get(format!("{}/test", primary.url))
        .header("host", "real.example")
        .header("x-mirrored-from", "spoofed.example")
        .body(Full::default())
        .unwrap();
    support::send(request).await;
    let received = &shadow.wait_for(1).await[0];
    let values: Vec<_> = received.headers.get_all("x-mirrored-from").iter().collect();
    assert_eq!(values, ["real.example"]);
}

#[tokio::test]
async fn the_loop_guard_skips_requests_that_are_already_mirrors() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let primary = serve(app(layer.clone())).await;

    let request = Request::get(format!("{}/test?first", primary.url))
        .header("x-mirrored-from", "other-service")
        .body(Full::default())
        .unwrap();
    let answer = support::send(request).await;
    assert_eq!(answer.body, "primary", "the primary is served as usual");
    // A later request is mirrored; the guarded one never was.
    http_get(&format!("{}/test?second", primary.url)).await;
    let stats = settled(&layer).await;
    assert_eq!(stats.not_mirrored.already_mirrored, 1);
    assert_eq!(
        stats.targets[0].sampled, 1,
        "guarded requests do not advance sampling"
    );
    let received = shadow.wait_for(1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].uri.query(), Some("second"));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let elsewhere = Shadow::start().await;
    let shadow = Shadow::with_reply(Reply {
        status: StatusCode::FOUND,
        headers: vec![("location", format!("{}/moved", elsewhere.url))],
        ..Reply::default()
    })
    .await;
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&statuses);
    let layer = MirrorLayer::with_options(Options {
        on_success: Some(Arc::new(move |_: &str, resp: &MirrorResponse| {
            seen.lock().unwrap().push(resp.status().as_u16());
        })),
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    http_get(&format!("{}/test", primary.url)).await;
    let stats = settled(&layer).await;
    assert_eq!(*statuses.lock().unwrap(), [302]);
    assert_eq!(stats.targets[0].responded, 1);
    assert_eq!(elsewhere.count(), 0, "the redirect target was never asked");
}

#[tokio::test]
async fn server_errors_are_responses_for_on_success() {
    let shadow = Shadow::with_status(503).await;
    let (successes, errors) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let (s, e) = (Arc::clone(&successes), Arc::clone(&errors));
    let layer = MirrorLayer::with_options(Options {
        on_success: Some(Arc::new(move |_: &str, resp: &MirrorResponse| {
            s.lock().unwrap().push(resp.status().as_u16());
        })),
        on_error: Some(Arc::new(move |_: &str, _: &MirrorError| {
            *e.lock().unwrap() += 1;
        })),
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    let answer = http_get(&format!("{}/test", primary.url)).await;
    assert_eq!(
        answer.status, 200,
        "the shadow's 503 does not touch the primary"
    );
    let stats = settled(&layer).await;
    assert_eq!(*successes.lock().unwrap(), [503]);
    assert_eq!(*errors.lock().unwrap(), 0);
    assert_eq!(
        (stats.targets[0].responded, stats.targets[0].failed),
        (1, 0)
    );
}

#[tokio::test]
async fn a_slow_target_times_out_and_reaches_on_error() {
    let gate = Gate::closed();
    let shadow = Shadow::gated(&gate).await;
    let timeouts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&timeouts);
    let layer = MirrorLayer::with_options(Options {
        timeout: Duration::from_millis(200),
        on_error: Some(Arc::new(move |target: &str, err: &MirrorError| {
            seen.lock()
                .unwrap()
                .push((target.to_owned(), err.is_timeout(), err.to_string()));
        })),
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    assert_eq!(
        http_get(&format!("{}/test", primary.url)).await.body,
        "primary"
    );
    shadow.wait_for(1).await;
    let stats = settled(&layer).await;
    gate.open();
    assert_eq!(stats.targets[0].timed_out, 1);
    assert_eq!(stats.targets[0].responded + stats.targets[0].failed, 0);
    let timeouts = timeouts.lock().unwrap();
    assert_eq!(
        *timeouts,
        [(
            shadow.url.clone(),
            true,
            "mirror request timed out after 200ms".to_owned()
        )]
    );
}

#[tokio::test]
async fn a_chunked_body_is_mirrored_with_its_length() {
    let shadow = Shadow::start().await;
    let primary = serve(app(layer_for(&shadow.url))).await;
    let body = pattern(5_500);

    let (status, echoed) = post_chunked(&format!("{}/echo", primary.url), &body).await;
    assert_eq!((status, &echoed), (StatusCode::OK, &body));
    let received = &shadow.wait_for(1).await[0];
    assert_eq!(received.body, body);
    assert_eq!(received.headers["content-length"], "5500");
    assert!(!received.headers.contains_key("transfer-encoding"));
}

#[tokio::test]
async fn a_body_over_the_cap_is_skipped_and_the_primary_gets_it_intact() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        max_body_bytes: 1024,
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;
    let big = pattern(4096);

    // Known length: skipped before any copying.
    assert_eq!(
        http_post(&format!("{}/echo", primary.url), big.clone())
            .await
            .body,
        big
    );
    // Chunked: skipped when the copy passes the cap, while the primary keeps streaming.
    let (_, echoed) = post_chunked(&format!("{}/echo", primary.url), &big).await;
    assert_eq!(echoed, big);
    // Exactly at the cap is still mirrored.
    let fits = pattern(1024);
    assert_eq!(
        http_post(&format!("{}/echo", primary.url), fits.clone())
            .await
            .body,
        fits
    );

    let stats = settled(&layer).await;
    let target = &stats.targets[0];
    assert_eq!(target.skipped.body_too_large, 2);
    assert_eq!((target.sampled, target.sent), (3, 1));
    assert_eq!(
        stats.buffered_bytes, 0,
        "abandoned copies give their budget back"
    );
    let received = shadow.wait_for(1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, fits);
}

#[tokio::test]
async fn a_body_the_handler_never_reads_is_not_mirrored() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let primary = serve(app(layer.clone())).await;

    let answer = http_post(&format!("{}/ignore", primary.url), pattern(2000)).await;
    assert_eq!(answer.body, "ignored");
    eventually("the unread body to be counted", || {
        layer.stats().targets[0].skipped.body_unread == 1
    })
    .await;
    let stats = settled(&layer).await;
    assert_eq!((stats.targets[0].sent, stats.buffered_bytes), (0, 0));
    assert_eq!(shadow.count(), 0);
}

#[tokio::test]
async fn overload_drops_mirrors_to_a_target_that_never_answers() {
    let blackhole = Blackhole::start().await;
    let layer = MirrorLayer::with_options(Options {
        max_in_flight: 4,
        timeout: Duration::from_secs(60),
        ..options(vec![Target::new(blackhole.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    for i in 0..20 {
        let answer = http_post(&format!("{}/echo", primary.url), format!("request {i}")).await;
        assert_eq!(answer.body, format!("request {i}"));
    }
    let stats = layer.stats();
    let target = &stats.targets[0];
    assert_eq!(target.sampled, 20);
    assert_eq!(target.in_flight, 4, "never more than max_in_flight");
    assert_eq!(target.dropped_overload, 16);
    assert_eq!(target.responded + target.failed + target.timed_out, 0);
    eventually("four connections to the target", || {
        blackhole.connections() == 4
    })
    .await;
    assert!(
        stats.buffered_bytes <= 4 * "request 19".len(),
        "only the in-flight bodies are held: {}",
        stats.buffered_bytes
    );
}

#[tokio::test]
async fn protocol_upgrades_pass_through_untouched_and_are_not_mirrored() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let router = Router::new()
        .route(
            "/ws",
            get(|mut request: axum::extract::Request| async move {
                // The upgrade handle lives in the request extensions: the layer must keep it.
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = [0u8; 4];
                    io.read_exact(&mut buf).await.unwrap();
                    io.write_all(&buf).await.unwrap();
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(axum::body::Body::empty())
                    .unwrap()
            }),
        )
        .layer(layer.clone());
    let primary = serve(router).await;

    let tcp = tokio::net::TcpStream::connect(primary.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::get("/ws")
        .header("host", primary.addr.to_string())
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    let stats = layer.stats();
    assert_eq!(stats.not_mirrored.upgrade, 1);
    assert_eq!(stats.targets[0].sampled, 0);
    assert_eq!(shadow.count(), 0);
}

#[tokio::test]
async fn an_http2_request_is_mirrored_over_http1_with_its_authority() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let primary = serve(app(layer.clone())).await;

    let tcp = tokio::net::TcpStream::connect(primary.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("{}/echo?h2=1", primary.url))
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.collect().await.unwrap().to_bytes(), "over h2");

    let received = &shadow.wait_for(1).await[0];
    assert_eq!(received.version, Version::HTTP_11);
    assert_eq!(received.uri.path_and_query().unwrap(), "/echo?h2=1");
    assert_eq!(
        received.headers["x-mirrored-from"],
        primary.addr.to_string().as_str()
    );
    assert_eq!(received.body, "over h2");
}

/// Sends `count` requests numbered by their query, `concurrency` at a time.
async fn drive(primary: &str, count: usize, concurrency: usize) {
    let client = support::client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, primary) = (client.clone(), Arc::clone(&next), primary.to_owned());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= count {
                        return;
                    }
                    let request = Request::get(format!("{primary}/test?n={n}"))
                        .body(Full::default())
                        .unwrap();
                    assert_eq!(support::send_with(&client, request).await.status, 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

#[tokio::test]
async fn sampling_is_exact_at_every_percentage_and_independent_across_targets() {
    let shadow = Shadow::start().await;
    let percentages = [0u32, 1, 10, 50, 100];
    let targets = percentages
        .iter()
        .map(|p| percentage(format!("{}/p{p}", shadow.url), *p))
        .collect();
    let layer = MirrorLayer::with_options(options(targets)).unwrap();
    let primary = serve(app(layer.clone())).await;

    drive(&primary.url, 300, 8).await;
    let stats = settled(&layer).await;
    for (target, p) in stats.targets.iter().zip(percentages) {
        assert_eq!(target.sampled, 3 * u64::from(p), "{}", target.url);
        assert_eq!(target.responded, 3 * u64::from(p), "{}", target.url);
    }
    let received = shadow.received();
    for p in percentages {
        let prefix = format!("/p{p}/");
        let n = received
            .iter()
            .filter(|r| r.uri.path().starts_with(&prefix))
            .count();
        assert_eq!(n, 3 * p as usize, "target at {p} %");
    }
}

#[tokio::test]
async fn a_targets_choice_does_not_depend_on_the_other_targets() {
    // The same 10 % target alone and beside others picks the same requests.
    async fn chosen(extra: Vec<Target>) -> Vec<String> {
        let shadow = Shadow::start().await;
        let mut targets = vec![percentage(format!("{}/ten", shadow.url), 10)];
        targets.extend(extra);
        let layer = MirrorLayer::with_options(options(targets)).unwrap();
        let primary = serve(app(layer.clone())).await;
        drive(&primary.url, 100, 1).await;
        settled(&layer).await;
        let mut queries: Vec<String> = shadow
            .received()
            .iter()
            .filter(|r| r.uri.path().starts_with("/ten/"))
            .map(|r| r.uri.query().unwrap().to_owned())
            .collect();
        queries.sort();
        queries
    }
    let other = Shadow::start().await;
    let alone = chosen(vec![]).await;
    let beside = chosen(vec![
        // One shadow URL twice: names keep the targets apart.
        percentage(other.url.clone(), 50).with_name("fifty"),
        percentage(other.url.clone(), 33).with_name("thirty-three"),
    ])
    .await;
    assert_eq!(alone.len(), 10);
    assert_eq!(alone, beside);
    let mut expected: Vec<String> = (0..10).map(|i| format!("n={}", i * 10 + 9)).collect();
    expected.sort();
    assert_eq!(alone, expected, "every tenth request, evenly spread");
}

#[tokio::test]
async fn the_primary_never_waits_for_a_slow_target() {
    // The target holds every mirror until the test lets go: whatever its latency, the
    // primaries complete while all of their mirrors are still at the target.
    let gate = Gate::closed();
    let shadow = Shadow::gated(&gate).await;
    let layer = layer_for(&shadow.url);
    let primary = serve(app(layer.clone())).await;

    for i in 0..10 {
        let answer = http_post(&format!("{}/echo", primary.url), format!("n{i}")).await;
        assert_eq!(answer.body, format!("n{i}"));
    }
    shadow.wait_for(10).await;
    let stats = layer.stats();
    assert_eq!(stats.targets[0].in_flight, 10);
    assert_eq!(stats.targets[0].responded, 0);
    gate.open();
    assert_eq!(settled(&layer).await.targets[0].responded, 10);
}

#[tokio::test]
async fn sync_mode_sends_the_mirror_before_the_handler_runs() {
    let shadow = Shadow::start().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (from_mirror, from_handler) = (Arc::clone(&log), Arc::clone(&log));
    let layer = MirrorLayer::with_options(Options {
        mode: Mode::Sync,
        on_success: Some(Arc::new(move |_: &str, _: &MirrorResponse| {
            from_mirror.lock().unwrap().push("mirror answered");
        })),
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let router = Router::new()
        .route(
            "/echo",
            post(move |body: Bytes| async move {
                from_handler.lock().unwrap().push("handler ran");
                body
            }),
        )
        .layer(layer.clone());
    let primary = serve(router).await;

    let body = pattern(3000);
    assert_eq!(
        http_post(&format!("{}/echo", primary.url), body.clone())
            .await
            .body,
        body
    );
    assert_eq!(*log.lock().unwrap(), ["mirror answered", "handler ran"]);
    assert_eq!(shadow.received()[0].body, body);
    assert_eq!(settled(&layer).await.targets[0].responded, 1);
}

#[tokio::test]
async fn sync_mode_runs_the_mirrors_concurrently() {
    let gate = Gate::closed();
    let shadows = [
        Shadow::gated(&gate).await,
        Shadow::gated(&gate).await,
        Shadow::gated(&gate).await,
    ];
    let handler_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls = Arc::clone(&handler_calls);
    let layer = MirrorLayer::with_options(Options {
        mode: Mode::Sync,
        timeout: Duration::from_secs(30),
        ..options(shadows.iter().map(|s| Target::new(s.url.clone())).collect())
    })
    .unwrap();
    let router = Router::new()
        .route(
            "/test",
            get(move || async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "primary"
            }),
        )
        .layer(layer.clone());
    let primary = serve(router).await;

    let request = tokio::spawn(http_get_owned(format!("{}/test", primary.url)));
    // All three targets hold the request at once: they were not asked one after another.
    for shadow in &shadows {
        shadow.wait_for(1).await;
    }
    assert_eq!(handler_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    gate.open();
    assert_eq!(request.await.unwrap(), "primary");
    assert_eq!(handler_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

async fn http_get_owned(url: String) -> Bytes {
    http_get(&url).await.body
}

#[tokio::test]
async fn sync_mode_waits_one_timeout_for_dead_targets() {
    let dead = [Blackhole::start().await, Blackhole::start().await];
    let timeout = Duration::from_millis(300);
    let layer = MirrorLayer::with_options(Options {
        mode: Mode::Sync,
        timeout,
        ..options(dead.iter().map(|b| Target::new(b.url.clone())).collect())
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    let started = tokio::time::Instant::now();
    assert_eq!(
        http_get(&format!("{}/test", primary.url)).await.body,
        "primary"
    );
    assert!(
        started.elapsed() >= timeout,
        "sync mode waited for the mirrors"
    );
    let stats = settled(&layer).await;
    assert!(stats.targets.iter().all(|t| t.timed_out == 1));
}

/// Reading the body ahead and the mirrors share one timeout: a body that takes most of it to
/// arrive leaves the mirrors the rest, so mirroring never holds a request back for more than
/// one timeout in all. The clock is paused (time moves only when every task waits), so the
/// bound is checked exactly, not against the wall clock.
#[tokio::test(start_paused = true)]
async fn sync_mode_waits_one_timeout_in_all_for_a_slow_body_and_a_dead_target() {
    let dead = Blackhole::start().await;
    let timeout = Duration::from_secs(10);
    let layer = MirrorLayer::with_options(Options {
        mode: Mode::Sync,
        timeout,
        ..options(vec![Target::new(dead.url.clone())])
    })
    .unwrap();
    let inner = tower::service_fn(|request: Request<TeeBody<Feed>>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    });
    let service = tower::Layer::layer(&layer, inner);
    let (chunks, feed) = tokio::sync::mpsc::unbounded_channel();
    chunks.send(Bytes::from_static(b"first half, ")).unwrap();
    let slow_client = tokio::spawn(async move {
        tokio::time::sleep(timeout * 6 / 10).await;
        chunks.send(Bytes::from_static(b"second half")).unwrap();
        // Dropping the sender ends the body.
    });

    let started = tokio::time::Instant::now();
    let request = Request::post("/upload").body(Feed(feed)).unwrap();
    let response = service.oneshot(request).await.unwrap();
    let waited = started.elapsed();
    slow_client.await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "first half, second half");
    // 6 s for the body, then the dead target's remaining 4 s; not 6 + 10.
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "the primary waited {waited:?}"
    );
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].sent, 1, "{stats:?}");
    assert_eq!(stats.targets[0].timed_out, 1, "{stats:?}");
}

#[tokio::test]
async fn sync_mode_forwards_a_body_over_the_cap_intact_without_mirroring() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        mode: Mode::Sync,
        max_body_bytes: 2000,
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;
    let big = pattern(9000);

    let (status, echoed) = post_chunked(&format!("{}/echo", primary.url), &big).await;
    assert_eq!((status, echoed), (StatusCode::OK, big.clone()));
    assert_eq!(
        http_post(&format!("{}/echo", primary.url), big.clone())
            .await
            .body,
        big
    );
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].skipped.body_too_large, 2);
    assert_eq!((stats.targets[0].sent, stats.buffered_bytes), (0, 0));
    assert_eq!(shadow.count(), 0);
}

/// A request body fed by the test through a channel, so an upload can stall midway.
struct Feed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl Body for Feed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

#[tokio::test]
async fn the_byte_budget_bounds_bodies_held_for_unfinished_mirrors() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        max_buffered_bytes: 1500,
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    // An upload that stalls after 1000 bytes: its copy holds 1000 bytes of the budget.
    let (feed, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = Client::builder(TokioExecutor::new()).build_http::<Feed>();
    let stalled = client.request(
        Request::post(format!("{}/echo", primary.url))
            .body(Feed(rx))
            .unwrap(),
    );
    let stalled = tokio::spawn(async move {
        let response = stalled.await.unwrap();
        response.collect().await.unwrap().to_bytes()
    });
    feed.send(pattern(1000)).unwrap();
    eventually("the copy to hold 1000 bytes", || {
        layer.stats().buffered_bytes == 1000
    })
    .await;

    // 1000 more would exceed the 1500-byte budget: not mirrored, and the primary is intact.
    let second = pattern(1000);
    assert_eq!(
        http_post(&format!("{}/echo", primary.url), second.clone())
            .await
            .body,
        second
    );
    assert_eq!(layer.stats().targets[0].skipped.budget_exhausted, 1);
    assert_eq!(
        layer.stats().buffered_bytes,
        1000,
        "the skipped copy gave its bytes back"
    );

    feed.send(Bytes::from_static(b"end")).unwrap();
    drop(feed);
    assert_eq!(stalled.await.unwrap().len(), 1003);
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].responded, 1);
    assert_eq!(shadow.received()[0].body.len(), 1003);
    eventually("the budget to be released", || {
        layer.stats().buffered_bytes == 0
    })
    .await;
}

#[tokio::test]
async fn the_first_bytes_of_the_shadow_response_can_be_captured() {
    let shadow = Shadow::with_reply(Reply {
        body: Bytes::from_static(b"hello shadow world"),
        headers: vec![("x-build", "candidate".to_owned())],
        ..Reply::default()
    })
    .await;
    let captured = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&captured);
    let layer = MirrorLayer::with_options(Options {
        capture_response_body: 5,
        on_success: Some(Arc::new(move |_: &str, resp: &MirrorResponse| {
            seen.lock().unwrap().push((
                resp.body().clone(),
                resp.headers()["x-build"].clone(),
                resp.version(),
                resp.latency() > Duration::ZERO,
            ));
        })),
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;
    http_get(&format!("{}/test", primary.url)).await;
    settled(&layer).await;
    let captured = captured.lock().unwrap();
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].0, "hello");
    assert_eq!(captured[0].1, "candidate");
    assert_eq!(captured[0].2, Version::HTTP_11);
    assert!(captured[0].3);
}

#[tokio::test]
async fn connections_to_a_target_are_pooled_and_reused() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let primary = serve(app(layer.clone())).await;
    for i in 0..10 {
        http_post(&format!("{}/echo", primary.url), format!("n{i}")).await;
        shadow.wait_for(i + 1).await;
        settled(&layer).await;
    }
    assert_eq!(shadow.count(), 10);
    assert_eq!(
        shadow.connections(),
        1,
        "one keep-alive connection served every mirror"
    );
}

#[tokio::test]
async fn every_method_is_mirrored_as_itself() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let primary = serve(app(layer.clone())).await;
    for method in ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}/any/{method}", primary.url))
            .body(Full::default())
            .unwrap();
        assert_eq!(support::send(request).await.status, 200, "{method}");
    }
    let received = shadow.wait_for(6).await;
    let mut seen: Vec<String> = received
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri.path()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "DELETE /any/DELETE",
            "GET /any/GET",
            "HEAD /any/HEAD",
            "OPTIONS /any/OPTIONS",
            "PATCH /any/PATCH",
            "PUT /any/PUT",
        ]
    );
}

/// What the inner service saw of a request.
#[derive(Debug, PartialEq)]
struct Seen {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
    marker: Option<Marker>,
    body: Result<Bytes, String>,
}

#[derive(Clone, Debug, PartialEq)]
struct Marker(&'static str);

async fn observe<B>(request: Request<B>) -> Seen
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = request.into_parts();
    Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        marker: parts.extensions.get::<Marker>().cloned(),
        body: body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string()),
    }
}

fn sample_request() -> Request<Full<Bytes>> {
    let mut request = Request::put("http://app.example/items/7?x=%2F")
        .version(Version::HTTP_10)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("accept", "a")
        .header("accept", "b")
        .body(Full::new(pattern(777)))
        .unwrap();
    request.extensions_mut().insert(Marker("kept"));
    request
}

#[tokio::test]
async fn the_inner_service_sees_exactly_the_original_request() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for mode in [Mode::Async, Mode::Sync] {
        let shadow = Shadow::start().await;
        let layer = MirrorLayer::with_options(Options {
            mode,
            ..options(vec![Target::new(shadow.url.clone())])
        })
        .unwrap();
        let tx = tx.clone();
        let inner = tower::service_fn(move |request: Request<TeeBody<Full<Bytes>>>| {
            let tx = tx.clone();
            async move {
                tx.send(observe(request).await).unwrap();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner"))))
            }
        });
        let service: Mirror<_> = tower::Layer::layer(&layer, inner);
        let response = service.oneshot(sample_request()).await.unwrap();
        assert_eq!(response.collect().await.unwrap().to_bytes(), "inner");

        let expected = observe(sample_request()).await;
        assert_eq!(rx.recv().await.unwrap(), expected, "{mode:?}");
        assert_eq!(shadow.wait_for(1).await[0].body, pattern(777), "{mode:?}");
    }
}

/// A body that yields some data, then fails.
struct Failing(u8);

impl Body for Failing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0 += 1;
        Poll::Ready(match self.0 {
            1 => Some(Ok(Frame::data(Bytes::from_static(b"partial")))),
            2 => Some(Err(std::io::Error::other("client went away"))),
            _ => None,
        })
    }
}

#[tokio::test]
async fn a_failing_body_is_not_mirrored_and_the_inner_service_sees_the_failure() {
    for mode in [Mode::Async, Mode::Sync] {
        let shadow = Shadow::start().await;
        let layer = MirrorLayer::with_options(Options {
            mode,
            ..options(vec![Target::new(shadow.url.clone())])
        })
        .unwrap();
        let inner = tower::service_fn(|request: Request<TeeBody<Failing>>| async move {
            Ok::<_, Infallible>(Response::new(observe(request).await))
        });
        let service = tower::Layer::layer(&layer, inner);
        let seen = service
            .oneshot(Request::post("/upload").body(Failing(0)).unwrap())
            .await
            .unwrap()
            .into_body()
            .into_inner();
        assert_eq!(seen.body, Err("client went away".to_owned()), "{mode:?}");
        let stats = settled(&layer).await;
        assert_eq!(stats.targets[0].skipped.body_error, 1, "{mode:?}");
        assert_eq!((stats.targets[0].sent, stats.buffered_bytes), (0, 0));
    }
}

/// CONNECT and `OPTIONS *` are not mirrored; and a request with several reasons not to be
/// mirrored is counted once, under the first of: already mirrored (so a looping mirror always
/// shows as one), CONNECT, a target with no path, an upgrade.
#[tokio::test]
async fn requests_that_cannot_be_mirrored_are_counted_once_under_the_first_reason() {
    let shadow = Shadow::start().await;
    let layer = layer_for(&shadow.url);
    let inner = tower::service_fn(|_: Request<TeeBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    });
    let service = tower::Layer::layer(&layer, inner);
    let upgrade = |request: http::request::Builder| {
        request
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
    };
    let requests = [
        Request::connect("upstream.example:443"),
        Request::options("*"),
        upgrade(Request::connect("upstream.example:443")).header(X_MIRRORED_FROM, "app.example"),
        upgrade(Request::connect("upstream.example:443")),
        upgrade(Request::options("*")),
        upgrade(Request::get("/chat")),
    ];
    for request in requests {
        let request = request.body(Full::default()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }

    let stats = layer.stats();
    let counted = &stats.not_mirrored;
    assert_eq!(
        (
            counted.already_mirrored,
            counted.connect,
            counted.unsupported_uri,
            counted.upgrade
        ),
        (1, 2, 2, 1),
        "{counted:?}"
    );
    assert_eq!(stats.targets[0].sampled, 0);
    assert_eq!(shadow.count(), 0);
}

#[test]
fn without_a_runtime_mirrors_are_skipped_and_the_primary_is_served() {
    let layer = MirrorLayer::new(["http://127.0.0.1:9"]).unwrap();
    let inner = tower::service_fn(|_: Request<TeeBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new("served"))
    });
    let mut service = tower::Layer::layer(&layer, inner);
    let mut future = std::pin::pin!(tower::Service::call(
        &mut service,
        Request::get("/x").body(Full::default()).unwrap()
    ));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("the primary was not served at once");
    };
    assert_eq!(response.into_body().into_inner(), "served");
    assert_eq!(layer.stats().targets[0].skipped.no_runtime, 1);
}

#[tokio::test]
async fn every_sampled_mirror_is_accounted_for() {
    let gate = Gate::closed();
    let held = Shadow::gated(&gate).await;
    let fine = Shadow::start().await;
    let refused = support::refused_url().await;
    let layer = MirrorLayer::with_options(Options {
        max_in_flight: 2,
        max_body_bytes: 100,
        ..options(vec![
            Target::new(held.url.clone()),
            percentage(fine.url.clone(), 50),
            Target::new(refused),
        ])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;
    for i in 0..12 {
        let body = if i % 3 == 0 {
            pattern(500)
        } else {
            pattern(10)
        };
        http_post(&format!("{}/echo", primary.url), body).await;
    }
    http_post(&format!("{}/ignore", primary.url), pattern(10)).await;
    gate.open();
    let stats = settled(&layer).await;
    for t in &stats.targets {
        assert_eq!(
            t.sampled,
            t.sent + t.dropped_overload + t.skipped.total(),
            "{t:?}"
        );
        assert_eq!(t.sent, t.responded + t.failed + t.timed_out, "{t:?}");
    }
    assert_eq!(stats.targets[0].sampled, 13);
    assert_eq!(stats.targets[1].sampled, 6);
    assert!(stats.targets[0].dropped_overload > 0);
    assert_eq!(stats.targets[2].failed, stats.targets[2].sent);
}

#[test]
fn configuration_errors_name_what_is_wrong() {
    use tower_mirror::ConfigError;
    let err = |options: Options| MirrorLayer::with_options(options).unwrap_err();
    assert_eq!(err(Options::default()), ConfigError::NoTargets);
    let cases = [
        ("ftp://files.example", "scheme \"ftp\" is not supported"),
        ("staging.example.com", "missing scheme"),
        ("http://h/?debug=1", "cannot have a query"),
        ("http://h/#frag", "cannot have a fragment"),
        ("http://exa mple.com", "not a URL"),
    ];
    for (url, reason) in cases {
        let text = err(options(vec![Target::new(url)])).to_string();
        assert!(text.contains(reason) && text.contains(url), "{url}: {text}");
    }
    assert_eq!(
        err(options(vec![
            Target::new("http://ok"),
            percentage("http://canary", 101)
        ])),
        ConfigError::PercentageOutOfRange {
            url: "http://canary".into(),
            percentage: 101
        }
    );
    assert_eq!(
        err(Options {
            timeout: Duration::ZERO,
            ..options(vec![Target::new("http://ok")])
        })
        .to_string(),
        "invalid mirror option `timeout`: must be greater than zero"
    );
    assert!(matches!(
        err(Options {
            max_in_flight: 0,
            ..options(vec![Target::new("http://ok")])
        }),
        ConfigError::InvalidOption {
            option: "max_in_flight",
            ..
        }
    ));
    // No fixed maximum number of targets; names (by default the URLs) are unique.
    let many = MirrorLayer::with_options(options(
        (0..200)
            .map(|i| Target::new(format!("http://h{i}")))
            .collect(),
    ))
    .unwrap();
    assert_eq!(many.stats().targets.len(), 200);
    assert_eq!(
        err(options(vec![
            Target::new("http://same"),
            Target::new("http://same")
        ])),
        ConfigError::DuplicateName {
            name: "http://same".into()
        }
    );
}

#[tokio::test]
async fn a_panicking_callback_costs_nothing_but_its_own_call() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        on_success: Some(Arc::new(|_: &str, _: &MirrorResponse| {
            panic!("a callback bug (this panic message is expected in the test output)")
        })),
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;
    for _ in 0..3 {
        assert_eq!(
            http_get(&format!("{}/test", primary.url)).await.body,
            "primary"
        );
    }
    let stats = settled(&layer).await;
    assert_eq!((stats.targets[0].sent, stats.targets[0].responded), (3, 3));
}

#[tokio::test]
async fn drain_waits_for_mirrors_in_flight_and_reports_what_it_abandons() {
    let gate = Gate::closed();
    let shadow = Shadow::gated(&gate).await;
    let layer = layer_for(&shadow.url);
    assert!(
        layer.drain(Duration::ZERO).await.is_complete(),
        "idle from the start"
    );
    let primary = serve(app(layer.clone())).await;
    for _ in 0..2 {
        http_get(&format!("{}/test", primary.url)).await;
    }
    shadow.wait_for(2).await;

    let report = layer.drain(Duration::from_millis(50)).await;
    assert_eq!(report.abandoned(), 2);
    assert_eq!(report.in_flight, [(shadow.url.clone(), 2)]);

    let drained = tokio::spawn({
        let layer = layer.clone();
        async move { layer.drain(support::DEADLINE).await }
    });
    gate.open();
    assert!(drained.await.unwrap().is_complete());
    assert_eq!(layer.stats().targets[0].responded, 2);
}

#[test]
fn a_runtime_without_timers_skips_mirrors_instead_of_panicking() {
    // Built without `enable_time`: each mirror's timeout could not run on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for mode in [Mode::Async, Mode::Sync] {
        let layer = MirrorLayer::with_options(Options {
            mode,
            ..options(vec![Target::new("http://127.0.0.1:9")])
        })
        .unwrap();
        let inner = tower::service_fn(|_: Request<TeeBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new("served"))
        });
        let service = tower::Layer::layer(&layer, inner);
        let request = Request::get("/x").body(Full::default()).unwrap();
        let answer = runtime.block_on(service.oneshot(request)).unwrap();
        assert_eq!(answer.into_body().into_inner(), "served", "{mode:?}");
        assert_eq!(layer.stats().targets[0].skipped.no_runtime, 1, "{mode:?}");
    }
}

#[tokio::test]
async fn per_target_header_rules_keep_credentials_from_a_target() {
    let (staging, analytics) = (Shadow::start().await, Shadow::start().await);
    let layer = MirrorLayer::with_options(options(vec![
        Target::new(staging.url.clone())
            .strip_header("cookie")
            .set_header("authorization", "Bearer staging-token")
            .set_header("x-shadow", "1"),
        Target::new(analytics.url.clone()).strip_header("Authorization"),
    ]))
    .unwrap();
    let primary = serve(app(layer)).await;
    let request = Request::get(format!("{}/test", primary.url))
        .header("authorization", "Bearer production-token")
        .header("cookie", "session=secret")
        .body(Full::default())
        .unwrap();
    support::send(request).await;

    let to_staging = &staging.wait_for(1).await[0].headers;
    assert!(!to_staging.contains_key("cookie"));
    assert_eq!(to_staging["authorization"], "Bearer staging-token");
    assert_eq!(to_staging["x-shadow"], "1");
    let to_analytics = &analytics.wait_for(1).await[0].headers;
    assert!(!to_analytics.contains_key("authorization"));
    assert_eq!(to_analytics["cookie"], "session=secret");
    assert!(
        !to_analytics.contains_key("x-shadow"),
        "rules are per target"
    );
}

#[tokio::test]
async fn a_teed_body_reaches_the_sender_as_the_very_same_bytes() {
    // The sender records where each mirrored chunk's bytes live; the tee must hand over
    // reference-counted clones of the original chunks, never copies.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let sender = move |request: Request<tower_mirror::MirrorBody>| -> tower_mirror::SendFuture {
        let record = Arc::clone(&record);
        Box::pin(async move {
            let mut body = request.into_body();
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                record
                    .lock()
                    .unwrap()
                    .push((data.as_ptr() as usize, data.len()));
            }
            let empty: tower_mirror::ShadowBody = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok(Response::new(empty))
        })
    };
    let layer = MirrorLayer::with_options(Options {
        sender: Some(Arc::new(sender)),
        ..options(vec![Target::new("http://shadow.internal")])
    })
    .unwrap();
    let original = pattern(64 * 1024);
    let inner = tower::service_fn(|request: Request<TeeBody<Full<Bytes>>>| async move {
        request.into_body().collect().await.unwrap();
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    });
    let service = tower::Layer::layer(&layer, inner);
    let request = Request::post("/upload")
        .body(Full::new(original.clone()))
        .unwrap();
    service.oneshot(request).await.unwrap();
    settled(&layer).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [(original.as_ptr() as usize, original.len())],
        "one chunk, at the original's address"
    );
}

/// `send_after_primary`: a bodiless request's mirror leaves only once the inner service has
/// answered, so a request dropped before that (the client went away) reaches no shadow and is
/// counted; the primary itself still never waits for the mirror.
#[tokio::test]
async fn send_after_primary_mirrors_only_what_the_primary_answered() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        send_after_primary: true,
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let gate = Gate::closed();
    let held = gate.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let held = held.clone();
                async move {
                    held.wait().await;
                    "answered"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(layer.clone());

    // Answered: mirrored after the answer.
    let waiting = tokio::spawn(
        app.clone().oneshot(
            Request::get("/slow")
                .body(axum::body::Body::empty())
                .unwrap(),
        ),
    );
    // The handler is holding the request; nothing may have been mirrored yet.
    let fast = app
        .clone()
        .oneshot(
            Request::get("/fast")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
    eventually("the /fast mirror", || shadow.received().len() == 1).await;
    assert_eq!(shadow.received()[0].uri.path(), "/fast");
    gate.open();
    assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);
    eventually("the /slow mirror", || shadow.received().len() == 2).await;

    // Dropped before the answer (a client that went away): never mirrored, counted.
    let never = Gate::closed();
    let app = Router::new()
        .route(
            "/abandoned",
            get(move || {
                let never = never.clone();
                async move {
                    never.wait().await;
                    "unreachable"
                }
            }),
        )
        .layer(layer.clone());
    for _ in 0..5 {
        let request = Request::get("/abandoned")
            .body(axum::body::Body::empty())
            .unwrap();
        let call = app.clone().oneshot(request);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), call)
                .await
                .is_err()
        );
    }
    let stats = settled(&layer).await;
    let t = &stats.targets[0];
    assert_eq!(t.skipped.primary_aborted, 5, "{t:?}");
    assert_eq!((t.sampled, t.sent, t.responded), (7, 2, 2), "{t:?}");
    assert_eq!(shadow.received().len(), 2);
}

/// A request body that never arrives.
struct NeverBody;

impl Body for NeverBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// Sync mode: a request dropped while its body is being read ahead (the client went away)
/// still ends its sampled mirror counted, as `primary_aborted`, so sampled = sent + dropped +
/// skipped holds.
#[tokio::test]
async fn a_sync_request_dropped_during_read_ahead_is_counted() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        mode: Mode::Sync,
        ..options(vec![Target::new(shadow.url.clone())])
    })
    .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(tower::service_fn(|_: Request<TeeBody<NeverBody>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"primary"))))
        }));
    let request = Request::post("/upload")
        .header("content-length", "10")
        .body(NeverBody)
        .unwrap();
    let call = service.oneshot(request);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err(),
        "the primary waits for the body it reads ahead"
    );
    let stats = settled(&layer).await;
    let t = &stats.targets[0];
    assert_eq!(
        (t.sampled, t.sent, t.skipped.primary_aborted),
        (1, 0, 1),
        "{t:?}"
    );
    assert_eq!(shadow.count(), 0);
}
