//! Bound every mirror exchange with a timeout.
//!
//! Ports the reference's "Custom Timeout" example (`Timeout: 10 * time.Second`), scaled down
//! so it runs in a moment: the timeout is 200 ms and the staging stand-in takes 1 s to
//! answer, so the mirror times out and `on_error` reports it (`is_timeout()`), while the
//! primary answers at once.
//!
//! Run it with `cargo run -p tower-mirror --example custom_timeout`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use support::{Client, Reply, Shadow};
use tower_mirror::{MirrorError, MirrorLayer, Options, Target};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://staging.example.com; it is slow today.
    let staging = Shadow::start_with("staging", Reply::ok().delay(Duration::from_secs(1))).await?;

    let mirror = MirrorLayer::with_options(Options {
        targets: vec![Target::new(staging.url.as_str())],
        timeout: Duration::from_millis(200),
        on_error: Some(Arc::new(|target: &str, err: &MirrorError| {
            println!(
                "on_error: mirror to {target} failed: {err} (is_timeout: {})",
                err.is_timeout()
            );
        })),
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/report", get(|| async { "report" }))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    let answer = client.get("/api/report").await?;
    println!(
        "primary answered {} in {:?}, without waiting for staging",
        answer.status, answer.took
    );

    let stats = support::wait_for_mirrors(&mirror).await?;
    println!(
        "staging received the request ({} so far) but did not answer within 200ms",
        staging.count()
    );
    support::print_stats(&stats, &[staging.name]);
    Ok(())
}
