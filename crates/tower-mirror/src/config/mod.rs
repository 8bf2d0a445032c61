//! The configuration: [`Options`] for the layer and [`Target`]s, as the user writes them.
//! The layer checks and compiles them into its plan (`crate::plan`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::target::Target;

use crate::client::Sender;
use crate::error::MirrorError;
use crate::observe::Observer;
use crate::response::MirrorResponse;

/// Called with the target's name ([`Target::name`], by default its URL as configured) and
/// the error, when a mirror gets no response.
pub type ErrorCallback = Arc<dyn Fn(&str, &MirrorError) + Send + Sync>;

/// Called with the target's name ([`Target::name`], by default its URL as configured) and
/// the response, when a mirror gets one.
///
/// Any HTTP status counts as a response, 3xx, 4xx and 5xx included: redirects are never
/// followed.
pub type SuccessCallback = Arc<dyn Fn(&str, &MirrorResponse) + Send + Sync>;

/// When mirrors run relative to the primary request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Mirrors run in the background; the primary request never waits for them (the default).
    ///
    /// The request body is copied while the inner service reads it, and the mirrors are sent
    /// once it has been read to its end.
    #[default]
    Async,
    /// The body is buffered first (up to [`Options::max_body_bytes`]), the mirrors to all
    /// sampled targets run concurrently, and the inner service is called once they have
    /// finished or [`Options::timeout`] has passed since the request arrived: reading the
    /// body ahead and the mirrors share that one timeout. A body slower than that is not
    /// mirrored (counted as `body_timeout`); a mirror still running when it passes goes on in
    /// the background and ends within its own timeout.
    ///
    /// This adds up to one timeout of latency to sampled requests; use it only where a target
    /// must see a request before the primary handles it.
    Sync,
}

/// The configuration of a [`MirrorLayer`](crate::MirrorLayer).
///
/// Start from the defaults and set what you need:
///
/// ```
/// use std::time::Duration;
/// use tower_mirror::{percentage, MirrorLayer, Options, Target};
///
/// let layer = MirrorLayer::with_options(Options {
///     targets: vec![
///         Target::new("http://127.0.0.1:4000"),
///         percentage("http://127.0.0.1:5000/shadow", 10),
///     ],
///     timeout: Duration::from_secs(2),
///     ..Options::default()
/// })?;
/// # Ok::<(), tower_mirror::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Options {
    /// Where to mirror requests. At least one; their names ([`Target::name`]) are unique.
    pub targets: Vec<Target>,
    /// The longest one mirror exchange may take: connecting, sending the request, receiving the
    /// response head and draining its body. Default 5 s; zero is a configuration error.
    pub timeout: Duration,
    /// Whether the primary waits for its mirrors. Default [`Mode::Async`].
    pub mode: Mode,
    /// Whether mirrored requests carry the original body. Default `true`; when `false`, they
    /// are sent with an empty body.
    pub copy_body: bool,
    /// The largest request body that is mirrored. A longer body is still passed to the inner
    /// service intact, but not mirrored (counted as `skipped.body_too_large`). Default 4 MiB.
    pub max_body_bytes: usize,
    /// The budget of body bytes held, over all requests and targets, for mirrors not yet
    /// finished. A body that would exceed it is not mirrored (counted as
    /// `skipped.budget_exhausted`). Default 64 MiB. Each request's copy is held from the first
    /// byte the inner service reads until its mirrors have written it out, so size this for
    /// the uploads in flight at once: 64 concurrent 1 MiB uploads need about twice as much.
    pub max_buffered_bytes: usize,
    /// The most mirrors in flight to one target. Beyond it, new mirrors to that target are
    /// dropped and counted (`dropped_overload`), never queued. Default 256.
    pub max_in_flight: usize,
    /// When `true` (the default), requests that already carry `X-Mirrored-From` are not
    /// mirrored again, so two services mirroring to each other cannot loop.
    pub loop_guard: bool,
    /// Send the mirrors of a request without a body only once the inner service has answered
    /// it (its response head), instead of at once; if it never does — the client went away
    /// and the request was dropped, or the service failed — the mirror is not sent (counted
    /// as `skipped.primary_aborted`). So a shadow never receives a request that production
    /// did not process, at the cost of the mirror leaving one primary latency later; the
    /// primary still never waits. Requests with a body already go once the inner service has
    /// read it. Async mode only. Default `false` (as the reference middleware);
    /// mirror-proxy turns it on.
    pub send_after_primary: bool,
    /// How many bytes of each shadow response body to keep for
    /// [`MirrorResponse::body`]. Default 0: none are kept (the body is still drained).
    pub capture_response_body: usize,
    /// Called when a mirror gets no response: connection errors and timeouts.
    pub on_error: Option<ErrorCallback>,
    /// Called when a mirror gets a response, whatever its status.
    pub on_success: Option<SuccessCallback>,
    /// Observers of mirrored requests and their responses, such as the shadow diffing of
    /// feature `diff` (`tower_mirror::diff::Diff`). Default none.
    pub observers: Vec<Arc<dyn Observer>>,
    /// How mirrored requests are sent. Default `None`: an [`HttpSender`](crate::HttpSender)
    /// with pooled connections, HTTP/1.1 and HTTP/2, and rustls with verified certificates.
    pub sender: Option<Arc<dyn Sender>>,
}

impl Options {
    /// The default timeout of one mirror exchange: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default largest mirrored body: 4 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
    /// The default budget of body bytes held for unfinished mirrors: 64 MiB.
    pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 << 20;
    /// The default most mirrors in flight per target: 256.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
}

impl Default for Options {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            mode: Mode::Async,
            copy_body: true,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_buffered_bytes: Self::DEFAULT_MAX_BUFFERED_BYTES,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            loop_guard: true,
            send_after_primary: false,
            capture_response_body: 0,
            on_error: None,
            on_success: None,
            observers: Vec::new(),
            sender: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Options");
        debug
            .field("targets", &self.targets)
            .field("timeout", &self.timeout)
            .field("mode", &self.mode)
            .field("copy_body", &self.copy_body)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("loop_guard", &self.loop_guard)
            .field("send_after_primary", &self.send_after_primary)
            .field("capture_response_body", &self.capture_response_body)
            .field("on_error", &self.on_error.is_some())
            .field("on_success", &self.on_success.is_some())
            .field("observers", &self.observers.len())
            .field("sender", &self.sender.is_some())
            .finish()
    }
}
