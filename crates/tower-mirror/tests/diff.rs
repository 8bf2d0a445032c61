//! Shadow diffing against real servers on loopback: the differences reported are exactly the
//! ones the builds have, noise is cancelled by a baseline, ignore rules hold, the report is
//! bounded, and the primary never waits for a comparison.
#![cfg(feature = "diff")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use support::{Gate, eventually, get as http_get, post as http_post, serve};
use tower_mirror::diff::{Change, Comparison, Diff, DiffOptions, Part};
use tower_mirror::{ConfigError, MirrorLayer, Options, Target};

/// Which build of the app a server runs.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    /// The current build (the primary, and the baseline).
    Current,
    /// The build under test: `name` renamed `full_name`, orders answer 200 instead of 201, and
    /// it says so in `x-build`.
    Candidate,
}

/// A value no two answers share, like a timestamp.
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

fn app(build: Build, gate: Option<Gate>) -> Router {
    let user = move |Path(id): Path<u64>| {
        let gate = gate.clone();
        async move {
            if let Some(gate) = gate {
                gate.wait().await;
            }
            let mut user = json!({
                "id": id,
                "served_at": unique(),
                "items": [{"sku": "a", "updated_at": unique()}, {"sku": "b", "updated_at": unique()}],
            });
            let name_field = if build == Build::Candidate {
                "full_name"
            } else {
                "name"
            };
            user[name_field] = json!("Ada");
            let x_build = if build == Build::Candidate { "2" } else { "1" };
            ([("x-build", x_build), ("date", "varies")], axum::Json(user))
        }
    };
    let order = move |body: Bytes| async move {
        let status = if build == Build::Candidate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        (status, format!("ordered {} bytes", body.len()))
    };
    Router::new()
        .route("/users/{id}", get(user))
        .route("/orders", post(order))
        .route("/big", get(|| async { "x".repeat(10_000).into_response() }))
}

/// Collects every comparison, and keeps the diff observer for its report.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Comparison>>>, Arc<std::sync::OnceLock<Diff>>);

impl Seen {
    fn options(&self, targets: Vec<Target>, diff: DiffOptions) -> Options {
        let seen = self.clone();
        let diff = Diff::new(DiffOptions {
            on_comparison: Some(Arc::new(move |c: &Comparison| {
                seen.0.lock().unwrap().push(c.clone());
            })),
            ..diff
        })
        .unwrap();
        self.1.set(diff.clone()).expect("one diff per Seen");
        Options {
            targets,
            observers: vec![Arc::new(diff)],
            ..Options::default()
        }
    }

    fn report(&self) -> tower_mirror::diff::DiffReport {
        self.1.get().expect("options() first").report()
    }

    async fn wait_for(&self, n: usize) -> Vec<Comparison> {
        eventually(&format!("{n} comparisons"), || {
            self.0.lock().unwrap().len() >= n
        })
        .await;
        self.0.lock().unwrap().clone()
    }
}

fn summary(differences: &[tower_mirror::diff::Difference]) -> Vec<(Part, String, Change)> {
    let mut found: Vec<_> = differences
        .iter()
        .map(|d| (d.part, d.path.clone(), d.change))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn the_differences_reported_are_exactly_the_builds_differences() {
    let candidate = serve(app(Build::Candidate, None)).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![Target::new(candidate.url.clone()).with_comparison()],
        DiffOptions {
            ignore_fields: vec!["/served_at".into(), "/items/*/updated_at".into()],
            ..DiffOptions::default()
        },
    ))
    .unwrap();
    let primary = serve(app(Build::Current, None).layer(layer.clone())).await;

    for id in [7, 8, 9] {
        let answer = http_get(&format!("{}/users/{id}", primary.url)).await;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["name"], "Ada", "the primary's answer is its own");
        assert_eq!(answer.headers["x-build"], "1");
    }
    http_post(&format!("{}/orders", primary.url), "two items").await;

    let comparisons = seen.wait_for(4).await;
    let user = comparisons
        .iter()
        .find(|c| c.uri.path() == "/users/7")
        .unwrap();
    assert_eq!(user.route, "GET /users/{id}");
    assert_eq!(user.target, candidate.url);
    assert!(user.body_compared);
    assert_eq!(
        summary(&user.differences),
        [
            (Part::Header, "x-build".to_owned(), Change::Changed),
            (Part::Body, "/full_name".to_owned(), Change::Added),
            (Part::Body, "/name".to_owned(), Change::Removed),
        ]
    );
    let order = comparisons
        .iter()
        .find(|c| c.uri.path() == "/orders")
        .unwrap();
    assert_eq!(
        (order.primary_status.as_u16(), order.shadow_status.as_u16()),
        (201, 200)
    );
    assert_eq!(
        summary(&order.differences),
        [(Part::Status, String::new(), Change::Changed)]
    );

    let report = seen.report();
    let users = report
        .routes
        .iter()
        .find(|r| r.route == "GET /users/{id}")
        .unwrap();
    assert_eq!((users.compared, users.equal), (3, 0));
    assert_eq!(
        (
            users.differing_status,
            users.differing_headers,
            users.differing_body
        ),
        (0, 3, 3)
    );
    let name = users.fields.iter().find(|f| f.path == "/name").unwrap();
    assert_eq!((name.part, name.differing, name.noise), (Part::Body, 3, 0));
    assert_eq!(name.examples[0].primary.as_deref(), Some("\"Ada\""));
    assert_eq!(name.examples[0].shadow, None);
    assert_eq!(users.primary_latency.samples, 3);
    assert!(users.shadow_latency.p50.is_some());
    let orders = report
        .routes
        .iter()
        .find(|r| r.route == "POST /orders")
        .unwrap();
    assert_eq!((orders.compared, orders.differing_status), (1, 1));
}

