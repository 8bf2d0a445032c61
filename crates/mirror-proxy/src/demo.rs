//! `mirror-proxy demo`: everything on loopback, nothing to set up.
//!
//! Starts a primary "shop" app and two shadow builds of it (one fast; one slow that sometimes
//! answers 503), puts a proxy in front that mirrors to both, drives a burst of realistic
//! traffic with a live progress line, prints what each target got, and keeps serving so the
//! proxy can be tried by hand until Ctrl-C or `--duration`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{DemoArgs, RunArgs};
use crate::server::Proxy;
use crate::telemetry::Telemetry;
use crate::{Config, shutdown_signal};

/// How many requests are in flight at once during the burst, at most.
const CONCURRENCY: usize = 16;

/// The mirror timeout and in-flight bound the demo's proxy runs with.
const TIMEOUT_MS: u64 = 250;
const MAX_IN_FLIGHT: usize = 128;

/// Requests per second the burst is paced at, like a busy service rather than a benchmark.
const RATE: u64 = 800;

/// How one build of the shop behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Extra time per request, drawn evenly from this range of milliseconds.
    delay_ms: Option<(u64, u64)>,
    /// Every n-th request answers 503.
    fail_every: Option<u64>,
    /// The new build under test: `price_cents` renamed `price`, and 422 instead of 400 for an
    /// invalid order.
    candidate: bool,
}

/// Microseconds since the epoch: a field that differs between any two answers.
fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

struct Shop {
    name: &'static str,
    behaviour: Behaviour,
    received: AtomicU64,
}

/// One running build of the shop.
struct Running {
    shop: Arc<Shop>,
    addr: SocketAddr,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn start_shop(name: &'static str, behaviour: Behaviour) -> std::io::Result<Running> {
    let shop = Arc::new(Shop {
        name,
        behaviour,
        received: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/api/products/{id}", get(product))
        .route("/api/orders", post(order))
        .route("/api/search", get(search))
        .route("/api/uploads", post(upload))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shop),
            behave,
        ))
        .with_state(Arc::clone(&shop));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running { shop, addr })
}

