//! Canary testing: mirror a small share of the traffic and alert on canary failures.
//!
//! Ports the reference's "Canary Testing" example: 5 % of requests go to the canary,
//! `on_success` alerts on 5xx and `on_error` alerts on errors (status -1). Sampling is
//! deterministic, so of 100 requests exactly 5 are mirrored (every twentieth). The canary
//! stand-in has a bug: it answers 503 for `/api/checkout`.
//!
//! Run it with `cargo run -p tower-mirror --example canary`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use support::{Client, Reply, Shadow};
use tower_mirror::{MirrorError, MirrorLayer, MirrorResponse, Options, percentage};

const REQUESTS: usize = 100;
const PATHS: [&str; 3] = ["/api/products", "/api/cart", "/api/checkout"];

/// The reference's `alertCanaryError`: `-1` stands for "no response".
fn alert_canary_error(target: &str, status: i32, alerts: &AtomicU64) {
    alerts.fetch_add(1, Ordering::Relaxed);
    println!("  ALERT: canary {target} returned {status}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://canary.example.com.
    let canary =
        Shadow::start_with("canary", Reply::ok().path_status("/api/checkout", 503)).await?;

    let alerts = Arc::new(AtomicU64::new(0));
    let (on_5xx, on_failure) = (Arc::clone(&alerts), Arc::clone(&alerts));
    let mirror = MirrorLayer::with_options(Options {
        targets: vec![percentage(canary.url.as_str(), 5)],
        on_success: Some(Arc::new(move |target: &str, resp: &MirrorResponse| {
            if resp.status().is_server_error() {
                alert_canary_error(target, i32::from(resp.status().as_u16()), &on_5xx);
            }
        })),
        on_error: Some(Arc::new(move |target: &str, _err: &MirrorError| {
            alert_canary_error(target, -1, &on_failure);
        })),
        ..Options::default()
    })?;
    let mut app = Router::new();
    for path in PATHS {
        app = app.route(path, get(|| async { "ok" }));
    }
    let client = Client::new(&support::serve(app.layer(mirror.clone())).await?);

    println!("sending {REQUESTS} requests; the canary takes 5 %");
    for n in 1..=REQUESTS {
        let path = PATHS[n % PATHS.len()];
        client.get(&format!("{path}?n={n}")).await?;
    }
    let stats = support::wait_for_mirrors(&mirror).await?;

    println!("the canary received {}:", canary.count());
    for request in canary.received() {
        println!("  {} {}", request.method, request.uri);
    }
    println!("alerts raised: {}", alerts.load(Ordering::Relaxed));
    support::print_stats(&stats, &[canary.name]);
    Ok(())
}
