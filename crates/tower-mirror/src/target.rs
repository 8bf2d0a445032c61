//! [`Target`]: where mirrored requests go, which of them, and how they are changed on the way
//! (a leaf of the configuration: [`Options`](crate::Options) holds them, observers read them).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::head::RequestHead;

/// A shadow target: a base URL, the share of requests mirrored to it, and what else decides
/// which requests it gets and how they look.
///
/// Build one with [`Target::new`] (100 %), [`Target::percentage`] or the free function
/// [`percentage`], then add settings with the builder methods. The mirrored URL is the base
/// URL (scheme, authority and path prefix) followed by the original request's path and query,
/// so with the base `http://staging:8080/shadow` a request for `/api/users?page=2` is mirrored
/// to `http://staging:8080/shadow/api/users?page=2`.
///
/// For each request, a target decides in this order, each refusal counted in its
/// [`TargetStats`](crate::TargetStats):
/// 1. its **filter**: [`methods`](Self::methods), [`path_prefix`](Self::path_prefix),
///    [`exclude_path_prefix`](Self::exclude_path_prefix), [`header_equals`](Self::header_equals),
///    [`path_regex`](Self::path_regex) (else `filtered`; the request takes no sampling turn, so
///    the percentage is a share of what the filter lets through);
/// 2. its **sampling**: the percentage, by a counter or by a key ([`sample_by`](Self::sample_by));
/// 3. its **limits**: mirrors in flight ([`Options::max_in_flight`](crate::Options::max_in_flight),
///    else `dropped_overload`), then its [`rate_limit`](Self::rate_limit) (else
///    `dropped_rate_limited`), then the byte budget for its body.
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use tower_mirror::{RateLimit, SampleKey, Target};
///
/// // 10 % of the users, always the same ones, only reads under /api but not its health
/// // check, at most 200 mirrors a second.
/// let staging = Target::percentage("http://127.0.0.1:4000", 10)
///     .with_name("staging")
///     .methods([Method::GET, Method::HEAD])
///     .path_prefix("/api")
///     .exclude_path_prefix("/api/health")
///     .sample_by(SampleKey::header("x-user-id"))
///     .rate_limit(RateLimit::per_second(200));
/// assert_eq!(staging.name(), "staging");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The base URL, exactly as configured; the target's name unless it is given one.
    pub url: String,
    /// The percentage of eligible requests mirrored to this target, from 0 to 100.
    ///
    /// With the counter sampler (the default), sampling is deterministic: of any 100
    /// consecutive requests that pass the filter, exactly this many are mirrored, evenly
    /// spread (50 % is every other request). With [`sample_by`](Self::sample_by) it is the
    /// share of keys.
    pub percentage: u32,
    /// Speak HTTP/2 to this target: with prior knowledge (h2c) on `http`, and over TLS on
    /// `https` whatever ALPN offers. gRPC servers need it. Default `false`: HTTP/1.1 on
    /// `http`, and on `https` whichever of HTTP/2 and HTTP/1.1 the target chooses.
    pub http2: bool,
    /// Request headers not sent to this target, such as `Authorization` or `Cookie` when the
    /// target must not see production credentials. Names are case-insensitive.
    pub strip_headers: Vec<String>,
    /// Request headers set on every mirror to this target, replacing any the original had:
    /// `X-Shadow: 1`, or the staging environment's own credentials.
    pub set_headers: Vec<(String, String)>,
    pub(crate) name: Option<String>,
    pub(crate) filter: FilterSpec,
    pub(crate) sample_by: Option<SampleKey>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) max_connections: usize,
    pub(crate) record: RecordFile,
    pub(crate) redact: Option<crate::redact::Redact>,
    pub(crate) kafka: crate::kafka::KafkaTopic,
    pub(crate) rewrite_path: Option<(String, String)>,
    pub(crate) trace_context: crate::outbound::TraceContext,
    /// Roles in comparisons (feature `diff`): plain data here, read by the diff observer.
    pub(crate) compare: bool,
    pub(crate) baseline: bool,
}

