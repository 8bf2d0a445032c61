//! Properties of sampling and of the URL join, through the public API: a `Mirror` around a
//! trivial service, with a `Sender` that records each mirrored request and does no I/O.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use tower::{Service, ServiceExt};
use tower_mirror::{MirrorBody, MirrorLayer, MirrorStats, Options, SendFuture, Target, TeeBody};

/// The mirrored URIs, in the order the sender was handed them.
type Log = Arc<Mutex<Vec<Uri>>>;

/// A layer over `targets` whose sender records each mirror's URI and answers `200` at once.
fn recording_layer(targets: Vec<Target>) -> (MirrorLayer, Log) {
    let log = Log::default();
    let seen = Arc::clone(&log);
    let sender = move |request: Request<MirrorBody>| -> SendFuture {
        seen.lock().unwrap().push(request.uri().clone());
        Box::pin(async {
            let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
            Ok(Response::new(body))
        })
    };
    let layer = MirrorLayer::with_options(Options {
        targets,
        sender: Some(Arc::new(sender)),
        // Mirrors run only when the test's task yields: none may be dropped for overload.
        max_in_flight: usize::MAX,
        ..Options::default()
    })
    .unwrap();
    (layer, log)
}

/// Sends `requests` through the layer in order, one at a time, on a runtime of its own, and
/// waits for every mirror to finish; returns the stats then.
fn run(layer: &MirrorLayer, requests: Vec<Request<Empty<Bytes>>>) -> MirrorStats {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let inner = tower::service_fn(|_: Request<TeeBody<Empty<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(()))
        });
        let mut service = tower::Layer::layer(layer, inner);
        for request in requests {
            service.ready().await.unwrap().call(request).await.unwrap();
        }
        let report = layer.drain(Duration::from_secs(10)).await;
        assert!(report.is_complete(), "{report:?}");
    });
    layer.stats()
}

/// Request number `n`: `GET /r?n=N`; with `X-Mirrored-From` when `ineligible`.
fn numbered(n: usize, ineligible: bool) -> Request<Empty<Bytes>> {
    let mut request = Request::get(format!("/r?n={n}"));
    if ineligible {
        request = request.header("x-mirrored-from", "elsewhere");
    }
    request.body(Empty::new()).unwrap()
}

/// The target base URL for target `index`; its host tells the mirrors apart.
fn target_url(index: usize) -> String {
    format!("http://t{index}.test")
}

/// For each target index, the request numbers mirrored to it, in increasing order.
fn chosen(log: &Log) -> BTreeMap<usize, Vec<usize>> {
    let mut by_target: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for uri in log.lock().unwrap().iter() {
        let host = uri.host().unwrap();
        let index = host[1..host.len() - ".test".len()].parse().unwrap();
        let n = uri
            .query()
            .unwrap()
            .strip_prefix("n=")
            .unwrap()
            .parse()
            .unwrap();
        by_target.entry(index).or_default().push(n);
    }
    for numbers in by_target.values_mut() {
        numbers.sort_unstable();
    }
    by_target
}

/// Sends requests `0..count` through targets at `percentages` (target `i` at `percentages[i]`)
/// and returns, per target, the request numbers it was sent, checking the stats agree.
fn choices(percentages: &[u32], count: usize) -> Vec<Vec<usize>> {
    let targets = percentages
        .iter()
        .enumerate()
        .map(|(i, p)| Target::percentage(target_url(i), *p))
        .collect();
    let (layer, log) = recording_layer(targets);
    let stats = run(&layer, (0..count).map(|n| numbered(n, false)).collect());
    let mut by_target = chosen(&log);
    (0..percentages.len())
        .map(|i| {
            let numbers = by_target.remove(&i).unwrap_or_default();
            let t = &stats.targets[i];
            assert_eq!(t.sampled, numbers.len() as u64, "{t:?}");
            assert_eq!((t.sent, t.responded), (t.sampled, t.sampled), "{t:?}");
            numbers
        })
        .collect()
}

