//! Synchronous mirroring: the primary handler runs only once the mirror has finished.
//!
//! Ports the reference's "Synchronous Mirroring" example (`Async: false`), here
//! [`Mode::Sync`]: the backup receives (and answers) each request before the primary handler
//! sees it, which is what a backup that must never miss a write needs. The cost is latency:
//! the backup stand-in takes 100 ms, and so does every primary response.
//!
//! Run it with `cargo run -p tower-mirror --example synchronous`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use support::{Client, Reply, Shadow};
use tower_mirror::{MirrorLayer, Mode, Options, Target};

/// The primary handler checks whether the backup already holds this very order when it runs.
async fn create_order(State(backup): State<Arc<Shadow>>, body: String) -> String {
    let backed_up = backup.received().iter().any(|r| r.body == body.as_bytes());
    format!("stored {body}; backup already had it when the handler ran: {backed_up}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for https://backup.example.com; it takes 100 ms to answer.
    let backup = Arc::new(
        Shadow::start_with("backup", Reply::ok().delay(Duration::from_millis(100))).await?,
    );

    let mirror = MirrorLayer::with_options(Options {
        targets: vec![Target::new(backup.url.as_str())],
        mode: Mode::Sync,
        ..Options::default()
    })?;
    let app = Router::new()
        .route("/api/orders", post(create_order))
        .layer(mirror.clone())
        .with_state(Arc::clone(&backup));
    let client = Client::new(&support::serve(app).await?);

    for item in ["book", "lamp"] {
        let json = format!(r#"{{"item":"{item}"}}"#);
        let answer = client.post_json("/api/orders", &json).await?;
        println!(
            "primary answered {} after {:.0?}: {}",
            answer.status, answer.took, answer.body
        );
    }

    // Sync mode has already waited, so nothing is left in flight.
    let stats = support::wait_for_mirrors(&mirror).await?;
    for request in backup.received() {
        println!("backup received: {}", request.summary());
    }
    support::print_stats(&stats, &[backup.name]);
    Ok(())
}