/// A target's filter, as configured; compiled and checked by the layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FilterSpec {
    pub(crate) methods: Vec<Method>,
    pub(crate) paths: Vec<String>,
    pub(crate) exclude_paths: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) path_regex: Option<String>,
}

impl Target {
    /// A target that receives every eligible request.
    pub fn new(url: impl Into<String>) -> Self {
        Self::percentage(url, 100)
    }

    /// A target that receives `percentage` % of eligible requests (0 to 100).
    ///
    /// A value over 100 is reported by [`MirrorLayer::with_options`](crate::MirrorLayer::with_options)
    /// as [`ConfigError::PercentageOutOfRange`](crate::ConfigError::PercentageOutOfRange).
    pub fn percentage(url: impl Into<String>, percentage: u32) -> Self {
        Self {
            url: url.into(),
            percentage,
            http2: false,
            strip_headers: Vec::new(),
            set_headers: Vec::new(),
            name: None,
            filter: FilterSpec::default(),
            sample_by: None,
            rate_limit: None,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            record: RecordFile::default(),
            redact: None,
            kafka: crate::kafka::KafkaTopic::default(),
            rewrite_path: None,
            trace_context: crate::outbound::TraceContext::Child,
            compare: false,
            baseline: false,
        }
    }

    /// The target's name: the one given with [`with_name`](Self::with_name), else its URL as
    /// configured. Callbacks, [`stats`](crate::MirrorLayer::stats) and logs name targets by it.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }

    /// This target, named `name`. Names are unique within a layer
    /// ([`ConfigError::DuplicateName`](crate::ConfigError::DuplicateName)); the default is
    /// the URL as configured.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// This target, spoken to over HTTP/2 only (see [`Target::http2`](Self::http2)).
    ///
    /// ```
    /// // A gRPC shadow: HTTP/2 with prior knowledge over plain TCP.
    /// let target = tower_mirror::Target::new("http://127.0.0.1:50051").with_http2();
    /// assert!(target.http2);
    /// ```
    pub fn with_http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// This target, with `name` removed from its mirrored requests.
    ///
    /// ```
    /// use tower_mirror::Target;
    ///
    /// // Staging gets no production credentials, and knows it is being shadowed.
    /// let staging = Target::new("https://staging.example.com")
    ///     .strip_header("authorization")
    ///     .strip_header("cookie")
    ///     .set_header("x-shadow", "1");
    /// # let _ = staging;
    /// ```
    ///
    /// Connection-level headers, `Host`, `Content-Length` and `X-Mirrored-From` are the layer's
    /// own and cannot be named; [`MirrorLayer::with_options`](crate::MirrorLayer::with_options)
    /// reports that, or an invalid name, as a [`ConfigError`](crate::ConfigError).
    pub fn strip_header(mut self, name: impl Into<String>) -> Self {
        self.strip_headers.push(name.into());
        self
    }

