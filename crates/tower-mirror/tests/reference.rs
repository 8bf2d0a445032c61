//! The reference middleware's test table, ported one for one, each against real servers on
//! loopback — and asserting more than the original did (exact counts instead of ranges,
//! causal ordering instead of timing).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{Gate, Shadow, get as http_get, post as http_post, refused_url, serve, settled};
use tower_mirror::{MirrorLayer, Options, Target, percentage};

fn app(layer: MirrorLayer) -> Router {
    Router::new()
        .route("/test", get(|| async { "primary" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .layer(layer)
}

/// TestNew: a request is mirrored to the single target given to `new`.
#[tokio::test]
async fn new_mirrors_every_request_to_its_target() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::new([shadow.url.clone()]).unwrap();
    let primary = serve(app(layer.clone())).await;

    let answer = http_get(&format!("{}/test?q=1", primary.url)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "primary");

    let received = shadow.wait_for(1).await;
    assert_eq!(received[0].method, "GET");
    assert_eq!(received[0].uri.path_and_query().unwrap(), "/test?q=1");
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].responded, 1);
}

/// TestWithOptions_Async: the primary answers while the mirror is still waiting on its target.
#[tokio::test]
async fn async_mode_answers_before_the_target_does() {
    let gate = Gate::closed();
    let shadow = Shadow::gated(&gate).await;
    let layer = MirrorLayer::new([shadow.url.clone()]).unwrap();
    let primary = serve(app(layer.clone())).await;

    let answer = http_get(&format!("{}/test", primary.url)).await;
    assert_eq!(answer.body, "primary");
    // The target holds the mirror and has not answered, yet the primary is done.
    shadow.wait_for(1).await;
    assert_eq!(layer.stats().targets[0].in_flight, 1);
    assert_eq!(layer.stats().targets[0].responded, 0);

    gate.open();
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].responded, 1);
}

/// TestWithOptions_Percentage: 50 % of 100 requests is exactly 50 (the reference accepted 40–60).
#[tokio::test]
async fn fifty_percent_mirrors_exactly_half() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        targets: vec![percentage(shadow.url.clone(), 50)],
        ..Options::default()
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    for _ in 0..100 {
        assert_eq!(http_get(&format!("{}/test", primary.url)).await.status, 200);
    }
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].sampled, 50);
    assert_eq!(stats.targets[0].responded, 50);
    assert_eq!(shadow.count(), 50);
}

/// TestWithOptions_MultipleTargets: every target receives the request.
#[tokio::test]
async fn every_target_receives_the_request() {
    let (a, b, c) = (
        Shadow::start().await,
        Shadow::start().await,
        Shadow::start().await,
    );
    let layer = MirrorLayer::with_options(Options {
        targets: vec![
            Target::new(a.url.clone()),
            Target::new(b.url.clone()),
            Target::new(c.url.clone()),
        ],
        ..Options::default()
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    http_get(&format!("{}/test", primary.url)).await;
    for shadow in [&a, &b, &c] {
        let received = shadow.wait_for(1).await;
        assert_eq!(received[0].uri.path(), "/test");
    }
    let stats = settled(&layer).await;
    assert!(stats.targets.iter().all(|t| t.responded == 1));
}

/// TestWithOptions_OnError: a target that refuses connections reaches `on_error` with its URL.
#[tokio::test]
async fn on_error_is_called_when_the_target_refuses() {
    let target = refused_url().await;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(target.clone())],
        on_error: Some(Arc::new(
            move |target: &str, err: &tower_mirror::MirrorError| {
                seen.lock()
                    .unwrap()
                    .push((target.to_owned(), err.is_connect(), err.to_string()));
            },
        )),
        ..Options::default()
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    let answer = http_get(&format!("{}/test", primary.url)).await;
    assert_eq!(
        (answer.status.as_u16(), &answer.body[..]),
        (200, &b"primary"[..])
    );
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[0].failed, 1);
    let errors = errors.lock().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].0, target,
        "the callback gets the URL as configured"
    );
    assert!(
        errors[0].1,
        "a refused connection is a connect error: {}",
        errors[0].2
    );
}

