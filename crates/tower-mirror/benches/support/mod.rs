//! What `overhead.rs` (timed by criterion) and `instructions.rs` (counted by valgrind) share,
//! so that both measure the same requests, inner service, sender and scenarios.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower::{Service, ServiceExt};
use tower_mirror::{
    MirrorBody, MirrorLayer, Options, SampleKey, SendFuture, ShadowBody, Target, TargetStats,
};

/// One measured case: its targets and its request.
pub(crate) struct Scenario {
    /// The name `instructions.rs` takes on its command line.
    #[allow(dead_code)] // each bench reads one of the two names
    pub(crate) name: &'static str,
    /// The criterion group `overhead.rs` reports it under (the letters are the issues').
    #[allow(dead_code)]
    pub(crate) group: &'static str,
    pub(crate) targets: Targets,
    pub(crate) request: RequestKind,
}

/// A scenario's targets.
pub(crate) enum Targets {
    /// `count` targets at `percentage`, no filter, sampled by the counter: every mirror
    /// sampled must be sent and answered.
    Plain { count: usize, percentage: u32 },
    /// One target per entry, each refusing the scenario's request its own way: no mirror may
    /// be sampled at all.
    Refusing(&'static [Refusal]),
}

/// How a target of [`Targets::Refusing`] refuses [`RequestKind::GetAsUser`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    /// No filter, counter sampling at 0 %.
    ZeroPercent,
    /// At 100 %, with a filter using every kind of condition (methods, two path prefixes, an
    /// exclusion, an exact header, a path regex). The request passes all but the last one
    /// checked, the regex, so the whole filter runs: its most expensive refusal.
    Filter,
    /// No filter, sampled by the `x-user-id` header at [`KEY_PERCENTAGE`]: the request's
    /// [`USER_ID`] is not among the keys chosen.
    Key,
    /// The same kinds of condition as [`Refusal::Filter`] and a key sampler, for another part
    /// of the API (`/admin`): the request is refused by its path, as most requests a filtered
    /// target does not take are, after only the method and prefix checks.
    FilterByPath,
    /// A filter the request passes (methods, a path prefix, an exclusion), then the key
    /// sampler of [`Refusal::Key`]: the "10 % of the users, only reads under /api" target.
    FilterThenKey,
}

/// A scenario's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// `GET /api/users/42?page=2` with four headers.
    Get,
    /// The same GET with one more header, `x-user-id: USER_ID`.
    GetAsUser,
    /// A 64 KiB POST.
    Post,
}

/// The percentage of the key-sampled targets.
pub(crate) const KEY_PERCENTAGE: u32 = 10;

/// The `x-user-id` of [`RequestKind::GetAsUser`]: a key that a sampler at [`KEY_PERCENTAGE`]
/// does not choose (`xxh3_64(USER_ID) % 10000` is 6193, not below 1000); checked by
/// [`Scenario::layer`].
pub(crate) const USER_ID: &str = "8d3f2c71-5a4e-4b9a-9f3e-2c1b7a6d5e40";

pub(crate) const SCENARIOS: [Scenario; 10] = [
    Scenario {
        name: "not_sampled",
        group: "a_not_sampled",
        targets: Targets::Plain {
            count: 1,
            percentage: 0,
        },
        request: RequestKind::Get,
    },
    // 99 of 100 requests pass the eligibility checks and the sampler and are not taken; the
    // one taken costs its share of a mirror.
    Scenario {
        name: "one_percent",
        group: "a2_one_percent_sampled",
        targets: Targets::Plain {
            count: 1,
            percentage: 1,
        },
        request: RequestKind::Get,
    },
    Scenario {
        name: "get_one_target",
        group: "b_get_one_target",
        targets: Targets::Plain {
            count: 1,
            percentage: 100,
        },
        request: RequestKind::Get,
    },
    Scenario {
        name: "post_64k_teed",
        group: "c_post_64k_teed",
        targets: Targets::Plain {
            count: 1,
            percentage: 100,
        },
        request: RequestKind::Post,
    },
    Scenario {
        name: "get_four_targets",
        group: "d_get_four_targets",
        targets: Targets::Plain {
            count: 4,
            percentage: 100,
        },
        request: RequestKind::Get,
    },
    // A request that no target takes, with each kind of refusal, then all four at once; all
    // with the same request (the GET of a signed-in user).
    Scenario {
        name: "none_zero_percent",
        group: "na_none_take_zero_percent",
        targets: Targets::Refusing(&[Refusal::ZeroPercent]),
        request: RequestKind::GetAsUser,
    },
    Scenario {
        name: "none_filtered",
        group: "nb_none_take_filtered",
        targets: Targets::Refusing(&[Refusal::Filter]),
        request: RequestKind::GetAsUser,
    },
    Scenario {
        name: "none_filtered_by_path",
        group: "nb2_none_take_filtered_by_path",
        targets: Targets::Refusing(&[Refusal::FilterByPath]),
        request: RequestKind::GetAsUser,
    },
    Scenario {
        name: "none_key_not_chosen",
        group: "nc_none_take_key_not_chosen",
        targets: Targets::Refusing(&[Refusal::Key]),
        request: RequestKind::GetAsUser,
    },
    Scenario {
        name: "none_four_targets",
        group: "nd_none_take_four_targets",
        targets: Targets::Refusing(&[
            Refusal::ZeroPercent,
            Refusal::Filter,
            Refusal::Key,
            Refusal::FilterThenKey,
        ]),
        request: RequestKind::GetAsUser,
    },
];

/// The body of every POST: 64 KiB.
pub(crate) fn post_body() -> Bytes {
    Bytes::from(vec![7u8; 64 * 1024])
}

