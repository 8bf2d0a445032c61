//! Per-target selection, proven against real servers on loopback: filters, sticky sampling by
//! a key, the fallback to the counter, the rate cap, path rewrites, the counters that account
//! for every request, and the configuration errors of these settings.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::any;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use support::{Blackhole, Received, Shadow, pattern, send_with, serve, settled};
use tower::{Service, ServiceExt};
use tower_mirror::{
    ClientAddr, ConfigError, MirrorLayer, Options, RateLimit, RequestHead, SampleKey, Target,
    TargetStats, TeeBody, percentage,
};

/// The primary: reads every request body (an unread body is not mirrored) and answers.
fn app(layer: MirrorLayer) -> Router {
    Router::new()
        .fallback(any(|_body: Bytes| async { "primary" }))
        .layer(layer)
}

fn options(targets: Vec<Target>) -> Options {
    Options {
        targets,
        ..Options::default()
    }
}

fn layer_of(targets: Vec<Target>) -> MirrorLayer {
    MirrorLayer::with_options(options(targets)).unwrap()
}

/// The documented key decision, computed here independently of the library:
/// `xxh3_64(value) % 10000 < percentage × 100` (XXH3-64, seed 0).
fn chosen_by_key(value: &str, percentage: u64) -> bool {
    xxhash_rust::xxh3::xxh3_64(value.as_bytes()) % 10_000 < percentage * 100
}

/// The documented counter decision: request number `n` (from 0) of those that reach the
/// sampler is chosen when `⌊(n+1)·p/100⌋ > ⌊n·p/100⌋`.
fn chosen_by_counter(n: u64, percentage: u64) -> bool {
    (n + 1) * percentage / 100 > n * percentage / 100
}

/// A request to `url` with `headers`.
fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}

/// Sends `requests`, `concurrency` at a time over one pooled client; each must get a 200.
/// With a concurrency of 1 they reach the layer in order.
async fn send_all(requests: Vec<Request<Full<Bytes>>>, concurrency: usize) {
    let client = support::client();
    let queue = Arc::new(Mutex::new(requests.into_iter()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, queue) = (client.clone(), Arc::clone(&queue));
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some(request) = next else { return };
                    assert_eq!(send_with(&client, request).await.status, 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

/// The requests received under the base path `/{base}/` (one target of a shared shadow);
/// all of them for the base `""`.
fn under<'a>(received: &'a [Received], base: &str) -> Vec<&'a Received> {
    let prefix = if base.is_empty() {
        "/".to_owned()
    } else {
        format!("/{base}/")
    };
    received
        .iter()
        .filter(|r| r.uri.path().starts_with(&prefix))
        .collect()
}

/// The value of the query parameter `name` of a received request, as sent.
fn query_param<'a>(received: &'a Received, name: &str) -> Option<&'a str> {
    received
        .uri
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The request numbers (`n=`) received under `/{base}/`.
fn numbers(received: &[Received], base: &str) -> BTreeSet<usize> {
    under(received, base)
        .iter()
        .map(|r| query_param(r, "n").unwrap().parse().unwrap())
        .collect()
}

/// The stats of the target named `name`.
fn stats_of<'a>(stats: &'a [TargetStats], name: &str) -> &'a TargetStats {
    stats
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target named {name}"))
}

/// Both accounting identities of [`TargetStats`].
fn assert_accounted(t: &TargetStats) {
    assert_eq!(
        t.sampled,
        t.sent + t.dropped_overload + t.dropped_rate_limited + t.skipped.total(),
        "every sampled mirror ends once: {t:?}"
    );
    assert_eq!(
        t.sent,
        t.responded + t.failed + t.timed_out + t.in_flight as u64,
        "every sent mirror ends once: {t:?}"
    );
    assert!(t.sampled_without_key <= t.sampled, "{t:?}");
}

