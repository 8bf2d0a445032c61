//! Inspect every shadow response through `on_success`, and alert on server errors.
//!
//! Ports the reference's "Success Callback" example: `OnSuccess` logs the status and calls
//! `alertOps` when staging answers 5xx. Any response counts as a success of the mirror
//! itself, 5xx included; only connection errors and timeouts go to `on_error`. Here the
//! staging stand-in answers `503` for `/api/reports`.
//!
//! Run it with `cargo run -p tower-mirror --example success_callback`.

mod support;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use support::{Client, Reply, Shadow};
use tower_mirror::{MirrorLayer, MirrorResponse, Options, Target};

/// The reference's `alertOps`: a real service would page someone.
fn alert_ops(message: &str, resp: &MirrorResponse) {
    println!(
        "  on_success: ALERT: {message} ({} for {} {})",
        resp.status(),
        resp.method(),
        resp.uri().path()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://staging.example.com; its reports are broken.
    let staging =
        Shadow::start_with("staging", Reply::ok().path_status("/api/reports", 503)).await?;

    let mirror = MirrorLayer::with_options(Options {
        targets: vec![Target::new(staging.url.as_str())],
        on_success: Some(Arc::new(|target: &str, resp: &MirrorResponse| {
            println!(
                "  on_success: mirror to {target}: status {} for {}",
                resp.status().as_u16(),
                resp.uri().path()
            );
            if resp.status().is_server_error() {
                alert_ops("Staging returned error", resp);
            }
        })),
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .route("/api/reports", get(|| async { "reports" }))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    // One request at a time, waiting for its mirror, so the output follows request order.
    for path in ["/api/users", "/api/reports"] {
        let answer = client.get(path).await?;
        println!("primary answered {} for {path}", answer.status);
        support::wait_for_mirrors(&mirror).await?;
    }
    Ok(())
}
