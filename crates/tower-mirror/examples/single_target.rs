//! Mirror every request to one shadow target.
//!
//! Ports the reference's "Single Target" example
//! (`app.Use(mirror.New("https://staging.example.com"))`): all requests are mirrored to
//! staging while the primary handler answers as usual.
//!
//! Run it with `cargo run -p tower-mirror --example single_target`.

mod support;

use axum::Router;
use axum::routing::get;
use support::{Client, Shadow};
use tower_mirror::MirrorLayer;

async fn users_handler() -> &'static str {
    "[\"alice\", \"bob\"]"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://staging.example.com.
    let staging = Shadow::start("staging").await?;

    // All requests are mirrored to staging.
    let mirror = MirrorLayer::new([staging.url.as_str()])?;
    let app = Router::new()
        .route("/api/users", get(users_handler))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    let answer = client.get("/api/users?page=2").await?;
    println!("primary answered: {} {}", answer.status, answer.body);

    support::wait_for_mirrors(&mirror).await?;
    for request in staging.received() {
        println!("staging received: {}", request.summary());
    }
    Ok(())
}
