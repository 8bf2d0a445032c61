//! What `overhead.rs` (timed by criterion) and `instructions.rs` (counted by valgrind) share,
//! so that both measure the same requests, inner service, sender and scenarios.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower_mirror::{MirrorBody, MirrorLayer, Options, SendFuture, ShadowBody, Target};

/// One measured case: `targets` targets at `percentage`, GET or a 64 KiB POST.
pub(crate) struct Scenario {
    /// The name `instructions.rs` takes on its command line.
    #[allow(dead_code)] // each bench reads one of the two names
    pub(crate) name: &'static str,
    /// The criterion group `overhead.rs` reports it under (the letters are the issue's).
    #[allow(dead_code)]
    pub(crate) group: &'static str,
    pub(crate) targets: usize,
    pub(crate) percentage: u32,
    pub(crate) with_body: bool,
}

pub(crate) const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "not_sampled",
        group: "a_not_sampled",
        targets: 1,
        percentage: 0,
        with_body: false,
    },
    // 99 of 100 requests pass the eligibility checks and the sampler and are not taken; the
    // one taken costs its share of a mirror.
    Scenario {
        name: "one_percent",
        group: "a2_one_percent_sampled",
        targets: 1,
        percentage: 1,
        with_body: false,
    },
    Scenario {
        name: "get_one_target",
        group: "b_get_one_target",
        targets: 1,
        percentage: 100,
        with_body: false,
    },
    Scenario {
        name: "post_64k_teed",
        group: "c_post_64k_teed",
        targets: 1,
        percentage: 100,
        with_body: true,
    },
    Scenario {
        name: "get_four_targets",
        group: "d_get_four_targets",
        targets: 4,
        percentage: 100,
        with_body: false,
    },
];

/// The body of every POST: 64 KiB.
pub(crate) fn post_body() -> Bytes {
    Bytes::from(vec![7u8; 64 * 1024])
}

impl Scenario {
    /// The layer for this scenario, its mirrors handed to a sender that counts them in `sent`.
    pub(crate) fn layer(&self, sent: &Arc<AtomicU64>) -> MirrorLayer {
        let targets = (0..self.targets)
            .map(|i| {
                Target::percentage(format!("http://shadow-{i}.internal:8080"), self.percentage)
            })
            .collect();
        MirrorLayer::with_options(Options {
            targets,
            // Never the limit here: a dropped mirror would be cheaper than a sent one.
            max_in_flight: 1 << 20,
            sender: Some(Arc::new(counting_sender(Arc::clone(sent)))),
            ..Options::default()
        })
        .expect("valid benchmark targets")
    }

    /// This scenario's request: the GET, or the POST of `body`.
    pub(crate) fn request(&self, body: &Bytes) -> Request<Full<Bytes>> {
        if self.with_body { post(body) } else { get() }
    }
}

/// Counts what it is asked to send and answers at once: no sockets, no allocation of its own
/// beyond the boxed future the trait requires.
fn counting_sender(sent: Arc<AtomicU64>) -> impl Fn(Request<MirrorBody>) -> SendFuture {
    move |request: Request<MirrorBody>| -> SendFuture {
        sent.fetch_add(1, Ordering::Relaxed);
        drop(request);
        let body: ShadowBody = Empty::new().map_err(|never| match never {}).boxed_unsync();
        Box::pin(ready(Ok(Response::new(body))))
    }
}

/// The inner service: reads the request body to its end, answers 200.
pub(crate) async fn handle<B: Body<Data = Bytes>>(
    request: Request<B>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(Response::new(Empty::new()))
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://app.example/api/users/42?page=2")
        .header("host", "app.example")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "0f9c3a4e")
        .body(Full::default())
        .expect("a valid request")
}

fn post(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://app.example/api/upload")
        .header("host", "app.example")
        .header("content-type", "application/octet-stream")
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .expect("a valid request")
}

/// Waits for the scenario's mirrors, then checks that every one was sent and answered: none
/// dropped or skipped, which would make the mirrored line cheaper than it really is.
pub(crate) async fn assert_every_mirror_sent(layer: &MirrorLayer) {
    let report = layer.drain(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");
    for target in &layer.stats().targets {
        assert_eq!(
            target.dropped_overload + target.skipped.total(),
            0,
            "{target:?}"
        );
        assert_eq!(target.sent, target.responded, "{target:?}");
    }
}
