//! A quick tour: an axum app mirrored to a local shadow server.
//!
//! Starts a shadow server on loopback, serves an app wrapped in [`MirrorLayer`], sends a GET
//! with a query, a JSON POST and a PUT, waits for the mirrors, then shows what the primary
//! answered, what the shadow received, and the layer's stats. Not a port of one reference
//! example: it is the one to run first.
//!
//! Run it with `cargo run -p tower-mirror --example demo`.

mod support;

use axum::extract::{Path, Query};
use axum::http::Method;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use std::collections::HashMap;
use support::{Client, Shadow};
use tower_mirror::MirrorLayer;

async fn list_users(Query(query): Query<HashMap<String, String>>) -> String {
    let page = query.get("page").map_or("1", String::as_str);
    format!("users, page {page}")
}

async fn create_order(Json(order): Json<HashMap<String, String>>) -> String {
    format!(
        "created order for {}",
        order.get("item").map_or("?", String::as_str)
    )
}

async fn rename_user(Path(id): Path<u32>, name: String) -> String {
    format!("user {id} renamed to {name}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local server stands in for a staging deployment.
    let shadow = Shadow::start("shadow").await?;
    println!("shadow server listening at {}", shadow.url);

    let mirror = MirrorLayer::new([shadow.url.as_str()])?;
    let app = Router::new()
        .route("/api/users", get(list_users))
        .route("/api/orders", post(create_order))
        .route("/api/users/{id}", put(rename_user))
        .layer(mirror.clone());
    let app_url = support::serve(app).await?;
    println!("app with MirrorLayer listening at {app_url}\n");
    let client = Client::new(&app_url);

    let requests = [
        (Method::GET, "/api/users?page=2&sort=name", None),
        (
            Method::POST,
            "/api/orders",
            Some(("application/json", r#"{"item":"book","qty":"2"}"#)),
        ),
        (Method::PUT, "/api/users/7", Some(("text/plain", "Ada"))),
    ];
    for (method, path, body) in requests {
        let answer = client.send(method.clone(), path, body).await?;
        println!(
            "primary: {method} {path} -> {} {:?} ({:.1?})",
            answer.status, answer.body, answer.took
        );
    }

    let stats = support::wait_for_mirrors(&mirror).await?;
    println!("\nthe shadow received:");
    for request in shadow.received() {
        println!(
            "  {} {}  X-Mirrored-From: {}  body: {} bytes",
            request.method,
            request.uri,
            request.mirrored_from(),
            request.body.len()
        );
    }
    println!();
    support::print_stats(&stats, &[shadow.name]);
    Ok(())
}
