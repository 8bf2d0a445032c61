//! The admin listener: what the proxy reports (`/metrics`, `/stats`, `/diff`, `/diff.html`,
//! `/healthz`, `/targets`) and what an operator changes while it runs (pause, resume and the
//! percentage of one target, the kill switch, a reload). `GET /` lists the endpoints.
//!
//! JSON in and out. Off unless `--admin` is given. When an admin token is configured, every
//! change needs `Authorization: Bearer TOKEN` (compared in constant time); a missing or wrong
//! one is answered 401, counted and logged at most once a second. Reading needs no token:
//! bind the listener to loopback or a private interface all the same (SECURITY.md).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_mirror::diff::Diff;
use tower_mirror::{ControlError, MirrorHandle};

use crate::reload::{Live, Reloaded, Source};

#[derive(Clone)]
struct Admin {
    live: Arc<Live>,
}

/// The endpoints, as `GET /` lists them.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/", "this list"),
    ("GET", "/healthz", "liveness: `ok`"),
    ("GET", "/metrics", "Prometheus text exposition"),
    ("GET", "/stats", "every counter, as JSON"),
    ("GET", "/diff", "the comparison report, as JSON"),
    ("GET", "/diff.html", "the comparison report, as a page"),
    (
        "GET",
        "/targets",
        "each target: name, url, percentage, enabled (not paused)",
    ),
    (
        "POST",
        "/targets/{name}/pause",
        "stop mirroring to one target",
    ),
    ("POST", "/targets/{name}/resume", "mirror to it again"),
    (
        "PUT",
        "/targets/{name}/percentage",
        "body {\"percentage\": 0..100}: its share of requests",
    ),
    (
        "GET",
        "/mirroring",
        "whether mirroring is on (the kill switch)",
    ),
    (
        "POST",
        "/mirroring/disable",
        "the kill switch: stop all mirroring now",
    ),
    ("POST", "/mirroring/enable", "mirror again"),
    (
        "POST",
        "/reload",
        "re-read the --config file and apply it, or nothing of it (as SIGHUP does)",
    ),
];

/// The admin routes, acting on `live`.
pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/diff", get(diff_json))
        .route("/diff.html", get(diff_html))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/targets", get(targets))
        .route("/targets/{name}/pause", post(pause))
        .route("/targets/{name}/resume", post(resume))
        .route("/targets/{name}/percentage", put(percentage))
        .route("/mirroring", get(mirroring))
        .route("/mirroring/disable", post(disable))
        .route("/mirroring/enable", post(enable))
        .route("/reload", post(reload))
        .with_state(Admin { live })
}

