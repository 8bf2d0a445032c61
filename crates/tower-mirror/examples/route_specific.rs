//! Mirror only some routes: the layer goes on a nested router.
//!
//! Ports the reference's "Route-Specific Mirroring" example: the `/api` group is mirrored to
//! staging, `/health` is not.
//!
//! Run it with `cargo run -p tower-mirror --example route_specific`.

mod support;

use axum::Router;
use axum::routing::{get, post};
use support::{Client, Shadow};
use tower_mirror::MirrorLayer;

const HEALTH_CHECKS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://staging.example.com.
    let staging = Shadow::start("staging").await?;

    // `Router::nest` strips the `/api` prefix before the nested router (and so its layers)
    // sees a request, so the target's base URL puts it back: `/users` is mirrored to
    // `{staging}/api/users`, the path the client used.
    let mirror = MirrorLayer::new([format!("{}/api", staging.url)])?;
    let api = Router::new()
        .route("/users", get(|| async { "users" }))
        .route("/orders", post(|body: String| async move { body }))
        .layer(mirror.clone());
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .nest("/api", api);
    let client = Client::new(&support::serve(app).await?);

    for _ in 0..HEALTH_CHECKS {
        client.get("/health").await?;
    }
    client.get("/api/users").await?;
    client
        .post_json("/api/orders", r#"{"item":"book"}"#)
        .await?;
    println!("sent {HEALTH_CHECKS} requests to /health and 2 to /api");

    let stats = support::wait_for_mirrors(&mirror).await?;
    println!("staging received {} requests:", staging.count());
    for request in staging.received() {
        println!("  {}", request.summary());
    }
    let health_mirrored = staging
        .received()
        .iter()
        .filter(|r| r.uri.path() == "/health")
        .count();
    println!("/health requests mirrored: {health_mirrored}");
    support::print_stats(&stats, &[staging.name]);
    Ok(())
}
