//! Compare the primary's response statuses with staging's, path by path.
//!
//! Ports the reference's "Response Comparison" example: `on_success` records staging's
//! status per `resp.uri().path()`, an axum middleware records the primary's status per path,
//! and once the mirrors have finished the two maps are compared. The staging stand-in plays a
//! new build with two regressions: `/api/orders` fails with 500 and `/api/admin` no longer
//! answers 403.
//!
//! Run it with `cargo run -p tower-mirror --example response_comparison`.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use support::{Client, Reply, Shadow};
use tower_mirror::{MirrorLayer, MirrorResponse, Options, Target};

/// Status per path, as the reference's `map[string]int` behind a mutex.
type Statuses = Arc<Mutex<BTreeMap<String, u16>>>;

/// The reference's "middleware to track production responses".
async fn track_primary(State(prod): State<Statuses>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    prod.lock().expect("not poisoned").insert(path, status);
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://staging.example.com, running the new build.
    let staging = Shadow::start_with(
        "staging",
        Reply::ok()
            .path_status("/api/orders", 500)
            .path_status("/api/admin", 200),
    )
    .await?;

    let prod_responses: Statuses = Arc::default();
    let staging_responses: Statuses = Arc::default();
    let recorded = Arc::clone(&staging_responses);
    let mirror = MirrorLayer::with_options(Options {
        targets: vec![Target::new(staging.url.as_str())],
        on_success: Some(Arc::new(move |_target: &str, resp: &MirrorResponse| {
            let path = resp.uri().path().to_owned();
            let status = resp.status().as_u16();
            recorded.lock().expect("not poisoned").insert(path, status);
        })),
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .route("/api/orders", get(|| async { "orders" }))
        .route("/api/admin", get(|| async { StatusCode::FORBIDDEN }))
        .layer(mirror.clone())
        .layer(middleware::from_fn_with_state(
            Arc::clone(&prod_responses),
            track_primary,
        ));
    let client = Client::new(&support::serve(app).await?);

    for path in ["/api/users", "/api/orders", "/api/admin"] {
        client.get(path).await?;
    }
    support::wait_for_mirrors(&mirror).await?;

    let prod = prod_responses.lock().expect("not poisoned").clone();
    let staging_seen = staging_responses.lock().expect("not poisoned").clone();
    println!("{:<12} {:>10} {:>8}", "path", "production", "staging");
    let mut differ = Vec::new();
    for (path, &status) in &prod {
        let shadow = staging_seen.get(path).copied();
        let shown = shadow.map_or_else(|| "-".to_owned(), |s| s.to_string());
        println!("{path:<12} {status:>10} {shown:>8}");
        if shadow != Some(status) {
            differ.push(path.as_str());
        }
    }
    println!("statuses differ for: {}", differ.join(", "));
    Ok(())
}