/// A request (method, path, headers) and the targets that must take it.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[tokio::test]
async fn filters_take_exactly_the_requests_they_name_and_count_the_rest() {
    let shadow = Shadow::start().await;
    let at = |base: &str| format!("{}/{base}", shadow.url);
    let targets = vec![
        // A trailing slash is ignored; several prefixes: any one.
        Target::new(at("prefix"))
            .path_prefix("/api/")
            .path_prefix("/admin"),
        // The exclusion wins, even over a more specific inclusion.
        Target::new(at("exclude"))
            .path_prefix("/api")
            .path_prefix("/api/health/live")
            .exclude_path_prefix("/api/health"),
        Target::new(at("methods"))
            .methods([Method::POST])
            .methods([Method::PUT]),
        // Every header condition must hold, byte for byte; any one line of a name may match.
        Target::new(at("headers"))
            .header_equals("x-beta", "1")
            .header_equals("X-Tier", "gold"),
        // Unanchored unless it says so; the path only, not the query.
        Target::new(at("regex")).path_regex(r"^/api/v[0-9]+/"),
        // Every kind of condition at once.
        Target::new(at("all"))
            .methods([Method::GET])
            .path_prefix("/api")
            .header_equals("x-beta", "1")
            .path_regex("items"),
    ];
    let layer = layer_of(targets);
    let primary = serve(app(layer.clone())).await;

    let beta: &[(&str, &str)] = &[("x-beta", "1")];
    #[rustfmt::skip]
    let table: Vec<Case<'_>> = vec![
        ("GET", "/api", &[], &["prefix", "exclude"]),
        ("GET", "/api/", &[], &["prefix", "exclude"]),
        ("GET", "/api/users", &[], &["prefix", "exclude"]),
        ("GET", "/apix", &[], &[]),
        ("GET", "/ap", &[], &[]),
        ("GET", "/admin/x", &[], &["prefix"]),
        ("GET", "/administrator", &[], &[]),
        ("GET", "/other/api/x", &[], &[]),
        ("GET", "/api/health", &[], &["prefix"]),
        ("GET", "/api/health/live", &[], &["prefix"]),
        ("GET", "/api/healthz", &[], &["prefix", "exclude"]),
        ("POST", "/other", &[], &["methods"]),
        ("PUT", "/api/x", &[], &["prefix", "exclude", "methods"]),
        ("DELETE", "/api/x", &[], &["prefix", "exclude"]),
        ("GET", "/other", &[("x-beta", "1"), ("x-tier", "gold")], &["headers"]),
        ("GET", "/other", beta, &[]),
        ("GET", "/other", &[("x-tier", "gold")], &[]),
        ("GET", "/other", &[("x-beta", "1"), ("x-tier", "Gold")], &[]),
        ("GET", "/other", &[("x-beta", "0"), ("x-beta", "1"), ("x-tier", "gold")], &["headers"]),
        ("GET", "/api/v2/items", beta, &["prefix", "exclude", "regex", "all"]),
        ("POST", "/api/v2/items", beta, &["prefix", "exclude", "methods", "regex"]),
        ("GET", "/api/v2/items", &[], &["prefix", "exclude", "regex"]),
        ("GET", "/other/items", beta, &[]),
        ("GET", "/api/v2/users", beta, &["prefix", "exclude", "regex"]),
        ("GET", "/api/vx/items", beta, &["prefix", "exclude", "all"]),
        ("GET", "/x/api/v1/", &[], &[]),
    ];
    let requests = table
        .iter()
        .enumerate()
        .map(|(n, (method, path, headers, _))| {
            request(method, &format!("{}{path}?n={n}", primary.url), headers)
        })
        .collect();
    send_all(requests, 1).await;
    let stats = settled(&layer).await;
    let received = shadow.received();

    for (base, target) in ["prefix", "exclude", "methods", "headers", "regex", "all"]
        .into_iter()
        .zip(&stats.targets)
    {
        let expected: BTreeSet<usize> = (0..table.len())
            .filter(|&n| table[n].3.contains(&base))
            .collect();
        assert_eq!(numbers(&received, base), expected, "requests at {base}");
        for r in under(&received, base) {
            let n: usize = query_param(r, "n").unwrap().parse().unwrap();
            let (method, path, ..) = table[n];
            assert_eq!(r.method, method, "{base} #{n}");
            assert_eq!(r.uri.path(), format!("/{base}{path}"), "{base} #{n}");
        }
        let taken = expected.len() as u64;
        assert_eq!(target.filtered, table.len() as u64 - taken, "{base}");
        assert_eq!(target.sampled, taken, "{base}");
        assert_eq!(target.responded, taken, "{base}");
        assert_accounted(target);
    }
}

