//! Configuration: command-line flags over an optional TOML file over defaults, validated into
//! one [`Config`]. Every error is one line that names the flag, key or value at fault.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tower_mirror::outbound::BaseUrl;
use tower_mirror::{
    KafkaCompression, KafkaSasl, KafkaTopic, Options, RateLimit, RecordFile, Redact, SampleKey,
    SaslMechanism, Target,
};

use crate::units::{parse_duration, parse_size};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "mirror-proxy",
    version,
    about = "A reverse proxy that forwards to one upstream and mirrors traffic to shadow targets.",
    long_about = "A reverse proxy that forwards every request to one upstream and mirrors (shadows) \
                  copies to other targets, without changing or slowing the original request.\n\n\
                  Example:\n  mirror-proxy --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000 \
                  --mirror http://127.0.0.1:4000 --mirror http://127.0.0.1:5000=10\n\n\
                  Every flag can also be set in a TOML file given with --config, or in an environment \
                  variable MIRROR_PROXY_<FLAG> (MIRROR_PROXY_UPSTREAM_TIMEOUT=2s; MIRROR_PROXY_MIRROR \
                  takes URLs separated by spaces). Precedence: flag, then environment, then file, then \
                  default. A switch's variable takes true or false (MIRROR_PROXY_SYNC=false), and each \
                  switch has a --no-... form, so either can turn off what the file turns on. Sizes take \
                  units (4MiB, 512KiB; KB and MB count in thousands), durations too (750ms, 5s, 1m30s).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a primary app and two shadow apps on loopback, put the proxy in front, drive a
    /// burst of traffic and show what each target got. No setup needed.
    Demo(DemoArgs),
    /// Send a recording (the NDJSON a file:// or kafka:// mirror target writes, or a GoReplay
    /// .gor capture) to a URL, paced as recorded, at a fixed rate or as fast as it answers,
    /// and summarise what came back.
    Replay(Box<crate::replay::ReplayArgs>),
}

/// Flags of `mirror-proxy demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to keep serving after the burst, for trying it by hand (default: until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How many requests the burst sends.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub requests: usize,
}

/// Flags of the proxy itself.
#[derive(Debug, Default, Clone, Args)]
pub struct RunArgs {
    /// Address to accept client connections on (HTTP/1.1 and h2c) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", env = "MIRROR_PROXY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where every request is forwarded: http:// or https:// URL, optionally with a path prefix.
    #[arg(long, value_name = "URL", env = "MIRROR_PROXY_UPSTREAM")]
    pub upstream: Option<String>,
    /// A shadow target, URL=PERCENT for a share of requests (default 100). Repeatable; given
    /// here, replaces the config file's targets. Without any, a plain reverse proxy.
    #[arg(
        long = "mirror",
        value_name = "URL[=PERCENT]",
        env = "MIRROR_PROXY_MIRROR",
        value_delimiter = ' '
    )]
    pub mirrors: Vec<String>,
    /// The most one mirror exchange may take [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_TIMEOUT")]
    pub timeout: Option<Duration>,
    /// Wait for the mirrors before forwarding the request upstream (adds up to one timeout)
    /// [default: off] [env: MIRROR_PROXY_SYNC=true|false].
    #[arg(long, overrides_with = "no_sync")]
    pub sync: bool,
    /// Do not wait for the mirrors, whatever the file or the environment says.
    #[arg(long, overrides_with = "sync")]
    pub no_sync: bool,
    /// Mirror requests with their body [default: on] [env: MIRROR_PROXY_COPY_BODY=true|false].
    #[arg(long, overrides_with = "no_copy_body")]
    pub copy_body: bool,
    /// Mirror requests with an empty body.
    #[arg(long, overrides_with = "copy_body")]
    pub no_copy_body: bool,
    /// The largest request body that is mirrored; longer ones are forwarded, not mirrored
    /// [default: 4MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "MIRROR_PROXY_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Body bytes held, in all, for mirrors not yet finished [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "MIRROR_PROXY_MAX_BUFFERED")]
    pub max_buffered: Option<usize>,
    /// Mirrors in flight per target; beyond it new mirrors are dropped and counted
    /// [default: 256].
    #[arg(long, value_name = "N", env = "MIRROR_PROXY_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// The longest wait for the upstream's response head before answering 504 [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_UPSTREAM_TIMEOUT")]
    pub upstream_timeout: Option<Duration>,
    /// Speak HTTP/2 only to the upstream, for gRPC: with prior knowledge (h2c) on http://,
    /// HTTP/2 on https:// whatever ALPN says; `TE: trailers` is kept [default: off, HTTP/1.1]
    /// [env: MIRROR_PROXY_UPSTREAM_HTTP2=true|false].
    #[arg(long, overrides_with = "no_upstream_http2")]
    pub upstream_http2: bool,
    /// Speak HTTP/1.1 to the upstream (HTTP/2 where ALPN picks it), whatever the file says.
    #[arg(long, overrides_with = "upstream_http2")]
    pub no_upstream_http2: bool,
    /// Worker threads, each with its own event loop, connections and pools [default: one per
    /// CPU].
    #[arg(long, value_name = "N", env = "MIRROR_PROXY_WORKERS")]
    pub workers: Option<usize>,
    /// Serve the admin API (/metrics, /stats, /targets, pause, percentage, kill switch,
    /// /reload) on this address; off unless given. Off loopback it needs --admin-token-file.
    #[arg(long, value_name = "ADDR", env = "MIRROR_PROXY_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// A file holding the admin API's token (its content, trimmed): the admin's changes then
    /// need `Authorization: Bearer TOKEN`. Re-read on every reload.
    #[arg(long, value_name = "FILE", env = "MIRROR_PROXY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// On SIGINT/SIGTERM, how long to wait for requests and then mirrors still in flight, in
    /// all, before exiting anyway [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<Duration>,
    /// DANGEROUS: accept any TLS certificate from https mirror targets (expired, self-signed,
    /// wrong name). Mirrored traffic can then be read and altered on the way. Logged loudly
    /// [env: MIRROR_PROXY_DANGER_ACCEPT_INVALID_CERTS=true|false].
    #[arg(long, overrides_with = "no_danger_accept_invalid_certs")]
    pub danger_accept_invalid_certs: bool,
    /// Check the certificates of https mirror targets, whatever the file says.
    #[arg(long, overrides_with = "danger_accept_invalid_certs")]
    pub no_danger_accept_invalid_certs: bool,
    /// Extra root certificates (PEM) to trust for https upstreams and mirror targets, besides
    /// the Mozilla roots: for an internal CA.
    #[arg(long, value_name = "FILE", env = "MIRROR_PROXY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A TOML file with any of these settings, plus per-target ones in `[[mirror]]` tables:
    /// url, name (unique; default the URL), percentage, http2, strip_headers, set_headers,
    /// sample_by ("header:NAME", "cookie:NAME", "query:NAME" or "client_ip"), rate ("200/s",
    /// "10/m", "1000/h"), max_connections (default 1024), methods, paths and exclude_paths (prefixes on segment
    /// boundaries), path_regex, headers ({ name = "exact value" }), rewrite_path
    /// ({ from = REGEX, to = REPLACEMENT }), compare, baseline, redact_headers, redact_query,
    /// redact_fields (under the top-level redact_key_file's key); for a recording target
    /// (url = "file:///path/traffic.ndjson") rotate_size, rotate_after, keep_files, gzip,
    /// record_response, max_response_body; for a
    /// Kafka recording target (url = "kafka://host:port/topic") kafka_linger, kafka_max_batch,
    /// kafka_compression, kafka_timeout, kafka_reconnect, kafka_max_body, kafka_tls,
    /// kafka_ca_file, kafka_sasl_mechanism, kafka_sasl_username, kafka_sasl_password; and a
    /// `[diff]` table.
    #[arg(long, value_name = "FILE", env = "MIRROR_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr [default: text].
    #[arg(long, value_name = "FORMAT", env = "MIRROR_PROXY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Export spans (one per upstream exchange and one per mirror exchange) as OTLP over
    /// HTTP to the collector at this base URL, such as http://127.0.0.1:4318 (spans go to
    /// /v1/traces under it). Needs the `otlp` feature, on by default. Read at start-up only.
    #[arg(long, value_name = "URL", env = "MIRROR_PROXY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans [default: mirror-proxy].
    #[arg(long, value_name = "NAME", env = "MIRROR_PROXY_OTLP_SERVICE_NAME")]
    pub otlp_service_name: Option<String>,
    /// Write an access log, one line per request with the mirror decisions, to this file
    /// (appended to) or to stdout (`-`) [default: none]. Lines are handed to a writer thread
    /// through a bounded queue; when it is full they are dropped and counted, never waited
    /// for.
    #[arg(long, value_name = "PATH|-", env = "MIRROR_PROXY_ACCESS_LOG")]
    pub access_log: Option<PathBuf>,
    /// The access log's format [default: json].
    #[arg(long, value_name = "FORMAT", env = "MIRROR_PROXY_ACCESS_LOG_FORMAT")]
    pub access_log_format: Option<AccessLogFormat>,
    /// The longest a client may take to send a request head, counted from when the connection
    /// is ready for one, so it also ends idle HTTP/1.1 keep-alive connections [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_HEADER_TIMEOUT")]
    pub header_timeout: Option<Duration>,
    /// Close a client connection with no traffic either way for this long (idle HTTP/2
    /// connections, stalled ones) [default: 75s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<Duration>,
    /// The longest wait for the next piece of a request body; then 408 [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_BODY_TIMEOUT")]
    pub body_timeout: Option<Duration>,
    /// Close a client connection whose response write has made no progress for this long
    /// (a client that stopped reading) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "MIRROR_PROXY_SEND_TIMEOUT")]
    pub send_timeout: Option<Duration>,
    /// Client connections open at once, over all workers; at the limit the proxy stops
    /// accepting until one closes [default: 10000].
    #[arg(long, value_name = "N", env = "MIRROR_PROXY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The largest request head (request line and headers); larger ones get 431 [default:
    /// 32KiB; at least 8KiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "MIRROR_PROXY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// The most header fields in a request head (HTTP/1.1); more get 431 [default: 256].
    #[arg(long, value_name = "N", env = "MIRROR_PROXY_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Concurrent streams per HTTP/2 client connection [default: 128].
    #[arg(long, value_name = "N", env = "MIRROR_PROXY_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Serve clients over TLS with this certificate chain (PEM); needs --tls-key. ALPN offers
    /// h2 and http/1.1, and X-Forwarded-Proto says https.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "MIRROR_PROXY_TLS_CERT"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "MIRROR_PROXY_TLS_KEY"
    )]
    pub tls_key: Option<PathBuf>,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// How access-log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line: `time` (RFC 3339, UTC, milliseconds), `client`, `method`,
    /// `target`, `version`, `status`, `bytes` (response body bytes sent), `duration_ms`, and
    /// `mirror`: target names in arrays by decision.
    #[default]
    Json,
    /// The Common Log Format (`client - - [time] "METHOD target VERSION" status bytes`),
    /// then the duration in seconds and `mirror="name:decision ..."`.
    Common,
}