/// Checks that, of the first `k` requests, exactly ⌊k·p/100⌋ were chosen for every `k` up to
/// `count` (which fixes the choice), and that every 100 consecutive requests hold exactly `p`.
fn assert_exact_spread(p: u32, count: usize, numbers: &[usize]) {
    let mut picked = vec![false; count];
    for &n in numbers {
        assert!(
            n < count && !picked[n],
            "request {n} chosen twice or out of range"
        );
        picked[n] = true;
    }
    let mut so_far = 0;
    for k in 1..=count {
        so_far += usize::from(picked[k - 1]);
        assert_eq!(so_far, k * p as usize / 100, "p={p}: first {k} requests");
    }
    for window in picked.windows(100) {
        let n = window.iter().filter(|&&b| b).count();
        assert_eq!(n, p as usize, "p={p}: a window of 100");
    }
}

#[test]
fn every_percentage_from_0_to_100_is_exact_in_every_prefix_and_window() {
    // 101 targets in two layers (at most 64 per layer), 300 requests each.
    for percentages in [(0..64).collect::<Vec<u32>>(), (64..=100).collect()] {
        let all = choices(&percentages, 300);
        for (p, numbers) in percentages.iter().zip(&all) {
            assert_exact_spread(*p, 300, numbers);
        }
    }
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // Shrunk failures are printed; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(96))]

    /// Over the first N requests, a target at p % gets exactly ⌊N·p/100⌋ mirrors, and every
    /// 100 consecutive requests hold exactly p.
    #[test]
    fn a_target_gets_exactly_floor_n_p_over_100(p in 0u32..=100, count in 0usize..450) {
        let numbers = &choices(&[p], count)[0];
        prop_assert_eq!(numbers.len(), count * p as usize / 100);
        assert_exact_spread(p, count, numbers);
    }

    /// 50 % is every other request: the second, the fourth, …
    #[test]
    fn fifty_percent_is_every_other_request(count in 0usize..300) {
        let numbers = &choices(&[50], count)[0];
        let odd: Vec<usize> = (0..count).filter(|n| n % 2 == 1).collect();
        prop_assert_eq!(numbers, &odd);
    }

    /// A target's choices do not depend on the targets configured beside it, nor on its place
    /// among them.
    #[test]
    fn targets_are_independent(
        p in 0u32..=100,
        others in proptest::collection::vec(0u32..=100, 0..8),
        place in any::<proptest::sample::Index>(),
        count in 0usize..300,
    ) {
        let alone = choices(&[p], count).remove(0);
        let place = place.index(others.len() + 1);
        let mut percentages = others.clone();
        percentages.insert(place, p);
        let mut beside = choices(&percentages, count);
        prop_assert_eq!(&beside.remove(place), &alone);
        for (numbers, q) in beside.iter().zip(others) {
            prop_assert_eq!(numbers.len(), count * q as usize / 100);
        }
    }

    /// Requests that are not eligible (here: already mirrors) do not advance any target's
    /// sampling: the eligible ones alone follow the exact spread.
    #[test]
    fn ineligible_requests_do_not_advance_sampling(
        p in 0u32..=100,
        eligible in proptest::collection::vec(any::<bool>(), 0..300),
    ) {
        let (layer, log) = recording_layer(vec![Target::percentage(target_url(0), p)]);
        let requests = eligible
            .iter()
            .enumerate()
            .map(|(n, ok)| numbered(n, !ok))
            .collect();
        let stats = run(&layer, requests);
        let numbers = chosen(&log).remove(&0).unwrap_or_default();
        // Renumber the mirrored requests by their rank among the eligible ones.
        let ranks: Vec<usize> = eligible
            .iter()
            .scan(0, |rank, ok| {
                let this = *rank;
                *rank += usize::from(*ok);
                Some(this)
            })
            .collect();
        for &n in &numbers {
            prop_assert!(eligible[n], "ineligible request {} was mirrored", n);
        }
        let ranked: Vec<usize> = numbers.iter().map(|&n| ranks[n]).collect();
        let count = eligible.iter().filter(|&&ok| ok).count();
        assert_exact_spread(p, count, &ranked);
        let skipped = (eligible.len() - count) as u64;
        prop_assert_eq!(stats.not_mirrored.already_mirrored, skipped);
    }
}