/// Counts, delays and fails requests as the build's behaviour says.
async fn behave(
    State(shop): State<Arc<Shop>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let n = shop.received.fetch_add(1, Relaxed) + 1;
    if let Some((low, high)) = shop.behaviour.delay_ms {
        let delay = low + spread(n) % (high - low + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if shop
        .behaviour
        .fail_every
        .is_some_and(|every| n % every == 0)
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n").into_response();
    }
    next.run(request).await
}

/// A cheap, deterministic scramble of a request number (no randomness crate needed).
fn spread(n: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x
}

async fn product(
    State(shop): State<Arc<Shop>>,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let currency = query.get("currency").map_or("USD", String::as_str);
    let price_field = if shop.behaviour.candidate {
        "price"
    } else {
        "price_cents"
    };
    let mut product = json!({
        "id": id,
        "name": format!("Product {id}"),
        "currency": currency,
        "in_stock": id % 5 != 0,
        "served_at": now_micros(),
    });
    product[price_field] = json!(500 + id * 7 % 9000);
    axum::Json(product).into_response()
}

async fn order(
    State(shop): State<Arc<Shop>>,
    axum::Json(order): axum::Json<serde_json::Value>,
) -> Response {
    let qty = order["qty"].as_u64().unwrap_or(0);
    if qty == 0 {
        let status = if shop.behaviour.candidate {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        return (status, axum::Json(json!({"error": "qty must be positive"}))).into_response();
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({
            // Generated, so it differs between any two builds: noise the baseline cancels.
            "order_id": now_micros(),
            "product_id": order["product_id"],
            "qty": qty,
            "status": "created",
        })),
    )
        .into_response()
}

async fn search(Query(query): Query<HashMap<String, String>>) -> Response {
    let q = query.get("q").cloned().unwrap_or_default();
    let results: Vec<u64> = (1..=3).map(|i| (q.len() as u64) * 10 + i).collect();
    axum::Json(json!({ "query": q, "results": results, "served_at": now_micros() })).into_response()
}

async fn upload(body: Bytes) -> Response {
    axum::Json(json!({ "bytes": body.len() })).into_response()
}

/// One request of the burst: mostly product views and orders, some searches, a few large
/// uploads, and the odd invalid order.
fn nth_request(base: &str, n: u64) -> Request<Full<Bytes>> {
    let pick = spread(n) % 100;
    let id = spread(n + 7) % 500 + 1;
    let request = match pick {
        0..=54 => {
            Request::get(format!("{base}/api/products/{id}?currency=EUR")).body(Full::default())
        }
        55..=79 => {
            let qty = if pick == 79 { 0 } else { 1 + n % 3 };
            let json = json!({ "product_id": id, "qty": qty }).to_string();
            Request::post(format!("{base}/api/orders"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json)))
        }
        80..=97 => Request::get(format!("{base}/api/search?q=lamp+{id}")).body(Full::default()),
        _ => {
            let size = 256 * 1024 * (1 + (n as usize % 4));
            Request::post(format!("{base}/api/uploads"))
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(vec![b'x'; size])))
        }
    };
    request.expect("the demo's requests are well-formed")
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mirror-proxy demo: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let current_build = Behaviour {
        delay_ms: None,
        fail_every: None,
        candidate: false,
    };
    let primary = start_shop("primary", current_build).await?;
    // A second copy of the current build: fast, and the baseline that tells noise apart.
    let baseline = start_shop("baseline", current_build).await?;
    // The new build under test: slow, sometimes overloaded, and its answers differ.
    let candidate = start_shop(
        "candidate",
        Behaviour {
            delay_ms: Some((20, 300)),
            fail_every: Some(25),
            candidate: true,
        },
    )
    .await?;
    let shadows = [&baseline, &candidate];

    let mut config = Config::load(&RunArgs {
        listen: Some("127.0.0.1:0".parse()?),
        upstream: Some(primary.url()),
        mirrors: vec![baseline.url(), candidate.url()],
        timeout: Some(Duration::from_millis(TIMEOUT_MS)),
        max_in_flight: Some(MAX_IN_FLIGHT),
        admin: Some("127.0.0.1:0".parse()?),
        ..RunArgs::default()
    })?;
    // Enough examples per field that a rare change (422 for an invalid order) is kept
    // beside the frequent one (503 when overloaded).
    config.mirror.diff.max_examples = 32;
    let [baseline_target, candidate_target] = [0, 1].map(|i| config.mirror.targets[i].clone());
    config.mirror.targets = vec![
        baseline_target.as_baseline(),
        candidate_target.with_comparison(),
    ];
    let proxy = Proxy::bind(config).await?;
    let proxy_addr = proxy.local_addr();
    let admin_addr = proxy.admin_addr();
    let mirror = proxy.mirror().cloned().ok_or("the demo mirrors")?;
    let diff = proxy.diff().ok_or("the demo compares")?;
    let telemetry = Arc::clone(proxy.telemetry());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve(async move {
        let _ = stopped.await;
    }));

    println!("mirror-proxy demo, everything on 127.0.0.1:");
    println!("  primary app   {}", primary.url());
    for shadow in shadows {
        println!("  {:<13} {}", shadow.shop.name, shadow.url());
    }
    println!(
        "  proxy         http://{proxy_addr}  (mirrors 100 % to both; compares the candidate \
         with the primary, the baseline cancelling noise)"
    );
    if let Some(admin) = admin_addr {
        println!("  admin         http://{admin}/diff.html  /stats  /metrics  /diff");
    }
    println!(
        "\nsending {} requests at {RATE}/s (product views, JSON orders, searches, a few 256 KiB–1 MiB uploads)…",
        args.requests
    );

    let started = Instant::now();
    let statuses = burst(
        &format!("http://{proxy_addr}"),
        args.requests,
        &mirror,
        shadows,
    )
    .await;
    let elapsed = started.elapsed();
    // Let the mirrors still in flight finish before counting them.
    mirror.drain(Duration::from_secs(5)).await;
    progress(&mirror, shadows, args.requests, args.requests, true);

    println!(
        "\nprimary: {} requests in {:.2?} ({:.0}/s): {}",
        args.requests,
        elapsed,
        args.requests as f64 / elapsed.as_secs_f64(),
        statuses
    );
    print_table(&mirror, &telemetry, shadows);
    print_diff(&diff);

    println!("\ntry it by hand:");
    println!("  curl -s http://{proxy_addr}/api/products/42?currency=EUR");
    println!(
        "  curl -s -X POST -H 'content-type: application/json' -d '{{\"product_id\":42,\"qty\":1}}' http://{proxy_addr}/api/orders"
    );
    if let Some(admin) = admin_addr {
        println!(
            "  open  http://{admin}/diff.html   (the candidate's differences, route by route)"
        );
        println!("  curl -s http://{admin}/stats");
        println!("  curl -s http://{admin}/metrics");
    }
    match args.duration {
        // `--duration 0s`: the burst and its report only, as in CI.
        Some(duration) if duration.is_zero() => {}
        Some(duration) => {
            println!("serving for {duration:?} more…");
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = shutdown_signal() => {}
            }
        }
        None => {
            println!("serving until Ctrl-C…");
            shutdown_signal().await;
        }
    }
    let _ = stop.send(());
    let report = serving.await?;
    let abandoned = report.mirrors.map_or(0, |m| m.abandoned());
    println!("stopped: {abandoned} mirrors abandoned at shutdown");
    Ok(())
}

