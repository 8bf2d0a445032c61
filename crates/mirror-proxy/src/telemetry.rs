//! What the proxy counts and shows: primary and mirror counters, latency histograms, the
//! Prometheus exposition, the `/stats` JSON, and rate-limited logs of failed mirrors.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tower_mirror::{MirrorError, MirrorHandle, MirrorResponse};

/// Histogram buckets for Prometheus, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often a failing target may write a log line.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Upper bounds of the in-process latency buckets, in microseconds: 1 µs to ~10 min,
/// each 10 % above the last, so a quantile is known to within 10 %.
static BOUNDS_US: LazyLock<Vec<u64>> = LazyLock::new(|| {
    let mut bounds = vec![1u64];
    while *bounds.last().expect("non-empty") < 600_000_000 {
        let last = *bounds.last().expect("non-empty");
        bounds.push((last + last / 10).max(last + 1));
    }
    bounds
});

/// A lock-free latency histogram for quantiles (p50, p99) in `/stats` and the demo.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: (0..=BOUNDS_US.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    /// Counts one observation.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < micros);
        self.counts[bucket].fetch_add(1, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The latency under which a fraction `q` (0 to 1) of observations fall, to within 10 %;
    /// `None` before the first observation.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let micros = BOUNDS_US.get(bucket).copied().unwrap_or(u64::MAX);
                return Some(Duration::from_micros(micros));
            }
        }
        None
    }

    fn summary_ms(&self) -> Value {
        let ms = |q| self.quantile(q).map(|d| rounded(d.as_secs_f64() * 1000.0));
        json!({ "count": self.count(), "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99) })
    }
}

/// Responses by status class: 1xx to 5xx.
#[derive(Debug, Default)]
pub struct StatusClasses([AtomicU64; 5]);

impl StatusClasses {
    const LABELS: [&'static str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    fn record(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Relaxed);
    }

    /// Each class with its count.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Self::LABELS
            .iter()
            .zip(&self.0)
            .map(|(label, count)| (*label, count.load(Relaxed)))
    }

    /// The count of one class, such as `"5xx"`.
    pub fn get(&self, label: &str) -> u64 {
        self.iter().find(|(l, _)| *l == label).map_or(0, |(_, n)| n)
    }

    fn json(&self) -> Value {
        Value::Object(self.iter().map(|(l, n)| (l.to_owned(), json!(n))).collect())
    }
}

/// Why the upstream did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// Refused, unreachable, or reset: answered 502.
    Unavailable,
    /// No response head within the upstream timeout: answered 504.
    Timeout,
}

/// Why the proxy itself answered or closed a client's request or connection instead of
/// forwarding it: the client's fault or a limit, never the upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A request head that could not be parsed (answered 400 by the HTTP parser).
    BadRequest,
    /// A request head over the byte or header-count limit (answered 431).
    HeadTooLarge,
    /// A request head not received within the header timeout (connection closed).
    HeaderTimeout,
    /// A request body that stalled longer than the body timeout (answered 408).
    BodyTimeout,
    /// A request body that failed or was cut short by the client (answered 400 when the
    /// connection could still carry an answer).
    BodyError,
    /// A connection with no traffic for the idle timeout (closed).
    IdleTimeout,
    /// A response the client did not read for the send timeout (connection closed).
    SendTimeout,
    /// An HTTP/2 protocol error or another connection-level error (closed).
    ProtocolError,
    /// A request target with no path to forward (answered 400).
    NoPath,
    /// A TLS handshake that failed or took longer than the header timeout (closed).
    TlsHandshake,
}

impl Rejection {
    /// Every reason, in `/stats` order.
    pub const ALL: [Self; 10] = [
        Self::BadRequest,
        Self::HeadTooLarge,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::BodyError,
        Self::IdleTimeout,
        Self::SendTimeout,
        Self::ProtocolError,
        Self::NoPath,
        Self::TlsHandshake,
    ];

