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

/// How often one kind of trouble (per target and reason) may write a log line.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// The one rate limit on warn lines: for one target and reason, a line at most once per
/// [`LOG_EVERY`]; the events in between are counted and reported by the next line, so a
/// flood costs one line a second and loses no count.
#[derive(Debug, Default)]
struct LogEvery {
    /// Milliseconds since the telemetry started (plus one) at the last line; 0 for never.
    last_ms: AtomicU64,
    /// Events since the last line that wrote none.
    unlogged: AtomicU64,
}

impl LogEvery {
    /// For an event at `now_ms` (at least 1): `Some(events left out since the last line)`
    /// when a line is due, `None` (the event counted for later) when not.
    fn check(&self, now_ms: u64) -> Option<u64> {
        let before = self.last_ms.load(Relaxed);
        let due = before == 0 || now_ms.saturating_sub(before) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(before, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Relaxed))
        } else {
            self.unlogged.fetch_add(1, Relaxed);
            None
        }
    }
}

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
    logs: [LogEvery; 10],
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
    limit_log: LogEvery,
    accept_log: LogEvery,
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
    /// The log lines of each kind of upstream failure.
    upstream_logs: [LogEvery; 2],
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
    /// `mirror_proxy_mirror_latency_seconds{target, outcome}` for `responded`, `failed` and
    /// `timed_out` (every exchange that went out), registered once: recording is then a few
    /// atomics.
    latency_metric: [metrics::Histogram; 3],
    failure_log: LogEvery,
}

