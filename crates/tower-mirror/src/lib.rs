//! Mirror (shadow) live HTTP requests to other targets — a staging build, a canary, an
//! analytics sink — without changing or slowing the original request.
//!
//! [`MirrorLayer`] is a [`tower` layer](tower_layer::Layer) for axum, hyper and tonic services:
//!
//! ```
//! use axum::{Router, body::Body, http::Request, http::Uri, routing::get};
//! use tower::ServiceExt;
//! use tower_mirror::MirrorLayer;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // A shadow target on loopback (think: staging) that reports the paths it receives.
//!     let (seen, mut shadow_saw) = tokio::sync::mpsc::unbounded_channel();
//!     let shadow = Router::new().fallback(move |uri: Uri| async move {
//!         seen.send(uri.to_string()).ok();
//!     });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let shadow_url = format!("http://{}", listener.local_addr()?);
//!     tokio::spawn(async move { axum::serve(listener, shadow).await });
//!
//!     // The application: one line mirrors every request to the shadow target.
//!     let app = Router::new()
//!         .route("/api/users", get(|| async { "alice, bob" }))
//!         .layer(MirrorLayer::new([shadow_url])?);
//!
//!     // Serve `app` with `axum::serve` as usual; here one request goes through it directly.
//!     let request = Request::get("/api/users?page=2").body(Body::empty())?;
//!     let response = app.oneshot(request).await?;
//!     assert_eq!(response.status(), 200); // the primary answered, untouched
//!     assert_eq!(shadow_saw.recv().await.as_deref(), Some("/api/users?page=2"));
//!     Ok(())
//! }
//! ```
//!
//! # What it does
//!
//! For each request, the layer decides whether it is eligible (not `CONNECT`, not a protocol
//! upgrade, not already a mirror: see [`Options::loop_guard`]), then runs every target's
//! admission steps: its filter (methods, paths, headers), its sampling (a counter, or a
//! sticky key: [`SampleKey`]) and its limits (in flight, [`RateLimit`]); see [`Target`]. A
//! request no target takes costs a few atomic operations and goes straight to the inner
//! service.
//!
//! For a sampled request, the mirror is a copy: same method, the target's base URL joined
//! with the original path (optionally [rewritten](Target::rewrite_path)) and query, the original end-to-end headers in order
//! (hop-by-hop headers, `Proxy-Authorization` and `Expect` are not forwarded), `Host` set to
//! the target, [`X-Mirrored-From`](X_MIRRORED_FROM) set to the host the original was sent to,
//! and the original body (unless [`Options::copy_body`] is off). It is sent over HTTP/1.1,
//! or HTTP/2 where an `https` target negotiates it, through pooled connections. Redirects
//! are not followed: every response, whatever its status, reaches [`Options::on_success`];
//! connection errors and timeouts reach [`Options::on_error`].
//!
//! In [`Mode::Async`] (the default) the primary never waits: the body is copied while the
//! inner service reads it ([`TeeBody`]) and the mirrors are sent once it has been read to
//! its end. In [`Mode::Sync`] the mirrors run first, concurrently: the request waits at most
//! one [`Options::timeout`] in all, reading the body ahead included.
//!
//! # Bounded by design
//!
//! - At most [`Options::max_in_flight`] mirrors per target are in flight; beyond that new
//!   mirrors are dropped and counted, never queued.
//! - Each target has its own connection pool, at most [`Target::max_connections`]
//!   connections: a mirror is sent only when a connection (or HTTP/2 stream) can take it at
//!   once, else dropped and counted (`dropped_no_connection`), never queued in the client.
//! - A body over [`Options::max_body_bytes`] is not mirrored (the primary still gets all of
//!   it), and the body bytes held for unfinished mirrors never exceed
//!   [`Options::max_buffered_bytes`], shared by every request and target.
//! - Every exchange, including reading the response, ends within [`Options::timeout`].
//!
//! Every outcome is counted, per target by name: see [`MirrorLayer::stats`] and
//! [`TargetStats`]. To know what was decided for one request (for an access log), put a
//! [`Decisions`] in its extensions.
//!
//! # Features
//!
//! - `diff`: shadow diffing, the `diff` module (adds `serde_json`).
//! - `record`: recording targets, `file://` URLs written as NDJSON ([`RecordFile`]), and the
//!   `record` module that reads them back (adds
//!   `serde_json`, `base64`, `humantime`, `flate2`).
//! - `redact`: [`Target::redact`] applies ([`Redact`]): values replaced by HMAC-SHA-256
//!   placeholders (adds `hmac`, `sha2`, `serde_json`).
//! - `kafka`: Kafka recording targets, `kafka://host:port/topic` URLs producing the same
//!   records to a topic ([`KafkaTopic`]; adds `rskafka` with its gzip, LZ4, Snappy, Zstandard
//!   and TLS support, and `serde_json`, `base64`, `humantime`).
//!
//! # Runtime
//!
//! Mirrors are sent on the Tokio runtime the service runs on, which needs its time driver
//! (`#[tokio::main]` and axum, hyper and tonic servers have it). Without a runtime, mirrors
//! are skipped and counted, never a panic.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The tower façade.
mod future;
mod layer;
mod service;
// The configuration as written, and as compiled; the cell that holds it.
mod config;
mod control;
mod decisions;
mod handle;
mod plan;
mod target;
// The request path: admission, bodies, the outbound request, dispatch, the client.
mod admit;
mod body;
pub mod client;
mod dispatch;
mod head;
pub mod outbound;
// Outcomes: counters, errors, responses, observers.
mod error;
mod kafka;
pub mod observe;
mod pointer;
mod redact;
mod response;
mod route;
mod sink;
mod stats;