    /// The stable snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::HeadTooLarge => "head_too_large",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::BodyError => "body_error",
            Self::IdleTimeout => "idle_timeout",
            Self::SendTimeout => "send_timeout",
            Self::ProtocolError => "protocol_error",
            Self::NoPath => "no_path",
            Self::TlsHandshake => "tls_handshake",
        }
    }

    /// The status the client was answered with; `None` when the connection was closed
    /// without one.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::BadRequest | Self::BodyError | Self::NoPath => Some(400),
            Self::HeadTooLarge => Some(431),
            Self::BodyTimeout => Some(408),
            Self::HeaderTimeout
            | Self::IdleTimeout
            | Self::SendTimeout
            | Self::ProtocolError
            | Self::TlsHandshake => None,
        }
    }
}

/// Counters by [`Rejection`], with a rate-limited log line for each reason.
#[derive(Debug, Default)]
pub struct Rejections {
    counts: [AtomicU64; 10],
    last_log_ms: [AtomicU64; 10],
    unlogged: [AtomicU64; 10],
}

impl Rejections {
    /// The count of one reason.
    pub fn get(&self, reason: Rejection) -> u64 {
        self.counts[reason as usize].load(Relaxed)
    }

    /// Each reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (Rejection, u64)> + '_ {
        Rejection::ALL.into_iter().map(|r| (r, self.get(r)))
    }
}

/// Connection-level events that are not about one request.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Times the proxy reached `--max-connections` and stopped accepting.
    pub limit_reached: AtomicU64,
    /// Failed accepts (out of file descriptors, say).
    pub accept_errors: AtomicU64,
    last_limit_log_ms: AtomicU64,
    last_accept_log_ms: AtomicU64,
    unlogged_accept_errors: AtomicU64,
}

/// The primary path's counters.
#[derive(Debug, Default)]
pub struct PrimaryStats {
    /// Connection-level events.
    pub connections: ConnectionStats,
    /// Requests and connections the proxy refused itself, by reason.
    pub rejected: Rejections,
    /// Responses to clients, by status class (502 and 504 included).
    pub responses: StatusClasses,
    /// Requests the upstream did not answer: refused or reset.
    pub upstream_unavailable: AtomicU64,
    /// Requests the upstream did not answer in time.
    pub upstream_timeouts: AtomicU64,
    /// When each kind of upstream failure was last logged, and how many were not since.
    upstream_logs: [AtomicU64; 2],
    upstream_unlogged: [AtomicU64; 2],
    /// Time from forwarding a request to the upstream's response head.
    pub upstream_latency: LatencyHistogram,
}

/// Per mirror target: what tower-mirror's counters don't hold.
#[derive(Debug)]
pub struct TargetTelemetry {
    /// The target's name (by default its URL as configured).
    pub name: String,
    /// Time to the target's response head.
    pub latency: LatencyHistogram,
    /// The target's responses by status class.
    pub responses: StatusClasses,
    /// `mirror_latency_seconds{target, outcome}` for `responded`, `failed` and `timed_out`
    /// (every exchange that went out), registered once: recording is then a few atomics.
    latency_metric: [metrics::Histogram; 3],
    last_log_ms: AtomicU64,
    unlogged_failures: AtomicU64,
}

impl TargetTelemetry {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            latency: LatencyHistogram::default(),
            responses: StatusClasses::default(),
            latency_metric: ["responded", "failed", "timed_out"].map(|outcome| {
                metrics::histogram!(
                    "mirror_latency_seconds",
                    "target" => name.to_owned(),
                    "outcome" => outcome
                )
            }),
            // "Long ago", so the first failure is logged.
            last_log_ms: AtomicU64::new(0),
            unlogged_failures: AtomicU64::new(0),
        }
    }
}

/// Operating it live: reloads and the admin API's refusals.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Reloads applied.
    pub reloads_ok: AtomicU64,
    /// Reloads refused (a bad file, a setting that needs a restart): nothing applied.
    pub reloads_error: AtomicU64,
    /// When the configuration was last loaded successfully (at start, then by reloads):
    /// seconds since the Unix epoch, as `f64` bits.
    last_success_bits: AtomicU64,
    /// Admin requests refused for a missing or wrong token.
    pub admin_unauthorized: AtomicU64,
    last_unauthorized_log_ms: AtomicU64,
    unlogged_unauthorized: AtomicU64,
}

