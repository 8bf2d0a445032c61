//! Each target's own connection pool, against real slow servers on loopback: a mirror is sent
//! only when it can be written at once, never queued inside a client; HTTP/2 targets scale
//! out to more connections under the peer's stream limit; HTTP/1.1 targets hold at most
//! `max_connections`; every exchange that went out has a latency, even a failed one.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use support::{Gate, Reply, Shadow, settled};
use tower::{Layer, Service, ServiceExt};
use tower_mirror::{MirrorLayer, Options, Target, TargetStats};

/// Sends one request through `layer` to a primary that reads the body and answers at once.
async fn primary(layer: &MirrorLayer) {
    let mut service = layer.layer(tower::service_fn(|request: Request<_>| async move {
        let _ = BodyExt::collect(request.into_body()).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"primary"))))
    }));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::new(Bytes::from_static(b"{}"))))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn target(layer: &MirrorLayer) -> TargetStats {
    layer.stats().targets.remove(0)
}

fn layer(target: Target, timeout: Duration) -> MirrorLayer {
    MirrorLayer::with_options(Options {
        targets: vec![target],
        max_in_flight: 1000,
        timeout,
        ..Options::default()
    })
    .unwrap()
}

/// Waits until the shadow has every mirror that went out: a mirror counted as sent but not
/// received would be waiting somewhere inside the client.
async fn all_sent_arrive(layer: &MirrorLayer, shadow: &Shadow) {
    let sent = target(layer).sent as usize;
    shadow.wait_for(sent).await;
    assert_eq!(shadow.count(), sent, "the shadow got more than was sent");
}

/// The current-thread runtime keeps the mirrors on one thread, so that which connection a
/// mirror takes does not depend on scheduling.
#[tokio::test]
async fn an_http2_target_scales_out_to_its_limit_and_nothing_queues() {
    const STREAMS: u32 = 4;
    const CONNECTIONS: usize = 2;
    let gate = Gate::closed();
    let shadow = Shadow::with_reply(Reply {
        gate: Some(gate.clone()),
        max_streams: Some(STREAMS),
        ..Reply::default()
    })
    .await;
    let layer = layer(
        Target::new(&shadow.url)
            .with_http2()
            .max_connections(CONNECTIONS),
        Duration::from_secs(30),
    );
    let capacity = STREAMS as usize * CONNECTIONS;

    // One mirror at a time, each waited for at the shadow (which holds them all), until the
    // pool is full: a new connection takes one stream until the peer's SETTINGS say four.
    let mut attempts = 0;
    while target(&layer).in_flight < capacity {
        attempts += 1;
        assert!(
            attempts <= 100,
            "the pool never filled: {:?}",
            target(&layer)
        );
        primary(&layer).await;
        all_sent_arrive(&layer, &shadow).await;
    }
    // Full: every further mirror is dropped at once, none waits for a stream.
    for _ in 0..20 {
        primary(&layer).await;
    }
    let full = target(&layer);
    assert_eq!(full.sent as usize, capacity, "{full:?}");
    assert_eq!(full.in_flight, capacity, "{full:?}");
    assert_eq!(full.connections, CONNECTIONS, "{full:?}");
    assert_eq!(
        full.dropped_no_connection,
        full.sampled - full.sent,
        "{full:?}"
    );
    assert!(full.dropped_no_connection >= 20, "{full:?}");
    all_sent_arrive(&layer, &shadow).await;
    assert_eq!(shadow.connections(), CONNECTIONS);

    // Released: every mirror that went out is answered; the peer refused none.
    gate.open();
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.responded as usize, capacity, "{stats:?}");
    assert_eq!((stats.failed, stats.timed_out), (0, 0), "{stats:?}");
    assert_eq!(
        stats.sampled,
        stats.sent + stats.dropped_no_connection,
        "{stats:?}"
    );

    // The streams are free again, on the same connections.
    for _ in 0..capacity {
        primary(&layer).await;
    }
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.responded as usize, 2 * capacity, "{stats:?}");
    assert_eq!(shadow.connections(), CONNECTIONS);
}

#[tokio::test]
async fn an_http1_target_holds_at_most_max_connections_and_reuses_them() {
    const CONNECTIONS: usize = 3;
    let gate = Gate::closed();
    let shadow = Shadow::gated(&gate).await;
    let layer = layer(
        Target::new(&shadow.url).max_connections(CONNECTIONS),
        Duration::from_secs(30),
    );

    for _ in 0..10 {
        primary(&layer).await;
    }
    let held = target(&layer);
    assert_eq!(held.sent as usize, CONNECTIONS, "{held:?}");
    assert_eq!(
        held.dropped_no_connection,
        10 - CONNECTIONS as u64,
        "{held:?}"
    );
    assert_eq!(held.connections, CONNECTIONS, "{held:?}");
    all_sent_arrive(&layer, &shadow).await;

    gate.open();
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.responded as usize, CONNECTIONS, "{stats:?}");
    // Idle now, and reused: one at a time, the later mirrors open nothing new.
    for _ in 0..5 {
        primary(&layer).await;
        settled(&layer).await;
    }
    let stats = target(&layer);
    assert_eq!(stats.responded as usize, CONNECTIONS + 5, "{stats:?}");
    assert_eq!(shadow.connections(), CONNECTIONS);
    assert_eq!(stats.connections, CONNECTIONS, "{stats:?}");

    // A replacement that keeps the target keeps its pool too.
    let handle = layer.handle();
    handle
        .replace(Options {
            targets: vec![Target::new(&shadow.url).max_connections(CONNECTIONS)],
            max_in_flight: 1000,
            ..Options::default()
        })
        .unwrap();
    primary(&layer).await;
    settled(&layer).await;
    assert_eq!(shadow.connections(), CONNECTIONS, "the pool was kept");
}