    /// This target, with `name: value` set on its mirrored requests (replacing the original's
    /// values of `name`; setting one name twice sends both values).
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_headers.push((name.into(), value.into()));
        self
    }

    /// This target, taking only requests with one of `methods` (added to any given before).
    /// Default: every method.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.filter.methods.extend(methods);
        self
    }

    /// This target, taking only requests whose path starts with one of the prefixes given
    /// (this one added to any given before), on a segment boundary: `/api` matches `/api`,
    /// `/api/` and `/api/users`, not `/apix`. A trailing slash is ignored (`/api/` is `/api`);
    /// `/` matches every path. Paths are compared as received, not decoded. Default: every
    /// path.
    ///
    /// A prefix must start with `/`, else [`MirrorLayer::with_options`](crate::MirrorLayer::with_options)
    /// reports a [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting).
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.filter.paths.push(prefix.into());
        self
    }

    /// This target, never taking requests under `prefix` (matched as in
    /// [`path_prefix`](Self::path_prefix), and checked first: an exclusion wins).
    pub fn exclude_path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.filter.exclude_paths.push(prefix.into());
        self
    }

    /// This target, taking only requests with a `name` header whose value is exactly `value`
    /// (byte for byte; any one of several `name` lines may match). Every such condition must
    /// hold.
    pub fn header_equals(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.filter.headers.push((name.into(), value.into()));
        self
    }

    /// This target, taking only requests whose path matches the regular expression `pattern`
    /// ([`regex`](https://docs.rs/regex) syntax, unanchored unless it says `^`/`$`), checked
    /// after the other filters. An invalid pattern is a
    /// [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting).
    pub fn path_regex(mut self, pattern: impl Into<String>) -> Self {
        self.filter.path_regex = Some(pattern.into());
        self
    }

    /// This target, sampling by a key taken from each request instead of by a counter:
    /// sticky sampling, so the same users (sessions, clients) are mirrored on every replica
    /// and after restarts. See [`SampleKey`] for the algorithm. A request without the key is
    /// sampled by the counter and counted in `sampled_without_key`.
    pub fn sample_by(mut self, key: SampleKey) -> Self {
        self.sample_by = Some(key);
        self
    }

    /// This target, over at most `max` connections at once (open or being opened), each of
    /// its worker threads keeping its own. Default
    /// [`DEFAULT_MAX_CONNECTIONS`](Self::DEFAULT_MAX_CONNECTIONS), Envoy's circuit-breaker
    /// default. 0 is a [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting).
    ///
    /// A mirror is sent only when it can be written at once: an idle HTTP/1.1 connection, a
    /// free HTTP/2 stream (under the target's `SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113
    /// §5.1.2), or room to open a connection. Otherwise it is dropped and counted
    /// (`dropped_no_connection`), never queued. An HTTP/1.1 target takes one mirror per
    /// connection, so with `max_in_flight` above this limit the limit binds; an HTTP/2 target
    /// opens another connection when the streams of the open ones are taken.
    ///
    /// Applies with the default sender (or an [`HttpSender`](crate::HttpSender) given as
    /// [`Options::sender`](crate::Options::sender)); a sender of your own keeps its own rules.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// This recording target (a `file://` URL), writing its files as `record` says. See
    /// [`RecordFile`].
    pub fn record_file(mut self, record: RecordFile) -> Self {
        self.record = record;
        self
    }

    /// Replaces the values `redact` selects by a keyed hash in everything this target
    /// receives: its requests, or its records, and its values in diff reports. See
    /// [`Redact`](crate::Redact); needs the feature `redact`, else building the layer fails
    /// with [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting) (`redact`).
    pub fn redact(mut self, redact: crate::redact::Redact) -> Self {
        self.redact = Some(redact);
        self
    }

    /// This Kafka recording target (a `kafka://host:port/topic` URL), producing as `kafka`
    /// says. See [`KafkaTopic`](crate::KafkaTopic).
    pub fn kafka(mut self, kafka: crate::kafka::KafkaTopic) -> Self {
        self.kafka = kafka;
        self
    }

    /// How this target produces to Kafka, when it is a Kafka recording target: what
    /// [`kafka`](Self::kafka) set, else the defaults.
    pub fn kafka_settings(&self) -> &crate::kafka::KafkaTopic {
        &self.kafka
    }

    /// Whether this is a recording target: its URL is `file://…` or `kafka://…` (any case),
    /// so its mirrors are written down ([`RecordFile`], [`KafkaTopic`](crate::KafkaTopic))
    /// instead of sent.
    pub fn is_recording(&self) -> bool {
        self.has_scheme("file://") || self.is_kafka()
    }

    /// Whether this is a Kafka recording target: its URL is `kafka://…` (any case).
    pub fn is_kafka(&self) -> bool {
        self.has_scheme("kafka://")
    }

    fn has_scheme(&self, scheme: &str) -> bool {
        self.url
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// The connection limit of a target that sets none: 1,024, as Envoy's circuit breakers.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

    /// This target, receiving at most `limit` mirrors: beyond it, mirrors are dropped and
    /// counted (`dropped_rate_limited`), never queued, and before any body is copied.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// This target, carrying the incoming W3C trace context as `policy` says: a new child
    /// span of the incoming trace (the default), the same with the sampled flag cleared, or
    /// none at all. See [`TraceContext`](crate::outbound::TraceContext).
    pub fn trace_context(mut self, policy: crate::outbound::TraceContext) -> Self {
        self.trace_context = policy;
        self
    }

    /// This target, with the first match of the regular expression `from` in the request's
    /// path replaced by `to` before the path is joined onto the base URL (`$1`, `${name}`
    /// refer to capture groups): `rewrite_path("^/v1/", "/v2/")` mirrors `/v1/users` to a
    /// candidate that serves `/v2/users`. The query is kept as it is. A rewritten path that no
    /// longer starts with `/` fails that mirror (counted in `failed`).
    pub fn rewrite_path(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rewrite_path = Some((from.into(), to.into()));
        self
    }
}

