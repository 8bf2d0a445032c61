//! Soak: the primary at full speed, every request mirrored into a target that never answers.
//!
//! Run it on its own, optimised:
//!
//! ```text
//! cargo test -p tower-mirror --release --test soak -- --ignored --nocapture
//! ```
//!
//! With `max_in_flight` mirrors stuck forever (the timeout outlasts the run), every later
//! mirror must be dropped and counted, never queued: memory stays flat, the target never holds
//! more than `max_in_flight` connections, and the primary keeps answering throughout.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower_mirror::{MirrorLayer, Options, Target};

/// The most mirrors in flight to the target.
const MAX_IN_FLIGHT: usize = 64;
/// Concurrent clients, each sending one request after another over one keep-alive connection.
const CLIENTS: usize = 16;
/// The run ends after this many requests...
const MAX_REQUESTS: u64 = 3_000_000;
/// ...or after this long, whichever comes first.
const MAX_DURATION: Duration = Duration::from_secs(45);
/// How often the sampler looks at the stats, the memory and the answers.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The longest the primary may go without answering anyone.
const MAX_SILENCE: Duration = Duration::from_secs(1);

/// The bound on the process's resident memory, at any sample. Measured on a 2-CPU machine
/// (release build, two runs of 1.7 M and 2.3 M requests at 38 k/s and 50 k/s): VmRSS 4 MiB
/// before the first request, 8.7 MiB after one second, 8.8 to 9 MiB at the peak: flat, whatever
/// the number of requests. 64 MiB is seven times that: room for a bigger machine's worker
/// threads and allocator arenas, while a leak of 40 bytes per request, or mirrors queued instead
/// of dropped (each holds a request and a connection), would cross it within the run.
const RSS_BOUND: usize = 64 << 20;

/// VmRSS of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A target that accepts connections and reads whatever comes, never answering; it counts the
/// connections it has open.
async fn black_hole() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let open = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Relaxed);
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                count.fetch_sub(1, Relaxed);
            });
        }
    });
    (url, open)
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    peak_rss: usize,
    peak_in_flight: usize,
    peak_open: usize,
    longest_silence: Duration,
    /// Answers in each whole second of the run.
    per_second: Vec<u64>,
    /// VmRSS at the end of each whole second of the run.
    rss_per_second: Vec<usize>,
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

#[test]
#[ignore = "soak, about a minute: cargo test -p tower-mirror --release --test soak -- --ignored --nocapture"]
fn mirroring_everything_into_a_black_hole_keeps_memory_flat_and_the_primary_answering() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(soak());
}