/// What the error callback saw: whether the error was a timeout, and its latency.
type Seen = Arc<Mutex<Vec<(bool, Option<Duration>)>>>;

fn watching(target: Target, timeout: Duration) -> (MirrorLayer, Seen) {
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    let layer = MirrorLayer::with_options(Options {
        targets: vec![target],
        timeout,
        on_error: Some(Arc::new(move |_, error: &tower_mirror::MirrorError| {
            record
                .lock()
                .unwrap()
                .push((error.is_timeout(), error.latency()));
        })),
        ..Options::default()
    })
    .unwrap();
    (layer, seen)
}

#[tokio::test]
async fn a_timeout_after_the_request_went_out_has_a_latency_and_a_refusal_has_none() {
    let timeout = Duration::from_millis(200);
    let gate = Gate::closed();
    let hanging = Shadow::gated(&gate).await;
    let (layer, seen) = watching(Target::new(&hanging.url), timeout);
    primary(&layer).await;
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    let (is_timeout, latency) = seen.lock().unwrap()[0];
    assert!(is_timeout);
    let latency = latency.expect("a request that went out has a latency");
    assert!(latency > Duration::ZERO, "{latency:?}");
    gate.open();

    let (layer, seen) = watching(Target::new(support::refused_url().await), timeout);
    primary(&layer).await;
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!((stats.failed, stats.timed_out), (1, 0), "{stats:?}");
    assert_eq!(seen.lock().unwrap()[0], (false, None), "never went out");
}

/// A stream abandoned mid-exchange (here by the timeout) is reset, and h2 counts it until
/// the reset is written: its connection takes no more streams and closes once free, so that
/// no later mirror waits behind it.
#[tokio::test]
async fn an_http2_connection_with_an_abandoned_stream_is_retired() {
    let gate = Gate::closed();
    let shadow = Shadow::with_reply(Reply {
        gate: Some(gate.clone()),
        ..Reply::default()
    })
    .await;
    let layer = layer(
        Target::new(&shadow.url).with_http2().max_connections(1),
        Duration::from_millis(200),
    );
    primary(&layer).await;
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    support::eventually("the draining connection to close", || {
        target(&layer).connections == 0
    })
    .await;

    gate.open();
    primary(&layer).await;
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.responded, 1, "{stats:?}");
    assert_eq!(
        shadow.connections(),
        2,
        "a new connection for the next mirror"
    );
}

/// A removed target's idle connections close at once, not when the sweep finds them.
#[tokio::test]
async fn a_removed_target_closes_its_connections() {
    let kept = Shadow::start().await;
    let removed = Shadow::start().await;
    let options = |targets: Vec<Target>| Options {
        targets,
        ..Options::default()
    };
    let layer = MirrorLayer::with_options(options(vec![
        Target::new(&kept.url).with_name("kept"),
        Target::new(&removed.url).with_name("removed"),
    ]))
    .unwrap();
    primary(&layer).await;
    let stats = settled(&layer).await;
    assert_eq!(stats.targets[1].connections, 1, "{stats:?}");

    layer
        .handle()
        .replace(options(vec![Target::new(&kept.url).with_name("kept")]))
        .unwrap();
    support::eventually("the removed target's connection to close", || {
        let stats = layer.stats();
        stats.targets[1].removed && stats.targets[1].connections == 0
    })
    .await;
    assert_eq!(
        layer.stats().targets[0].connections,
        1,
        "the kept one stays"
    );
}

/// Traffic while the target's pool is replaced over and over (its connection limit changing,
/// so each replacement opens a new pool): every mirror is accounted for and every one sent is
/// answered, and once the target is removed its connections close at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_replaced_under_traffic_account_for_every_mirror_and_close() {
    let shadow = Shadow::with_reply(Reply {
        max_streams: Some(8),
        ..Reply::default()
    })
    .await;
    let other = Shadow::start().await;
    let options = |max: usize| Options {
        targets: vec![
            Target::new(&shadow.url)
                .with_name("h2")
                .with_http2()
                .max_connections(max),
            Target::new(&other.url).with_name("other"),
        ],
        max_in_flight: 1000,
        ..Options::default()
    };
    let layer = MirrorLayer::with_options(options(1)).unwrap();
    let handle = layer.handle();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let layer = layer.clone();
            tokio::spawn(async move {
                for _ in 0..150 {
                    primary(&layer).await;
                }
            })
        })
        .collect();
    for round in 0..30 {
        handle.replace(options(1 + round % 3)).unwrap();
        tokio::task::yield_now().await;
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let stats = settled(&layer).await;
    let h2 = &stats.targets[0];
    assert_eq!(h2.sampled, 600, "{h2:?}");
    assert_eq!(
        h2.sampled,
        h2.sent + h2.dropped_overload + h2.dropped_no_connection,
        "{h2:?}"
    );
    assert_eq!(h2.sent, h2.responded, "{h2:?}");
    assert_eq!(shadow.count() as u64, h2.responded);

    handle
        .replace(Options {
            targets: vec![Target::new(&other.url).with_name("other")],
            ..Options::default()
        })
        .unwrap();
    eventually_closed(&layer).await;
}

async fn eventually_closed(layer: &MirrorLayer) {
    support::eventually("the removed target's connections to close", || {
        let stats = layer.stats();
        stats
            .targets
            .iter()
            .find(|t| t.name == "h2")
            .is_some_and(|t| t.removed && t.connections == 0)
    })
    .await;
}