impl Refusal {
    fn target(self, url: String) -> Target {
        let key = || SampleKey::header("x-user-id");
        match self {
            Self::ZeroPercent => Target::percentage(url, 0),
            Self::Filter => Target::new(url)
                .methods([Method::GET, Method::HEAD])
                .path_prefix("/v1")
                .path_prefix("/api")
                .exclude_path_prefix("/api/health")
                .header_equals("accept", "application/json")
                .path_regex("^/api/v[0-9]+/"),
            Self::FilterByPath => Target::percentage(url, KEY_PERCENTAGE)
                .methods([Method::GET, Method::HEAD])
                .path_prefix("/admin")
                .exclude_path_prefix("/admin/health")
                .header_equals("accept", "application/json")
                .path_regex("^/admin/v[0-9]+/")
                .sample_by(key()),
            Self::Key => Target::percentage(url, KEY_PERCENTAGE).sample_by(key()),
            Self::FilterThenKey => Target::percentage(url, KEY_PERCENTAGE)
                .methods([Method::GET, Method::HEAD])
                .path_prefix("/api")
                .exclude_path_prefix("/api/health")
                .sample_by(key()),
        }
    }

    /// Checks that this target refused every one of `requests` requests its own way.
    fn check(self, target: &TargetStats, requests: u64) {
        let filtered = match self {
            Self::Filter | Self::FilterByPath => requests,
            Self::ZeroPercent | Self::Key | Self::FilterThenKey => 0,
        };
        assert_eq!(target.filtered, filtered, "{self:?}: {target:?}");
        // Not sampled, by its key or for want of one (the key samplers, at 10 %, would
        // have sampled one request in ten by the counter had the key not been found).
        assert_eq!(
            (target.sampled, target.sampled_without_key, target.sent),
            (0, 0, 0),
            "{self:?}: {target:?}"
        );
    }
}

impl Scenario {
    /// The layer for this scenario, its mirrors handed to a sender that counts them in `sent`.
    pub(crate) fn layer(&self, sent: &Arc<AtomicU64>) -> MirrorLayer {
        let url = |i: usize| format!("http://shadow-{i}.internal:8080");
        let targets = match self.targets {
            Targets::Plain { count, percentage } => (0..count)
                .map(|i| Target::percentage(url(i), percentage))
                .collect(),
            Targets::Refusing(refusals) => {
                // The key must really be one the samplers do not choose (SampleKey's rule).
                let bucket = xxhash_rust::xxh3::xxh3_64(USER_ID.as_bytes()) % 10_000;
                assert!(
                    bucket >= u64::from(KEY_PERCENTAGE) * 100,
                    "{USER_ID} is chosen at {KEY_PERCENTAGE} % (bucket {bucket})"
                );
                refusals
                    .iter()
                    .enumerate()
                    .map(|(i, refusal)| refusal.target(url(i)))
                    .collect()
            }
        };
        MirrorLayer::with_options(Options {
            targets,
            // Never the limit here: a dropped mirror would be cheaper than a sent one.
            max_in_flight: 1 << 20,
            sender: Some(Arc::new(counting_sender(Arc::clone(sent)))),
            ..Options::default()
        })
        .expect("valid benchmark targets")
    }

    /// This scenario's request: a GET, or the POST of `body`.
    pub(crate) fn request(&self, body: &Bytes) -> Request<Full<Bytes>> {
        match self.request {
            RequestKind::Get => get(None),
            RequestKind::GetAsUser => get(Some(USER_ID)),
            RequestKind::Post => post(body),
        }
    }

    /// After `requests` requests through `layer` (and whatever else the harness sent, for the
    /// plain targets), waits for the mirrors and checks that the scenario measured what it
    /// says: with plain targets, every mirror sampled was sent and answered (none dropped or
    /// skipped, which would make the mirrored line cheaper than it really is); with refusing
    /// targets, no target took any of the requests, each for its own reason.
    pub(crate) async fn check(&self, layer: &MirrorLayer, requests: u64) {
        let report = layer.drain(Duration::from_secs(5)).await;
        assert!(report.is_complete(), "{report:?}");
        let stats = layer.stats();
        match self.targets {
            Targets::Plain { .. } => {
                for target in &stats.targets {
                    assert_eq!(
                        target.dropped_overload + target.skipped.total(),
                        0,
                        "{target:?}"
                    );
                    assert_eq!(target.sent, target.responded, "{target:?}");
                }
            }
            Targets::Refusing(refusals) => {
                assert_eq!(stats.targets.len(), refusals.len());
                for (refusal, target) in refusals.iter().zip(&stats.targets) {
                    refusal.check(target, requests);
                }
            }
        }
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

/// One request through `service`, as both programs send it on both lines: a clone of the
/// service (as hyper-util's `TowerToHyperService` and `axum::serve` make for every request),
/// `poll_ready`, `call`, the response, then one yield to the runtime, so that the mirror
/// tasks the request spawned run (and are counted) before the next request.
pub(crate) async fn once<S>(
    service: &S,
    request: Request<Full<Bytes>>,
) -> Result<S::Response, S::Error>
where
    S: Service<Request<Full<Bytes>>> + Clone,
{
    let response = service.clone().oneshot(request).await;
    tokio::task::yield_now().await;
    response
}

/// The inner service: reads the request body to its end, answers 200.
pub(crate) async fn handle<B: Body<Data = Bytes>>(
    request: Request<B>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(Response::new(Empty::new()))
}

fn get(user: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::get("http://app.example/api/users/42?page=2")
        .header("host", "app.example")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "0f9c3a4e");
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    request.body(Full::default()).expect("a valid request")
}

fn post(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://app.example/api/upload")
        .header("host", "app.example")
        .header("content-type", "application/octet-stream")
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .expect("a valid request")
}
