//! Instructions per request, counted by valgrind rather than timed: repeatable to the
//! instruction whatever else the machine does, where `overhead.rs`'s nanoseconds move by more
//! than the 50 ns they are meant to resolve on a shared 2-core machine. The requests, inner
//! service, sender and scenarios are `overhead.rs`'s (`support/mod.rs`).
//!
//! Usage (see bench/README.md for the script that runs every scenario and takes the slope
//! between two request counts, which cancels the fixed start-up cost):
//!
//! ```sh
//! cargo bench -p tower-mirror --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     ${CARGO_TARGET_DIR:-target}/release/deps/instructions-* <scenario> <bare|mirrored> <requests>
//! ```
//!
//! Scenarios: `not_sampled` (target at 0 %), `one_percent`, `get_one_target`,
//! `post_64k_teed`, `get_four_targets`, and requests that no target takes: `none_zero_percent`,
//! `none_filtered`, `none_key_not_chosen`, `none_four_targets` (see `support/mod.rs`).
//! `list` prints the names. A plain `cargo bench` runs a short smoke run of each.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http_body_util::Full;
use tower::Layer;
use tower_mirror::TeeBody;

use support::{SCENARIOS, Scenario, handle, once, post_body};

fn run(scenario: &Scenario, mirrored: bool, requests: usize) {
    let body = post_body();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let layer = scenario.layer(&Arc::new(AtomicU64::new(0)));
    runtime.block_on(async {
        if mirrored {
            let service = layer.layer(tower::service_fn(handle::<TeeBody<Full<Bytes>>>));
            for _ in 0..requests {
                let _ = once(&service, scenario.request(&body)).await;
            }
        } else {
            let service = tower::service_fn(handle::<Full<Bytes>>);
            for _ in 0..requests {
                let _ = once(&service, scenario.request(&body)).await;
            }
        }
        let through_layer = if mirrored { requests } else { 0 };
        scenario.check(&layer, through_layer as u64).await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [name, mode, requests] if mode == "bare" || mode == "mirrored" => {
            let scenario = SCENARIOS
                .iter()
                .find(|scenario| scenario.name == name)
                .expect("a known scenario");
            run(
                scenario,
                mode == "mirrored",
                requests.parse().expect("a request count"),
            );
        }
        [list] if list == "list" => {
            for scenario in &SCENARIOS {
                println!("{}", scenario.name);
            }
        }
        // `cargo bench` passes `--bench`: a smoke run of everything.
        _ => {
            for scenario in &SCENARIOS {
                run(scenario, false, 100);
                run(scenario, true, 100);
            }
            eprintln!("instructions: smoke run done; see the file's docs for counting");
        }
    }
}