#[tokio::test]
async fn a_field_that_changes_on_every_call_is_cancelled_as_noise_by_the_baseline() {
    let candidate = serve(app(Build::Candidate, None)).await;
    let baseline = serve(app(Build::Current, None)).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![
            Target::new(candidate.url.clone()).with_comparison(),
            Target::new(baseline.url.clone()).as_baseline(),
        ],
        DiffOptions::default(),
    ))
    .unwrap();
    let primary = serve(app(Build::Current, None).layer(layer.clone())).await;

    for id in 1..=4 {
        http_get(&format!("{}/users/{id}", primary.url)).await;
    }
    let comparisons = seen.wait_for(4).await;
    assert_eq!(comparisons.len(), 4, "the baseline itself is not reported");
    for comparison in &comparisons {
        assert_eq!(
            summary(&comparison.differences),
            [
                (Part::Header, "x-build".to_owned(), Change::Changed),
                (Part::Body, "/full_name".to_owned(), Change::Added),
                (Part::Body, "/name".to_owned(), Change::Removed),
            ],
            "only the real regressions: {comparison:?}"
        );
        let noise: Vec<String> = summary(&comparison.noise)
            .into_iter()
            .map(|(_, path, _)| path)
            .collect();
        assert_eq!(
            noise,
            ["/items/0/updated_at", "/items/1/updated_at", "/served_at"]
        );
    }
    let report = seen.report();
    let route = &report.routes[0];
    let served_at = route
        .fields
        .iter()
        .find(|f| f.path == "/served_at")
        .unwrap();
    assert_eq!((served_at.differing, served_at.noise), (0, 4));
    let updated = route
        .fields
        .iter()
        .find(|f| f.path == "/items/*/updated_at")
        .unwrap();
    assert_eq!((updated.differing, updated.noise), (0, 4), "indexes folded");
}

#[tokio::test]
async fn without_a_baseline_the_changing_field_is_reported() {
    let candidate = serve(app(Build::Current, None)).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![Target::new(candidate.url.clone()).with_comparison()],
        DiffOptions::default(),
    ))
    .unwrap();
    let primary = serve(app(Build::Current, None).layer(layer)).await;
    http_get(&format!("{}/users/1", primary.url)).await;
    let comparison = &seen.wait_for(1).await[0];
    let paths: Vec<String> = summary(&comparison.differences)
        .into_iter()
        .map(|(_, path, _)| path)
        .collect();
    assert_eq!(
        paths,
        ["/items/0/updated_at", "/items/1/updated_at", "/served_at"]
    );
}

#[tokio::test]
async fn ignore_rules_and_the_body_cap_hold() {
    let candidate = serve(app(Build::Candidate, None)).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![Target::new(candidate.url.clone()).with_comparison()],
        DiffOptions {
            max_body_bytes: 1000,
            ignore_headers: vec!["x-build".into(), "date".into(), "content-length".into()],
            ignore_fields: vec![
                "/served_at".into(),
                "/items".into(),
                "/name".into(),
                "/full_name".into(),
            ],
            ..DiffOptions::default()
        },
    ))
    .unwrap();
    let primary = serve(app(Build::Current, None).layer(layer.clone())).await;

    http_get(&format!("{}/users/5", primary.url)).await;
    let big = http_get(&format!("{}/big", primary.url)).await;
    assert_eq!(big.body.len(), 10_000, "the primary's body is whole");
    let comparisons = seen.wait_for(2).await;
    let user = comparisons
        .iter()
        .find(|c| c.uri.path() == "/users/5")
        .unwrap();
    assert!(
        user.is_equal(),
        "every difference is ignored: {:?}",
        user.differences
    );
    let big = comparisons.iter().find(|c| c.uri.path() == "/big").unwrap();
    assert!(!big.body_compared);
    assert!(big.is_equal());
    let report = seen.report();
    let big_route = report
        .routes
        .iter()
        .find(|r| r.route == "GET /big")
        .unwrap();
    assert_eq!(big_route.body_not_compared, 1);
}

