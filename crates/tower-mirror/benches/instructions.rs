//! Instructions per request, counted by valgrind rather than timed: repeatable to the
//! instruction whatever else the machine does, where `overhead.rs`'s nanoseconds move by more
//! than the 50 ns they are meant to resolve on a shared 2-core machine.
//!
//! Usage (see bench/README.md for the script that runs every scenario and takes the slope
//! between two request counts, which cancels the fixed start-up cost):
//!
//! ```sh
//! cargo bench -p tower-mirror --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/instructions-* <scenario> <bare|mirrored> <requests>
//! ```
//!
//! Scenarios: `not_sampled` (target at 0 %), `one_percent`, `get_one_target`,
//! `post_64k_teed`, `get_four_targets`. A plain `cargo bench` runs a short smoke run of each.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_mirror::{MirrorBody, MirrorLayer, Options, SendFuture, ShadowBody, Target, TeeBody};

fn sender(request: Request<MirrorBody>) -> SendFuture {
    drop(request);
    let body: ShadowBody = Empty::new().map_err(|never| match never {}).boxed_unsync();
    Box::pin(ready(Ok(Response::new(body))))
}

async fn handle<B: Body<Data = Bytes>>(
    request: Request<B>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(Response::new(Empty::new()))
}

fn request(with_body: Option<&Bytes>) -> Request<Full<Bytes>> {
    let builder = Request::builder()
        .uri("http://app.example/api/users/42?page=2")
        .header("host", "app.example")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "0f9c3a4e");
    match with_body {
        Some(body) => builder
            .method("POST")
            .header("content-length", body.len())
            .body(Full::new(body.clone())),
        None => builder.body(Full::default()),
    }
    .expect("a valid request")
}

fn scenario(name: &str) -> Option<(Vec<Target>, bool)> {
    let targets = |n: usize, p: u32| {
        (0..n)
            .map(|i| Target::percentage(format!("http://shadow-{i}.internal:8080"), p))
            .collect()
    };
    Some(match name {
        "not_sampled" => (targets(1, 0), false),
        "one_percent" => (targets(1, 1), false),
        "get_one_target" => (targets(1, 100), false),
        "post_64k_teed" => (targets(1, 100), true),
        "get_four_targets" => (targets(4, 100), false),
        _ => return None,
    })
}

fn run(name: &str, mirrored: bool, requests: usize) {
    let (targets, with_body) = scenario(name).expect("a known scenario");
    let body = Bytes::from(vec![7u8; 64 * 1024]);
    let body = with_body.then_some(&body);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let layer = MirrorLayer::with_options(Options {
        targets,
        max_in_flight: 1 << 20,
        sender: Some(Arc::new(sender)),
        ..Options::default()
    })
    .expect("valid targets");
    runtime.block_on(async {
        if mirrored {
            let mut service = layer.layer(tower::service_fn(handle::<TeeBody<Full<Bytes>>>));
            for _ in 0..requests {
                let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service).await;
                let _ = ready.expect("ready").call(request(body)).await;
                // Let the mirror tasks run, so that their cost is counted too.
                tokio::task::yield_now().await;
            }
        } else {
            let mut service = tower::service_fn(handle::<Full<Bytes>>);
            for _ in 0..requests {
                let _ = service.call(request(body)).await;
                tokio::task::yield_now().await;
            }
        }
        layer.drain(std::time::Duration::from_secs(5)).await;
    });
    let stats = layer.stats();
    let target = &stats.targets[0];
    assert_eq!(target.dropped_overload + target.skipped.total(), 0);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [name, mode, requests] if mode == "bare" || mode == "mirrored" => {
            run(
                name,
                mode == "mirrored",
                requests.parse().expect("a request count"),
            );
        }
        // `cargo bench` passes `--bench`: a smoke run of everything.
        _ => {
            for name in [
                "not_sampled",
                "one_percent",
                "get_one_target",
                "post_64k_teed",
                "get_four_targets",
            ] {
                run(name, false, 100);
                run(name, true, 100);
            }
            eprintln!("instructions: smoke run done; see the file's docs for counting");
        }
    }
}