/// The access log: where, and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// A file, appended to; `-` is stdout.
    pub path: PathBuf,
    /// The line format.
    pub format: AccessLogFormat,
}

impl AccessLogSettings {
    /// True when the log goes to stdout (`-`).
    pub fn is_stdout(&self) -> bool {
        self.path.as_os_str() == "-"
    }
}

/// A switch: `--name` or `--no-name` (the last one given wins), else its environment
/// variable `MIRROR_PROXY_NAME` (`true` or `false`, and `1`/`0`, `yes`/`no`, `on`/`off`);
/// `None` when neither says, for the file or the default to decide.
///
/// clap reads the other flags' variables itself; a switch's is read here, because clap
/// counts a variable for `--name` against `--no-name` on the command line as a conflict.
fn switch(on: bool, off: bool, variable: &str) -> Result<Option<bool>, ConfigError> {
    if on || off {
        return Ok(Some(on));
    }
    let Some(value) = std::env::var_os(variable) else {
        return Ok(None);
    };
    let text = value.to_string_lossy().trim().to_ascii_lowercase();
    match text.as_str() {
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        "" => Ok(None),
        _ => Err(error(format!(
            "{variable}={value:?}: use true or false",
            value = value.to_string_lossy()
        ))),
    }
}

/// A configuration error: one line, naming the flag, key or value at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn error(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// The settings a config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    upstream: Option<String>,
    #[serde(default, rename = "mirror")]
    mirrors: Vec<FileMirror>,
    timeout: Option<HumanDuration>,
    sync: Option<bool>,
    copy_body: Option<bool>,
    max_body: Option<HumanSize>,
    max_buffered: Option<HumanSize>,
    max_in_flight: Option<usize>,
    upstream_timeout: Option<HumanDuration>,
    upstream_http2: Option<bool>,
    header_timeout: Option<HumanDuration>,
    idle_timeout: Option<HumanDuration>,
    body_timeout: Option<HumanDuration>,
    send_timeout: Option<HumanDuration>,
    max_connections: Option<usize>,
    max_header_bytes: Option<HumanSize>,
    max_headers: Option<usize>,
    max_concurrent_streams: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    workers: Option<usize>,
    admin: Option<SocketAddr>,
    admin_token_file: Option<PathBuf>,
    drain_timeout: Option<HumanDuration>,
    log_format: Option<LogFormat>,
    access_log: Option<PathBuf>,
    access_log_format: Option<AccessLogFormat>,
    ca_file: Option<PathBuf>,
    danger_accept_invalid_certs: Option<bool>,
    /// The key of the redaction placeholders (`redact_*` keys of `[[mirror]]`).
    redact_key_file: Option<PathBuf>,
    otlp_endpoint: Option<String>,
    otlp_service_name: Option<String>,
    diff: Option<FileDiff>,
}

/// One `[[mirror]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMirror {
    /// Unique; default the URL.
    name: Option<String>,
    url: String,
    #[serde(default = "all")]
    percentage: u32,
    /// HTTP/2 only (with prior knowledge on http://), for gRPC shadows.
    #[serde(default)]
    http2: bool,
    /// Request headers not sent to this target.
    #[serde(default)]
    strip_headers: Vec<String>,
    /// Request headers set on every mirror to this target.
    #[serde(default)]
    set_headers: std::collections::BTreeMap<String, String>,
    /// Compare this target's responses with the primary's (served at the admin's /diff).
    #[serde(default)]
    compare: bool,
    /// This target runs the primary's own build: its differences from the primary are noise.
    #[serde(default)]
    baseline: bool,
    /// `header:NAME`, `cookie:NAME`, `query:NAME` or `client_ip`: sticky sampling by key.
    sample_by: Option<String>,
    /// At most this many mirrors: `200/s`, `10/m`, `1000/h`.
    rate: Option<String>,
    /// At most this many connections to the target (default 1024).
    max_connections: Option<usize>,
    /// A recording target (`file://`): start a new file past this size ("256MiB").
    rotate_size: Option<String>,
    /// A recording target: start a new file once the current one is this old ("1h").
    rotate_after: Option<String>,
    /// A recording target: keep this many rotated files.
    keep_files: Option<usize>,
    /// A recording target: gzip the rotated files.
    #[serde(default)]
    gzip: bool,
    /// A recording target: record the primary's response too (for `replay --compare`).
    #[serde(default)]
    record_response: bool,
    /// A recording target: keep this much of the primary's response body ("256KiB").
    max_response_body: Option<String>,
    /// Replace these headers' values by a keyed hash in what the target receives.
    #[serde(default)]
    redact_headers: Vec<String>,
    /// Replace these query parameters' values by a keyed hash.
    #[serde(default)]
    redact_query: Vec<String>,
    /// Replace these JSON body fields (pointer patterns, `*` = any segment) by a keyed hash.
    #[serde(default)]
    redact_fields: Vec<String>,
    /// A Kafka target (`kafka://`): wait this long for more records before sending a batch
    /// ("5ms").
    kafka_linger: Option<String>,
    /// A Kafka target: send a batch once it has this many bytes ("1MiB").
    kafka_max_batch: Option<String>,
    /// A Kafka target: none, gzip, lz4, snappy or zstd.
    kafka_compression: Option<String>,
    /// A Kafka target: give up on a connection or a batch after this long ("10s").
    kafka_timeout: Option<String>,
    /// A Kafka target: wait this long between connection attempts ("1s").
    kafka_reconnect: Option<String>,
    /// A Kafka target: keep at most this much of each body ("64KiB").
    kafka_max_body: Option<String>,
    /// A Kafka target: speak TLS to the brokers (Mozilla roots and `ca_file`'s).
    #[serde(default)]
    kafka_tls: bool,
    /// A Kafka target: also trust these CA certificates (PEM); implies `kafka_tls`.
    kafka_ca_file: Option<PathBuf>,
    /// A Kafka target: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with the user and password).
    kafka_sasl_mechanism: Option<String>,
    /// A Kafka target: the SASL user name.
    kafka_sasl_username: Option<String>,
    /// A Kafka target: the SASL password.
    kafka_sasl_password: Option<String>,
    /// Only these methods.
    #[serde(default)]
    methods: Vec<String>,
    /// Only paths under these prefixes (on segment boundaries).
    #[serde(default)]
    paths: Vec<String>,
    /// Never paths under these prefixes (checked first).
    #[serde(default)]
    exclude_paths: Vec<String>,
    /// Only paths matching this regular expression.
    path_regex: Option<String>,
    /// Only requests with these headers, exactly these values.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// `{ from = "^/v1/", to = "/v2/" }`: rewrite the path before joining it onto the URL.
    rewrite_path: Option<FileRewrite>,
}

