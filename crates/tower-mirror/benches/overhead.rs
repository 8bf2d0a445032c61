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

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_mirror::{MirrorBody, MirrorLayer, Options, SendFuture, ShadowBody, Target};

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

fn layer(targets: Vec<Target>, sent: &Arc<AtomicU64>) -> MirrorLayer {
    MirrorLayer::with_options(Options {
        targets,
        // Never the limit here: a dropped mirror would be cheaper than a sent one.
        max_in_flight: 1 << 20,
        sender: Some(Arc::new(counting_sender(Arc::clone(sent)))),
        ..Options::default()
    })
    .expect("valid benchmark targets")
}

/// The inner service: reads the request body to its end, answers 200.
async fn handle<B: Body<Data = Bytes>>(
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

fn targets(n: usize, percentage: u32) -> Vec<Target> {
    (0..n)
        .map(|i| Target::percentage(format!("http://shadow-{i}.internal:8080"), percentage))
        .collect()
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let body_64k = Bytes::from(vec![7u8; 64 * 1024]);
    let scenarios: [(&str, Vec<Target>, bool); 5] = [
        ("a_not_sampled", targets(1, 0), false),
        // 99 of 100 requests pass the eligibility checks and the sampler and are not taken;
        // the one taken costs its share of a mirror.
        ("a2_one_percent_sampled", targets(1, 1), false),
        ("b_get_one_target", targets(1, 100), false),
        ("c_post_64k_teed", targets(1, 100), true),
        ("d_get_four_targets", targets(4, 100), false),
    ];
    for (name, targets, with_body) in scenarios {
        let sent = Arc::new(AtomicU64::new(0));
        let layer = layer(targets, &sent);
        let request = || if with_body { post(&body_64k) } else { get() };
        let mut group = c.benchmark_group(name);
        if with_body {
            group.throughput(Throughput::Bytes(body_64k.len() as u64));
        }
        let bare = tower::service_fn(handle::<Full<Bytes>>);
        group.bench_function("bare", |b| {
            b.to_async(&runtime).iter(|| async {
                let response = bare.oneshot(request()).await;
                tokio::task::yield_now().await;
                response
            })
        });
        let mirrored = layer.layer(tower::service_fn(
            handle::<tower_mirror::TeeBody<Full<Bytes>>>,
        ));
        group.bench_function("mirrored", |b| {
            b.to_async(&runtime).iter(|| async {
                let mut service = mirrored.clone();
                let response = service.call(request()).await;
                tokio::task::yield_now().await;
                response
            })
        });
        group.finish();
        // Every mirror was really sent, none dropped or skipped.
        runtime.block_on(async { layer.drain(std::time::Duration::from_secs(5)).await });
        let stats = layer.stats();
        for target in &stats.targets {
            assert_eq!(
                target.dropped_overload + target.skipped.total(),
                0,
                "{target:?}"
            );
            assert_eq!(target.sent, target.responded, "{target:?}");
        }
        eprintln!(
            "{name}: {} mirrors sent by the benchmark",
            sent.load(Ordering::Relaxed)
        );
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