#[tokio::test]
async fn a_filtered_request_takes_no_sampling_turn() {
    let shadow = Shadow::start().await;
    let half_of_api = percentage(format!("{}/half", shadow.url), 50).path_prefix("/api");
    let half_of_all = percentage(format!("{}/plain", shadow.url), 50);
    let layer = layer_of(vec![half_of_api, half_of_all]);
    let primary = serve(app(layer.clone())).await;

    // /api and /other alternate: were the sampler asked before the filter, or a filtered
    // request counted as a turn, every other request would be an /other one and /half would
    // get nothing.
    let requests = (0..20)
        .map(|n| {
            let path = if n % 2 == 0 { "api" } else { "other" };
            request("GET", &format!("{}/{path}/{n}?n={n}", primary.url), &[])
        })
        .collect();
    send_all(requests, 1).await;
    let stats = settled(&layer).await;
    let received = shadow.received();

    // Of the ten /api requests (0, 2, … 18), every other one: the 2nd, 4th, … of them.
    assert_eq!(
        numbers(&received, "half"),
        BTreeSet::from([2, 6, 10, 14, 18])
    );
    assert_eq!(stats.targets[0].filtered, 10);
    assert_eq!(stats.targets[0].sampled, 5);
    // The unfiltered target samples every other request of all twenty.
    assert_eq!(
        numbers(&received, "plain"),
        (0..20).filter(|n| n % 2 == 1).collect()
    );
    assert_eq!(stats.targets[1].filtered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sampling_by_header_follows_the_documented_hash() {
    let shadow = Shadow::start().await;
    let by_user = |base: &str, pct: u32| {
        percentage(format!("{}/{base}", shadow.url), pct)
            .with_name(base)
            .sample_by(SampleKey::header("x-user"))
    };
    let layer = layer_of(vec![
        by_user("ten", 10),
        by_user("five", 5),
        by_user("twenty", 20),
        // Same percentage, another target; header names are case-insensitive.
        percentage(format!("{}/twenty-again", shadow.url), 20)
            .with_name("twenty-again")
            .sample_by(SampleKey::header("X-User")),
    ]);
    let primary = serve(app(layer.clone())).await;

    let keys: Vec<String> = (0..10_000).map(|n| format!("user-{n}")).collect();
    let requests = keys
        .iter()
        .map(|key| request("GET", &format!("{}/page", primary.url), &[("x-user", key)]))
        .collect();
    send_all(requests, 8).await;
    let stats = settled(&layer).await;
    let received = shadow.received();
    let chosen = |base: &str| -> BTreeSet<String> {
        under(&received, base)
            .iter()
            .map(|r| r.headers["x-user"].to_str().unwrap().to_owned())
            .collect()
    };
    let expected = |pct: u64| -> BTreeSet<String> {
        keys.iter()
            .filter(|k| chosen_by_key(k, pct))
            .cloned()
            .collect()
    };

    let (ten, five, twenty) = (chosen("ten"), chosen("five"), chosen("twenty"));
    // 10 % of 10,000 distinct keys: 1,000 expected, σ = √(10000 · 0.1 · 0.9) = 30.
    assert!(
        (1_000 - 90..=1_000 + 90).contains(&ten.len()),
        "{} keys at 10 %",
        ten.len()
    );
    assert_eq!(ten, expected(10), "xxh3_64(value) % 10000 < 1000");
    assert_eq!(five, expected(5));
    assert_eq!(twenty, expected(20));
    assert!(five.is_subset(&twenty), "the shares nest");
    assert!(five.len() < twenty.len());
    assert_eq!(
        chosen("twenty-again"),
        twenty,
        "equal percentages, equal keys"
    );
    // Each key was sent once, so each chosen one arrived once.
    for (base, keys) in [("ten", &ten), ("five", &five), ("twenty", &twenty)] {
        assert_eq!(under(&received, base).len(), keys.len(), "{base}");
        let t = stats_of(&stats.targets, base);
        assert_eq!(t.sampled, keys.len() as u64, "{base}");
        assert_eq!(t.sampled_without_key, 0, "{base}");
        assert_eq!(t.filtered, 0, "{base}");
        assert_accounted(t);
    }
}

#[tokio::test]
async fn two_replicas_choose_exactly_the_same_keys() {
    // Two layers with the same settings (two replicas of a service, each with its own
    // shadow so the test can tell them apart), the same 2,000 keys in opposite orders.
    async fn replica(keys: Vec<String>) -> BTreeSet<String> {
        let shadow = Shadow::start().await;
        let layer = layer_of(vec![
            percentage(shadow.url.clone(), 25)
                .with_name("staging")
                .sample_by(SampleKey::header("x-session")),
        ]);
        let primary = serve(app(layer.clone())).await;
        let requests = keys
            .iter()
            .map(|key| request("GET", &format!("{}/", primary.url), &[("x-session", key)]))
            .collect();
        send_all(requests, 4).await;
        let stats = settled(&layer).await;
        let received = shadow.received();
        assert_eq!(stats.targets[0].sent as usize, received.len());
        received
            .iter()
            .map(|r| r.headers["x-session"].to_str().unwrap().to_owned())
            .collect()
    }
    let keys: Vec<String> = (0..2_000).map(|n| format!("session-{n:05}")).collect();
    let reversed = keys.iter().rev().cloned().collect();
    let (a, b) = (replica(keys.clone()).await, replica(reversed).await);
    let expected: BTreeSet<String> = keys
        .iter()
        .filter(|k| chosen_by_key(k, 25))
        .cloned()
        .collect();
    assert!(!expected.is_empty() && expected.len() < keys.len());
    assert_eq!(a, expected);
    assert_eq!(b, expected);
}

#[tokio::test]
async fn a_value_decides_the_same_from_a_header_a_cookie_or_a_query() {
    let shadow = Shadow::start().await;
    let target = |base: &str, key: SampleKey| {
        percentage(format!("{}/{base}", shadow.url), 30).sample_by(key)
    };
    let layer = layer_of(vec![
        target("header", SampleKey::header("x-user")),
        target("cookie", SampleKey::cookie("uid")),
        target("query", SampleKey::query("u")),
    ]);
    let primary = serve(app(layer.clone())).await;

    // Request k carries value k in the header, k+1 in the cookie and k+2 in the query
    // (percent-encoded: the decoded value is hashed), so over the run each value is seen
    // once in each place, and each target must read its own place.
    const N: usize = 600;
    let values: Vec<String> = (0..N).map(|n| format!("user.{n}")).collect();
    let requests = (0..N)
        .map(|k| {
            let query_value = values[(k + 2) % N].replace('.', "%2E");
            let url = format!("{}/p?a=1&u={query_value}&n={k}", primary.url);
            let cookie = format!("theme=dark; uid={}; lang=en", values[(k + 1) % N]);
            request("GET", &url, &[("x-user", &values[k]), ("cookie", &cookie)])
        })
        .collect();
    send_all(requests, 4).await;
    let stats = settled(&layer).await;
    let received = shadow.received();

    let expected: BTreeSet<&str> = values
        .iter()
        .map(String::as_str)
        .filter(|v| chosen_by_key(v, 30))
        .collect();
    assert!(!expected.is_empty() && expected.len() < N);
    for (base, offset) in [("header", 0), ("cookie", 1), ("query", 2)] {
        let chosen: BTreeSet<&str> = numbers(&received, base)
            .into_iter()
            .map(|k| values[(k + offset) % N].as_str())
            .collect();
        assert_eq!(chosen, expected, "sampled by {base}");
        assert_eq!(under(&received, base).len(), expected.len(), "{base}");
    }
    // The query reached the target as it was sent, still encoded.
    let r = under(&received, "query")[0];
    assert!(query_param(r, "u").unwrap().contains("%2E"), "{:?}", r.uri);
    for t in &stats.targets {
        assert_eq!(t.sampled_without_key, 0, "{}", t.name);
        assert_accounted(t);
    }
}

#[tokio::test]
async fn requests_without_the_key_fall_back_to_the_counter_and_are_counted() {
    let shadow = Shadow::start().await;
    let layer = layer_of(vec![
        percentage(shadow.url.clone(), 30).sample_by(SampleKey::header("x-user")),
    ]);
    let primary = serve(app(layer.clone())).await;

    // No header every third request, an empty one every seventh (also no key), else a key.
    let key_of = |n: usize| match n {
        _ if n.is_multiple_of(3) => None,
        _ if n.is_multiple_of(7) => Some(String::new()),
        _ => Some(format!("user-{n}")),
    };
    const COUNT: usize = 90;
    let requests = (0..COUNT)
        .map(|n| {
            let url = format!("{}/x?n={n}", primary.url);
            match key_of(n) {
                None => request("GET", &url, &[]),
                Some(key) => request("GET", &url, &[("x-user", &key)]),
            }
        })
        .collect();
    send_all(requests, 1).await;
    let stats = settled(&layer).await;

    // The expected choice: keyed requests by the hash, keyless ones by the counter, which
    // only keyless requests advance.
    let (mut expected, mut keyless_turn, mut by_counter) = (BTreeSet::new(), 0, 0);
    for n in 0..COUNT {
        match key_of(n).filter(|k| !k.is_empty()) {
            Some(key) => {
                if chosen_by_key(&key, 30) {
                    expected.insert(n);
                }
            }
            None => {
                if chosen_by_counter(keyless_turn, 30) {
                    expected.insert(n);
                    by_counter += 1;
                }
                keyless_turn += 1;
            }
        }
    }
    assert_eq!(keyless_turn, 30 + 8, "keyless requests");
    assert_eq!(numbers(&shadow.received(), ""), expected);
    let t = &stats.targets[0];
    assert_eq!(t.sampled, expected.len() as u64);
    assert_eq!(t.sampled_without_key, by_counter);
    assert!(by_counter > 0 && t.sampled_without_key < t.sampled);
    assert_accounted(t);
}

#[tokio::test]
async fn a_rate_cap_drops_what_is_over_it_and_queues_nothing() {
    let shadow = Shadow::start().await;
    let layer = layer_of(vec![
        Target::new(shadow.url.clone()).rate_limit(RateLimit::per_second(50)),
    ]);
    // The primary is called in-process, so that each request is admitted within the same
    // poll as the check of the clock before it: every admission falls within the 3 s window.
    // (Over HTTP, the last one could be admitted a request latency later.)
    let inner = tower::service_fn(|_: Request<TeeBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    });
    let mut service = tower::Layer::layer(&layer, inner);

    // About 1,000 requests a second for 3 s from the first, at most 3,000.
    let window = Duration::from_secs(3);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut start = None;
    let mut requests = 0u64;
    while requests < 3_000 {
        tick.tick().await;
        let start = *start.get_or_insert_with(Instant::now);
        if start.elapsed() >= window {
            break;
        }
        let request = Request::get(format!("/r?n={requests}"))
            .body(Full::default())
            .unwrap();
        service.ready().await.unwrap().call(request).await.unwrap();
        requests += 1;
    }
    let stats = settled(&layer).await;
    let t = &stats.targets[0];

    // Far more offered than the cap lets through.
    assert!(requests >= 500, "only {requests} requests in {window:?}");
    assert_eq!(t.sampled, requests);
    // A burst of one second's worth (50), then 50 a second: at most 50 + 3 s × 50.
    assert!((100..=200).contains(&t.sent), "{t:?}");
    assert_eq!(t.dropped_overload, 0, "{t:?}");
    assert_eq!(t.sampled, t.sent + t.dropped_rate_limited, "{t:?}");
    assert_accounted(t);
    // Nothing was held back to be sent later: the target received exactly what was sent.
    assert_eq!(shadow.count() as u64, t.sent);
    assert_eq!(t.responded, t.sent);
}

#[tokio::test]
async fn rewrite_path_changes_the_path_keeps_the_query_and_fails_without_a_slash() {
    let shadow = Shadow::start().await;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let layer = MirrorLayer::with_options(Options {
        on_error: Some(Arc::new(move |name, error| {
            let kind = (error.is_connect(), error.is_timeout());
            seen.lock().unwrap().push((name.to_owned(), kind));
        })),
        ..options(vec![
            Target::new(format!("{}/cand", shadow.url))
                .with_name("candidate")
                .rewrite_path("^/v1/", "/v2/"),
            Target::new(format!("{}/groups", shadow.url))
                .with_name("groups")
                .rewrite_path(r"^/v(\d+)/(\w+)", "/version-$1/$2"),
            // Unanchored: the first match only, in the path only.
            Target::new(format!("{}/first", shadow.url))
                .with_name("first")
                .rewrite_path("old", "new"),
            Target::new(format!("{}/broken", shadow.url))
                .with_name("broken")
                .rewrite_path("^/", ""),
        ])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    let paths = [
        "/v1/users?q=a%20b&x=1",
        "/other/v1/x?y",
        "/v1/",
        "/old/old/x?old=1",
    ];
    let requests = paths
        .iter()
        .map(|path| request("GET", &format!("{}{path}", primary.url), &[]))
        .collect();
    send_all(requests, 1).await;
    let stats = settled(&layer).await;
    let received = shadow.received();
    let seen = |base: &str| -> BTreeSet<String> {
        under(&received, base)
            .iter()
            .map(|r| r.uri.path_and_query().unwrap().to_string())
            .collect()
    };
    let set = |uris: [&str; 4]| uris.map(str::to_owned).into();
    assert_eq!(
        seen("cand"),
        set([
            "/cand/v2/users?q=a%20b&x=1",
            "/cand/other/v1/x?y",
            "/cand/v2/",
            "/cand/old/old/x?old=1",
        ])
    );
    assert_eq!(
        seen("groups"),
        set([
            "/groups/version-1/users?q=a%20b&x=1",
            "/groups/other/v1/x?y",
            "/groups/v1/",
            "/groups/old/old/x?old=1",
        ])
    );
    assert_eq!(
        seen("first"),
        set([
            "/first/v1/users?q=a%20b&x=1",
            "/first/other/v1/x?y",
            "/first/v1/",
            "/first/new/old/x?old=1",
        ])
    );
    assert_eq!(received.len(), 12, "nothing from the broken rewrite");
    // `^/` → `` leaves no leading slash: each such mirror fails, and nothing is sent.
    let broken = stats_of(&stats.targets, "broken");
    assert_eq!((broken.sent, broken.failed, broken.responded), (4, 4, 0));
    assert_eq!(
        *errors.lock().unwrap(),
        vec![("broken".to_owned(), (false, false)); 4]
    );
    for t in &stats.targets {
        assert_accounted(t);
    }
}

#[tokio::test]
async fn every_request_is_accounted_for_across_a_mix_of_targets() {
    let fine = Shadow::start().await;
    let blackhole = Blackhole::start().await;
    let refused = support::refused_url().await;
    let at = |base: &str| format!("{}/{base}", fine.url);
    let layer = MirrorLayer::with_options(Options {
        timeout: Duration::from_millis(300),
        max_in_flight: 4,
        max_body_bytes: 100,
        ..options(vec![
            Target::new(at("plain")).with_name("plain"),
            percentage(at("keyed"), 50)
                .with_name("keyed")
                .sample_by(SampleKey::header("x-user")),
            // One mirror an hour, with a burst of one: the first request's, and no other.
            Target::new(at("capped"))
                .with_name("capped")
                .rate_limit(RateLimit::new(1, Duration::from_secs(3600))),
            Target::new(blackhole.url.clone()).with_name("blackhole"),
            Target::new(refused).with_name("refused"),
            Target::new(at("filtered"))
                .with_name("filtered")
                .path_prefix("/api"),
        ])
    })
    .unwrap();
    let primary = serve(app(layer.clone())).await;

    const COUNT: usize = 30;
    let requests = (0..COUNT)
        .map(|n| {
            let path = if n % 2 == 0 { "api" } else { "other" };
            let body = if n % 5 == 4 {
                pattern(500)
            } else {
                pattern(10)
            };
            let mut request = Request::post(format!("{}/{path}/{n}", primary.url));
            if n % 3 != 0 {
                request = request.header("x-user", format!("user-{n}"));
            }
            request.body(Full::new(body)).unwrap()
        })
        .collect();
    send_all(requests, 1).await;
    let stats = settled(&layer).await;

    for t in &stats.targets {
        assert_eq!(t.in_flight, 0, "{t:?}");
        assert_accounted(t);
        // Every request is either filtered or sampled by the 100 % targets.
        if t.name != "keyed" {
            assert_eq!(t.filtered + t.sampled, COUNT as u64, "{t:?}");
        }
    }
    let get = |name| stats_of(&stats.targets, name);
    assert!(
        get("plain").skipped.body_too_large > 0,
        "{:?}",
        get("plain")
    );
    let keyed = get("keyed");
    assert!(keyed.sampled_without_key > 0 && keyed.sampled > keyed.sampled_without_key);
    let capped = get("capped");
    assert_eq!(
        (capped.sent, capped.dropped_rate_limited),
        (1, COUNT as u64 - 1)
    );
    let blackhole = get("blackhole");
    assert!(blackhole.dropped_overload > 0, "{blackhole:?}");
    assert!(blackhole.timed_out > 0, "{blackhole:?}");
    let refused = get("refused");
    assert!(refused.failed > 0 && refused.responded == 0, "{refused:?}");
    let filtered = get("filtered");
    assert_eq!((filtered.filtered, filtered.sampled), (15, 15));
    assert_eq!(stats.not_mirrored.already_mirrored, 0);
}

/// Puts each connection's peer address into the request as a [`ClientAddr`], as a server
/// (or mirror-proxy) would.
fn with_client_addr(router: Router) -> Router {
    router.layer(tower::util::MapRequestLayer::new(
        |mut request: Request<axum::body::Body>| {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| *addr);
            if let Some(addr) = peer {
                request.extensions_mut().insert(ClientAddr(addr));
            }
            request
        },
    ))
}

#[tokio::test]
async fn client_ip_sampling_reads_the_client_addr_extension_and_ignores_the_port() {
    let shadow = Shadow::start().await;
    let layer = layer_of(vec![
        percentage(format!("{}/ip", shadow.url), 30).sample_by(SampleKey::ClientIp),
        // The same decision from axum's `ConnectInfo`, through a closure.
        percentage(format!("{}/custom", shadow.url), 30).sample_by(SampleKey::custom(
            |head: &RequestHead<'_>| {
                let ConnectInfo(addr) = head.extensions().get::<ConnectInfo<SocketAddr>>()?;
                Some(addr.ip().to_string().into_bytes())
            },
        )),
    ]);
    let primary = support::serve_with_connect_info(with_client_addr(app(layer.clone()))).await;

    // 100 clients, 127.0.0.2 to 127.0.0.101, each over two connections (two source ports).
    let ips: Vec<IpAddr> = (2..102)
        .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .collect();
    for ip in &ips {
        for connection in 0..2 {
            let client = support::client_from(*ip);
            let url = format!("{}/who?ip={ip}&c={connection}", primary.url);
            assert_eq!(
                send_with(&client, request("GET", &url, &[])).await.status,
                200
            );
        }
    }
    let stats = settled(&layer).await;
    let received = shadow.received();

    let expected: BTreeSet<(String, String)> = ips
        .iter()
        .filter(|ip| chosen_by_key(&ip.to_string(), 30))
        .flat_map(|ip| [(ip.to_string(), "0".into()), (ip.to_string(), "1".into())])
        .collect();
    assert!(!expected.is_empty() && expected.len() < 2 * ips.len());
    for base in ["ip", "custom"] {
        let chosen: BTreeSet<(String, String)> = under(&received, base)
            .iter()
            .map(|r| {
                let param = |name| query_param(r, name).unwrap().to_owned();
                (param("ip"), param("c"))
            })
            .collect();
        assert_eq!(chosen, expected, "sampled by {base}");
    }
    for t in &stats.targets {
        assert_eq!(t.sampled, expected.len() as u64, "{}", t.name);
        assert_eq!(
            t.sampled_without_key, 0,
            "{}: every request had its address",
            t.name
        );
    }
}

#[tokio::test]
async fn a_custom_key_decides_by_its_bytes_and_falls_back_without_one() {
    let shadow = Shadow::start().await;
    let tenant = SampleKey::custom(|head: &RequestHead<'_>| {
        let rest = head.uri().path().strip_prefix("/tenants/")?;
        Some(rest.split('/').next()?.as_bytes().to_vec())
    });
    let layer = layer_of(vec![percentage(shadow.url.clone(), 30).sample_by(tenant)]);
    let primary = serve(app(layer.clone())).await;

    // Tenants' orders, with a health check (no key) every fourth request and an empty
    // tenant (an empty key: no key) every tenth.
    const COUNT: usize = 200;
    let path_of = |n: usize| match n {
        _ if n.is_multiple_of(4) => "/health".to_owned(),
        _ if n % 10 == 5 => "/tenants//orders".to_owned(),
        _ => format!("/tenants/acme-{}/orders", n % 50),
    };
    let requests = (0..COUNT)
        .map(|n| request("GET", &format!("{}{}?n={n}", primary.url, path_of(n)), &[]))
        .collect();
    send_all(requests, 1).await;
    let stats = settled(&layer).await;

    let (mut expected, mut keyless_turn, mut by_counter) = (BTreeSet::new(), 0, 0);
    let mut tenants_chosen = BTreeMap::new();
    for n in 0..COUNT {
        let path = path_of(n);
        let key = path
            .strip_prefix("/tenants/")
            .and_then(|rest| rest.split('/').next())
            .filter(|k| !k.is_empty());
        let yes = match key {
            Some(key) => {
                let yes = chosen_by_key(key, 30);
                // One tenant, one decision, whichever of its requests.
                assert_eq!(*tenants_chosen.entry(key.to_owned()).or_insert(yes), yes);
                yes
            }
            None => {
                let yes = chosen_by_counter(keyless_turn, 30);
                keyless_turn += 1;
                by_counter += u64::from(yes);
                yes
            }
        };
        if yes {
            expected.insert(n);
        }
    }
    assert!(tenants_chosen.values().any(|&y| y) && tenants_chosen.values().any(|&y| !y));
    assert_eq!(numbers(&shadow.received(), ""), expected);
    let t = &stats.targets[0];
    assert_eq!(t.sampled, expected.len() as u64);
    assert_eq!(t.sampled_without_key, by_counter);
    assert!(by_counter > 0);
    assert_accounted(t);
}