/// A `rewrite_path` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRewrite {
    from: String,
    to: String,
}

/// The methods a `methods` list may name (RFC 9110 §9 and PATCH, RFC 5789).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl FileMirror {
    /// The library's target, redacting under `redact_key`; errors name the target and the
    /// key.
    fn into_target(self, redact_key: &RedactKey<'_>) -> Result<Target, ConfigError> {
        let name = self.name.clone().unwrap_or_else(|| self.url.clone());
        let invalid =
            |key: &str, reason: String| error(format!("[[mirror]] {name:?}: {key}: {reason}"));
        let mut target = Target::percentage(self.url, self.percentage);
        if let Some(name) = self.name {
            target = target.with_name(name);
        }
        if self.http2 {
            target = target.with_http2();
        }
        for name in self.strip_headers {
            target = target.strip_header(name);
        }
        for (name, value) in self.set_headers {
            target = target.set_header(name, value);
        }
        if self.compare {
            target = target.with_comparison();
        }
        if self.baseline {
            target = target.as_baseline();
        }
        if let Some(key) = self.sample_by {
            let key: SampleKey = key.parse().map_err(|e| invalid("sample_by", e))?;
            target = target.sample_by(key);
        }
        if let Some(rate) = self.rate {
            let rate: RateLimit = rate.parse().map_err(|e| invalid("rate", e))?;
            target = target.rate_limit(rate);
        }
        if let Some(max) = self.max_connections {
            if max == 0 {
                return Err(invalid("max_connections", "must be at least 1".to_owned()));
            }
            target = target.max_connections(max);
        }
        let mut methods = Vec::new();
        for method in &self.methods {
            let upper = method.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(invalid(
                    "methods",
                    format!("{method:?} is not an HTTP method ({})", METHODS.join(", ")),
                ));
            }
            methods.push(http::Method::from_bytes(upper.as_bytes()).expect("a standard method"));
        }
        target = target.methods(methods);
        for prefix in self.paths {
            target = target.path_prefix(prefix);
        }
        for prefix in self.exclude_paths {
            target = target.exclude_path_prefix(prefix);
        }
        if let Some(pattern) = self.path_regex {
            target = target.path_regex(pattern);
        }
        for (header, value) in self.headers {
            target = target.header_equals(header, value);
        }
        if let Some(rewrite) = self.rewrite_path {
            target = target.rewrite_path(rewrite.from, rewrite.to);
        }
        if !(self.redact_headers.is_empty()
            && self.redact_query.is_empty()
            && self.redact_fields.is_empty())
        {
            let mut redact = Redact::new(redact_key.bytes()?);
            // The library checks the names and patterns, naming the target.
            for name in self.redact_headers {
                redact = redact.header(name);
            }
            for name in self.redact_query {
                redact = redact.query_param(name);
            }
            for pattern in self.redact_fields {
                redact = redact.json_pointer(pattern);
            }
            target = target.redact(redact);
        }
        let recording = [
            ("rotate_size", self.rotate_size.is_some()),
            ("rotate_after", self.rotate_after.is_some()),
            ("keep_files", self.keep_files.is_some()),
            ("gzip", self.gzip),
            ("record_response", self.record_response),
            ("max_response_body", self.max_response_body.is_some()),
        ];
        let set = recording.iter().find(|(_, set)| *set);
        if let Some((key, _)) = set.filter(|_| !target.is_recording() || target.is_kafka()) {
            return Err(invalid(
                key,
                "only for a recording target (url = \"file:///…\")".to_owned(),
            ));
        }
        let kafka = [
            ("kafka_linger", self.kafka_linger.is_some()),
            ("kafka_max_batch", self.kafka_max_batch.is_some()),
            ("kafka_compression", self.kafka_compression.is_some()),
            ("kafka_timeout", self.kafka_timeout.is_some()),
            ("kafka_reconnect", self.kafka_reconnect.is_some()),
            ("kafka_max_body", self.kafka_max_body.is_some()),
            ("kafka_tls", self.kafka_tls),
            ("kafka_ca_file", self.kafka_ca_file.is_some()),
            ("kafka_sasl_mechanism", self.kafka_sasl_mechanism.is_some()),
            ("kafka_sasl_username", self.kafka_sasl_username.is_some()),
            ("kafka_sasl_password", self.kafka_sasl_password.is_some()),
        ];
        let set = kafka.iter().find(|(_, set)| *set);
        if let Some((key, _)) = set.filter(|_| !target.is_kafka()) {
            return Err(invalid(
                key,
                "only for a Kafka target (url = \"kafka://host:port/topic\")".to_owned(),
            ));
        }
        let mut record = RecordFile::default()
            .gzip(self.gzip)
            .response(self.record_response);
        if let Some(size) = &self.max_response_body {
            let bytes = parse_size(size).map_err(|e| invalid("max_response_body", e))?;
            record = record.max_response_body_bytes(bytes);
        }
        if let Some(size) = &self.rotate_size {
            let bytes = parse_size(size).map_err(|e| invalid("rotate_size", e))?;
            record = record.rotate_bytes(bytes as u64);
        }
        if let Some(age) = &self.rotate_after {
            let age = parse_duration(age).map_err(|e| invalid("rotate_after", e))?;
            record = record.rotate_after(age);
        }
        if let Some(keep) = self.keep_files {
            record = record.keep_files(keep);
        }
        let target = target.record_file(record);
        if !target.is_kafka() {
            return Ok(target);
        }
        let mut kafka = KafkaTopic::default();
        let duration = |key: &str, text: &str| parse_duration(text).map_err(|e| invalid(key, e));
        if let Some(linger) = &self.kafka_linger {
            kafka = kafka.linger(duration("kafka_linger", linger)?);
        }
        if let Some(size) = &self.kafka_max_batch {
            let bytes = parse_size(size).map_err(|e| invalid("kafka_max_batch", e))?;
            kafka = kafka.max_batch_bytes(bytes);
        }
        if let Some(compression) = &self.kafka_compression {
            let compression: KafkaCompression = compression
                .parse()
                .map_err(|e| invalid("kafka_compression", e))?;
            kafka = kafka.compression(compression);
        }
        if let Some(timeout) = &self.kafka_timeout {
            kafka = kafka.timeout(duration("kafka_timeout", timeout)?);
        }
        if let Some(wait) = &self.kafka_reconnect {
            kafka = kafka.reconnect_after(duration("kafka_reconnect", wait)?);
        }
        if let Some(size) = &self.kafka_max_body {
            let bytes = parse_size(size).map_err(|e| invalid("kafka_max_body", e))?;
            kafka = kafka.max_body_bytes(bytes);
        }
        if self.kafka_tls || self.kafka_ca_file.is_some() {
            let roots = roots_from(self.kafka_ca_file.as_deref())
                .map_err(|e| invalid("kafka_ca_file", e))?;
            kafka = kafka.tls(Arc::new(tower_mirror::client::tls::client_config(roots)));
        }
        match (
            self.kafka_sasl_mechanism,
            self.kafka_sasl_username,
            self.kafka_sasl_password,
        ) {
            (None, None, None) => {}
            (Some(mechanism), Some(username), Some(password)) => {
                let mechanism: SaslMechanism = mechanism
                    .parse()
                    .map_err(|e| invalid("kafka_sasl_mechanism", e))?;
                kafka = kafka.sasl(KafkaSasl::new(mechanism, username, password));
            }
            _ => {
                return Err(invalid(
                    "kafka_sasl_mechanism",
                    "SASL needs kafka_sasl_mechanism, kafka_sasl_username and kafka_sasl_password together".to_owned(),
                ));
            }
        }
        Ok(target.kafka(kafka))
    }
}

