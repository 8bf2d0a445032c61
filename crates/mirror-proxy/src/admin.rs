//! The admin listener: `/metrics` (Prometheus), `/stats` (JSON), `/diff` (JSON),
//! `/diff.html` and `/healthz`.
//!
//! Off unless `--admin` is given, and unauthenticated: bind it to loopback.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_mirror::MirrorLayer;
use tower_mirror::diff::Diff;

use crate::telemetry::Telemetry;

#[derive(Clone)]
struct Admin {
    telemetry: Arc<Telemetry>,
    mirror: Option<MirrorLayer>,
    diff: Option<Diff>,
}

/// The admin routes; `diff` when a target is compared.
pub fn router(
    telemetry: Arc<Telemetry>,
    mirror: Option<MirrorLayer>,
    diff: Option<Diff>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/diff", get(diff_json))
        .route("/diff.html", get(diff_html))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Admin {
            telemetry,
            mirror,
            diff,
        })
}

async fn metrics(State(admin): State<Admin>) -> Response {
    match admin.telemetry.render_prometheus(admin.mirror.as_ref()) {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable in this process\n",
        )
            .into_response(),
    }
}

async fn diff_json(State(admin): State<Admin>) -> Response {
    let report = admin.diff.as_ref().map(Diff::report);
    axum::Json(crate::diff_page::json(report.as_ref())).into_response()
}

async fn diff_html(State(admin): State<Admin>) -> Response {
    let report = admin.diff.as_ref().map(Diff::report);
    axum::response::Html(crate::diff_page::html(report.as_ref())).into_response()
}

async fn stats(State(admin): State<Admin>) -> Response {
    axum::Json(admin.telemetry.stats_json(admin.mirror.as_ref())).into_response()
}