async fn soak() {
    let rss_at_start = rss();
    let (target, open) = black_hole().await;
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(target)],
        max_in_flight: MAX_IN_FLIGHT,
        // Longer than the run: a mirror, once in flight, stays in flight.
        timeout: Duration::from_secs(600),
        ..Options::default()
    })
    .unwrap();
    let app = support::serve(
        Router::new()
            .route("/soak", get(|| async { "ok" }))
            .layer(layer.clone()),
    )
    .await;

    let started = Instant::now();
    let deadline = started + MAX_DURATION;
    let issued = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = format!("{}/soak", app.url);
            let (issued, answered) = (Arc::clone(&issued), Arc::clone(&answered));
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let client = support::client();
                while Instant::now() < deadline
                    && !stop.load(Relaxed)
                    && issued.fetch_add(1, Relaxed) < MAX_REQUESTS
                {
                    let request = Request::get(&url).body(Full::<Bytes>::default()).unwrap();
                    let answer = support::send_with(&client, request).await;
                    assert_eq!(
                        (answer.status, &answer.body[..]),
                        (StatusCode::OK, &b"ok"[..])
                    );
                    answered.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();

    let sampler = {
        let (layer, open) = (layer.clone(), Arc::clone(&open));
        let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
        tokio::spawn(async move {
            // However the sampler ends (a breach panics it), the clients stop too.
            let _stop_clients = StopOnDrop(Arc::clone(&stop));
            let mut samples = Samples::default();
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            let (mut last_count, mut last_progress) = (0, Instant::now());
            let mut second_start = (Instant::now(), 0);
            loop {
                ticks.tick().await;
                let now = Instant::now();
                let count = answered.load(Relaxed);
                if count != last_count {
                    (last_count, last_progress) = (count, now);
                }
                samples.longest_silence = samples.longest_silence.max(now - last_progress);
                if now - second_start.0 >= Duration::from_secs(1) {
                    samples.per_second.push(count - second_start.1);
                    samples.rss_per_second.push(rss());
                    second_start = (now, count);
                }
                let stats = &layer.stats().targets[0];
                samples.peak_in_flight = samples.peak_in_flight.max(stats.in_flight);
                samples.peak_open = samples.peak_open.max(open.load(Relaxed));
                samples.peak_rss = samples.peak_rss.max(rss());
                // Checked at every sample: a breach ends the run at once.
                assert!(stats.in_flight <= MAX_IN_FLIGHT, "{stats:?}");
                assert!(samples.peak_rss < RSS_BOUND, "{samples:?}");
                if stop.load(Relaxed) {
                    return samples;
                }
            }
        })
    };

    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    let samples = sampler.await.unwrap();

    let requests = answered.load(Relaxed);
    let stats = layer.stats();
    let target = &stats.targets[0];
    let rate = requests as f64 / elapsed.as_secs_f64();
    println!(
        "soak: {requests} requests in {elapsed:.1?} ({rate:.0}/s, {CLIENTS} clients); \
         mirrors: {} sent, {} in flight, {} dropped for overload; \
         RSS: {:.1} MiB at start, peak {:.1} MiB (bound {} MiB); \
         target connections at most {}; longest silence of the primary {:?}; \
         answers per second: min {}, max {}; RSS after 1 s, 10 s and at the end: {:?} MiB",
        target.sent,
        target.in_flight,
        target.dropped_overload,
        rss_at_start as f64 / (1 << 20) as f64,
        samples.peak_rss as f64 / (1 << 20) as f64,
        RSS_BOUND >> 20,
        samples.peak_open,
        samples.longest_silence,
        samples.per_second.iter().min().unwrap_or(&0),
        samples.per_second.iter().max().unwrap_or(&0),
        [0, 9, samples.rss_per_second.len().saturating_sub(1)]
            .iter()
            .filter_map(|&i| samples.rss_per_second.get(i))
            .map(|&b| format!("{:.1}", b as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>(),
    );

    assert!(requests > 0);
    assert!(
        requests <= MAX_REQUESTS && elapsed < MAX_DURATION + support::DEADLINE,
        "bounded in count and time"
    );
    // Every request was sampled; the first MAX_IN_FLIGHT mirrors went out and stay out, every
    // later one was dropped, none queued or skipped.
    assert_eq!(target.sampled, requests);
    assert_eq!(target.sent, MAX_IN_FLIGHT as u64);
    assert_eq!(target.in_flight, MAX_IN_FLIGHT);
    assert_eq!(target.dropped_overload, requests - MAX_IN_FLIGHT as u64);
    assert_eq!(target.skipped.total(), 0);
    assert_eq!(target.responded + target.failed + target.timed_out, 0);
    assert!(samples.peak_in_flight <= MAX_IN_FLIGHT);
    assert!(
        samples.peak_open <= MAX_IN_FLIGHT,
        "the target never held more than max_in_flight connections: {}",
        samples.peak_open
    );
    assert!(samples.peak_rss < RSS_BOUND);
    assert!(
        samples.longest_silence < MAX_SILENCE,
        "the primary went {:?} without answering",
        samples.longest_silence
    );
    assert!(
        samples.per_second.iter().all(|&n| n > 0),
        "a second without answers: {:?}",
        samples.per_second
    );
}
