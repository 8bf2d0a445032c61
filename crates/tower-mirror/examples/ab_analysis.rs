//! A/B analysis: mirror to two experiments and compare their response times.
//!
//! Ports the reference's "A/B Testing Analysis" example: two targets at 50 % each, and
//! `on_success` records each experiment's `X-Response-Time` header (the time the service
//! says it took) together with [`MirrorResponse::latency`] (the time the mirror measured up
//! to the response head). Each target samples on its own counter with the same even
//! pattern, so both experiments see the same half of the traffic: a like-for-like
//! comparison. Experiment B is the slower build here (40 ms against 10 ms).
//!
//! Run it with `cargo run -p tower-mirror --example ab_analysis`.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use support::{Client, Reply, Shadow};
use tower_mirror::{MirrorLayer, MirrorResponse, Options, Target};

const REQUESTS: usize = 20;

/// Per target: the reported `X-Response-Time`s and the measured latencies, in milliseconds.
#[derive(Default)]
struct Samples {
    reported: Vec<f64>,
    measured: Vec<f64>,
}

/// The reference's `analytics`: samples per target URL.
type Analytics = Arc<Mutex<BTreeMap<String, Samples>>>;

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Local servers stand in for https://experiment-a.example.com and
    // https://experiment-b.example.com.
    let a =
        Shadow::start_with("experiment-a", Reply::ok().delay(Duration::from_millis(10))).await?;
    let b =
        Shadow::start_with("experiment-b", Reply::ok().delay(Duration::from_millis(40))).await?;

    let analytics: Analytics = Arc::default();
    let track = Arc::clone(&analytics);
    let mirror = MirrorLayer::with_options(Options {
        targets: vec![
            Target::percentage(a.url.as_str(), 50),
            Target::percentage(b.url.as_str(), 50),
        ],
        on_success: Some(Arc::new(move |target: &str, resp: &MirrorResponse| {
            // "Log response times for analysis": the header as the service reports it...
            let reported = resp
                .headers()
                .get("x-response-time")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_end_matches("ms").parse::<f64>().ok());
            let mut analytics = track.lock().expect("not poisoned");
            let samples = analytics.entry(target.to_owned()).or_default();
            samples.reported.extend(reported);
            // ...and the latency the mirror measured, network included.
            samples.measured.push(resp.latency().as_secs_f64() * 1000.0);
        })),
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/search", get(|| async { "results" }))
        .layer(mirror.clone());
    let client = Client::new(&support::serve(app).await?);

    for n in 1..=REQUESTS {
        client.get(&format!("/api/search?q=item{n}")).await?;
    }
    support::wait_for_mirrors(&mirror).await?;

    println!("sent {REQUESTS} requests to the primary");
    println!(
        "{:<13} {:>8} {:>22} {:>18}",
        "experiment", "mirrors", "mean X-Response-Time", "mean latency()"
    );
    let analytics = analytics.lock().expect("not poisoned");
    for shadow in [&a, &b] {
        let Some(samples) = analytics.get(&shadow.url) else {
            continue;
        };
        println!(
            "{:<13} {:>8} {:>20.1}ms {:>16.1}ms",
            shadow.name,
            samples.measured.len(),
            mean(&samples.reported),
            mean(&samples.measured)
        );
    }
    Ok(())
}
