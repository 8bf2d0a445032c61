//! Per-request overhead of the layer against the bare inner service, with a sender that does
//! no I/O, so only the layer's own work is measured.
//!
//! Run: `cargo bench -p tower-mirror --bench overhead`. Each group has a `bare` and a
//! `mirrored` line measured side by side in one run; the figures that matter are the
//! differences and ratios between them (see bench/README.md).
//!
//! Every iteration yields once to the runtime after the request, in both lines, so that the
//! spawned mirror tasks run inside the measurement: the cost shown is the whole CPU cost of
//! mirroring, not just the part on the request path.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_mirror::TeeBody;

use support::{SCENARIOS, assert_every_mirror_sent, handle, post_body};

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let body = post_body();
    for scenario in &SCENARIOS {
        let sent = Arc::new(AtomicU64::new(0));
        let layer = scenario.layer(&sent);
        let mut group = c.benchmark_group(scenario.group);
        if scenario.with_body {
            group.throughput(Throughput::Bytes(body.len() as u64));
        }
        let bare = tower::service_fn(handle::<Full<Bytes>>);
        group.bench_function("bare", |b| {
            b.to_async(&runtime).iter(|| async {
                let response = bare.oneshot(scenario.request(&body)).await;
                tokio::task::yield_now().await;
                response
            })
        });
        let mirrored = layer.layer(tower::service_fn(handle::<TeeBody<Full<Bytes>>>));
        group.bench_function("mirrored", |b| {
            b.to_async(&runtime).iter(|| async {
                let mut service = mirrored.clone();
                let response = service.call(scenario.request(&body)).await;
                tokio::task::yield_now().await;
                response
            })
        });
        group.finish();
        runtime.block_on(assert_every_mirror_sent(&layer));
        eprintln!(
            "{}: {} mirrors sent by the benchmark",
            scenario.group,
            sent.load(Ordering::Relaxed)
        );
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
