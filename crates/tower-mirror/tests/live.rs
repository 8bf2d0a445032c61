//! Operating a running layer through its handle: the kill switch, pausing a target, changing
//! its percentage and replacing the whole configuration while requests run, against real
//! shadow servers on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use http::{Request, StatusCode};
use support::{Gate, Shadow, settled};
use tower::ServiceExt;
use tower_mirror::{
    ConfigError, ControlError, MirrorHandle, MirrorLayer, Options, Target, TargetStats,
};

fn app(layer: MirrorLayer) -> Router {
    Router::new()
        .fallback(any(|| async { "primary" }))
        .layer(layer)
}

/// Sends `GET path` through `app`; the primary must answer 200.
async fn get(app: &Router, path: &str) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
}

fn target<'a>(stats: &'a [TargetStats], name: &str) -> &'a TargetStats {
    stats
        .iter()
        .find(|t| t.name == name && !t.removed)
        .unwrap_or_else(|| panic!("no target {name}: {stats:?}"))
}

fn paths(shadow: &Shadow) -> Vec<String> {
    shadow
        .received()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect()
}

#[tokio::test]
async fn the_kill_switch_stops_new_mirrors_and_lets_in_flight_ones_finish() {
    let gate = Gate::closed();
    let shadow = Shadow::gated(&gate).await;
    let (layer, handle) = MirrorLayer::pair(Options {
        targets: vec![Target::new(shadow.url.clone())],
        ..Options::default()
    })
    .unwrap();
    let app = app(layer.clone());
    get(&app, "/before").await;
    shadow.wait_for(1).await; // in flight: the shadow holds its answer
    handle.disable();
    assert!(!handle.is_enabled());
    get(&app, "/during").await;
    gate.open();
    let stats = settled(&layer).await;
    assert_eq!(
        stats.targets[0].responded, 1,
        "the mirror in flight finished"
    );
    assert_eq!(stats.not_mirrored.disabled, 1);
    assert_eq!(paths(&shadow), ["/before"]);
    handle.enable();
    get(&app, "/after").await;
    settled(&layer).await;
    assert_eq!(paths(&shadow), ["/before", "/after"]);
}

#[tokio::test]
async fn a_paused_target_gets_nothing_and_counts_it() {
    let (a, b) = (Shadow::start().await, Shadow::start().await);
    let (layer, handle) = MirrorLayer::pair(Options {
        targets: vec![
            Target::new(a.url.clone()).with_name("a"),
            Target::new(b.url.clone()).with_name("b"),
        ],
        ..Options::default()
    })
    .unwrap();
    let app = app(layer.clone());
    handle.pause("a").unwrap();
    assert_eq!(
        handle.pause("nope"),
        Err(ControlError::UnknownTarget {
            name: "nope".into()
        })
    );
    for i in 0..5 {
        get(&app, &format!("/p/{i}")).await;
    }
    let statuses = handle.targets();
    assert!(!statuses[0].enabled && statuses[1].enabled, "{statuses:?}");
    handle.resume("a").unwrap();
    get(&app, "/resumed").await;
    let stats = settled(&layer).await;
    assert_eq!(
        (
            target(&stats.targets, "a").paused,
            target(&stats.targets, "a").sampled
        ),
        (5, 1)
    );
    assert_eq!(target(&stats.targets, "b").sampled, 6);
    assert_eq!(paths(&a), ["/resumed"]);
    assert_eq!(b.count(), 6);
}

#[tokio::test]
async fn a_percentage_change_takes_effect_on_the_next_request() {
    let shadow = Shadow::start().await;
    let (layer, handle) = MirrorLayer::pair(Options {
        targets: vec![Target::percentage(shadow.url.clone(), 100).with_name("t")],
        ..Options::default()
    })
    .unwrap();
    let app = app(layer.clone());
    for i in 0..7 {
        get(&app, &format!("/full/{i}")).await;
    }
    handle.set_percentage("t", 25).unwrap();
    assert_eq!(handle.targets()[0].percentage, 25);
    for i in 0..100 {
        get(&app, &format!("/quarter/{i}")).await;
    }
    settled(&layer).await;
    let quarter = paths(&shadow)
        .iter()
        .filter(|p| p.starts_with("/quarter/"))
        .count();
    assert_eq!(quarter, 25, "exactly 25 of the next 100");
    assert_eq!(
        handle.set_percentage("t", 101),
        Err(ControlError::PercentageOutOfRange { percentage: 101 })
    );
}

