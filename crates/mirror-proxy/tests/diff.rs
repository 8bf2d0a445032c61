//! Shadow diffing through the real binary: a candidate build that renames a field, a baseline
//! that cancels a field changing on every call, and the report at /diff, /diff.html and in
//! /metrics.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use http::StatusCode;
use serde_json::{Value, json};
use support::{Proxy, TempDir, get as http_get};

/// A value no two answers share.
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Serves a users API on loopback; the candidate build calls `name` `full_name`.
async fn users_app(candidate: bool) -> String {
    let app = Router::new().route(
        "/users/{id}",
        get(move |Path(id): Path<u64>| async move {
            let name = if candidate { "full_name" } else { "name" };
            let mut user = json!({ "id": id, "at": unique() });
            user[name] = json!("Ada <3");
            axum::Json(user)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn the_diff_report_shows_the_candidates_differences_without_the_noise() {
    let (upstream, candidate, baseline) = (
        users_app(false).await,
        users_app(true).await,
        users_app(false).await,
    );
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            r#"
            upstream = "{upstream}"

            [[mirror]]
            url = "{candidate}"
            compare = true

            [[mirror]]
            url = "{baseline}"
            baseline = true
            "#
        ),
    );
    let proxy = Proxy::start(&["--config", config.to_str().unwrap()]).await;

    for id in 1..=5 {
        let (status, _, body) = http_get(&proxy.url(&format!("/users/{id}"))).await;
        assert_eq!(status, StatusCode::OK);
        let user: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            user["name"], "Ada <3",
            "the client gets the primary's answer"
        );
    }

    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    let report = loop {
        let (status, _, body) = http_get(&proxy.admin_url("/diff")).await;
        assert_eq!(status, StatusCode::OK);
        let report: Value = serde_json::from_slice(&body).unwrap();
        if report["routes"][0]["compared"] == 5 {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "5 comparisons: {report}"
        );
        tokio::task::yield_now().await;
    };
    let route = &report["routes"][0];
    assert_eq!(route["route"], "GET /users/{id}");
    assert_eq!(route["target"], candidate.as_str());
    assert_eq!(route["equal"], 0);
    assert_eq!(route["differing_body"], 5);
    assert_eq!(route["differing_status"], 0);
    let field = |path: &str| {
        route["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("no field {path} in {route}"))
    };
    assert_eq!(
        (
            field("/name")["differing"].clone(),
            field("/name")["noise"].clone()
        ),
        (json!(5), json!(0))
    );
    assert_eq!(field("/full_name")["differing"], 5);
    assert_eq!(
        (
            field("/at")["differing"].clone(),
            field("/at")["noise"].clone()
        ),
        (json!(0), json!(5))
    );
    assert_eq!(field("/name")["examples"][0]["primary"], "\"Ada <3\"");

    let (status, headers, page) = http_get(&proxy.admin_url("/diff.html")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = String::from_utf8(page.to_vec()).unwrap();
    for expected in [
        "GET /users/{id}",
        "href=\"#route-0\"",
        "id=\"route-0\"",
        "body /full_name",
        "body /name",
        "&quot;Ada &lt;3&quot;",
        "100.0 %",
    ] {
        assert!(
            page.contains(expected),
            "{expected:?} missing from /diff.html:\n{page}"
        );
    }
    assert!(!page.contains("Ada <3"), "values are escaped");

    let metrics = proxy.metrics().await;
    let series = format!(
        "mirror_proxy_mirror_comparisons_total{{target=\"{candidate}\",route=\"GET /users/{{id}}\",outcome=\"differ\"}}"
    );
    assert_eq!(support::sample(&metrics, &series), Some(5.0), "{metrics}");
}

#[tokio::test]
async fn without_compared_targets_the_diff_pages_say_how_to_enable_them() {
    let upstream = users_app(false).await;
    let shadow = users_app(false).await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--mirror", &shadow]).await;
    let (_, _, body) = http_get(&proxy.admin_url("/diff")).await;
    let report: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["routes"], json!([]));
    let (_, _, page) = http_get(&proxy.admin_url("/diff.html")).await;
    assert!(String::from_utf8_lossy(&page).contains("compare = true"));
}