async fn index(State(admin): State<Admin>) -> Response {
    let endpoints: Vec<Value> = ENDPOINTS
        .iter()
        .map(|(method, path, what)| json!({ "method": method, "path": path, "description": what }))
        .collect();
    axum::Json(json!({
        "endpoints": endpoints,
        "token_required": admin.live.token().is_some(),
    }))
    .into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    match admin
        .live
        .telemetry()
        .render_prometheus(admin.live.mirror())
    {
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
    let report = admin.live.diff().as_ref().map(Diff::report);
    axum::Json(crate::diff_page::json(report.as_ref())).into_response()
}

async fn diff_html(State(admin): State<Admin>) -> Response {
    let report = admin.live.diff().as_ref().map(Diff::report);
    axum::response::Html(crate::diff_page::html(
        report.as_ref(),
        admin.live.has_baseline(),
    ))
    .into_response()
}

async fn stats(State(admin): State<Admin>) -> Response {
    axum::Json(admin.live.telemetry().stats_json(admin.live.mirror())).into_response()
}

/// Every target, with its live settings and its main counters.
fn target_list(mirror: &MirrorHandle) -> Vec<Value> {
    let stats = mirror.stats();
    mirror
        .targets()
        .into_iter()
        .map(|t| {
            let counts = stats.targets.iter().find(|s| s.name == t.name);
            json!({
                "name": t.name,
                "url": t.url,
                "percentage": t.percentage,
                "enabled": t.enabled,
                "sampled": counts.map(|c| c.sampled),
                "sent": counts.map(|c| c.sent),
                "paused": counts.map(|c| c.paused),
            })
        })
        .collect()
}

async fn targets(State(admin): State<Admin>) -> Response {
    let list = admin.live.mirror().map(target_list).unwrap_or_default();
    axum::Json(list).into_response()
}

async fn mirroring(State(admin): State<Admin>) -> Response {
    match admin.live.mirror() {
        Some(mirror) => axum::Json(json!({ "enabled": mirror.is_enabled() })).into_response(),
        None => no_layer(),
    }
}

/// A JSON error.
fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn no_layer() -> Response {
    failure(
        StatusCode::CONFLICT,
        "this proxy has no mirror layer (it started without mirror targets): nothing to change",
    )
}

fn control_failure(error: &ControlError) -> Response {
    match error {
        ControlError::UnknownTarget { .. } => failure(StatusCode::NOT_FOUND, error.to_string()),
        _ => failure(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// The target `name` as `/targets` shows it, after a change.
fn one_target(mirror: &MirrorHandle, name: &str) -> Response {
    match target_list(mirror).into_iter().find(|t| t["name"] == name) {
        Some(target) => axum::Json(target).into_response(),
        None => failure(StatusCode::NOT_FOUND, format!("no target named {name:?}")),
    }
}

async fn pause(admin: Authorized, Path(name): Path<String>) -> Response {
    let Some(mirror) = admin.live.mirror() else {
        return no_layer();
    };
    match mirror.pause(&name) {
        Ok(()) => {
            tracing::info!(source = Source::Admin.label(), peer = %admin.peer, target = %name, "target paused");
            one_target(mirror, &name)
        }
        Err(error) => control_failure(&error),
    }
}

async fn resume(admin: Authorized, Path(name): Path<String>) -> Response {
    let Some(mirror) = admin.live.mirror() else {
        return no_layer();
    };
    match mirror.resume(&name) {
        Ok(()) => {
            tracing::info!(source = Source::Admin.label(), peer = %admin.peer, target = %name, "target resumed");
            one_target(mirror, &name)
        }
        Err(error) => control_failure(&error),
    }
}

/// The body of `PUT /targets/{name}/percentage`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentageBody {
    percentage: u32,
}

async fn percentage(admin: Authorized, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(mirror) = admin.live.mirror() else {
        return no_layer();
    };
    let percentage = match serde_json::from_slice::<PercentageBody>(&body) {
        Ok(body) => body.percentage,
        Err(error) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"percentage\": N}} with N a whole number from 0 to 100: {error}"
                ),
            );
        }
    };
    let before = mirror
        .targets()
        .into_iter()
        .find(|t| t.name == name)
        .map(|t| t.percentage);
    match mirror.set_percentage(&name, percentage) {
        Ok(()) => {
            tracing::info!(
                source = Source::Admin.label(),
                peer = %admin.peer,
                target = %name,
                from = before,
                to = percentage,
                "target percentage set"
            );
            one_target(mirror, &name)
        }
        Err(error) => control_failure(&error),
    }
}

async fn disable(admin: Authorized) -> Response {
    switch(&admin, false)
}

async fn enable(admin: Authorized) -> Response {
    switch(&admin, true)
}

/// The kill switch.
fn switch(admin: &Authorized, on: bool) -> Response {
    let Some(mirror) = admin.live.mirror() else {
        return no_layer();
    };
    if on {
        mirror.enable();
        tracing::info!(source = Source::Admin.label(), peer = %admin.peer, "mirroring enabled");
    } else {
        mirror.disable();
        tracing::info!(source = Source::Admin.label(), peer = %admin.peer, "mirroring disabled (kill switch)");
    }
    axum::Json(json!({ "enabled": mirror.is_enabled() })).into_response()
}

async fn reload(admin: Authorized) -> Response {
    tracing::debug!(peer = %admin.peer, "reload asked for");
    match admin.live.reload(Source::Admin) {
        Ok(Reloaded {
            added,
            removed,
            changed,
            settings,
        }) => axum::Json(json!({
            "added": added,
            "removed": removed,
            "changed": changed,
            "settings": settings,
        }))
        .into_response(),
        Err(error) => failure(StatusCode::BAD_REQUEST, error.0),
    }
}

/// A request allowed to change something: when a token is configured, it carried it.
struct Authorized {
    live: Arc<Live>,
    peer: String,
}

impl FromRequestParts<Admin> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
        let live = Arc::clone(&admin.live);
        let Some(token) = live.token() else {
            return Ok(Self { live, peer });
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()));
        let reason = match presented {
            Some(presented) if token.matches(presented) => return Ok(Self { live, peer }),
            Some(_) => "wrong token",
            None => "no bearer token",
        };
        live.telemetry().record_unauthorized(&format_args!(
            "{reason} from {peer} for {} {}",
            parts.method, parts.uri
        ));
        let mut response = failure(
            StatusCode::UNAUTHORIZED,
            "this admin endpoint needs Authorization: Bearer <token> (the --admin-token-file's)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mirror-proxy admin\""),
        );
        Err(response)
    }
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