#[tokio::test]
async fn a_replacement_keeps_what_it_keeps_and_an_invalid_one_changes_nothing() {
    let (a, b, c) = (
        Shadow::start().await,
        Shadow::start().await,
        Shadow::start().await,
    );
    let options = |targets: Vec<Target>| Options {
        targets,
        ..Options::default()
    };
    let (layer, handle) = MirrorLayer::pair(options(vec![
        Target::new(a.url.clone()).with_name("a"),
        Target::new(b.url.clone()).with_name("b"),
    ]))
    .unwrap();
    let app = app(layer.clone());
    for i in 0..4 {
        get(&app, &format!("/one/{i}")).await;
    }
    settled(&layer).await;
    let connections_before = a.connections();

    // Invalid: refused whole, the running configuration untouched.
    let bad = handle.replace(options(vec![
        Target::new(a.url.clone()).with_name("a"),
        Target::new("ftp://nope").with_name("c"),
    ]));
    assert!(
        matches!(bad, Err(ConfigError::InvalidTarget { .. })),
        "{bad:?}"
    );
    assert_eq!(handle.targets().len(), 2);

    // a kept at 50 %, b removed, c added.
    let changes = handle
        .replace(options(vec![
            Target::percentage(a.url.clone(), 50).with_name("a"),
            Target::new(c.url.clone()).with_name("c"),
        ]))
        .unwrap();
    assert_eq!(changes.added, ["c"]);
    assert_eq!(changes.removed, ["b"]);
    assert_eq!(changes.changed, ["a"]);
    for i in 0..4 {
        get(&app, &format!("/two/{i}")).await;
    }
    let stats = settled(&layer).await;
    let kept = target(&stats.targets, "a");
    assert_eq!(kept.sampled, 4 + 2, "counters kept, then 50 %");
    assert_eq!(
        a.connections(),
        connections_before,
        "the pooled connection kept"
    );
    let removed = stats.targets.iter().find(|t| t.name == "b").unwrap();
    assert!(removed.removed && removed.sampled == 4, "{removed:?}");
    assert_eq!(target(&stats.targets, "c").sampled, 4);

    // The next replacement forgets the removed target.
    handle
        .replace(options(vec![Target::new(c.url.clone()).with_name("c")]))
        .unwrap();
    let stats = handle.stats();
    assert!(stats.targets.iter().all(|t| t.name != "b"), "{stats:?}");
}

/// Replacements racing with requests: every primary answers, no mirror is lost or counted
/// twice, and a kept target's `sampled` never goes backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacements_racing_with_requests_lose_nothing() {
    let (a, b) = (Shadow::start().await, Shadow::start().await);
    let (layer, handle) = MirrorLayer::pair(Options {
        targets: vec![Target::new(a.url.clone()).with_name("a")],
        ..Options::default()
    })
    .unwrap();
    let app = app(layer.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (app, stop) = (app.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                    get(&app, &format!("/load/{w}/{sent}")).await;
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut last_sampled = 0;
    for round in 0..20 {
        let mut targets =
            vec![Target::percentage(a.url.clone(), 50 + round % 2 * 50).with_name("a")];
        if round % 2 == 0 {
            targets.push(Target::new(b.url.clone()).with_name("b"));
        }
        handle
            .replace(Options {
                targets,
                ..Options::default()
            })
            .unwrap();
        // Some requests of our own between replacements, besides the background load.
        for i in 0..4 {
            get(&app, &format!("/probe/{round}/{i}")).await;
        }
        let sampled = target(&handle.stats().targets, "a").sampled;
        assert!(sampled >= last_sampled, "a's sampled went backwards");
        last_sampled = sampled;
    }
    stop.store(true, Ordering::Relaxed);
    let mut requests = 20 * 4; // the probes
    for worker in load {
        requests += worker.await.unwrap();
    }
    let stats = settled(&layer).await;
    let a_stats = target(&stats.targets, "a");
    assert!(a_stats.sampled <= requests && a_stats.sampled >= last_sampled);
    assert_eq!(a_stats.sent, a_stats.responded, "{a_stats:?}");
    assert_eq!(
        a_stats.sampled,
        a_stats.sent + a_stats.dropped_overload,
        "{a_stats:?}"
    );
    assert_eq!(a.count() as u64, a_stats.responded);
}

#[test]
fn a_handle_is_cheap_to_share() {
    fn assert_send_sync<T: Clone + Send + Sync>() {}
    assert_send_sync::<MirrorHandle>();
}