/// Sends `count` requests through the proxy, `CONCURRENCY` at a time, updating a progress
/// line; returns the primary's answers by status.
async fn burst(
    base: &str,
    count: usize,
    mirror: &tower_mirror::MirrorLayer,
    shadows: [&Running; 2],
) -> String {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let by_status = Arc::new(std::sync::Mutex::new(HashMap::<u16, u64>::new()));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, next, done, by_status) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&by_status),
            );
            let base = base.to_owned();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    if n >= count as u64 {
                        return;
                    }
                    let slot = started + Duration::from_micros(n * 1_000_000 / RATE);
                    tokio::time::sleep_until(slot).await;
                    let status = match client.request(nth_request(&base, n)).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.into_body().collect().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *by_status
                        .lock()
                        .expect("not poisoned")
                        .entry(status)
                        .or_default() += 1;
                    done.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while workers.iter().any(|w| !w.is_finished()) {
        ticker.tick().await;
        progress(mirror, shadows, done.load(Relaxed) as usize, count, false);
    }
    for worker in workers {
        let _ = worker.await;
    }
    let by_status = by_status.lock().expect("not poisoned");
    let mut statuses: Vec<_> = by_status.iter().collect();
    statuses.sort();
    statuses
        .iter()
        .map(|(status, n)| match status {
            0 => format!("{n} failed"),
            s => format!("{n}× {s}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The live progress line: rewritten in place on a terminal, a line per quarter otherwise.
fn progress(
    mirror: &tower_mirror::MirrorLayer,
    shadows: [&Running; 2],
    done: usize,
    total: usize,
    last: bool,
) {
    static PRINTED_QUARTERS: AtomicU64 = AtomicU64::new(0);
    let stats = mirror.stats();
    let per_target: Vec<String> = stats
        .targets
        .iter()
        .zip(shadows)
        .map(|(t, s)| {
            format!(
                "{}: {} mirrored, {} in flight, {} dropped",
                s.shop.name,
                t.responded + t.failed + t.timed_out,
                t.in_flight,
                t.dropped_overload
            )
        })
        .collect();
    let line = format!("  {done:>5}/{total} answered | {}", per_target.join(" | "));
    let mut out = std::io::stdout();
    if out.is_terminal() {
        let _ = write!(out, "\r\x1b[2K{line}");
        if last {
            let _ = writeln!(out);
        }
    } else {
        let quarter = (done * 4 / total.max(1)) as u64;
        if last || quarter > PRINTED_QUARTERS.load(Relaxed) {
            PRINTED_QUARTERS.store(quarter, Relaxed);
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = out.flush();
}

/// What the comparison found: per route, how often the candidate differed, and in what.
fn print_diff(diff: &tower_mirror::diff::Diff) {
    let report = diff.report();
    println!("\ncandidate vs primary (noise cancelled by the baseline):");
    for route in &report.routes {
        let top: Vec<String> = route
            .fields
            .iter()
            .filter(|f| f.differing > 0)
            .take(3)
            .map(|f| {
                // Each distinct change once (up to 3): a status may change in more than one
                // way (201 → 503 when overloaded, 400 → 422 by design).
                let mut changes: Vec<String> = Vec::new();
                for e in &f.examples {
                    let change = format!(
                        "{} → {}",
                        terse(e.primary.as_deref()),
                        terse(e.shadow.as_deref())
                    );
                    if !changes.contains(&change) && changes.len() < 3 {
                        changes.push(change);
                    }
                    if f.part != tower_mirror::diff::Part::Status {
                        break;
                    }
                }
                let example = if changes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", changes.join(", "))
                };
                let field = if f.path.is_empty() {
                    f.part.as_str().to_owned()
                } else {
                    format!("{} {}", f.part.as_str(), f.path)
                };
                format!("{field}{example}")
            })
            .collect();
        let noise: Vec<&str> = route
            .fields
            .iter()
            .filter(|f| f.differing == 0 && f.noise > 0)
            .map(|f| f.path.as_str())
            .collect();
        println!(
            "  {:<28} {:>5} compared, {:>5.1} % differ{}{}",
            route.route,
            route.compared,
            route.divergence() * 100.0,
            if top.is_empty() {
                String::new()
            } else {
                format!(": {}", top.join("; "))
            },
            if noise.is_empty() {
                String::new()
            } else {
                format!("  [noise: {}]", noise.join(", "))
            },
        );
    }
}

/// A value short enough for one terminal line, control characters blanked.
fn terse(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "absent".to_owned();
    };
    let escaped: String = value
        .trim_end()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if escaped.chars().count() > 32 {
        format!("{}…", escaped.chars().take(31).collect::<String>())
    } else {
        escaped
    }
}

fn print_table(mirror: &tower_mirror::MirrorLayer, telemetry: &Telemetry, shadows: [&Running; 2]) {
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        )
    };
    println!(
        "\n{:<13} {:>7} {:>9} {:>6} {:>7} {:>8} {:>8} {:>9} {:>9}",
        "target", "sent", "responded", "5xx", "errors", "dropped", "skipped", "p50", "p99"
    );
    let stats = mirror.stats();
    let extras: Vec<_> = stats
        .targets
        .iter()
        .map(|t| telemetry.target(&t.name).expect("every target is tracked"))
        .collect();
    for ((t, extra), shadow) in stats.targets.iter().zip(&extras).zip(shadows) {
        println!(
            "{:<13} {:>7} {:>9} {:>6} {:>7} {:>8} {:>8} {:>9} {:>9}",
            shadow.shop.name,
            t.sent,
            t.responded,
            extra.responses.get("5xx"),
            t.failed + t.timed_out,
            t.dropped_overload,
            t.skipped.total(),
            ms(extra.latency.quantile(0.5)),
            ms(extra.latency.quantile(0.99)),
        );
    }
    let upstream = &telemetry.primary.upstream_latency;
    println!(
        "{:<13} {:>7} {:>9} {:>6} {:>7} {:>8} {:>8} {:>9} {:>9}",
        "primary",
        upstream.count(),
        upstream.count(),
        telemetry.primary.responses.get("5xx"),
        "-",
        "-",
        "-",
        ms(upstream.quantile(0.5)),
        ms(upstream.quantile(0.99)),
    );
    println!(
        "(errors: mirrors that timed out after {TIMEOUT_MS} ms or failed to connect; dropped: mirrors \
         beyond {MAX_IN_FLIGHT} in flight to one target. The primary never waits for either.)"
    );
}