/// A target that receives `pct` % of eligible requests: the reference API's `Percentage`.
///
/// The same as [`Target::percentage`].
pub fn percentage(url: impl Into<String>, pct: u32) -> Target {
    Target::percentage(url, pct)
}

/// A closure that takes a sampling key from a request: see [`SampleKey::custom`].
pub type KeyFn = Arc<dyn Fn(&RequestHead<'_>) -> Option<Vec<u8>> + Send + Sync>;

/// Where a target's sampling key comes from: see [`Target::sample_by`].
///
/// # The decision
///
/// A request is mirrored when `xxh3_64(value) % 10000 < percentage × 100`, where `value`
/// is the key's value bytes as received (for a query parameter, after
/// `application/x-www-form-urlencoded` decoding; for the client IP, its text form such as
/// `203.0.113.7` or `2001:db8::1`) and `xxh3_64` is the 64-bit
/// [XXH3](https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md) hash with seed 0
/// and the default secret. Only the value counts, not where it was found, so the same value
/// decides the same way from a header, a cookie or a query parameter, and another tool can
/// reproduce every decision (Python: `xxhash.xxh3_64_intdigest(value) % 10000 <
/// percentage * 100`; `user-42` is in bucket 2621, so it is mirrored from 27 % up). Hence:
/// - the same key gets the same decision on every replica and after restarts (no seed, no
///   state);
/// - a key mirrored at 5 % is mirrored at every higher percentage (the shares nest);
/// - targets with equal percentages get the same keys.
///
/// A request without the key, or with an empty value, is sampled by the target's counter
/// instead and counted in `sampled_without_key`.
#[derive(Clone)]
#[non_exhaustive]
pub enum SampleKey {
    /// The first value of a request header (case-insensitive name).
    Header(String),
    /// The value of a cookie in the `Cookie` header(s) (case-sensitive name, first match).
    Cookie(String),
    /// The first value of a query parameter (name compared after decoding).
    Query(String),
    /// The client's IP address, from the [`ClientAddr`](crate::ClientAddr) request extension.
    ClientIp,
    /// Whatever the closure returns.
    Custom(KeyFn),
}

impl SampleKey {
    /// The first value of the header `name`.
    pub fn header(name: impl Into<String>) -> Self {
        Self::Header(name.into())
    }

    /// The value of the cookie `name`.
    pub fn cookie(name: impl Into<String>) -> Self {
        Self::Cookie(name.into())
    }

    /// The first value of the query parameter `name`.
    pub fn query(name: impl Into<String>) -> Self {
        Self::Query(name.into())
    }

    /// The bytes `key` takes from each request; `None` when it has no key. For example, the
    /// client IP from axum's `ConnectInfo`:
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    /// use tower_mirror::SampleKey;
    ///
    /// let by_peer = SampleKey::custom(|head| {
    ///     let ConnectInfo(addr) = head.extensions().get::<ConnectInfo<SocketAddr>>()?;
    ///     Some(addr.ip().to_string().into_bytes())
    /// });
    /// # let _ = by_peer;
    /// ```
    pub fn custom(
        key: impl Fn(&RequestHead<'_>) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom(Arc::new(key))
    }
}

impl fmt::Debug for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Query(name) => write!(f, "query:{name}"),
            Self::ClientIp => f.write_str("client_ip"),
            Self::Custom(_) => f.write_str("custom"),
        }
    }
}