impl LiveStats {
    /// Seconds since the Unix epoch at the last successful load.
    pub fn last_success(&self) -> f64 {
        f64::from_bits(self.last_success_bits.load(Relaxed))
    }
}

/// The most distinct routes given their own label in comparison metrics; the rest are
/// labelled `other`, so label cardinality stays bounded.
const MAX_ROUTE_LABELS: usize = 256;

/// Everything the proxy records.
#[derive(Debug)]
pub struct Telemetry {
    started: Instant,
    route_labels: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The primary path.
    pub primary: PrimaryStats,
    /// Mirror targets: those configured, and those the last reload removed (whose mirrors
    /// may still be in flight).
    targets: ArcSwap<Vec<Arc<TargetTelemetry>>>,
    /// Reloads and admin refusals.
    pub live: LiveStats,
    /// The targets `mirror_target_enabled` was last exported for, so that a removed one
    /// drops to 0.
    exported_targets: Mutex<HashSet<String>>,
    prometheus: Option<PrometheusHandle>,
    /// `proxy_upstream_latency_seconds`, registered once.
    upstream_latency_metric: metrics::Histogram,
}

impl Telemetry {
    /// Counters for the targets with these names; with `prometheus`, also installs the
    /// process-wide metrics recorder that `/metrics` renders.
    pub fn new<'a>(targets: impl IntoIterator<Item = &'a str>, prometheus: bool) -> Self {
        // The recorder first: metric handles register with whichever recorder is installed.
        let prometheus = prometheus.then(install_prometheus).flatten();
        let telemetry = Self {
            upstream_latency_metric: metrics::histogram!("proxy_upstream_latency_seconds"),
            started: Instant::now(),
            route_labels: std::sync::Mutex::default(),
            primary: PrimaryStats::default(),
            targets: ArcSwap::from_pointee(
                targets
                    .into_iter()
                    .map(|name| Arc::new(TargetTelemetry::new(name)))
                    .collect(),
            ),
            live: LiveStats::default(),
            exported_targets: Mutex::default(),
            prometheus,
        };
        telemetry.record_load();
        telemetry
    }

    /// The per-target telemetry of `name`, if it is tracked.
    pub fn target(&self, name: &str) -> Option<Arc<TargetTelemetry>> {
        self.targets.load().iter().find(|t| t.name == name).cloned()
    }

    /// The names of the targets tracked, in order.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.load().iter().map(|t| t.name.clone()).collect()
    }

    /// Tracks exactly the targets named, in that order: those already tracked keep their
    /// histograms and counts, new ones start empty, the others are let go. (A reload tracks
    /// its new targets before the layer takes them, so no mirror outcome goes unrecorded.)
    pub fn track_targets<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let current = self.targets.load_full();
        let mut seen = HashSet::new();
        let targets = names
            .into_iter()
            .filter(|name| seen.insert(*name))
            .map(|name| {
                current
                    .iter()
                    .find(|t| t.name == name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(TargetTelemetry::new(name)))
            })
            .collect();
        self.targets.store(Arc::new(targets));
    }

    /// The configuration was loaded (at start, or by a reload).
    fn record_load(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.live.last_success_bits.store(now.to_bits(), Relaxed);
    }

    /// A reload was applied (`ok`) or refused.
    pub fn record_reload(&self, ok: bool) {
        if ok {
            self.live.reloads_ok.fetch_add(1, Relaxed);
            self.record_load();
        } else {
            self.live.reloads_error.fetch_add(1, Relaxed);
        }
    }

    /// An admin request without the right token: counted, and logged at most once a second
    /// (with the number left out since).
    pub fn record_unauthorized(&self, detail: &dyn std::fmt::Display) {
        let live = &self.live;
        live.admin_unauthorized.fetch_add(1, Relaxed);
        if self.due(&live.last_unauthorized_log_ms) {
            let suppressed = live.unlogged_unauthorized.swap(0, Relaxed);
            tracing::warn!(detail = %detail, suppressed, "admin request refused: 401");
        } else {
            live.unlogged_unauthorized.fetch_add(1, Relaxed);
        }
    }

    // Counters are kept in atomics here and handed to Prometheus at scrape time; histograms
    // go to pre-registered handles. Nothing on the request path looks a metric up by name.

    /// A response to the client.
    pub fn record_primary(&self, status: StatusCode) {
        self.primary.responses.record(status);
    }

    /// The upstream's response head arrived after `latency`.
    pub fn record_upstream_latency(&self, latency: Duration) {
        self.primary.upstream_latency.record(latency);
        self.upstream_latency_metric.record(latency.as_secs_f64());
    }

    /// The proxy refused a request or closed a connection itself: counted, and logged at
    /// most once a second per reason (with the number of lines left out since).
    pub fn record_rejected(&self, reason: Rejection, detail: &dyn std::fmt::Display) {
        let rejected = &self.primary.rejected;
        let i = reason as usize;
        rejected.counts[i].fetch_add(1, Relaxed);
        if reason == Rejection::IdleTimeout {
            // Closing idle connections is housekeeping, not news: counted, not logged.
            return;
        }
        if self.due(&rejected.last_log_ms[i]) {
            let suppressed = rejected.unlogged[i].swap(0, Relaxed);
            tracing::warn!(
                reason = reason.label(),
                status = reason.status(),
                detail = %detail,
                suppressed,
                "request rejected"
            );
        } else {
            rejected.unlogged[i].fetch_add(1, Relaxed);
        }
    }

    /// `--max-connections` was reached: the proxy stops accepting until a connection closes.
    pub fn record_connection_limit(&self) {
        let connections = &self.primary.connections;
        connections.limit_reached.fetch_add(1, Relaxed);
        if self.due(&connections.last_limit_log_ms) {
            tracing::warn!(
                reached = connections.limit_reached.load(Relaxed),
                "connection limit reached: not accepting until a connection closes"
            );
        }
    }

    /// An accept failed; logged at most once a second, with the failures left out since.
    pub fn record_accept_error(&self, error: &std::io::Error) {
        let connections = &self.primary.connections;
        connections.accept_errors.fetch_add(1, Relaxed);
        if self.due(&connections.last_accept_log_ms) {
            let suppressed = connections.unlogged_accept_errors.swap(0, Relaxed);
            tracing::warn!(%error, suppressed, "accept failed");
        } else {
            connections.unlogged_accept_errors.fetch_add(1, Relaxed);
        }
    }

    /// True, once a second at most, for the log line whose last time `last` holds.
    fn due(&self, last: &AtomicU64) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let before = last.load(Relaxed);
        let due = before == 0 || now.saturating_sub(before) >= LOG_EVERY.as_millis() as u64;
        due && last.compare_exchange(before, now, Relaxed, Relaxed).is_ok()
    }

    /// The upstream failed to answer.
    ///
    /// Logged at warn, at most once a second per kind, with the number left out since: the
    /// clients got a 502 or 504, so an operator must hear of it without a flood.
    pub fn record_upstream_error(&self, error: UpstreamError, detail: &dyn std::fmt::Display) {
        let primary = &self.primary;
        let (counter, last, unlogged, status) = match error {
            UpstreamError::Unavailable => (
                &primary.upstream_unavailable,
                &primary.upstream_logs[0],
                &primary.upstream_unlogged[0],
                502,
            ),
            UpstreamError::Timeout => (
                &primary.upstream_timeouts,
                &primary.upstream_logs[1],
                &primary.upstream_unlogged[1],
                504,
            ),
        };
        counter.fetch_add(1, Relaxed);
        if self.due(last) {
            let suppressed = unlogged.swap(0, Relaxed);
            tracing::warn!(status, detail = %detail, suppressed, "upstream failed");
        } else {
            unlogged.fetch_add(1, Relaxed);
        }
    }

    /// tower-mirror's `on_success`.
    pub fn mirror_succeeded(&self, name: &str, response: &MirrorResponse) {
        let targets = self.targets.load();
        let Some(target) = targets.iter().find(|t| t.name == name) else {
            return;
        };
        target.latency.record(response.latency());
        target.responses.record(response.status());
        target.latency_metric[0].record(response.latency().as_secs_f64());
    }

    /// tower-mirror's `on_error`: one log line per target per second at most, so a dead
    /// target cannot flood the log; the lines in between are counted and reported.
    pub fn mirror_failed(&self, name: &str, error: &MirrorError) {
        let targets = self.targets.load();
        let Some(target) = targets.iter().find(|t| t.name == name) else {
            return;
        };
        // Exchanges that went out and failed or hung count in the latency too, so that a
        // hanging target shows in p99; a connect error never went out.
        if let Some(latency) = error.latency() {
            let outcome = if error.is_timeout() { 2 } else { 1 };
            target.latency_metric[outcome].record(latency.as_secs_f64());
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = target.last_log_ms.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && target
                .last_log_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let suppressed = target.unlogged_failures.swap(0, Relaxed);
            tracing::warn!(
                target = name,
                error = %error,
                timeout = error.is_timeout(),
                connect = error.is_connect(),
                suppressed,
                "mirror failed"
            );
        } else {
            target.unlogged_failures.fetch_add(1, Relaxed);
        }
    }

    /// tower-mirror's `on_comparison`: counted by target, route and outcome.
    pub fn compared(&self, comparison: &tower_mirror::diff::Comparison) {
        let route = {
            let mut labels = self.route_labels.lock().unwrap_or_else(|p| p.into_inner());
            if labels.contains(&comparison.route) || labels.len() < MAX_ROUTE_LABELS {
                labels.insert(comparison.route.clone());
                comparison.route.clone()
            } else {
                "other".to_owned()
            }
        };
        let outcome = if comparison.is_equal() {
            "equal"
        } else {
            "differ"
        };
        metrics::counter!(
            "mirror_comparisons_total",
            "target" => comparison.target.clone(),
            "route" => route,
            "outcome" => outcome
        )
        .increment(1);
    }

    /// The Prometheus text exposition: the recorder's metrics, with the mirror layer's
    /// counters brought up to date first.
    pub fn render_prometheus(&self, mirror: Option<&MirrorHandle>) -> Option<String> {
        let handle = self.prometheus.as_ref()?;
        self.export_counters();
        if let Some(mirror) = mirror {
            export_mirror_counters(mirror);
            self.export_enabled(mirror);
        }
        metrics::gauge!("proxy_uptime_seconds").set(self.started.elapsed().as_secs_f64());
        handle.run_upkeep();
        Some(handle.render())
    }

    /// The `/stats` document.
    pub fn stats_json(&self, mirror: Option<&MirrorHandle>) -> Value {
        let primary = &self.primary;
        let mut document = json!({
            "uptime_seconds": rounded(self.started.elapsed().as_secs_f64()),
            "primary": {
                "responses": primary.responses.json(),
                "upstream_unavailable": primary.upstream_unavailable.load(Relaxed),
                "upstream_timeouts": primary.upstream_timeouts.load(Relaxed),
                "upstream_latency_ms": primary.upstream_latency.summary_ms(),
                "connection_limit_reached": primary.connections.limit_reached.load(Relaxed),
                "accept_errors": primary.connections.accept_errors.load(Relaxed),
                "rejected": Value::Object(
                    primary
                        .rejected
                        .iter()
                        .map(|(r, n)| (r.label().to_owned(), json!(n)))
                        .collect()
                ),
            },
            "config": {
                "reloads": {
                    "ok": self.live.reloads_ok.load(Relaxed),
                    "error": self.live.reloads_error.load(Relaxed),
                },
                "last_reload_success_timestamp_seconds": self.live.last_success(),
                "admin_unauthorized": self.live.admin_unauthorized.load(Relaxed),
            },
        });
        if let Some(mirror) = mirror {
            let stats = mirror.stats();
            let statuses = mirror.targets();
            let targets: Vec<Value> = stats
                .targets
                .iter()
                .map(|t| {
                    let extra = self.target(&t.name);
                    let status = statuses.iter().find(|s| s.name == t.name);
                    json!({
                        "name": t.name,
                        "url": t.url,
                        "percentage": status.map(|s| s.percentage),
                        "enabled": status.is_some_and(|s| s.enabled),
                        "removed": t.removed,
                        "paused": t.paused,
                        "filtered": t.filtered,
                        "sampled": t.sampled,
                        "sampled_without_key": t.sampled_without_key,
                        "sent": t.sent,
                        "responded": t.responded,
                        "failed": t.failed,
                        "timed_out": t.timed_out,
                        "dropped_overload": t.dropped_overload,
                        "dropped_rate_limited": t.dropped_rate_limited,
                        "dropped_no_connection": t.dropped_no_connection,
                        "in_flight": t.in_flight,
                        "connections": t.connections,
                        "skipped": Value::Object(
                            t.skipped.iter().map(|(r, n)| (r.to_owned(), json!(n))).collect()
                        ),
                        "responses": extra.as_ref().map(|e| e.responses.json()),
                        "latency_ms": extra.map(|e| e.latency.summary_ms()),
                    })
                })
                .collect();
            document["mirror"] = json!({
                "enabled": mirror.is_enabled(),
                "targets": targets,
                "not_mirrored": Value::Object(
                    stats.not_mirrored.iter().map(|(r, n)| (r.to_owned(), json!(n))).collect()
                ),
                "buffered_bytes": stats.buffered_bytes,
            });
        }
        document
    }
}

