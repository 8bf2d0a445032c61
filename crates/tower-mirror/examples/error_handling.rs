//! Report mirrors that get no response through `on_error`.
//!
//! Ports the reference's "Error Handling" example: `OnError` logs the failure and increments
//! a `mirror_errors` metric. Here "staging" is a loopback port nothing listens on, so every
//! mirror is refused at once; the primary is unaffected.
//!
//! Run it with `cargo run -p tower-mirror --example error_handling`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use support::Client;
use tower_mirror::{MirrorError, MirrorLayer, Options, Target};

const REQUESTS: u64 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Stands in for https://staging.example.com while it is down: a port bound and released.
    let staging = support::refused_url().await?;

    // The reference's `metrics.IncrementCounter("mirror_errors", target)`.
    let mirror_errors = Arc::new(AtomicU64::new(0));
    let errors = Arc::clone(&mirror_errors);
    let mirror = MirrorLayer::with_options(Options {
        targets: vec![Target::new(staging.as_str())],
        on_error: Some(Arc::new(move |target: &str, err: &MirrorError| {
            println!(
                "  on_error: mirror to {target} failed: {err} (is_connect: {})",
                err.is_connect()
            );
            errors.fetch_add(1, Ordering::Relaxed);
        })),
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    for _ in 0..REQUESTS {
        let answer = client.get("/api/users").await?;
        println!("primary answered: {} {}", answer.status, answer.body);
        // Waiting here only keeps the output in request order.
        support::wait_for_mirrors(&mirror).await?;
    }

    let stats = support::wait_for_mirrors(&mirror).await?;
    println!(
        "mirror_errors metric: {} of {REQUESTS} mirrors",
        mirror_errors.load(Ordering::Relaxed)
    );
    support::print_stats(&stats, &["staging"]);
    Ok(())
}
