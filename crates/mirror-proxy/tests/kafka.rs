//! Kafka recording targets and `replay kafka://…` (feature `kafka`), against a real
//! Kafka-compatible broker on loopback: `tansu`, started by the tests themselves with
//! in-memory storage on a free port. A recording under load reaches the topic exactly once
//! and byte-identical, keyed by the sticky-sampling key; a broker that hangs, dies and comes
//! back is counted, never blocks the primary, and is recorded to again; a replay from the
//! topic reproduces the requests byte-exact.
//!
//! The broker binary is `$TANSU`, else `${XDG_CACHE_HOME:-$HOME/.cache}/tower-mirror/tansu/bin/tansu`
//! (where `.ci/run` installs it). Without it the tests say so on stderr and pass, unless
//! `TOWER_MIRROR_REQUIRE_KAFKA` is set (as `.ci/run` does), when they fail.
#![cfg(feature = "kafka")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use support::{
    DEADLINE, Proxy, Received, Server, TempDir, client, run_to_exit, send, target_named,
};
use tokio::process::{Child, Command};
use tower_mirror::record::Recorded;

// ---------------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------------

/// A `tansu` broker process on a loopback port, with in-memory storage (killed when dropped).
struct Tansu {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// The tansu binary, if there is one.
fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(cache.join("tower-mirror/tansu/bin/tansu")).filter(|p| p.is_file())
}

impl Tansu {
    /// A broker on a free loopback port, ready for requests; `None` (said on stderr) when
    /// there is no tansu binary and `TOWER_MIRROR_REQUIRE_KAFKA` is unset.
    async fn start(test: &str) -> Option<Self> {
        let Some(binary) = tansu_binary() else {
            assert!(
                std::env::var_os("TOWER_MIRROR_REQUIRE_KAFKA").is_none(),
                "{test}: TOWER_MIRROR_REQUIRE_KAFKA is set but there is no tansu binary \
                 ($TANSU, or tower-mirror/tansu/bin/tansu in the cache directory)"
            );
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no tansu binary ($TANSU, or tower-mirror/tansu/bin/tansu in the \
                 cache directory); install it with `cargo install tansu --locked --features \
                 dynostore --root ~/.cache/tower-mirror/tansu`, or set TOWER_MIRROR_REQUIRE_KAFKA=1 \
                 to fail instead"
            );
            return None;
        };
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut broker = Self {
            binary,
            port,
            child: None,
        };
        broker.restart().await;
        Some(broker)
    }

    /// Starts the broker (again) on its port, empty, and waits until it answers.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.binary)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + DEADLINE * 3;
        loop {
            let client = tokio::time::timeout(Duration::from_secs(2), self.try_client()).await;
            if let Ok(Ok(client)) = client
                && client.list_topics().await.is_ok()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tansu exited at start: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not answer on port {} within {:?}",
                self.port,
                DEADLINE * 3
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        child.kill().await.unwrap();
    }

    /// Sends `signal` (`-STOP`) to the broker.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().unwrap();
        support::signal(pid, signal);
    }

    fn url(&self, topic: &str) -> String {
        format!("kafka://127.0.0.1:{}/{topic}", self.port)
    }

    async fn try_client(&self) -> Result<Client, rskafka::client::error::Error> {
        ClientBuilder::new(vec![format!("127.0.0.1:{}", self.port)])
            .backoff_config(rskafka::BackoffConfig {
                deadline: Some(Duration::from_secs(2)),
                ..Default::default()
            })
            .build()
            .await
    }

    async fn client(&self) -> Client {
        self.try_client().await.expect("a client of the broker")
    }

    async fn create_topic(&self, topic: &str, partitions: i32) {
        self.client()
            .await
            .controller_client()
            .unwrap()
            .create_topic(topic, partitions, 1, 5_000)
            .await
            .expect("the topic is created");
    }

    /// Every record of `topic` now: (partition, key, value), in partition then offset order.
    async fn consume(&self, topic: &str) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let client = self.client().await;
        let partitions = client
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == topic)
            .expect("the topic exists")
            .partitions;
        let mut all = Vec::new();
        for partition in partitions {
            let reader = client
                .partition_client(topic, partition, UnknownTopicHandling::Error)
                .await
                .unwrap();
            let mut offset = reader.get_offset(OffsetAt::Earliest).await.unwrap();
            // The high watermark as a fetch reports it: tansu answers ListOffsets' latest
            // with the last batch's first offset.
            let (_, end) = reader.fetch_records(offset, 1..(4 << 20), 0).await.unwrap();
            while offset < end {
                let (records, _) = reader
                    .fetch_records(offset, 1..(4 << 20), 100)
                    .await
                    .unwrap();
                assert!(!records.is_empty(), "partition {partition} ends early");
                for record in records {
                    if record.offset < offset || record.offset >= end {
                        continue;
                    }
                    offset = record.offset + 1;
                    all.push((
                        partition,
                        record.record.key.unwrap_or_default(),
                        record.record.value.unwrap_or_default(),
                    ));
                }
            }
        }
        all
    }
}