impl TargetTelemetry {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            latency: LatencyHistogram::default(),
            responses: StatusClasses::default(),
            latency_metric: ["responded", "failed", "timed_out"].map(|outcome| {
                metrics::histogram!(
                    MIRROR_LATENCY,
                    "target" => name.to_owned(),
                    "outcome" => outcome
                )
            }),
            failure_log: LogEvery::default(),
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
    unauthorized_log: LogEvery,
    /// Access-log lines dropped because the writer's queue was full.
    pub access_log_dropped: AtomicU64,
    access_log_drop_log: LogEvery,
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
    /// The targets `mirror_proxy_mirror_enabled` was last exported for, so that a removed
    /// one drops to 0.
    exported_targets: Mutex<HashSet<String>>,
    /// Dropped mirrors per target and reason at the last [`Telemetry::log_drops`].
    drops_seen: Mutex<std::collections::HashMap<(String, &'static str), u64>>,
    prometheus: Option<PrometheusHandle>,
    /// The `process_*` series, read at each scrape.
    process: Option<metrics_process::Collector>,
    /// `mirror_proxy_upstream_latency_seconds`, registered once.
    upstream_latency_metric: metrics::Histogram,
}

impl Telemetry {
    /// Counters for the targets with these names; with `prometheus`, also installs the
    /// process-wide metrics recorder that `/metrics` renders.
    pub fn new<'a>(targets: impl IntoIterator<Item = &'a str>, prometheus: bool) -> Self {
        // The recorder first: metric handles register with whichever recorder is installed.
        let prometheus = prometheus.then(install_prometheus).flatten();
        let process = prometheus.as_ref().map(|_| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        });
        let telemetry = Self {
            upstream_latency_metric: metrics::histogram!(UPSTREAM_LATENCY),
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
            drops_seen: Mutex::default(),
            prometheus,
            process,
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

    /// An access-log line was dropped (the writer's queue was full): counted, and logged at
    /// most once a second with the number left out since.
    pub fn record_access_log_dropped(&self) {
        let live = &self.live;
        live.access_log_dropped.fetch_add(1, Relaxed);
        if let Some(suppressed) = live.access_log_drop_log.check(self.now_ms()) {
            tracing::warn!(
                suppressed,
                "access log: line dropped, the writer is behind (a slow disk or pipe?)"
            );
        }
    }

    /// An admin request without the right token: counted, and logged at most once a second
    /// (with the number left out since).
    pub fn record_unauthorized(&self, detail: &dyn std::fmt::Display) {
        let live = &self.live;
        live.admin_unauthorized.fetch_add(1, Relaxed);
        if let Some(suppressed) = live.unauthorized_log.check(self.now_ms()) {
            tracing::warn!(detail = %detail, suppressed, "admin request refused: 401");
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
        if let Some(suppressed) = rejected.logs[i].check(self.now_ms()) {
            tracing::warn!(
                reason = reason.label(),
                status = reason.status(),
                detail = %detail,
                suppressed,
                "request rejected"
            );
        }
    }

    /// `--max-connections` was reached: the proxy stops accepting until a connection closes.
    pub fn record_connection_limit(&self) {
        let connections = &self.primary.connections;
        connections.limit_reached.fetch_add(1, Relaxed);
        if connections.limit_log.check(self.now_ms()).is_some() {
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
        if let Some(suppressed) = connections.accept_log.check(self.now_ms()) {
            tracing::warn!(%error, suppressed, "accept failed");
        }
    }

    /// Milliseconds since the telemetry started, plus one (0 means "never" to [`LogEvery`]).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// The upstream at `upstream` failed to answer.
    ///
    /// Logged at warn, at most once a second per reason, with the number left out since: the
    /// clients got a 502 or 504, so an operator must hear of it without a flood.
    pub fn record_upstream_error(
        &self,
        error: UpstreamError,
        upstream: &str,
        detail: &dyn std::fmt::Display,
    ) {
        let primary = &self.primary;
        let (counter, log, status, reason) = match error {
            UpstreamError::Unavailable => (
                &primary.upstream_unavailable,
                &primary.upstream_logs[0],
                502,
                "unavailable",
            ),
            UpstreamError::Timeout => (
                &primary.upstream_timeouts,
                &primary.upstream_logs[1],
                504,
                "timeout",
            ),
        };
        counter.fetch_add(1, Relaxed);
        if let Some(suppressed) = log.check(self.now_ms()) {
            tracing::warn!(
                status,
                upstream,
                reason,
                detail = %detail,
                suppressed,
                "upstream failed"
            );
        }
    }

    /// Logs, at warn, the mirrors each target dropped since the last call, one line per
    /// target and reason that dropped any, with the count. Called once per [`LOG_EVERY`]
    /// (by [`crate::Proxy::serve`]), which is what rate-limits these lines: tower-mirror
    /// counts drops on the request path, and reading its counters is the only way to hear
    /// of them that costs the request path nothing.
    pub fn log_drops(&self, mirror: &MirrorHandle) {
        let stats = mirror.stats();
        let mut seen = self.drops_seen.lock().unwrap_or_else(|p| p.into_inner());
        for target in &stats.targets {
            let reasons = [
                ("overload", target.dropped_overload),
                ("rate_limited", target.dropped_rate_limited),
                ("no_connection", target.dropped_no_connection),
                ("budget_exhausted", target.skipped.budget_exhausted),
            ];
            for (reason, total) in reasons {
                let before = seen.insert((target.name.clone(), reason), total);
                // A target replaced under the same name may start again from 0.
                let dropped = total.saturating_sub(before.unwrap_or(0));
                if dropped > 0 {
                    tracing::warn!(
                        target = %target.name,
                        reason,
                        dropped,
                        total,
                        "mirrors dropped"
                    );
                }
            }
        }
        let names: HashSet<&str> = stats.targets.iter().map(|t| t.name.as_str()).collect();
        seen.retain(|(name, _), _| names.contains(name.as_str()));
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
        if let Some(suppressed) = target.failure_log.check(self.now_ms()) {
            tracing::warn!(
                target = name,
                error = %error,
                timeout = error.is_timeout(),
                connect = error.is_connect(),
                suppressed,
                "mirror failed"
            );
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
            MIRROR_COMPARISONS,
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
        if let Some(process) = &self.process {
            process.collect();
        }
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
                "last_reload_success_timestamp_seconds": rounded(self.live.last_success()),
                "admin_unauthorized": self.live.admin_unauthorized.load(Relaxed),
                "access_log_dropped": self.live.access_log_dropped.load(Relaxed),
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
            metrics::counter!(REQUESTS, "status_class" => class).absolute(n);
        }
        let errors = [
            ("unavailable", &self.primary.upstream_unavailable),
            ("timeout", &self.primary.upstream_timeouts),
        ];
        for (kind, n) in errors {
            metrics::counter!(UPSTREAM_ERRORS, "kind" => kind).absolute(n.load(Relaxed));
        }
        let connections = &self.primary.connections;
        metrics::counter!(CONNECTION_LIMIT_REACHED)
            .absolute(connections.limit_reached.load(Relaxed));
        metrics::counter!(ACCEPT_ERRORS).absolute(connections.accept_errors.load(Relaxed));
        for (reason, n) in self.primary.rejected.iter() {
            let status = reason.status().map_or("none".to_owned(), |s| s.to_string());
            metrics::counter!(REJECTED, "reason" => reason.label(), "status" => status).absolute(n);
        }
        let live = &self.live;
        for (result, n) in [("ok", &live.reloads_ok), ("error", &live.reloads_error)] {
            metrics::counter!(CONFIG_RELOADS, "result" => result).absolute(n.load(Relaxed));
        }
        metrics::gauge!(CONFIG_LAST_RELOAD).set(live.last_success());
        metrics::counter!(ADMIN_UNAUTHORIZED).absolute(live.admin_unauthorized.load(Relaxed));
        metrics::counter!(ACCESS_LOG_DROPPED).absolute(live.access_log_dropped.load(Relaxed));
        for target in self.targets.load().iter() {
            for (class, n) in target.responses.iter() {
                metrics::counter!(
                    MIRROR_RESPONSES,
                    "target" => target.name.clone(),
                    "status_class" => class
                )
                .absolute(n);
            }
        }
    }
}

impl Telemetry {
    /// `mirror_proxy_mirroring_enabled` and `mirror_proxy_mirror_enabled{target}`: 1 or 0; a
    /// target no longer configured drops to 0.
    fn export_enabled(&self, mirror: &MirrorHandle) {
        metrics::gauge!(MIRRORING_ENABLED).set(if mirror.is_enabled() { 1.0 } else { 0.0 });
        let mut exported = self
            .exported_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut now = HashSet::new();
        for target in mirror.targets() {
            let enabled = if target.enabled { 1.0 } else { 0.0 };
            metrics::gauge!(MIRROR_ENABLED, "target" => target.name.clone()).set(enabled);
            now.insert(target.name);
        }
        for gone in exported.difference(&now) {
            metrics::gauge!(MIRROR_ENABLED, "target" => gone.clone()).set(0.0);
        }
        *exported = now;
    }
}

// Every series the proxy exports, by the Prometheus naming rules: one prefix, base units
// (seconds, bytes) in the name, `_total` on counters, `_info` on the info series. The
// README's table lists them; `describe` gives each its HELP line and unit.
const REQUESTS: &str = "mirror_proxy_requests_total";
const UPSTREAM_ERRORS: &str = "mirror_proxy_upstream_errors_total";
const UPSTREAM_LATENCY: &str = "mirror_proxy_upstream_latency_seconds";
const CONNECTION_LIMIT_REACHED: &str = "mirror_proxy_connection_limit_reached_total";
const ACCEPT_ERRORS: &str = "mirror_proxy_accept_errors_total";
const REJECTED: &str = "mirror_proxy_rejected_total";
const CONFIG_RELOADS: &str = "mirror_proxy_config_reloads_total";
const CONFIG_LAST_RELOAD: &str = "mirror_proxy_config_last_reload_success_timestamp_seconds";
const ADMIN_UNAUTHORIZED: &str = "mirror_proxy_admin_unauthorized_total";
const ACCESS_LOG_DROPPED: &str = "mirror_proxy_access_log_dropped_total";
const BUILD_INFO: &str = "mirror_proxy_build_info";
const MIRRORING_ENABLED: &str = "mirror_proxy_mirroring_enabled";
const NOT_MIRRORED: &str = "mirror_proxy_not_mirrored_total";
const BUFFERED: &str = "mirror_proxy_mirror_buffered_bytes";
const MIRROR_ENABLED: &str = "mirror_proxy_mirror_enabled";
const MIRROR_REQUESTS: &str = "mirror_proxy_mirror_requests_total";
const MIRROR_SAMPLED: &str = "mirror_proxy_mirror_sampled_total";
const MIRROR_SAMPLED_WITHOUT_KEY: &str = "mirror_proxy_mirror_sampled_without_key_total";
const MIRROR_SENT: &str = "mirror_proxy_mirror_sent_total";
const MIRROR_PAUSED: &str = "mirror_proxy_mirror_paused_total";
const MIRROR_FILTERED: &str = "mirror_proxy_mirror_filtered_total";
const MIRROR_DROPPED: &str = "mirror_proxy_mirror_dropped_total";
const MIRROR_SKIPPED: &str = "mirror_proxy_mirror_skipped_total";
const MIRROR_IN_FLIGHT: &str = "mirror_proxy_mirror_in_flight";
const MIRROR_CONNECTIONS: &str = "mirror_proxy_mirror_connections";
const MIRROR_RESPONSES: &str = "mirror_proxy_mirror_responses_total";
const MIRROR_LATENCY: &str = "mirror_proxy_mirror_latency_seconds";
const MIRROR_COMPARISONS: &str = "mirror_proxy_mirror_comparisons_total";

/// HELP text and unit for every series (the `process_*` ones describe themselves).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Responses to clients, by status class (502 and 504 from the proxy included)."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        Unit::Count,
        "Requests the upstream did not answer: kind unavailable (502) or timeout (504)."
    );
    describe_histogram!(
        UPSTREAM_LATENCY,
        Unit::Seconds,
        "Time from forwarding a request to the upstream's response head."
    );
    describe_counter!(
        CONNECTION_LIMIT_REACHED,
        Unit::Count,
        "Times --max-connections was reached and accepting paused."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        Unit::Count,
        "Client connections that failed to be accepted (out of file descriptors, say)."
    );
    describe_counter!(
        REJECTED,
        Unit::Count,
        "Requests and connections the proxy refused itself, by reason and status (none when closed)."
    );
    describe_counter!(
        CONFIG_RELOADS,
        Unit::Count,
        "Configuration reloads, by result: ok (applied) or error (nothing applied)."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD,
        Unit::Seconds,
        "When the configuration was last loaded successfully, in seconds since the Unix epoch."
    );
    describe_counter!(
        ADMIN_UNAUTHORIZED,
        Unit::Count,
        "Admin requests refused for a missing or wrong token."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED,
        Unit::Count,
        "Access-log lines dropped because the writer thread was behind."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the running mirror-proxy's version."
    );
    describe_gauge!(
        MIRRORING_ENABLED,
        "1 while mirroring is on, 0 after the kill switch (POST /mirroring/disable)."
    );
    describe_counter!(
        NOT_MIRRORED,
        Unit::Count,
        "Requests no target was considered for, by reason (disabled, upgrade, ...)."
    );
    describe_gauge!(
        BUFFERED,
        Unit::Bytes,
        "Request body bytes held for mirrors not yet finished, over all targets."
    );
    describe_gauge!(
        MIRROR_ENABLED,
        "1 while the target takes mirrors, 0 when paused, at 0 %, or removed."
    );
    describe_counter!(
        MIRROR_REQUESTS,
        Unit::Count,
        "Mirror exchanges that ended, by outcome: responded, failed or timed_out."
    );
    describe_counter!(
        MIRROR_SAMPLED,
        Unit::Count,
        "Requests the target's sampling chose (before its limits)."
    );
    describe_counter!(
        MIRROR_SAMPLED_WITHOUT_KEY,
        Unit::Count,
        "Requests sampled by key that had no key, so were sampled by count."
    );
    describe_counter!(MIRROR_SENT, Unit::Count, "Mirrors sent to the target.");
    describe_counter!(
        MIRROR_PAUSED,
        Unit::Count,
        "Requests the target did not take while paused."
    );
    describe_counter!(
        MIRROR_FILTERED,
        Unit::Count,
        "Requests the target's filter (methods, paths, headers) left out."
    );
    describe_counter!(
        MIRROR_DROPPED,
        Unit::Count,
        "Sampled mirrors dropped, by reason: overload, rate_limited or no_connection."
    );
    describe_counter!(
        MIRROR_SKIPPED,
        Unit::Count,
        "Sampled mirrors not sent because of the request body, by reason."
    );
    describe_gauge!(
        MIRROR_IN_FLIGHT,
        Unit::Count,
        "Mirrors to the target in flight now."
    );
    describe_gauge!(
        MIRROR_CONNECTIONS,
        Unit::Count,
        "Open connections to the target."
    );
    describe_counter!(
        MIRROR_RESPONSES,
        Unit::Count,
        "The target's responses, by status class."
    );
    describe_histogram!(
        MIRROR_LATENCY,
        Unit::Seconds,
        "Time to the target's response head (or its failure), by outcome."
    );
    describe_counter!(
        MIRROR_COMPARISONS,
        Unit::Count,
        "Shadow responses compared with the primary's, by route and outcome: equal or differ."
    );
}

/// How often the Prometheus recorder's histogram samples are folded in without a scrape.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

fn install_prometheus() -> Option<PrometheusHandle> {
    // Recommended naming is a guard: every name above already follows it, so it adds
    // nothing unless a future series forgets its `_total` or unit.
    let builder = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(LATENCY_BUCKETS)
        .expect("the bucket list is not empty");
    match builder.install_recorder() {
        Ok(handle) => {
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
            metrics::counter!(MIRROR_REQUESTS, "target" => target.clone(), "outcome" => outcome)
                .absolute(n);
        }
        metrics::counter!(MIRROR_SAMPLED, "target" => target.clone()).absolute(t.sampled);
        metrics::counter!(MIRROR_SENT, "target" => target.clone()).absolute(t.sent);
        metrics::counter!(MIRROR_PAUSED, "target" => target.clone()).absolute(t.paused);
        for (reason, n) in [
            ("overload", t.dropped_overload),
            ("rate_limited", t.dropped_rate_limited),
            ("no_connection", t.dropped_no_connection),
        ] {
            metrics::counter!(MIRROR_DROPPED, "target" => target.clone(), "reason" => reason)
                .absolute(n);
        }
        metrics::counter!(MIRROR_FILTERED, "target" => target.clone()).absolute(t.filtered);
        metrics::counter!(MIRROR_SAMPLED_WITHOUT_KEY, "target" => target.clone())
            .absolute(t.sampled_without_key);
        for (reason, n) in t.skipped.iter() {
            metrics::counter!(MIRROR_SKIPPED, "target" => target.clone(), "reason" => reason)
                .absolute(n);
        }
        metrics::gauge!(MIRROR_IN_FLIGHT, "target" => target.clone()).set(t.in_flight as f64);
        metrics::gauge!(MIRROR_CONNECTIONS, "target" => target).set(t.connections as f64);
    }
    for (reason, n) in stats.not_mirrored.iter() {
        metrics::counter!(NOT_MIRRORED, "reason" => reason).absolute(n);
    }
    metrics::gauge!(BUFFERED).set(stats.buffered_bytes as f64);
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