impl PartialEq for SampleKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Header(a), Self::Header(b)) => a.eq_ignore_ascii_case(b),
            (Self::Cookie(a), Self::Cookie(b)) | (Self::Query(a), Self::Query(b)) => a == b,
            (Self::ClientIp, Self::ClientIp) => true,
            (Self::Custom(a), Self::Custom(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for SampleKey {}

/// Parses `header:NAME`, `cookie:NAME`, `query:NAME` or `client_ip` (mirror-proxy's
/// `sample_by` values).
impl FromStr for SampleKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty() {
                Err(format!("{kind}: needs a name, as in {kind}:NAME"))
            } else {
                Ok(name.to_owned())
            }
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(Self::ClientIp),
            Some(("header", name)) => named("header", name).map(Self::Header),
            Some(("cookie", name)) => named("cookie", name).map(Self::Cookie),
            Some(("query", name)) => named("query", name).map(Self::Query),
            _ => Err(format!(
                "{text:?} is not a key source: use header:NAME, cookie:NAME, query:NAME or client_ip"
            )),
        }
    }
}

/// A rate cap: at most `count` mirrors per `per`, enforced as a token bucket that holds at
/// most one second's worth (and at least one token), so a burst after a quiet spell is at
/// most one second of the rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    count: u32,
    per: Duration,
}

impl RateLimit {
    /// At most `count` mirrors per `per`. A zero `count` or `per` is reported by
    /// [`MirrorLayer::with_options`](crate::MirrorLayer::with_options) as a
    /// [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting).
    pub const fn new(count: u32, per: Duration) -> Self {
        Self { count, per }
    }

    /// At most `count` mirrors a second.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// The most mirrors per [`per`](Self::per).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period [`count`](Self::count) applies to.
    pub fn per(&self) -> Duration {
        self.per
    }
}