/// TestWithOptions_OnSuccess: `on_success` sees the target's 202.
#[tokio::test]
async fn on_success_sees_the_target_status() {
    let shadow = Shadow::with_status(202).await;
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&statuses);
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(shadow.url.clone())],
        on_success: Some(Arc::new(
            move |target: &str, resp: &tower_mirror::MirrorResponse| {
                seen.lock().unwrap().push((
                    target.to_owned(),
                    resp.status().as_u16(),
                    resp.method().clone(),
                    resp.uri().to_string(),
                ));
            },
        )),
        ..Options::default()
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    http_get(&format!("{}/test?x=y", primary.url)).await;
    settled(&layer).await;
    let statuses = statuses.lock().unwrap();
    assert_eq!(
        *statuses,
        [(
            shadow.url.clone(),
            202,
            http::Method::GET,
            format!("{}/test?x=y", shadow.url)
        )]
    );
}

/// TestWithOptions_MirroredHeader: `X-Mirrored-From` is the original `Host`.
#[tokio::test]
async fn mirrored_from_is_the_original_host() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::new([shadow.url.clone()]).unwrap();
    let primary = serve(app(layer)).await;

    let request = Request::get(format!("{}/test", primary.url))
        .header("host", "example.com")
        .body(Full::default())
        .unwrap();
    support::send(request).await;
    let received = shadow.wait_for(1).await;
    assert_eq!(received[0].headers["x-mirrored-from"], "example.com");
    assert_eq!(
        received[0].headers["host"],
        shadow.addr.to_string().as_str(),
        "Host is the target's own"
    );
}

/// TestPercentage: the helper builds a target with the URL and percentage given.
#[test]
fn percentage_helper_sets_url_and_percentage() {
    let target = percentage("https://canary.example.com", 10);
    assert_eq!(target.url, "https://canary.example.com");
    assert_eq!(target.percentage, 10);
    assert_eq!(target, Target::percentage("https://canary.example.com", 10));
    assert_eq!(Target::new("https://a.example.com").percentage, 100);
}

/// TestWithOptions_CopyBody: the target receives the same body as the primary.
#[tokio::test]
async fn copy_body_sends_the_original_body() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::new([shadow.url.clone()]).unwrap();
    let primary = serve(app(layer)).await;

    let body = support::pattern(10_000);
    let answer = http_post(&format!("{}/echo", primary.url), body.clone()).await;
    assert_eq!(answer.body, body, "the primary read the whole body");
    let received = shadow.wait_for(1).await;
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].body, body);
    assert_eq!(received[0].headers["content-length"], "10000");
}

/// TestWithOptions_NoCopyBody: with `copy_body: false` the mirror has an empty body.
#[tokio::test]
async fn no_copy_body_sends_an_empty_body() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(shadow.url.clone())],
        copy_body: false,
        ..Options::default()
    })
    .unwrap();
    let primary = serve(app(layer)).await;

    let answer = http_post(&format!("{}/echo", primary.url), "payload").await;
    assert_eq!(answer.body, "payload", "the primary still gets its body");
    let received = shadow.wait_for(1).await;
    assert_eq!(received[0].method, "POST");
    assert!(received[0].body.is_empty());
    assert_eq!(received[0].headers["content-length"], "0");
}

/// TestNew_MultipleTargets: `new` with several URLs mirrors to all of them, asynchronously.
#[tokio::test]
async fn new_with_several_targets_mirrors_to_all_asynchronously() {
    let gate = Gate::closed();
    let (a, b) = (Shadow::gated(&gate).await, Shadow::gated(&gate).await);
    let layer = MirrorLayer::new([a.url.as_str(), b.url.as_str()]).unwrap();
    let primary = serve(app(layer.clone())).await;

    let answered = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        http_get(&format!("{}/test", primary.url)).await;
        answered.fetch_add(1, Ordering::SeqCst);
    }
    // All three primaries are done while both targets still hold all of their mirrors.
    a.wait_for(3).await;
    b.wait_for(3).await;
    assert_eq!(answered.load(Ordering::SeqCst), 3);
    assert!(layer.stats().targets.iter().all(|t| t.in_flight == 3));

    gate.open();
    let stats = settled(&layer).await;
    assert!(stats.targets.iter().all(|t| t.responded == 3));
    assert_eq!((a.count(), b.count()), (3, 3));
}