/// The `[diff]` table: how compared targets are compared.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDiff {
    /// More headers not to compare, besides the defaults (Date, Server, Content-Length, ...).
    #[serde(default)]
    ignore_headers: Vec<String>,
    /// JSON pointer patterns of body fields not to compare: "/items/*/updated_at".
    #[serde(default)]
    ignore_fields: Vec<String>,
    /// Bytes of each response body kept for comparison.
    max_body: Option<HumanSize>,
}

fn all() -> u32 {
    100
}

/// A duration written with a unit, such as `"750ms"`.
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A size: a number of bytes, or a string with a unit such as `"4MiB"`.
#[derive(Debug, Clone, Copy)]
struct HumanSize(usize);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(n) => usize::try_from(n)
                .map(HumanSize)
                .map_err(|_| serde::de::Error::custom("size too large")),
            Raw::Text(text) => parse_size(&text)
                .map(HumanSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The upstream every request is forwarded to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// As configured.
    pub url: String,
    /// Parsed; requests are joined onto it by the same rule as mirrors.
    pub base: BaseUrl,
    /// HTTP/2 only (`--upstream-http2`, `upstream_http2`): gRPC upstreams.
    pub http2: bool,
}

impl Upstream {
    /// Parses `--upstream`.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let base = BaseUrl::parse(url).map_err(|e| error(format!("--upstream {url:?}: {e}")))?;
        Ok(Self {
            url: url.to_owned(),
            base,
            http2: false,
        })
    }
}

/// Everything the proxy runs with, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Worker threads, each serving its share of connections on its own event loop.
    pub workers: usize,
    /// True when `workers` was configured rather than taken from the CPU count (which a
    /// reload then does not compare: the CPU count may have changed since).
    pub workers_configured: bool,
    pub upstream: Upstream,
    pub upstream_timeout: Duration,
    /// Limits on client connections.
    pub edge: Edge,
    /// The mirroring options (targets included); `targets` is empty for a plain proxy.
    pub mirror: MirrorSettings,
    pub admin: Option<SocketAddr>,
    /// The admin API's token, read from `admin_token_file`: its changes need it.
    pub admin_token: Option<AdminToken>,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    /// Where spans are exported to (OTLP over HTTP), if anywhere.
    pub otlp: Option<OtlpSettings>,
    /// The access log, if one is written.
    pub access_log: Option<AccessLogSettings>,
    /// Extra roots for https upstreams and mirror targets, as configured.
    pub ca_file: Option<PathBuf>,
    /// Roots trusted for https upstreams and mirror targets.
    pub tls_roots: rustls::RootCertStore,
    /// Skip certificate verification for mirror targets (never for the upstream).
    pub danger_accept_invalid_certs: bool,
}

/// Limits on client connections, with nginx's defaults where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// To receive a request head (nginx `client_header_timeout`, 60 s).
    pub header_timeout: Duration,
    /// With no traffic either way (nginx: 75 s keep-alive, 60 s HTTP/2 idle).
    pub idle_timeout: Duration,
    /// Between two pieces of a request body (nginx `client_body_timeout`, 60 s).
    pub body_timeout: Duration,
    /// For a response write to make progress (nginx `send_timeout`, 60 s).
    pub send_timeout: Duration,
    /// Client connections at once, over all workers.
    pub max_connections: usize,
    /// Bytes of a request head (nginx: 4 buffers of 8 KiB, 32 KiB).
    pub max_header_bytes: usize,
    /// Header fields in an HTTP/1.1 request head (nginx has no count limit; hyper's default
    /// of 100 refuses requests that nginx forwards).
    pub max_headers: usize,
    /// Streams per HTTP/2 connection (nginx `http2_max_concurrent_streams`, 128).
    pub max_concurrent_streams: u32,
    /// Inbound TLS: certificate chain and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Edge {
    /// hyper's smallest read buffer: a head limit below it cannot be enforced.
    pub const MIN_HEADER_BYTES: usize = 8192;
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 32 << 10,
            max_headers: 256,
            max_concurrent_streams: 128,
            tls: None,
        }
    }
}

/// What is handed to tower-mirror.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub targets: Vec<Target>,
    pub timeout: Duration,
    pub sync: bool,
    pub copy_body: bool,
    pub max_body: usize,
    pub max_buffered: usize,
    pub max_in_flight: usize,
    /// How compared targets are compared (callbacks are added by the caller).
    pub diff: tower_mirror::diff::DiffOptions,
}

impl MirrorSettings {
    /// True when a target is compared with the primary (so a `Diff` observer is wanted).
    pub fn compares(&self) -> bool {
        self.targets.iter().any(Target::is_compared)
    }
}

impl MirrorSettings {
    /// The layer's options (callbacks are added by the caller).
    pub fn options(&self) -> Options {
        Options {
            targets: self.targets.clone(),
            timeout: self.timeout,
            mode: if self.sync {
                tower_mirror::Mode::Sync
            } else {
                tower_mirror::Mode::Async
            },
            copy_body: self.copy_body,
            max_body_bytes: self.max_body,
            max_buffered_bytes: self.max_buffered,
            max_in_flight: self.max_in_flight,
            // A shadow must never get a request production did not process: a bodiless
            // mirror leaves once the upstream has answered.
            send_after_primary: true,
            ..Options::default()
        }
    }
}

impl Config {
    /// The default listen address.
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
    /// The default longest wait for the upstream's response head.
    pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default time given to mirrors in flight at shutdown.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

