//! Mirror requests without their bodies (`copy_body: false`).
//!
//! Ports the reference's "Skip Body for GET Requests" example (`CopyBody: false`): nothing
//! is buffered for the mirrors, so a POST's mirror arrives with an empty body, announced as
//! `Content-Length: 0`; the primary still receives the whole body.
//!
//! Run it with `cargo run -p tower-mirror --example skip_body`.

mod support;

use axum::Router;
use axum::routing::{get, post};
use support::{Client, Shadow};
use tower_mirror::{MirrorLayer, Options, Target};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://staging.example.com.
    let staging = Shadow::start("staging").await?;

    let mirror = MirrorLayer::with_options(Options {
        targets: vec![Target::new(staging.url.as_str())],
        copy_body: false, // Don't copy the body (nothing buffered; fine for GET traffic)
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .route(
            "/api/orders",
            post(|body: String| async move { format!("stored {} bytes", body.len()) }),
        )
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    let answer = client.get("/api/users?page=1").await?;
    println!("primary answered GET:  {} {}", answer.status, answer.body);
    let json = r#"{"item":"book","quantity":2}"#;
    let answer = client.post_json("/api/orders", json).await?;
    println!("primary answered POST: {} {}", answer.status, answer.body);

    support::wait_for_mirrors(&mirror).await?;
    for request in staging.received() {
        println!(
            "staging received: {} {} with {} body bytes, Content-Length: {}",
            request.method,
            request.uri,
            request.body.len(),
            request.header("content-length").unwrap_or("(none)")
        );
    }
    Ok(())
}