impl Telemetry {
    /// The counters kept here, as Prometheus counters.
    fn export_counters(&self) {
        for (class, n) in self.primary.responses.iter() {
            metrics::counter!("proxy_requests_total", "status_class" => class).absolute(n);
        }
        let errors = [
            ("unavailable", &self.primary.upstream_unavailable),
            ("timeout", &self.primary.upstream_timeouts),
        ];
        for (kind, n) in errors {
            metrics::counter!("proxy_upstream_errors_total", "kind" => kind)
                .absolute(n.load(Relaxed));
        }
        let connections = &self.primary.connections;
        metrics::counter!("mirror_proxy_connection_limit_reached_total")
            .absolute(connections.limit_reached.load(Relaxed));
        metrics::counter!("mirror_proxy_accept_errors_total")
            .absolute(connections.accept_errors.load(Relaxed));
        for (reason, n) in self.primary.rejected.iter() {
            let status = reason.status().map_or("none".to_owned(), |s| s.to_string());
            metrics::counter!(
                "mirror_proxy_rejected_total",
                "reason" => reason.label(),
                "status" => status
            )
            .absolute(n);
        }
        let live = &self.live;
        for (result, n) in [("ok", &live.reloads_ok), ("error", &live.reloads_error)] {
            metrics::counter!("mirror_config_reloads_total", "result" => result)
                .absolute(n.load(Relaxed));
        }
        metrics::gauge!("mirror_config_last_reload_success_timestamp_seconds")
            .set(live.last_success());
        metrics::counter!("mirror_proxy_admin_unauthorized_total")
            .absolute(live.admin_unauthorized.load(Relaxed));
        for target in self.targets.load().iter() {
            for (class, n) in target.responses.iter() {
                metrics::counter!(
                    "mirror_responses_total",
                    "target" => target.name.clone(),
                    "status_class" => class
                )
                .absolute(n);
            }
        }
    }
}

