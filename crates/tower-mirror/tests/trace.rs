//! The W3C trace context a mirror carries, under each target's policy, at a real shadow.

mod support;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use http::Request;
use support::{Shadow, settled};
use tower::ServiceExt;
use tower_mirror::outbound::TraceContext;
use tower_mirror::{MirrorLayer, Options, Target};

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn each_policy_reaches_the_shadow() {
    let shadow = Shadow::start().await;
    let target = |path: &str, policy| {
        Target::new(format!("{}/{path}", shadow.url))
            .with_name(path)
            .trace_context(policy)
    };
    let layer = MirrorLayer::with_options(Options {
        targets: vec![
            Target::new(format!("{}/default", shadow.url)).with_name("default"),
            target("child", TraceContext::Child),
            target("unsampled", TraceContext::Unsampled),
            target("strip", TraceContext::Strip),
        ],
        ..Options::default()
    })
    .unwrap();
    let app = Router::new()
        .fallback(any(|| async { "primary" }))
        .layer(layer.clone());
    let request = Request::get("/traced")
        .header("traceparent", INCOMING)
        .header("tracestate", "vendor=1")
        .body(Body::empty())
        .unwrap();
    app.oneshot(request).await.unwrap();
    settled(&layer).await;
    let received = shadow.received();
    let at = |prefix: &str| {
        received
            .iter()
            .find(|r| r.uri.path().starts_with(&format!("/{prefix}/")))
            .unwrap_or_else(|| panic!("no mirror for {prefix}"))
            .headers
            .clone()
    };
    for policy in ["default", "child"] {
        let headers = at(policy);
        let value = headers["traceparent"].to_str().unwrap();
        assert!(
            value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{value}"
        );
        assert!(value.ends_with("-01"), "{value}");
        assert_ne!(value, INCOMING, "{policy}: a new span id");
        assert_eq!(headers["tracestate"], "vendor=1");
    }
    let unsampled = at("unsampled");
    let value = unsampled["traceparent"].to_str().unwrap();
    assert!(value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && value.ends_with("-00"));
    let stripped = at("strip");
    assert!(!stripped.contains_key("traceparent") && !stripped.contains_key("tracestate"));
}