/// Parses `N/s`, `N/m` (or `N/min`) and `N/h` (mirror-proxy's `rate` values), such as `200/s`.
impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate: use N/s, N/m or N/h, such as \"200/s\"");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("{text:?}: the rate must be at least 1"));
        }
        Ok(Self::new(count, per))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_percentage_and_name() {
        assert_eq!(Target::new("http://a").percentage, 100);
        assert_eq!(Target::percentage("http://a", 7).percentage, 7);
        let t = percentage("http://b", 50);
        assert_eq!((t.url.as_str(), t.percentage), ("http://b", 50));
        assert_eq!(t.name(), "http://b", "the default name is the URL");
        assert_eq!(t.with_name("staging").name(), "staging");
    }

    #[test]
    fn sample_keys_parse() {
        assert_eq!("header:X-User".parse(), Ok(SampleKey::header("x-user")));
        assert_eq!("cookie:sid".parse(), Ok(SampleKey::cookie("sid")));
        assert_eq!("query:u".parse(), Ok(SampleKey::query("u")));
        assert_eq!("client_ip".parse(), Ok(SampleKey::ClientIp));
        for bad in ["ip", "header:", "body:x", ""] {
            assert!(bad.parse::<SampleKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!("200/s".parse(), Ok(RateLimit::per_second(200)));
        assert_eq!(
            "10/m".parse(),
            Ok(RateLimit::new(10, Duration::from_secs(60)))
        );
        for bad in ["fast", "0/s", "10/d", "/s", "-5/s", "1.5/s"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}

/// How a recording target writes its file (feature `record`).
///
/// A target whose URL is `file:///path/to/traffic.ndjson` writes each mirror it takes as one
/// line of NDJSON ([the record format](https://github.com/tower-mirror/tower-mirror/blob/main/docs/record-format.md))
/// instead of sending it: filters, sampling, rate caps, the byte budget, counters and live
/// control apply as to any target. Records go to a writer thread through a queue bounded by
/// [`Options::max_in_flight`](crate::Options::max_in_flight) (a record counts as in flight
/// until written); a full queue drops and counts (`dropped_overload`), a write error counts
/// the record as `failed`, and nothing blocks the request. A written record counts as
/// `responded`.
///
/// The writer flushes to the operating system after each batch (the records queued when it
/// wakes) and calls `fsync` when it rotates or closes a file: a process crash loses at most
/// the batch being written, a machine crash what the OS had not yet written back since the
/// last rotation.
///
/// ```
/// use std::time::Duration;
/// use tower_mirror::{RecordFile, Target};
///
/// let recording = Target::percentage("file:///var/lib/mirror/traffic.ndjson", 10)
///     .with_name("recording")
///     .record_file(
///         RecordFile::default()
///             .rotate_bytes(256 << 20)
///             .rotate_after(Duration::from_secs(3600))
///             .keep_files(24)
///             .gzip(true),
///     );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordFile {
    /// Start a new file once the current one has this many bytes. Default `None`: never by
    /// size.
    pub rotate_bytes: Option<u64>,
    /// Start a new file once the current one is this old. Default `None`: never by age.
    pub rotate_after: Option<Duration>,
    /// Keep at most this many rotated files, deleting the oldest. Default `None`: keep all.
    pub keep_files: Option<usize>,
    /// Compress rotated files with gzip (`.gz`), in the background. Default `false`.
    pub gzip: bool,
    /// Keep at most this many bytes of each request body; a longer one is cut and marked
    /// with its length. Default `None`: the whole body (which
    /// [`Options::max_body_bytes`](crate::Options::max_body_bytes) already bounds).
    pub max_body_bytes: Option<usize>,
    /// Also record the primary's response: status, headers, the body up to
    /// [`max_response_body_bytes`](Self::max_response_body_bytes) and the latency to its
    /// head, so that a replay can be compared with what production answered
    /// (`mirror-proxy replay --compare`). The record is then written once the primary's
    /// response body has streamed to the client, or without a response if it never does
    /// (the client went away, the body failed). Default `false`.
    pub response: bool,
    /// Bytes of the primary's response body kept when [`response`](Self::response) is on;
    /// a longer body is cut and marked with its length. The primary's body is copied as it
    /// streams, never delayed. Default 256 KiB.
    pub max_response_body_bytes: usize,
}

impl RecordFile {
    /// The default of [`max_response_body_bytes`](Self::max_response_body_bytes): 256 KiB,
    /// as the diff's body cap.
    pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: usize = 256 << 10;
}

impl Default for RecordFile {
    fn default() -> Self {
        Self {
            rotate_bytes: None,
            rotate_after: None,
            keep_files: None,
            gzip: false,
            max_body_bytes: None,
            response: false,
            max_response_body_bytes: Self::DEFAULT_MAX_RESPONSE_BODY_BYTES,
        }
    }
}

impl RecordFile {
    /// Rotates by size: see [`rotate_bytes`](Self::rotate_bytes).
    pub fn rotate_bytes(mut self, bytes: u64) -> Self {
        self.rotate_bytes = Some(bytes);
        self
    }

    /// Rotates by age: see [`rotate_after`](Self::rotate_after).
    pub fn rotate_after(mut self, age: Duration) -> Self {
        self.rotate_after = Some(age);
        self
    }

    /// Keeps this many rotated files: see [`keep_files`](Self::keep_files).
    pub fn keep_files(mut self, files: usize) -> Self {
        self.keep_files = Some(files);
        self
    }

    /// Compresses rotated files: see [`gzip`](Self::gzip).
    pub fn gzip(mut self, gzip: bool) -> Self {
        self.gzip = gzip;
        self
    }

    /// Cuts long bodies: see [`max_body_bytes`](Self::max_body_bytes).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// Records the primary's response too: see [`response`](Self::response).
    pub fn response(mut self, response: bool) -> Self {
        self.response = response;
        self
    }

    /// Cuts long response bodies: see
    /// [`max_response_body_bytes`](Self::max_response_body_bytes).
    pub fn max_response_body_bytes(mut self, bytes: usize) -> Self {
        self.max_response_body_bytes = bytes;
        self
    }
}