impl Telemetry {
    /// `mirror_enabled` and `mirror_target_enabled{target}`: 1 or 0; a target no longer
    /// configured drops to 0.
    fn export_enabled(&self, mirror: &MirrorHandle) {
        metrics::gauge!("mirror_enabled").set(if mirror.is_enabled() { 1.0 } else { 0.0 });
        let mut exported = self
            .exported_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut now = HashSet::new();
        for target in mirror.targets() {
            let enabled = if target.enabled { 1.0 } else { 0.0 };
            metrics::gauge!("mirror_target_enabled", "target" => target.name.clone()).set(enabled);
            now.insert(target.name);
        }
        for gone in exported.difference(&now) {
            metrics::gauge!("mirror_target_enabled", "target" => gone.clone()).set(0.0);
        }
        *exported = now;
    }
}

/// How often the Prometheus recorder's histogram samples are folded in without a scrape.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

fn install_prometheus() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .expect("the bucket list is not empty");
    match builder.install_recorder() {
        Ok(handle) => {
            // Histogram samples pile up in the recorder until upkeep folds them in, which
            // rendering /metrics does; with no one scraping, memory grew by ~18 bytes per
            // request (found by bench/run.sh). Upkeep runs on its own thread instead.
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = started {
                tracing::warn!(%error, "metrics upkeep not started: scrape /metrics regularly");
            }
            Some(handle)
        }
        Err(error) => {
            // Only one recorder per process: a second proxy in one process goes without.
            tracing::warn!(%error, "metrics recorder not installed: /metrics is unavailable");
            None
        }
    }
}

