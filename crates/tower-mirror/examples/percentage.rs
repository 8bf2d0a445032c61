//! Mirror a share of the traffic to each target.
//!
//! Ports the reference's "Percentage-Based Mirroring" example: staging gets 50 % of the
//! requests and the canary 10 %. Sampling is deterministic and evenly spread, so of 20
//! requests staging gets exactly 10 (every other one) and the canary exactly 2 (every tenth).
//!
//! Run it with `cargo run -p tower-mirror --example percentage`.

mod support;

use axum::Router;
use axum::routing::get;
use support::{Client, Shadow};
use tower_mirror::{MirrorLayer, Options, Target, percentage};

const REQUESTS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Local servers stand in for https://staging.example.com and https://canary.example.com.
    let staging = Shadow::start("staging").await?;
    let canary = Shadow::start("canary").await?;

    let mirror = MirrorLayer::with_options(Options {
        targets: vec![
            // The reference's `mirror.Percentage(url, 50)`...
            percentage(staging.url.as_str(), 50),
            // ...which is also available as an associated function.
            Target::percentage(canary.url.as_str(), 10),
        ],
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/items", get(|| async { "items" }))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    for n in 1..=REQUESTS {
        client.get(&format!("/api/items?n={n}")).await?;
    }
    println!("sent {REQUESTS} requests to the primary");

    support::wait_for_mirrors(&mirror).await?;
    for (shadow, share) in [(&staging, 50), (&canary, 10)] {
        let numbers: Vec<String> = shadow
            .received()
            .iter()
            .filter_map(|r| r.uri.query().map(|q| q.trim_start_matches("n=").to_owned()))
            .collect();
        println!(
            "{:<8} ({share:>2}%) received {:>2} of {REQUESTS}: requests #{}",
            shadow.name,
            shadow.count(),
            numbers.join(", #")
        );
    }
    Ok(())
}