/// A proxy forwarding to `upstream` whose only mirror target is `[[mirror]]` `table`
/// (named `kafka`).
async fn proxy(dir: &TempDir, upstream: &Server, table: &str, extra: &[&str]) -> Proxy {
    let config = dir.file(
        "proxy.toml",
        &format!("[[mirror]]\nname = \"kafka\"\n{table}"),
    );
    let mut args = vec![
        "--upstream",
        &upstream.url,
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proxy::start(&args).await
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    target_named(stats, "kafka")[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats:#}"))
}

/// Every mirror that was taken is settled: written, failed or dropped, none in flight.
fn settled(stats: &serde_json::Value) -> bool {
    counter(stats, "in_flight") == 0
}

/// A body of its own for request `i`: text and every byte value.
fn body_of(i: usize) -> Bytes {
    let mut body = format!("request {i}:").into_bytes();
    body.extend((0..=255u8).cycle().skip(i % 256).take(100 + i % 300));
    Bytes::from(body)
}

/// Sends `count` POSTs numbered from `first` through the proxy, `concurrency` at a time,
/// each tagged `x-req: {prefix}{i}` and keyed `x-user: user-{i % 7}`; asserts each is
/// answered 200 within the deadline, and returns the primary latencies.
async fn load(
    proxy: &Proxy,
    prefix: &str,
    first: usize,
    count: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let client = client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(first));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, base) = (client.clone(), Arc::clone(&next), proxy.url("/ingest"));
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= first + count {
                    return latencies;
                }
                let request = Request::post(format!("{base}?n={i}"))
                    .header("x-req", format!("{prefix}{i}"))
                    .header("x-user", format!("user-{}", i % 7))
                    .body(Full::new(body_of(i)))
                    .unwrap();
                let started = std::time::Instant::now();
                let response = support::within("a primary response", send(&client, request)).await;
                latencies.push(started.elapsed());
                assert_eq!(response.status(), StatusCode::OK);
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    latencies
}