/// The layer keeps its own counters; Prometheus gets their current values.
fn export_mirror_counters(mirror: &MirrorHandle) {
    let stats = mirror.stats();
    for t in &stats.targets {
        let target = t.name.clone();
        for (outcome, n) in [
            ("responded", t.responded),
            ("failed", t.failed),
            ("timed_out", t.timed_out),
        ] {
            metrics::counter!("mirror_requests_total", "target" => target.clone(), "outcome" => outcome)
                .absolute(n);
        }
        metrics::counter!("mirror_sampled_total", "target" => target.clone()).absolute(t.sampled);
        metrics::counter!("mirror_sent_total", "target" => target.clone()).absolute(t.sent);
        metrics::counter!("mirror_paused_total", "target" => target.clone()).absolute(t.paused);
        for (reason, n) in [
            ("overload", t.dropped_overload),
            ("rate_limited", t.dropped_rate_limited),
            ("no_connection", t.dropped_no_connection),
        ] {
            metrics::counter!("mirror_dropped_total", "target" => target.clone(), "reason" => reason)
                .absolute(n);
        }
        metrics::counter!("mirror_filtered_total", "target" => target.clone()).absolute(t.filtered);
        metrics::counter!("mirror_sampled_without_key_total", "target" => target.clone())
            .absolute(t.sampled_without_key);
        for (reason, n) in t.skipped.iter() {
            metrics::counter!("mirror_skipped_total", "target" => target.clone(), "reason" => reason)
                .absolute(n);
        }
        metrics::gauge!("mirror_in_flight", "target" => target.clone()).set(t.in_flight as f64);
        metrics::gauge!("mirror_connections", "target" => target).set(t.connections as f64);
    }
    for (reason, n) in stats.not_mirrored.iter() {
        metrics::counter!("mirror_not_mirrored_total", "reason" => reason).absolute(n);
    }
    metrics::gauge!("mirror_buffered_bytes").set(stats.buffered_bytes as f64);
}

