//! Per-request overhead of the layer against the bare inner service, with a sender that does
//! no I/O, so only the layer's own work is measured.
//!
//! Run: `cargo bench -p tower-mirror --bench overhead`. Each group has a `bare` and a
//! `mirrored` line measured side by side in one run; the figures that matter are the
//! differences and ratios between them (see bench/README.md).
//!
//! With `PAIRED_ROUNDS=N` in the environment it times the two lines interleaved instead of
//! one after the other: N rounds, each a batch of `BATCH` requests through one line then a
//! batch through the other (the order alternating), and it prints the medians of both and
//! of the N paired differences. On a machine shared with other work, whatever slows one
//! round slows both of its batches, where criterion's lines, seconds apart, can see different
//! loads. Arguments other than flags select groups by substring, as criterion's filter does:
//! `PAIRED_ROUNDS=2000 cargo bench -p tower-mirror --bench overhead -- none_take`.
//!
//! Every request yields once to the runtime after the response, in both lines, so that the
//! spawned mirror tasks run inside the measurement: the cost shown is the whole CPU cost of
//! mirroring, not just the part on the request path.

mod support;

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use http::Request;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_mirror::TeeBody;

use support::{RequestKind, SCENARIOS, Scenario, handle, once, post_body};

/// Requests per batch in the paired mode: a few hundred microseconds, short enough that most
/// batches run without being preempted.
const BATCH: u32 = 100;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn overhead(c: &mut Criterion) {
    let runtime = runtime();
    let body = post_body();
    for scenario in &SCENARIOS {
        let sent = Arc::new(AtomicU64::new(0));
        let layer = scenario.layer(&sent);
        let mut group = c.benchmark_group(scenario.group);
        if scenario.request == RequestKind::Post {
            group.throughput(Throughput::Bytes(body.len() as u64));
        }
        // Requests per line, counted the same way in both (a plain add, no atomic).
        let (bare_requests, mirrored_requests) = (Cell::new(0u64), Cell::new(0u64));
        let bare = tower::service_fn(handle::<Full<Bytes>>);
        group.bench_function("bare", |b| {
            b.to_async(&runtime).iter(|| {
                bare_requests.set(bare_requests.get() + 1);
                once(&bare, scenario.request(&body))
            })
        });
        let mirrored = layer.layer(tower::service_fn(handle::<TeeBody<Full<Bytes>>>));
        group.bench_function("mirrored", |b| {
            b.to_async(&runtime).iter(|| {
                mirrored_requests.set(mirrored_requests.get() + 1);
                once(&mirrored, scenario.request(&body))
            })
        });
        group.finish();
        runtime.block_on(scenario.check(&layer, mirrored_requests.get()));
        eprintln!(
            "{}: {} and {} requests (bare, mirrored), {} mirrors sent by the benchmark",
            scenario.group,
            bare_requests.get(),
            mirrored_requests.get(),
            sent.load(Ordering::Relaxed)
        );
    }
}

/// Nanoseconds per request over a batch of `BATCH` requests through `service`.
async fn batch<S>(service: &S, scenario: &Scenario, body: &Bytes) -> f64
where
    S: Service<Request<Full<Bytes>>> + Clone,
{
    let start = Instant::now();
    for _ in 0..BATCH {
        black_box(once(service, scenario.request(body)).await).ok();
    }
    start.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

/// The `q` quantile (0 to 1) of `values`, sorted in place.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// The paired mode (see the file's docs): one markdown table row per selected group.
fn paired(rounds: u32, filters: &[String]) {
    let runtime = runtime();
    let body = post_body();
    let warm_up = (rounds / 10).max(10);
    println!(
        "{rounds} rounds of {BATCH} + {BATCH} requests per group, after {warm_up} rounds of warm-up; ns per request\n"
    );
    println!(
        "| group | bare: median (min) | mirrored: median (min) | mirrored − bare: median of the paired differences [p25, p75] |"
    );
    println!("|---|---:|---:|---:|");
    let selected = SCENARIOS
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.group.contains(f.as_str())));
    for scenario in selected {
        let sent = Arc::new(AtomicU64::new(0));
        let layer = scenario.layer(&sent);
        let bare = tower::service_fn(handle::<Full<Bytes>>);
        let mirrored = layer.layer(tower::service_fn(handle::<TeeBody<Full<Bytes>>>));
        let (mut bare_ns, mut mirrored_ns, mut differences) = (vec![], vec![], vec![]);
        runtime.block_on(async {
            for round in 0..warm_up + rounds {
                let (b, m) = if round % 2 == 0 {
                    let b = batch(&bare, scenario, &body).await;
                    (b, batch(&mirrored, scenario, &body).await)
                } else {
                    let m = batch(&mirrored, scenario, &body).await;
                    (batch(&bare, scenario, &body).await, m)
                };
                if round >= warm_up {
                    bare_ns.push(b);
                    mirrored_ns.push(m);
                    differences.push(m - b);
                }
            }
            scenario
                .check(&layer, u64::from((warm_up + rounds) * BATCH))
                .await;
        });
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {} | {:.0} ({:.0}) | {:.0} ({:.0}) | {:+.0} [{:+.0}, {:+.0}] |",
            scenario.group,
            quantile(&mut bare_ns, 0.5),
            min(&bare_ns),
            quantile(&mut mirrored_ns, 0.5),
            min(&mirrored_ns),
            quantile(&mut differences, 0.5),
            quantile(&mut differences, 0.25),
            quantile(&mut differences, 0.75),
        );
        eprintln!(
            "{}: {} mirrors sent by the benchmark",
            scenario.group,
            sent.load(Ordering::Relaxed)
        );
    }
}

criterion_group!(benches, overhead);

fn main() {
    if let Ok(rounds) = std::env::var("PAIRED_ROUNDS") {
        let rounds = rounds.parse().expect("PAIRED_ROUNDS: a number of rounds");
        let filters: Vec<String> = std::env::args()
            .skip(1)
            .filter(|arg| !arg.starts_with("--"))
            .collect();
        paired(rounds, &filters);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