/// A path segment: unreserved and sub-delimiter characters, percent escapes, dots and
/// non-ASCII text (which `http::Uri` keeps as UTF-8).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._~!$&'()*+,;=:@-]{0,8}",
        "(%[0-9A-Fa-f]{2}){1,3}",
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("café".to_owned()),
        Just("✓🦀".to_owned()),
    ]
}

/// A base URL: http or https, a host (name, IPv4 or IPv6), an optional port, a path of
/// segments, and up to three trailing slashes. Returns (URL, scheme://authority, path prefix
/// without its trailing slashes), the prefix computed here, not by the library.
fn base() -> impl Strategy<Value = (String, String, String)> {
    (
        prop_oneof![Just("http"), Just("https")],
        prop_oneof![
            "[a-z][a-z0-9-]{0,10}(\\.[a-z]{1,5}){0,2}",
            Just("127.0.0.1".to_owned()),
            Just("[::1]".to_owned()),
        ],
        proptest::option::of(1u16..),
        proptest::collection::vec(segment(), 0..4),
        0usize..4,
    )
        .prop_map(|(scheme, host, port, segments, slashes)| {
            let authority = match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            };
            let path: String = segments.iter().map(|s| format!("/{s}")).collect();
            let url = format!("{scheme}://{authority}{path}{}", "/".repeat(slashes));
            // An empty last segment is a trailing slash too.
            let prefix = path.trim_end_matches('/').to_owned();
            (url, format!("{scheme}://{authority}"), prefix)
        })
}

/// An origin-form path (empty segments give `//`) and an optional query.
fn path_and_query() -> impl Strategy<Value = (String, Option<String>)> {
    (
        proptest::collection::vec(segment(), 0..5),
        proptest::option::of("[A-Za-z0-9=&%/?:@._~!$'()*+,;-]{0,20}"),
    )
        .prop_map(|(segments, query)| {
            let path = if segments.is_empty() {
                "/".to_owned()
            } else {
                segments.iter().map(|s| format!("/{s}")).collect()
            };
            (path, query)
        })
}

/// The URI a target at `url` is sent for each of `originals`, one request each.
fn mirrored_uris(url: &str, originals: &[String]) -> Vec<String> {
    let (layer, log) = recording_layer(vec![Target::new(url)]);
    let requests = originals
        .iter()
        .map(|uri| Request::get(uri.as_str()).body(Empty::new()).unwrap())
        .collect();
    run(&layer, requests);
    log.lock().unwrap().iter().map(Uri::to_string).collect()
}

proptest! {
    #![proptest_config(cases(256))]

    /// The mirrored URI is the base's scheme and authority, the base path without trailing
    /// slashes, then the original path and query, byte for byte, whether the request target
    /// is in origin form or absolute form (whose scheme and authority are dropped).
    #[test]
    fn the_mirrored_uri_is_base_prefix_then_original_path_and_query(
        (url, origin, prefix) in base(),
        (path, query) in path_and_query(),
        other in "[a-z]{1,8}(:[0-9]{1,4})?",
    ) {
        let path_and_query = match &query {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let originals = [path_and_query.clone(), format!("http://{other}{path_and_query}")];
        let uris = mirrored_uris(&url, &originals);
        let expected = format!("{origin}{prefix}{path_and_query}");
        prop_assert_eq!(uris, [expected.clone(), expected]);
    }
}