/// `value` to three decimals, so /stats says `7.881`, not `7.881000000000001`.
fn rounded(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_ten_percent() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        assert_eq!(histogram.count(), 100);
        let p50 = histogram.quantile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p99 = histogram.quantile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((50.0..=55.0).contains(&p50), "p50 {p50}");
        assert!((99.0..=108.9).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn tracked_targets_follow_a_reload_and_keep_their_counts() {
        let telemetry = Telemetry::new(["a", "b"], false);
        telemetry
            .target("a")
            .unwrap()
            .latency
            .record(Duration::from_millis(3));
        telemetry.track_targets(["a", "c", "a"]);
        assert_eq!(telemetry.target_names(), ["a", "c"]);
        assert_eq!(telemetry.target("a").unwrap().latency.count(), 1, "kept");
        assert!(telemetry.target("b").is_none(), "let go");
        assert_eq!(telemetry.target("c").unwrap().latency.count(), 0, "new");
        telemetry.record_reload(false);
        telemetry.record_reload(true);
        assert_eq!(telemetry.live.reloads_ok.load(Relaxed), 1);
        assert_eq!(telemetry.live.reloads_error.load(Relaxed), 1);
        assert!(telemetry.live.last_success() > 1.0e9);
    }

    #[test]
    fn stats_figures_have_three_decimals_at_most() {
        assert_eq!(rounded(7.881_000_000_000_001), 7.881);
        assert_eq!(rounded(0.000_4), 0.0);
        assert_eq!(rounded(1.0005).to_string(), "1.001");
    }

    #[test]
    fn status_classes() {
        let classes = StatusClasses::default();
        for status in [200, 201, 404, 503, 502, 101] {
            classes.record(StatusCode::from_u16(status).unwrap());
        }
        assert_eq!(classes.get("2xx"), 2);
        assert_eq!(classes.get("4xx"), 1);
        assert_eq!(classes.get("5xx"), 2);
        assert_eq!(classes.get("1xx"), 1);
    }
}