#[tokio::test]
async fn the_primary_never_waits_for_the_comparison() {
    let gate = Gate::closed();
    let candidate = serve(app(Build::Candidate, Some(gate.clone()))).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![Target::new(candidate.url.clone()).with_comparison()],
        DiffOptions::default(),
    ))
    .unwrap();
    let plain = serve(app(Build::Current, None)).await;
    let primary = serve(app(Build::Current, None).layer(layer.clone())).await;

    let compared = http_get(&format!("{}/users/3", primary.url)).await;
    let direct = http_get(&format!("{}/users/3", plain.url)).await;
    // The same answer as without the layer (the unique stamps aside), while the shadow still
    // holds the request and nothing has been compared.
    let mut a: serde_json::Value = serde_json::from_slice(&compared.body).unwrap();
    let mut b: serde_json::Value = serde_json::from_slice(&direct.body).unwrap();
    for v in [&mut a, &mut b] {
        v["served_at"] = json!(0);
        v["items"] = json!(null);
    }
    assert_eq!((compared.status, a), (direct.status, b));
    assert_eq!(layer.stats().targets[0].in_flight, 1);
    assert!(seen.0.lock().unwrap().is_empty());

    gate.open();
    assert_eq!(seen.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn a_primary_body_not_read_to_its_end_is_not_compared() {
    use tower::{Service, ServiceExt};
    let candidate = serve(app(Build::Candidate, None)).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![Target::new(candidate.url.clone()).with_comparison()],
        DiffOptions::default(),
    ))
    .unwrap();
    let mut service = tower::Layer::layer(&layer, app(Build::Current, None));

    // The client goes away before reading the body: nothing to compare with.
    let request = Request::get("/users/1")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    drop(response);
    assert!(layer.drain(support::DEADLINE).await.is_complete());

    // A later request read to its end is compared; the first one never was.
    let request = Request::get("/users/2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    let comparisons = seen.wait_for(1).await;
    assert_eq!(comparisons.len(), 1);
    assert_eq!(comparisons[0].uri.path(), "/users/2");
}

#[tokio::test]
async fn the_report_is_bounded() {
    let candidate = serve(app(Build::Candidate, None)).await;
    let seen = Seen::default();
    let layer = MirrorLayer::with_options(seen.options(
        vec![Target::new(candidate.url.clone()).with_comparison()],
        DiffOptions {
            max_routes: 1,
            max_fields: 2,
            max_examples: 1,
            ..DiffOptions::default()
        },
    ))
    .unwrap();
    let primary = serve(app(Build::Current, None).layer(layer.clone())).await;
    for id in 1..=3 {
        http_get(&format!("{}/users/{id}", primary.url)).await;
    }
    seen.wait_for(3).await;
    http_post(&format!("{}/orders", primary.url), "x").await;
    seen.wait_for(4).await;

    let report = seen.report();
    assert_eq!(report.routes.len(), 1);
    assert_eq!(
        report.untracked_routes, 1,
        "the second route is only counted"
    );
    let route = &report.routes[0];
    assert_eq!(route.fields.len(), 2);
    assert!(route.untracked_fields > 0);
    assert!(route.fields.iter().all(|f| f.examples.len() <= 1));
}

#[test]
fn comparison_roles_are_checked() {
    let err = |targets: Vec<Target>, diff: DiffOptions| {
        Diff::new(diff)
            .and_then(|diff| {
                MirrorLayer::with_options(Options {
                    targets,
                    observers: vec![Arc::new(diff)],
                    ..Options::default()
                })
            })
            .unwrap_err()
    };
    let baseline_alone = err(
        vec![Target::new("http://b").as_baseline()],
        DiffOptions::default(),
    );
    assert!(
        baseline_alone
            .to_string()
            .contains("baseline needs at least one compared")
    );
    let two = err(
        vec![
            Target::new("http://c").with_comparison(),
            Target::new("http://b1").as_baseline(),
            Target::new("http://b2").as_baseline(),
        ],
        DiffOptions::default(),
    );
    assert!(
        two.to_string()
            .contains("at most one target can be the baseline")
    );
    let both = err(
        vec![Target::new("http://x").with_comparison().as_baseline()],
        DiffOptions::default(),
    );
    assert!(matches!(both, ConfigError::InvalidTarget { ref url, .. } if url == "http://x"));
    let pattern = err(
        vec![Target::new("http://c").with_comparison()],
        DiffOptions {
            ignore_fields: vec!["items/*".into()],
            ..DiffOptions::default()
        },
    );
    assert!(pattern.to_string().contains("diff.ignore_fields"));
}