    /// Flags over the file they name (if any) over the defaults.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &RunArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let defaults = Options::default();
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| Self::DEFAULT_LISTEN.parse().expect("a valid literal"));
        let upstream = args.upstream.clone().or(file.upstream).ok_or_else(|| {
            error("--upstream is required (or `upstream` in the config file): where to forward requests")
        })?;
        let mut upstream = Upstream::parse(&upstream)?;
        upstream.http2 = switch(
            args.upstream_http2,
            args.no_upstream_http2,
            "MIRROR_PROXY_UPSTREAM_HTTP2",
        )?
        .or(file.upstream_http2)
        .unwrap_or(false);
        let targets_from = if args.mirrors.is_empty() {
            "config file [[mirror]]"
        } else {
            "--mirror"
        };
        let targets = if args.mirrors.is_empty() {
            let redact_key = RedactKey(file.redact_key_file.as_deref());
            file.mirrors
                .into_iter()
                .map(|mirror| mirror.into_target(&redact_key))
                .collect::<Result<_, _>>()?
        } else {
            args.mirrors
                .iter()
                .map(|flag| parse_mirror_flag(flag))
                .collect::<Result<_, _>>()?
        };
        let mirror = MirrorSettings {
            targets,
            timeout: args
                .timeout
                .or(file.timeout.map(|d| d.0))
                .unwrap_or(defaults.timeout),
            sync: switch(args.sync, args.no_sync, "MIRROR_PROXY_SYNC")?
                .or(file.sync)
                .unwrap_or(false),
            copy_body: switch(args.copy_body, args.no_copy_body, "MIRROR_PROXY_COPY_BODY")?
                .or(file.copy_body)
                .unwrap_or(defaults.copy_body),
            max_body: args
                .max_body
                .or(file.max_body.map(|s| s.0))
                .unwrap_or(defaults.max_body_bytes),
            max_buffered: args
                .max_buffered
                .or(file.max_buffered.map(|s| s.0))
                .unwrap_or(defaults.max_buffered_bytes),
            max_in_flight: args
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(defaults.max_in_flight),
            diff: diff_options(file.diff.unwrap_or_default()),
        };
        let workers_configured = args.workers.or(file.workers).is_some();
        let workers = args
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let config = Self {
            workers_configured,
            listen,
            workers,
            upstream,
            edge: {
                let d = Edge::default();
                let duration = |flag: Option<Duration>, file: Option<HumanDuration>, default| {
                    flag.or(file.map(|d| d.0)).unwrap_or(default)
                };
                Edge {
                    header_timeout: duration(
                        args.header_timeout,
                        file.header_timeout,
                        d.header_timeout,
                    ),
                    idle_timeout: duration(args.idle_timeout, file.idle_timeout, d.idle_timeout),
                    body_timeout: duration(args.body_timeout, file.body_timeout, d.body_timeout),
                    send_timeout: duration(args.send_timeout, file.send_timeout, d.send_timeout),
                    max_connections: args
                        .max_connections
                        .or(file.max_connections)
                        .unwrap_or(d.max_connections),
                    max_header_bytes: args
                        .max_header_bytes
                        .or(file.max_header_bytes.map(|s| s.0))
                        .unwrap_or(d.max_header_bytes),
                    max_headers: args
                        .max_headers
                        .or(file.max_headers)
                        .unwrap_or(d.max_headers),
                    max_concurrent_streams: args
                        .max_concurrent_streams
                        .or(file.max_concurrent_streams)
                        .unwrap_or(d.max_concurrent_streams),
                    tls: match (
                        args.tls_cert.clone().or(file.tls_cert),
                        args.tls_key.clone().or(file.tls_key),
                    ) {
                        (Some(cert), Some(key)) => Some((cert, key)),
                        (None, None) => None,
                        _ => {
                            return Err(error(
                                "--tls-cert and --tls-key go together: give both or neither",
                            ));
                        }
                    },
                }
            },
            upstream_timeout: args
                .upstream_timeout
                .or(file.upstream_timeout.map(|d| d.0))
                .unwrap_or(Self::DEFAULT_UPSTREAM_TIMEOUT),
            mirror,
            admin: args.admin.or(file.admin),
            admin_token: match args
                .admin_token_file
                .as_deref()
                .or(file.admin_token_file.as_deref())
            {
                Some(path) => Some(AdminToken::read(path)?),
                None => None,
            },
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout.map(|d| d.0))
                .unwrap_or(Self::DEFAULT_DRAIN_TIMEOUT),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            otlp: args
                .otlp_endpoint
                .clone()
                .or(file.otlp_endpoint)
                .map(|endpoint| OtlpSettings {
                    endpoint,
                    service_name: args
                        .otlp_service_name
                        .clone()
                        .or(file.otlp_service_name)
                        .unwrap_or_else(|| "mirror-proxy".to_owned()),
                }),
            access_log: args
                .access_log
                .clone()
                .or(file.access_log)
                .map(|path| AccessLogSettings {
                    path,
                    format: args
                        .access_log_format
                        .or(file.access_log_format)
                        .unwrap_or_default(),
                }),
            tls_roots: roots(args.ca_file.as_deref().or(file.ca_file.as_deref()))?,
            ca_file: args.ca_file.clone().or(file.ca_file),
            danger_accept_invalid_certs: switch(
                args.danger_accept_invalid_certs,
                args.no_danger_accept_invalid_certs,
                "MIRROR_PROXY_DANGER_ACCEPT_INVALID_CERTS",
            )?
            .or(file.danger_accept_invalid_certs)
            .unwrap_or(false),
        };
        config.validate(targets_from)?;
        Ok(config)
    }

    /// True when the upstream is the listen address itself (port 0 never is: it is chosen at
    /// bind time): the same port, and the same IP, a loopback name for a loopback or
    /// unspecified listen address, or any local address for an unspecified one.
    fn upstream_is_self(&self) -> bool {
        let base = &self.upstream.base;
        let authority = base.authority();
        let default_port = if base.scheme() == &http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let port = authority.port_u16().unwrap_or(default_port);
        if self.listen.port() == 0 || port != self.listen.port() {
            return false;
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let listen = self.listen.ip();
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                ip == listen
                    || (listen.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
            }
            Err(_) => {
                host.eq_ignore_ascii_case("localhost")
                    && (listen.is_loopback() || listen.is_unspecified())
            }
        }
    }

    /// What the flags' parsers did not check; `targets_from` says where the targets came from.
    fn validate(&self, targets_from: &str) -> Result<(), ConfigError> {
        if self.upstream_timeout.is_zero() {
            return Err(error("--upstream-timeout must be greater than zero"));
        }
        if self.workers == 0 || self.workers > 1024 {
            return Err(error(format!("--workers {}: use 1 to 1024", self.workers)));
        }
        let edge = &self.edge;
        for (flag, value) in [
            ("--header-timeout", edge.header_timeout),
            ("--idle-timeout", edge.idle_timeout),
            ("--body-timeout", edge.body_timeout),
            ("--send-timeout", edge.send_timeout),
        ] {
            if value.is_zero() {
                return Err(error(format!("{flag} must be greater than zero")));
            }
        }
        if edge.max_connections == 0 {
            return Err(error("--max-connections must be at least 1"));
        }
        if edge.max_header_bytes < Edge::MIN_HEADER_BYTES {
            return Err(error(format!(
                "--max-header-bytes {}: at least {} bytes (8KiB)",
                edge.max_header_bytes,
                Edge::MIN_HEADER_BYTES
            )));
        }
        if edge.max_headers == 0 || edge.max_concurrent_streams == 0 {
            return Err(error(
                "--max-headers and --max-concurrent-streams must be at least 1",
            ));
        }
        if self.mirror.max_body > self.mirror.max_buffered {
            return Err(error(format!(
                "--max-body {} is over --max-buffered {}: a body that large could never be held for its mirrors",
                self.mirror.max_body, self.mirror.max_buffered
            )));
        }
        if let Some(admin) = self.admin
            && !admin.ip().is_loopback()
            && self.admin_token.is_none()
        {
            return Err(error(format!(
                "--admin {admin}: not a loopback address, and no --admin-token-file: anyone \
                     who reaches it could stop mirroring or reload the configuration; bind it \
                     to loopback or give a token file"
            )));
        }
        if self.upstream_is_self() {
            return Err(error(format!(
                "--upstream {}: that is this proxy's own --listen address {}; it would forward to itself",
                self.upstream.url, self.listen
            )));
        }
        if !self.mirror.targets.is_empty() {
            // The layer's own checks name the target or option at fault.
            let mut options = self.mirror.options();
            let diff = tower_mirror::diff::Diff::new(self.mirror.diff.clone())
                .map_err(|e| error(e.to_string()))?;
            options.observers.push(std::sync::Arc::new(diff));
            tower_mirror::MirrorLayer::with_options(options).map_err(|e| match e {
                tower_mirror::ConfigError::InvalidOption { .. } => error(e.to_string()),
                _ => error(format!("{targets_from}: {e}")),
            })?;
        }
        Ok(())
    }
}

impl Config {
    /// The settings a running proxy cannot take from a reload, where `new` differs from
    /// `self`, each as `key (old -> new)`: the listeners and workers are bound once, the edge
    /// limits and TLS are built into each worker's server, logging is set up once, and the
    /// trusted roots into the upstream clients and the mirror connection pools. Configured
    /// values are compared, not bound addresses, so `:0` stays `:0`.
    pub fn fixed_differences(&self, new: &Config) -> Vec<String> {
        fn path(p: Option<&Path>) -> String {
            p.map_or_else(|| "none".to_owned(), |p| p.display().to_string())
        }
        fn addr(a: Option<SocketAddr>) -> String {
            a.map_or_else(|| "off".to_owned(), |a| a.to_string())
        }
        fn otlp(o: Option<&OtlpSettings>) -> String {
            o.map_or_else(
                || "off".to_owned(),
                |o| format!("{} as {}", o.endpoint, o.service_name),
            )
        }
        fn access(a: Option<&AccessLogSettings>) -> String {
            a.map_or_else(
                || "off".to_owned(),
                |a| {
                    let format = format!("{:?}", a.format).to_lowercase();
                    format!("{} {format}", a.path.display())
                },
            )
        }
        let (old_edge, new_edge) = (&self.edge, &new.edge);
        let d = |d: Duration| format!("{d:?}");
        // Workers left to the CPU count are whatever runs.
        let new_workers = if new.workers_configured {
            new.workers
        } else {
            self.workers
        };
        let tls = |e: &Edge, i: usize| {
            path(
                e.tls
                    .as_ref()
                    .map(|t| if i == 0 { t.0.as_path() } else { t.1.as_path() }),
            )
        };
        let pairs = [
            ("listen", self.listen.to_string(), new.listen.to_string()),
            ("admin", addr(self.admin), addr(new.admin)),
            ("workers", self.workers.to_string(), new_workers.to_string()),
            (
                "header_timeout",
                d(old_edge.header_timeout),
                d(new_edge.header_timeout),
            ),
            (
                "idle_timeout",
                d(old_edge.idle_timeout),
                d(new_edge.idle_timeout),
            ),
            (
                "body_timeout",
                d(old_edge.body_timeout),
                d(new_edge.body_timeout),
            ),
            (
                "send_timeout",
                d(old_edge.send_timeout),
                d(new_edge.send_timeout),
            ),
            (
                "max_connections",
                old_edge.max_connections.to_string(),
                new_edge.max_connections.to_string(),
            ),
            (
                "max_header_bytes",
                old_edge.max_header_bytes.to_string(),
                new_edge.max_header_bytes.to_string(),
            ),
            (
                "max_headers",
                old_edge.max_headers.to_string(),
                new_edge.max_headers.to_string(),
            ),
            (
                "max_concurrent_streams",
                old_edge.max_concurrent_streams.to_string(),
                new_edge.max_concurrent_streams.to_string(),
            ),
            ("tls_cert", tls(old_edge, 0), tls(new_edge, 0)),
            ("tls_key", tls(old_edge, 1), tls(new_edge, 1)),
            (
                "log_format",
                format!("{:?}", self.log_format).to_lowercase(),
                format!("{:?}", new.log_format).to_lowercase(),
            ),
            (
                "otlp_endpoint",
                otlp(self.otlp.as_ref()),
                otlp(new.otlp.as_ref()),
            ),
            (
                "access_log",
                access(self.access_log.as_ref()),
                access(new.access_log.as_ref()),
            ),
            (
                "ca_file",
                path(self.ca_file.as_deref()),
                path(new.ca_file.as_deref()),
            ),
            (
                "danger_accept_invalid_certs",
                self.danger_accept_invalid_certs.to_string(),
                new.danger_accept_invalid_certs.to_string(),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(key, old, new)| format!("{key} ({old} -> {new})"))
            .collect()
    }
}

/// Where the redaction key comes from: the file `redact_key_file` names, read when a target
/// redacts, or else this process's own random key.
struct RedactKey<'a>(Option<&'a Path>);