#[test]
fn duplicate_names_and_bad_selection_settings_are_configuration_errors() {
    let err = |targets: Vec<Target>| MirrorLayer::with_options(options(targets)).unwrap_err();
    assert_eq!(
        err(vec![
            Target::new("http://a").with_name("staging"),
            Target::new("http://b").with_name("staging"),
        ]),
        ConfigError::DuplicateName {
            name: "staging".into()
        }
    );
    // A target's default name is its URL, so another target may not take it as its name.
    assert_eq!(
        err(vec![
            Target::new("http://a"),
            Target::new("http://b").with_name("http://a"),
        ]),
        ConfigError::DuplicateName {
            name: "http://a".into()
        }
    );
    // One URL under two names is fine: two filters on one shadow.
    assert!(
        MirrorLayer::with_options(options(vec![
            Target::new("http://a").with_name("reads"),
            Target::new("http://a").with_name("writes"),
        ]))
        .is_ok()
    );

    let named = |name: &str| Target::new("http://h").with_name(name);
    let cases = [
        (
            named("re").path_regex("(unclosed"),
            "re",
            "path_regex",
            "(unclosed",
        ),
        (
            named("rate").rate_limit(RateLimit::per_second(0)),
            "rate",
            "rate",
            "",
        ),
        (
            named("period").rate_limit(RateLimit::new(10, Duration::ZERO)),
            "period",
            "rate",
            "",
        ),
        (
            named("rw").rewrite_path("[v1", "/v2/"),
            "rw",
            "rewrite_path",
            "[v1",
        ),
        (named("p").path_prefix("api"), "p", "paths", "api"),
        (
            named("x").exclude_path_prefix("x/"),
            "x",
            "exclude_paths",
            "x/",
        ),
        (
            named("h").header_equals("bad name", "1"),
            "h",
            "headers",
            "bad name",
        ),
        (
            named("k").sample_by(SampleKey::header("bad name")),
            "k",
            "sample_by",
            "bad name",
        ),
        // Without a name, the target is named by its URL.
        (
            Target::new("http://unnamed").path_regex("*"),
            "http://unnamed",
            "path_regex",
            "*",
        ),
    ];
    for (bad, name, expected_setting, quoted) in cases {
        let error = err(vec![Target::new("http://fine"), bad]);
        let text = error.to_string();
        match error {
            ConfigError::InvalidSetting {
                target,
                setting,
                reason,
            } => {
                assert_eq!(target, name, "{text}");
                assert_eq!(setting, expected_setting, "{text}");
                assert!(reason.contains(quoted), "{text}");
                assert!(
                    text.contains(&format!("{name:?}")) && text.contains(setting),
                    "{text}"
                );
                assert!(!text.contains('\n'), "one line: {text}");
            }
            other => panic!("{name}: expected InvalidSetting, got {other:?}"),
        }
    }
}