/// The records in a topic, parsed, by their `x-req` header.
fn by_request(
    records: &[(i32, Vec<u8>, Vec<u8>)],
) -> BTreeMap<String, Vec<(i32, String, Recorded)>> {
    let mut seen: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for (partition, key, value) in records {
        let record = Recorded::parse(std::str::from_utf8(value).expect("a UTF-8 record"))
            .expect("a v1 record");
        let tag = record
            .headers
            .iter()
            .find(|(name, _)| name == "x-req")
            .map(|(_, value)| value.to_str().unwrap().to_owned())
            .expect("an x-req header");
        let key = String::from_utf8(key.clone()).unwrap();
        seen.entry(tag).or_default().push((*partition, key, record));
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_under_load_is_in_the_topic_exactly_once_byte_identical_and_keyed() {
    let Some(broker) = Tansu::start("kafka: recording under load").await else {
        return;
    };
    broker.create_topic("traffic", 3).await;
    let dir = TempDir::new();
    let upstream = Server::upstream().await;
    let table = format!(
        "url = \"{}\"\nsample_by = \"header:x-user\"\nkafka_linger = \"2ms\"\n\
         kafka_max_batch = \"64KiB\"\nkafka_compression = \"lz4\"\n",
        broker.url("traffic")
    );
    let proxy = proxy(&dir, &upstream, &table, &["--max-in-flight", "10000"]).await;
    const N: usize = 600;
    load(&proxy, "load-", 0, N, 8).await;
    let stats = proxy
        .wait_stats("every record settled", |s| {
            settled(s) && counter(s, "responded") + counter(s, "failed") == counter(s, "sent")
        })
        .await;
    assert_eq!(counter(&stats, "sampled"), N as u64, "{stats:#}");
    assert_eq!(counter(&stats, "dropped_overload"), 0, "{stats:#}");
    assert_eq!(counter(&stats, "failed"), 0, "{stats:#}");
    assert_eq!(counter(&stats, "responded"), N as u64, "{stats:#}");

    let records = broker.consume("traffic").await;
    assert_eq!(records.len(), N, "one record per mirror");
    let seen = by_request(&records);
    let mut partitions_of_key: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for i in 0..N {
        let copies = seen
            .get(&format!("load-{i}"))
            .unwrap_or_else(|| panic!("request {i} is not in the topic"));
        assert_eq!(
            copies.len(),
            1,
            "request {i} is in the topic {} times",
            copies.len()
        );
        let (partition, key, record) = &copies[0];
        assert_eq!(record.method, Method::POST);
        assert_eq!(
            record.uri.path_and_query().unwrap().as_str(),
            format!("/ingest?n={i}")
        );
        assert_eq!(record.body, body_of(i), "request {i}'s body");
        assert!(!record.truncated);
        // Keyed by the sticky-sampling key, so one user stays on one partition.
        assert_eq!(key, &format!("user-{}", i % 7));
        partitions_of_key
            .entry(key.clone())
            .or_default()
            .insert(*partition);
    }
    for (key, partitions) in &partitions_of_key {
        assert_eq!(partitions.len(), 1, "{key} is on partitions {partitions:?}");
    }
    // The keys spread over the partitions (7 keys, 3 partitions).
    let used: BTreeSet<i32> = records.iter().map(|(p, _, _)| *p).collect();
    assert!(used.len() > 1, "every record on partitions {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_hangs_and_dies_is_counted_never_blocks_and_is_recorded_to_again() {
    let Some(mut broker) = Tansu::start("kafka: broker outage").await else {
        return;
    };
    broker.create_topic("traffic", 1).await;
    let dir = TempDir::new();
    let upstream = Server::upstream().await;
    // No key sampler: records are keyed by their id.
    let table = format!(
        "url = \"{}\"\nkafka_linger = \"1ms\"\nkafka_timeout = \"1s\"\nkafka_reconnect = \"100ms\"\n",
        broker.url("traffic")
    );
    let proxy = proxy(&dir, &upstream, &table, &["--max-in-flight", "32"]).await;

    // Recording works. (While the producer connects, mirrors over max_in_flight may be
    // dropped: what counts is that every one is accounted for.)
    let before = load(&proxy, "before-", 0, 50, 4).await;
    let stats = proxy
        .wait_stats("the first records settled", |s| {
            settled(s) && counter(s, "responded") + counter(s, "failed") == counter(s, "sent")
        })
        .await;
    let written = counter(&stats, "responded");
    let lost = counter(&stats, "dropped_overload");
    assert!(written > 0, "{stats:#}");
    assert_eq!(counter(&stats, "failed"), 0, "{stats:#}");
    assert_eq!(written + lost, 50, "{stats:#}");

    // The broker hangs (stopped): records cannot be written, and every primary request is
    // answered all the same, while nothing is written.
    broker.signal("-STOP");
    let during = load(&proxy, "during-", 0, 400, 4).await;
    let stats = proxy.stats().await;
    assert_eq!(
        counter(&stats, "responded"),
        written,
        "nothing is written while the broker hangs: {stats:#}"
    );
    // Mirrors over max_in_flight are dropped, never waited for.
    assert!(
        counter(&stats, "dropped_overload") > lost,
        "a hung broker fills max_in_flight, and the rest is dropped: {stats:#}"
    );

    // It dies (still stopped, so it answers nothing more): what was in flight fails, and is
    // counted.
    broker.kill().await;
    let stats = proxy
        .wait_stats("every mirror settled after the broker died", settled)
        .await;
    assert_eq!(counter(&stats, "responded"), written, "{stats:#}");
    assert_eq!(
        counter(&stats, "failed") + counter(&stats, "dropped_overload") - lost,
        400,
        "every mirror during the outage failed or was dropped: {stats:#}"
    );
    // While it is down, records fail at once (connection refused), counted.
    load(&proxy, "down-", 0, 20, 1).await;
    proxy
        .wait_stats("the mirrors while down counted", |s| {
            settled(s) && counter(s, "failed") + counter(s, "dropped_overload") - lost == 420
        })
        .await;

    // It comes back (empty: its storage is in memory): recording resumes on its own.
    broker.restart().await;
    broker.create_topic("traffic", 1).await;
    let mut probes = 0;
    loop {
        assert!(
            probes < 1000,
            "recording did not resume after {probes} probes"
        );
        load(&proxy, "probe-", probes, 1, 1).await;
        probes += 1;
        let stats = proxy.wait_stats("the probe settled", settled).await;
        if counter(&stats, "responded") > written {
            break;
        }
    }
    let resumed = proxy.stats().await;
    let after = load(&proxy, "after-", 0, 100, 2).await;
    let stats = proxy
        .wait_stats("the records after the restart settled", |s| {
            settled(s) && counter(s, "responded") + counter(s, "failed") == counter(s, "sent")
        })
        .await;
    let grew = |name: &str| counter(&stats, name) - counter(&resumed, name);
    assert_eq!(
        grew("failed"),
        0,
        "none fails once the broker is back: {stats:#}"
    );
    assert!(grew("responded") > 0, "{stats:#}");
    assert_eq!(
        grew("responded") + grew("dropped_overload"),
        100,
        "{stats:#}"
    );

    let records = broker.consume("traffic").await;
    let seen = by_request(&records);
    let mut after_in_topic = 0;
    for i in 0..100 {
        let copies = seen.get(&format!("after-{i}")).map_or(0, Vec::len);
        assert!(copies <= 1, "after-{i} is in the topic {copies} times");
        after_in_topic += copies as u64;
    }
    assert_eq!(
        after_in_topic,
        grew("responded"),
        "every record written is in the topic"
    );
    assert_eq!(
        records.len() as u64,
        counter(&stats, "responded") - written,
        "the new broker has every record written since it started, once"
    );
    for (tag, copies) in &seen {
        assert!(
            tag.starts_with("after-") || tag.starts_with("probe-"),
            "{tag} was dropped or failed, yet it is in the topic"
        );
        // Keyed by the record id without a key sampler.
        assert_eq!(copies[0].1, copies[0].2.id, "{tag}");
    }

    let median = |mut latencies: Vec<Duration>| {
        latencies.sort();
        latencies[latencies.len() / 2]
    };
    eprintln!(
        "primary latency p50: before {:?}, broker hung {:?}, after {:?}",
        median(before),
        median(during),
        median(after)
    );
}

/// What the replay test records, and expects again from the replay.
fn originals() -> Vec<Request<Full<Bytes>>> {
    let binary: Bytes = (0..=255u8).cycle().take(3000).collect();
    vec![
        Request::get("/api/users?page=2&q=a%20b")
            .header("x-user-id", "42")
            .header("accept", "application/json")
            .body(Full::default())
            .unwrap(),
        Request::post("/api/upload")
            .header("content-type", "application/octet-stream")
            .header("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .body(Full::new(binary))
            .unwrap(),
        Request::builder()
            .method(Method::DELETE)
            .uri("/api/users/7")
            .header("x-twice", "one")
            .header("x-twice", "two")
            .body(Full::default())
            .unwrap(),
    ]
}

/// The bodies of [`originals`], in order.
fn original_bodies() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        (0..=255u8).cycle().take(3000).collect(),
        Vec::new(),
    ]
}

/// The replayed request matches the original: method, path and query, its own headers in
/// order (repeated ones too), and the body byte for byte.
fn assert_replayed(received: &Received, original: &Request<Full<Bytes>>, body: &[u8]) {
    assert_eq!(received.method, original.method());
    assert_eq!(
        received.uri.path_and_query().unwrap().as_str(),
        original.uri().path_and_query().unwrap().as_str()
    );
    for name in original.headers().keys() {
        let sent: Vec<&HeaderValue> = original.headers().get_all(name).iter().collect();
        let got: Vec<&HeaderValue> = received.headers.get_all(name).iter().collect();
        assert_eq!(got, sent, "{name}");
    }
    assert_eq!(&received.body[..], body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_topic_is_byte_exact_and_replayers_share_its_partitions() {
    let Some(broker) = Tansu::start("kafka: replay").await else {
        return;
    };
    broker.create_topic("traffic", 2).await;
    let dir = TempDir::new();
    let upstream = Server::upstream().await;
    let table = format!("url = \"{}\"\n", broker.url("traffic"));
    let proxy = proxy(&dir, &upstream, &table, &[]).await;
    let client = client();
    // The time between the first request's capture and the second's.
    let mut between = None;
    for (n, original) in originals().into_iter().enumerate() {
        let (parts, body) = original.into_parts();
        let mut request = Request::from_parts(parts, body);
        *request.uri_mut() = proxy.url(&request.uri().to_string()).parse().unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
        proxy
            .wait_stats("the record written", |s| {
                counter(s, "responded") == n as u64 + 1
            })
            .await;
        between.get_or_insert_with(|| {
            humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
        });
    }
    let url = broker.url("traffic");

    // The whole topic, in capture order.
    let target = Server::shadow().await;
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        &url,
        "--to",
        &target.url,
        "--max",
        "--concurrency",
        "1",
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 3 requests"), "{stdout}");
    let received = target.wait_for(3).await;
    for ((received, original), body) in received.iter().zip(&originals()).zip(original_bodies()) {
        assert_replayed(received, original, &body);
    }

    // Two replayers sharing the topic read each record once between them.
    let mut shared = Vec::new();
    for member in ["0/2", "1/2"] {
        let target = Server::shadow().await;
        let (status, stdout, stderr) = run_to_exit(&[
            "replay",
            &url,
            "--to",
            &target.url,
            "--max",
            "--member",
            member,
        ])
        .await;
        assert!(status.success(), "{stdout}{stderr}");
        let count = target.count();
        assert!(
            stdout.contains(&format!("replayed {count} requests")),
            "{stdout}"
        );
        shared.extend(target.received().into_iter().map(|r| r.uri.to_string()));
    }
    shared.sort();
    let mut all: Vec<String> = originals().iter().map(|r| r.uri().to_string()).collect();
    all.sort();
    assert_eq!(shared, all);

    // From a time: only the records captured since.
    let target = Server::shadow().await;
    let between = between.unwrap();
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        &url,
        "--to",
        &target.url,
        "--max",
        "--concurrency",
        "1",
        "--from-time",
        &between,
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed 2 requests"),
        "{between}: {stdout}"
    );
    let received = target.wait_for(2).await;
    for ((received, original), body) in received
        .iter()
        .zip(&originals()[1..])
        .zip(&original_bodies()[1..])
    {
        assert_replayed(received, original, body);
    }

    // From an offset past the end of every partition: nothing, and the replay still ends.
    let target = Server::shadow().await;
    let (status, stdout, stderr) =
        run_to_exit(&["replay", &url, "--to", &target.url, "--from-offset", "3"]).await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 0 requests"), "{stdout}");

    // A topic that does not exist, or a partition it lacks, stops the replay: exit 2.
    for args in [
        vec![
            "replay",
            &broker.url("nothing-here")[..],
            "--to",
            &target.url,
        ],
        vec!["replay", &url, "--to", &target.url, "--partitions", "5"],
    ] {
        let (status, _, stderr) = run_to_exit(&args).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
