//! Mirror every request to several shadow targets at once.
//!
//! Ports the reference's "Multiple Targets" example
//! (`mirror.New("https://staging.example.com", "https://analytics.example.com")`): each
//! target receives its own copy of every request.
//!
//! Run it with `cargo run -p tower-mirror --example multiple_targets`.

mod support;

use axum::Router;
use axum::http::Method;
use axum::routing::{get, post};
use support::{Client, Shadow};
use tower_mirror::MirrorLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Local servers stand in for https://staging.example.com and
    // https://analytics.example.com.
    let staging = Shadow::start("staging").await?;
    let analytics = Shadow::start("analytics").await?;

    let mirror = MirrorLayer::new([staging.url.as_str(), analytics.url.as_str()])?;
    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .route("/api/events", post(|body: String| async move { body }))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    let answers = [
        client.get("/api/users").await?,
        client.get("/api/users?active=true").await?,
        client
            .send(Method::POST, "/api/events", Some(("text/plain", "clicked")))
            .await?,
    ];
    for answer in &answers {
        println!("primary answered: {} {}", answer.status, answer.body);
    }

    let stats = support::wait_for_mirrors(&mirror).await?;
    for shadow in [&staging, &analytics] {
        println!("{} received {} requests:", shadow.name, shadow.count());
        for request in shadow.received() {
            println!("  {}", request.summary());
        }
    }
    support::print_stats(&stats, &[staging.name, analytics.name]);
    Ok(())
}