/// A `Decisions` in the request's extensions records each target's decision: sent,
/// filtered, not sampled, paused, dropped by the rate cap; the kill switch is recorded as
/// the request's `not_mirrored` reason.
#[tokio::test]
async fn decisions_record_what_each_target_did_with_one_request() {
    use tower_mirror::{Decision, Decisions};
    let shadow = Shadow::start().await;
    let targets = vec![
        Target::new(format!("{}/a", shadow.url)).with_name("sent"),
        Target::new(format!("{}/f", shadow.url))
            .with_name("filtered")
            .path_prefix("/api"),
        percentage(format!("{}/z", shadow.url), 0).with_name("zero"),
        Target::new(format!("{}/p", shadow.url)).with_name("paused"),
        Target::new(format!("{}/c", shadow.url))
            .with_name("capped")
            .rate_limit("1/h".parse().unwrap()),
    ];
    let layer = layer_of(targets);
    let handle = layer.handle();
    handle.pause("paused").unwrap();
    let app = app(layer.clone());
    let decided = |path: &'static str| {
        let app = app.clone();
        async move {
            let decisions = Decisions::new();
            let mut request = Request::get(path).body(axum::body::Body::empty()).unwrap();
            request.extensions_mut().insert(decisions.clone());
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
            decisions
        }
    };
    let first = decided("/x").await;
    assert_eq!(first.not_mirrored(), None);
    let expect = |capped: Decision| {
        vec![
            ("sent".to_owned(), Decision::Sent),
            ("filtered".to_owned(), Decision::Filtered),
            ("zero".to_owned(), Decision::NotSampled),
            ("paused".to_owned(), Decision::Paused),
            ("capped".to_owned(), capped),
        ]
    };
    assert_eq!(first.targets(), expect(Decision::Sent));
    let second = decided("/y").await;
    assert_eq!(second.targets(), expect(Decision::Dropped("rate_limited")));
    assert_eq!(second.targets()[4].1.reason(), Some("rate_limited"));

    handle.disable();
    let off = decided("/z").await;
    assert_eq!(off.not_mirrored(), Some("disabled"));
    assert!(off.targets().is_empty());
}