#[cfg(feature = "diff")]
#[cfg_attr(docsrs, doc(cfg(feature = "diff")))]
pub mod diff;

#[cfg(feature = "record")]
#[cfg_attr(docsrs, doc(cfg(feature = "record")))]
pub mod record;

/// Internals for the fuzz targets in `/fuzz` (feature `fuzzing`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use http::Request;

    use crate::body::MirrorBody;
    use crate::outbound::request::{RequestSnapshot, build};
    use crate::plan::compile_rules;
    use crate::target::Target;

    /// The request a mirror to `target` would send for `original`, with a body of `body_len`
    /// bytes; `None` when `target` is invalid or `original` cannot be mirrored.
    pub fn mirror_request(
        original: &Request<()>,
        target: &Target,
        body_len: usize,
    ) -> Option<Request<MirrorBody>> {
        let rules = compile_rules(target).ok()?;
        let body = MirrorBody::from(bytes::Bytes::from(vec![0u8; body_len]));
        build(
            std::sync::Arc::new(RequestSnapshot::capture(original)),
            &rules,
            body,
        )
    }
}

pub use body::{MirrorBody, ResponseBody, TeeBody};
pub use client::{HttpSender, SendFuture, Sender, ShadowBody};
pub use config::{ErrorCallback, Mode, Options, SuccessCallback};
pub use control::Changes;
pub use decisions::{Decision, Decisions};
pub use error::{BoxError, ConfigError, MirrorError};
pub use future::ResponseFuture;
pub use handle::{ControlError, MirrorHandle, TargetStatus};
pub use head::{ClientAddr, RequestHead};
pub use kafka::{KafkaCompression, KafkaSasl, KafkaTopic, KafkaUrl, SaslMechanism};
pub use layer::MirrorLayer;
pub use outbound::X_MIRRORED_FROM;
pub use redact::Redact;
pub use response::MirrorResponse;
pub use service::Mirror;
pub use stats::{DrainReport, MirrorStats, NotMirroredStats, SkipStats, TargetStats};
pub use target::{KeyFn, RateLimit, RecordFile, SampleKey, Target, percentage};

/// README.md's Rust snippets, compiled and run as doctests so that they stay as written.
#[cfg(all(doctest, feature = "diff", feature = "record"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeSnippets;