impl RedactKey<'_> {
    /// The key's bytes: the file's content (at least 16 bytes once trailing whitespace is
    /// trimmed), or 32 random bytes made once per process, so placeholders stay the same
    /// across reloads (not across restarts: give a file for that).
    fn bytes(&self) -> Result<Vec<u8>, ConfigError> {
        let Some(path) = self.0 else {
            static KEY: std::sync::OnceLock<Option<[u8; 32]>> = std::sync::OnceLock::new();
            let key = KEY.get_or_init(|| {
                let mut key = [0; 32];
                getrandom::fill(&mut key).ok().map(|()| key)
            });
            let key = key.ok_or_else(|| {
                error(
                    "redact_key_file is not set and the system gives no random bytes for a key"
                        .to_owned(),
                )
            })?;
            return Ok(key.to_vec());
        };
        let invalid =
            |reason: String| error(format!("redact_key_file {}: {reason}", path.display()));
        let mut key = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        while key.last().is_some_and(u8::is_ascii_whitespace) {
            key.pop();
        }
        if key.len() < 16 {
            return Err(invalid(format!(
                "{} bytes: a key has at least 16 (32 random bytes recommended)",
                key.len()
            )));
        }
        Ok(key)
    }
}

/// Where and as what spans are exported (`--otlp-endpoint`, `--otlp-service-name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's base URL: spans go to `/v1/traces` under it.
    pub endpoint: String,
    /// The exported spans' `service.name`.
    pub service_name: String,
}

/// The admin API's token, from `admin_token_file`. It is never shown, not even by `Debug`.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<str>);

impl AdminToken {
    /// The token in the file at `path`: its content, trimmed, which must be non-empty and
    /// printable ASCII without spaces (what an `Authorization` header can carry).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let invalid =
            |reason: String| error(format!("--admin-token-file {}: {reason}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        Self::new(text.trim()).map_err(invalid)
    }

    /// `token` itself, checked as [`read`](Self::read) checks a file's content.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.is_empty() {
            return Err("no token in it (empty)".to_owned());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be printable ASCII without spaces, to fit an Authorization header"
                    .to_owned(),
            );
        }
        Ok(Self(token.into()))
    }

    /// True when `presented` is the token. The time it takes depends on `presented`'s length
    /// alone, never on the token's content or length: every byte is compared, and nothing
    /// returns early.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.0.as_bytes();
        let mut equal = (expected.len() as u64).ct_eq(&(presented.len() as u64));
        for (i, byte) in presented.iter().enumerate() {
            equal &= byte.ct_eq(&expected[i % expected.len()]);
        }
        equal.into()
    }
}

impl AdminToken {
    /// True when both hold the same token.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The comparison rules of the config file at `path`: the library's defaults plus its
/// `[diff]` table (`mirror-proxy replay --compare --config FILE`).
///
/// # Errors
/// The file cannot be read or is not a valid config file (one line naming the file and line).
pub fn diff_options_from(path: &Path) -> Result<tower_mirror::diff::DiffOptions, ConfigError> {
    Ok(diff_options(read_file(path)?.diff.unwrap_or_default()))
}

/// The library's defaults, plus what the `[diff]` table adds.
fn diff_options(file: FileDiff) -> tower_mirror::diff::DiffOptions {
    let mut options = tower_mirror::diff::DiffOptions::default();
    options.ignore_headers.extend(file.ignore_headers);
    options.ignore_fields = file.ignore_fields;
    if let Some(max_body) = file.max_body {
        options.max_body_bytes = max_body.0;
    }
    options
}

/// The Mozilla roots, plus those in `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, ConfigError> {
    roots_from(ca_file).map_err(|e| error(format!("--ca-file {e}")))
}

/// The Mozilla roots, plus those in `ca_file`; the error starts with its path.
fn roots_from(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = ca_file else {
        return Ok(roots);
    };
    let invalid = |reason: String| format!("{}: {reason}", path.display());
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("no PEM certificates in it".to_owned()));
    }
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| invalid(format!("not a usable CA certificate ({e})")))?;
    }
    Ok(roots)
}

/// `URL` or `URL=PERCENT`.
///
/// A base URL has no query, so an `=` can only be in its path: text after the last `=` with
/// no `/` in it is meant as the percentage, and must be a whole number (`=10%`, `=10.5`,
/// `=-5` and `=abc` are errors, not part of the URL).
fn parse_mirror_flag(flag: &str) -> Result<Target, ConfigError> {
    let Some((url, percent)) = flag.rsplit_once('=').filter(|(_, p)| !p.contains('/')) else {
        return Ok(Target::new(flag));
    };
    let bad = |why: &str| {
        error(format!(
            "--mirror {flag}: percentage {percent:?} {why}: use URL=PERCENT with a whole number from 0 to 100"
        ))
    };
    if url.is_empty() {
        return Err(error(format!(
            "--mirror {flag}: the URL is missing before `=`"
        )));
    }
    if percent.is_empty() || !percent.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("is not a whole number"));
    }
    let percentage = percent.parse().map_err(|_| bad("is over 100"))?;
    Ok(Target::percentage(url, percentage))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(format!("--config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().replace('\n', " ");
        match line {
            Some(line) => error(format!(
                "config file {}, line {line}: {message}",
                path.display()
            )),
            None => error(format!("config file {}: {message}", path.display())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["mirror-proxy"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().run
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_alone() {
        let config = Config::merge(
            &args(&[
                "--upstream",
                "http://127.0.0.1:3000/base/",
                "--mirror",
                "http://127.0.0.1:4000",
                "--mirror",
                "http://127.0.0.1:5000=10",
                "--timeout",
                "750ms",
                "--max-body",
                "1MiB",
                "--no-copy-body",
                "--sync",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.upstream.base.prefix(), "/base");
        let targets: Vec<_> = config
            .mirror
            .targets
            .iter()
            .map(|t| (t.url.as_str(), t.percentage))
            .collect();
        assert_eq!(
            targets,
            [
                ("http://127.0.0.1:4000", 100),
                ("http://127.0.0.1:5000", 10)
            ]
        );
        assert_eq!(config.mirror.timeout, Duration::from_millis(750));
        assert_eq!(config.mirror.max_body, 1 << 20);
        assert!(config.mirror.sync && !config.mirror.copy_body);
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn upstream_http2_from_the_flag_or_the_file() {
        let merged = |flags: &[&str], text: &str| {
            let mut all = vec!["--upstream", "http://127.0.0.1:50051"];
            all.extend_from_slice(flags);
            Config::merge(&args(&all), file(text))
                .unwrap()
                .upstream
                .http2
        };
        assert!(!merged(&[], ""), "HTTP/1.1 by default");
        assert!(merged(&["--upstream-http2"], ""));
        assert!(merged(&[], "upstream_http2 = true"));
        assert!(merged(&["--upstream-http2"], "upstream_http2 = false"));
    }

    #[test]
    fn no_switches_turn_off_what_the_file_turns_on() {
        let merged = |flags: &[&str], text: &str| {
            let mut all = vec!["--upstream", "http://127.0.0.1:3000"];
            all.extend_from_slice(flags);
            let config = Config::merge(&args(&all), file(text)).unwrap();
            (
                config.mirror.sync,
                config.mirror.copy_body,
                config.upstream.http2,
                config.danger_accept_invalid_certs,
            )
        };
        let on = "sync = true\ncopy_body = true\nupstream_http2 = true\ndanger_accept_invalid_certs = true\n";
        let off = "sync = false\ncopy_body = false\nupstream_http2 = false\ndanger_accept_invalid_certs = false\n";
        assert_eq!(merged(&[], on), (true, true, true, true));
        assert_eq!(merged(&[], off), (false, false, false, false));
        let no = [
            "--no-sync",
            "--no-copy-body",
            "--no-upstream-http2",
            "--no-danger-accept-invalid-certs",
        ];
        assert_eq!(merged(&no, on), (false, false, false, false));
        let yes = [
            "--sync",
            "--copy-body",
            "--upstream-http2",
            "--danger-accept-invalid-certs",
        ];
        assert_eq!(merged(&yes, off), (true, true, true, true));
        // The last of the two forms wins.
        assert!(!merged(&["--sync", "--no-sync"], on).0);
        assert!(merged(&["--no-sync", "--sync"], off).0);
    }

    #[test]
    fn flags_override_the_file() {
        let text = r#"
            listen = "127.0.0.1:9000"
            upstream = "http://file-upstream:3000"
            timeout = "2s"
            max_body = 1024
            max_in_flight = 8
            log_format = "json"

            [[mirror]]
            url = "http://shadow-a:4000"
            percentage = 50

            [[mirror]]
            name = "grpc"
            url = "http://grpc-shadow:50051"
            http2 = true
            sample_by = "header:x-user-id"
            rate = "200/s"
            methods = ["GET", "head"]
            paths = ["/api"]
            exclude_paths = ["/api/health"]
            path_regex = "^/api/v[0-9]+/"
            headers = { "x-beta" = "1" }
            rewrite_path = { from = "^/v1/", to = "/v2/" }
            strip_headers = ["Authorization", "Cookie"]
            set_headers = { "x-shadow" = "1" }
            compare = true

            [diff]
            ignore_headers = ["x-build"]
            ignore_fields = ["/items/*/updated_at"]
            max_body = "64KiB"
        "#;
        let from_file = Config::merge(&args(&[]), file(text)).unwrap();
        assert_eq!(from_file.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(from_file.mirror.timeout, Duration::from_secs(2));
        assert_eq!(from_file.mirror.max_body, 1024);
        assert_eq!(from_file.mirror.max_in_flight, 8);
        assert_eq!(from_file.log_format, LogFormat::Json);
        assert_eq!(from_file.mirror.targets.len(), 2);
        assert_eq!(from_file.mirror.targets[0].percentage, 50);
        assert!(from_file.mirror.targets[1].http2);
        assert_eq!(from_file.mirror.targets[1].name(), "grpc");
        assert_eq!(
            from_file.mirror.targets[1].strip_headers,
            ["Authorization", "Cookie"]
        );
        assert_eq!(
            from_file.mirror.targets[1].set_headers,
            [("x-shadow".to_owned(), "1".to_owned())]
        );
        assert!(
            from_file.mirror.targets[1].is_compared() && !from_file.mirror.targets[0].is_compared()
        );
        let diff = &from_file.mirror.diff;
        assert_eq!(diff.max_body_bytes, 64 << 10);
        assert_eq!(diff.ignore_fields, ["/items/*/updated_at"]);
        assert!(diff.ignore_headers.iter().any(|h| h == "x-build"));
        assert!(
            diff.ignore_headers.iter().any(|h| h == "date"),
            "defaults kept"
        );
        assert_eq!(from_file.mirror.targets[1].percentage, 100);

        let overridden = Config::merge(
            &args(&[
                "--listen",
                "127.0.0.1:9100",
                "--timeout",
                "300ms",
                "--mirror",
                "http://flag-shadow=5",
            ]),
            file(text),
        )
        .unwrap();
        assert_eq!(overridden.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(overridden.mirror.timeout, Duration::from_millis(300));
        assert_eq!(overridden.mirror.max_in_flight, 8, "not overridden, kept");
        assert_eq!(overridden.upstream.url, "http://file-upstream:3000");
        assert_eq!(
            overridden.mirror.targets.len(),
            1,
            "flag targets replace the file's"
        );
        assert_eq!(overridden.mirror.targets[0].url, "http://flag-shadow");
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let err = |flags: &[&str]| {
            Config::merge(&args(flags), FileConfig::default())
                .unwrap_err()
                .0
        };
        assert!(err(&[]).contains("--upstream is required"));
        assert!(err(&["--upstream", "ftp://x"]).contains("--upstream \"ftp://x\""));
        let text = err(&["--upstream", "http://u", "--mirror", "http://m=150"]);
        assert!(
            text.contains("\"http://m\"") && text.contains("150"),
            "{text}"
        );
        let text = err(&["--upstream", "http://u", "--mirror", "gopher://m"]);
        assert!(text.contains("gopher://m"), "{text}");
        let text = err(&[
            "--upstream",
            "http://u",
            "--mirror",
            "http://m",
            "--max-in-flight",
            "0",
        ]);
        assert!(text.contains("max_in_flight"), "{text}");
        let text = err(&["--upstream", "http://u", "--upstream-timeout", "0s"]);
        assert!(text.contains("--upstream-timeout"), "{text}");
        let text = err(&["--upstream", "http://u:99999"]);
        assert!(
            text.contains("--upstream") && text.contains("99999"),
            "{text}"
        );
        let text = err(&["--upstream", "http://u", "--mirror", "http://m:70000"]);
        assert!(text.contains("70000"), "{text}");
        let text = err(&[
            "--upstream",
            "http://u",
            "--max-body",
            "8MiB",
            "--max-buffered",
            "4MiB",
        ]);
        assert!(
            text.contains("--max-body") && text.contains("--max-buffered"),
            "{text}"
        );
        for (listen, upstream) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("127.0.0.1:8080", "http://localhost:8080/base"),
            ("0.0.0.0:80", "http://127.0.0.1"),
            ("[::1]:9000", "http://[::1]:9000"),
        ] {
            let text = err(&["--listen", listen, "--upstream", upstream]);
            assert!(
                text.contains("forward to itself"),
                "{listen} {upstream}: {text}"
            );
        }
        for (listen, upstream) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8081"),
            ("127.0.0.1:0", "http://127.0.0.1:0"),
            ("127.0.0.2:8080", "http://127.0.0.1:8080"),
        ] {
            let config = Config::merge(
                &args(&["--listen", listen, "--upstream", upstream]),
                FileConfig::default(),
            );
            assert!(config.is_ok(), "{listen} {upstream}");
        }
    }

    #[test]
    fn bad_target_settings_name_the_target_and_the_key() {
        let err = |table: &str| {
            let text = format!(
                "upstream = \"http://u\"\n[[mirror]]\nname = \"staging\"\nurl = \"http://m\"\n{table}\n"
            );
            Config::merge(&args(&[]), file(&text)).unwrap_err().0
        };
        let cases = [
            ("sample_by = \"ip\"", "sample_by"),
            ("sample_by = \"header:\"", "sample_by"),
            ("rate = \"fast\"", "rate"),
            ("rate = \"0/s\"", "rate"),
            ("path_regex = \"(\"", "path_regex"),
            (
                "rewrite_path = { from = \"[\", to = \"/\" }",
                "rewrite_path",
            ),
            ("methods = [\"GET\", \"FETCH\"]", "methods"),
            ("paths = [\"api\"]", "paths"),
            ("headers = { \"bad name\" = \"1\" }", "headers"),
            ("max_connections = 0", "max_connections"),
            // Recording settings on an HTTP target.
            ("gzip = true", "gzip"),
            ("keep_files = 3", "keep_files"),
            ("rotate_size = \"1MiB\"", "rotate_size"),
            ("record_response = true", "record_response"),
            ("redact_fields = [\"user/email\"]", "redact_fields"),
            ("redact_headers = [\"bad name\"]", "redact_headers"),
            // Kafka settings on an HTTP target.
            ("kafka_linger = \"5ms\"", "kafka_linger"),
            ("kafka_tls = true", "kafka_tls"),
            ("kafka_sasl_username = \"u\"", "kafka_sasl_username"),
        ];
        for (table, key) in cases {
            let text = err(table);
            assert!(
                text.contains("\"staging\"") && text.contains(key) && !text.contains('\n'),
                "{table}: {text}"
            );
        }
        let keyless = "upstream = \"http://u\"\nredact_key_file = \"/no/such/key\"\n[[mirror]]\nurl = \"http://a\"\nredact_headers = [\"authorization\"]\n";
        let text = Config::merge(&args(&[]), file(keyless)).unwrap_err().0;
        assert!(
            text.contains("redact_key_file /no/such/key") && !text.contains('\n'),
            "{text}"
        );
        let twice = "upstream = \"http://u\"\n[[mirror]]\nurl = \"http://a\"\n[[mirror]]\nname = \"http://a\"\nurl = \"http://b\"\n";
        let text = Config::merge(&args(&[]), file(twice)).unwrap_err().0;
        assert!(
            text.contains("\"http://a\"") && text.contains("twice"),
            "{text}"
        );
    }

    #[test]
    #[cfg(feature = "kafka")]
    fn kafka_targets_take_their_keys_and_refuse_others() {
        let merge = |table: &str| {
            let text = format!(
                "upstream = \"http://u\"\n[[mirror]]\nname = \"kafka\"\nurl = \"kafka://127.0.0.1:9/traffic\"\n{table}\n"
            );
            Config::merge(&args(&[]), file(&text))
        };
        let config = merge(
            "kafka_linger = \"20ms\"\nkafka_max_batch = \"256KiB\"\nkafka_compression = \"zstd\"\n\
             kafka_timeout = \"3s\"\nkafka_reconnect = \"250ms\"\nkafka_max_body = \"1KiB\"\n\
             kafka_tls = true\nkafka_sasl_mechanism = \"SCRAM-SHA-256\"\n\
             kafka_sasl_username = \"mirror\"\nkafka_sasl_password = \"secret\"",
        )
        .unwrap();
        let kafka = config.mirror.targets[0].kafka_settings();
        assert_eq!(kafka.linger, Duration::from_millis(20));
        assert_eq!(kafka.max_batch_bytes, 256 << 10);
        assert_eq!(kafka.compression, KafkaCompression::Zstd);
        assert_eq!(kafka.timeout, Duration::from_secs(3));
        assert_eq!(kafka.reconnect_after, Duration::from_millis(250));
        assert_eq!(kafka.max_body_bytes, Some(1024));
        assert!(kafka.tls.is_some());
        assert_eq!(
            kafka.sasl,
            Some(KafkaSasl::scram_sha256("mirror", "secret"))
        );
        for (table, key) in [
            ("kafka_compression = \"brotli\"", "kafka_compression"),
            ("kafka_linger = \"soon\"", "kafka_linger"),
            ("kafka_max_batch = \"0\"", "kafka_max_batch"),
            ("kafka_timeout = \"0s\"", "kafka_timeout"),
            (
                "kafka_sasl_mechanism = \"GSSAPI\"\nkafka_sasl_username = \"u\"\nkafka_sasl_password = \"p\"",
                "kafka_sasl_mechanism",
            ),
            ("kafka_sasl_username = \"u\"", "kafka_sasl_mechanism"),
            ("kafka_ca_file = \"/no/such/ca.pem\"", "kafka_ca_file"),
            // File settings on a Kafka target.
            ("rotate_size = \"1MiB\"", "rotate_size"),
            ("gzip = true", "gzip"),
        ] {
            let text = merge(table).unwrap_err().0;
            assert!(
                text.contains("\"kafka\"") && text.contains(key) && !text.contains('\n'),
                "{table}: {text}"
            );
        }
        let text = Config::merge(
            &args(&[]),
            file("upstream = \"http://u\"\n[[mirror]]\nurl = \"kafka://h:9092/a?b\"\n"),
        )
        .unwrap_err()
        .0;
        assert!(
            text.contains("kafka://h:9092/a?b") && text.contains("topic"),
            "{text}"
        );
    }

    #[test]
    fn file_errors_are_one_line_with_the_key() {
        let dir = std::env::temp_dir().join(format!("mirror-proxy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "upstream = \"http://u\"\nlisten_adress = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let text = read_file(&path).unwrap_err().0;
        assert!(
            text.contains("line 2") && text.contains("listen_adress"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        std::fs::write(&path, "upstream = \"http://u\"\ntimeout = \"5 parsecs\"\n").unwrap();
        let text = read_file(&path).unwrap_err().0;
        assert!(
            text.contains("line 2") && text.contains("5 parsecs"),
            "{text}"
        );
        let text = read_file(&dir.join("missing.toml")).unwrap_err().0;
        assert!(
            text.starts_with("--config ") && text.contains("missing.toml"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn admin_tokens_match_exactly() {
        let token = AdminToken::new("s3cret").unwrap();
        assert!(token.matches(b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret ",
            b"s3cret-s3cret",
            b"S3cret",
            b"x",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert!(AdminToken::new("").is_err());
        assert!(AdminToken::new("two words").is_err());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        assert!(token.same_as(&AdminToken::new("s3cret").unwrap()));
        assert!(!token.same_as(&AdminToken::new("s3cret2").unwrap()));
    }

    #[test]
    fn an_admin_off_loopback_needs_a_token() {
        let dir = std::env::temp_dir().join(format!("mirror-proxy-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "  t0ken\n").unwrap();
        let flags = |admin: &str, token: Option<&Path>| {
            let mut all = vec!["--upstream", "http://u", "--admin", admin];
            if let Some(token) = token {
                all.extend(["--admin-token-file", token.to_str().unwrap()]);
            }
            Config::merge(&args(&all), FileConfig::default())
        };
        for open in ["0.0.0.0:9901", "10.1.2.3:9901", "[::]:9901"] {
            let text = flags(open, None).unwrap_err().0;
            assert!(
                text.contains(open)
                    && text.contains("loopback")
                    && text.contains("--admin-token-file"),
                "{text}"
            );
            assert!(flags(open, Some(&token)).is_ok(), "{open} with a token");
        }
        for loopback in ["127.0.0.1:9901", "[::1]:9901"] {
            assert!(flags(loopback, None).is_ok(), "{loopback}");
        }
        let config = flags("127.0.0.1:0", Some(&token)).unwrap();
        assert!(config.admin_token.unwrap().matches(b"t0ken"), "trimmed");
        std::fs::write(&token, "\n \n").unwrap();
        let text = flags("127.0.0.1:0", Some(&token)).unwrap_err().0;
        assert!(
            text.starts_with("--admin-token-file ") && text.contains("empty"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let text = flags("127.0.0.1:0", Some(&dir.join("token")))
            .unwrap_err()
            .0;
        assert!(text.starts_with("--admin-token-file "), "{text}");
    }

    #[test]
    fn what_a_reload_cannot_change_is_named() {
        let load = |text: &str| {
            Config::merge(
                &args(&[]),
                file(&format!("upstream = \"http://u\"\n{text}")),
            )
            .unwrap()
        };
        let running = load("listen = \"127.0.0.1:0\"\nworkers = 2\n");
        let mut by_default = load("listen = \"127.0.0.1:0\"\n");
        by_default.workers = 7;
        assert_eq!(
            running.fixed_differences(&by_default),
            Vec::<String>::new(),
            "workers left to the CPU count are whatever runs"
        );
        let same = load(
            "listen = \"127.0.0.1:0\"\nworkers = 2\ntimeout = \"1s\"\nupstream_timeout = \"3s\"\n",
        );
        assert_eq!(running.fixed_differences(&same), Vec::<String>::new());
        let moved = load(
            "listen = \"127.0.0.1:9000\"\nworkers = 3\nheader_timeout = \"5s\"\nlog_format = \"json\"\nadmin = \"127.0.0.1:9901\"\n",
        );
        assert_eq!(
            running.fixed_differences(&moved),
            [
                "listen (127.0.0.1:0 -> 127.0.0.1:9000)",
                "admin (off -> 127.0.0.1:9901)",
                "workers (2 -> 3)",
                "header_timeout (60s -> 5s)",
                "log_format (text -> json)",
            ]
        );
    }

    #[test]
    fn mirror_flags() {
        let t = parse_mirror_flag("http://h:1=25").unwrap();
        assert_eq!((t.url.as_str(), t.percentage), ("http://h:1", 25));
        let t = parse_mirror_flag("http://h:1").unwrap();
        assert_eq!((t.url.as_str(), t.percentage), ("http://h:1", 100));
        assert!(parse_mirror_flag("http://h=99999999999").is_err());
        let t = parse_mirror_flag("http://h:1/a=b/c").unwrap();
        assert_eq!(
            t.url, "http://h:1/a=b/c",
            "an = in the path is part of the URL"
        );
        for bad in ["abc", "10.5", "-5", "10%", ""] {
            let flag = format!("http://127.0.0.1:14000={bad}");
            let text = parse_mirror_flag(&flag).unwrap_err().0;
            assert!(
                text.starts_with(&format!("--mirror {flag}:")) && text.contains("whole number"),
                "{text}"
            );
        }
    }
}
