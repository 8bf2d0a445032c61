//! Shadow diffing (feature `diff`): compare each shadow response with the primary's.
//!
//! [`Diff`] is an [`Observer`]: give it to the layer in
//! [`Options::observers`](crate::Options::observers), mark the targets to compare with
//! [`Target::with_comparison`], and read its [`report`](Diff::report).
//! For each request mirrored to them, the layer keeps the primary response (status, headers,
//! and the body up to [`DiffOptions::max_body_bytes`], copied as it streams to the client,
//! never delayed) and each compared shadow's, and compares them once both are complete:
//!
//! - the status;
//! - the headers, but those in [`DiffOptions::ignore_headers`] (`Date`, `Server`,
//!   `Content-Length` and friends by default);
//! - the bodies: JSON structurally, as a list of differences by JSON pointer (changed, added,
//!   removed, type changed), but the fields matched by [`DiffOptions::ignore_fields`]
//!   (`/items/*/updated_at`); other bodies as text or bytes.
//!
//! **Noise cancellation**: give a second target that runs the primary's own build the
//! [`baseline`](Target::as_baseline) role (at the same percentage as the compared
//! targets, so it receives the same requests). A field that differs between the primary and
//! the baseline is noise — a timestamp, a random id — and from then on is not reported as a
//! regression on that route, as Diffy does.
//!
//! Each comparison goes to [`DiffOptions::on_comparison`], and into an aggregate report per
//! target and route ([`Diff::report`]) whose memory is bounded by
//! [`DiffOptions::max_routes`], [`DiffOptions::max_fields`] and [`DiffOptions::max_examples`].
//!
//! ```
//! use std::sync::Arc;
//! use tower_mirror::diff::{Diff, DiffOptions};
//! use tower_mirror::{MirrorLayer, Options, Target};
//!
//! let diff = Diff::new(DiffOptions {
//!     ignore_fields: vec!["/items/*/updated_at".into()],
//!     ..DiffOptions::default()
//! })?;
//! let layer = MirrorLayer::with_options(Options {
//!     targets: vec![
//!         Target::new("http://127.0.0.1:4000").with_name("candidate").with_comparison(),
//!         Target::new("http://127.0.0.1:4001").with_name("baseline").as_baseline(),
//!     ],
//!     observers: vec![Arc::new(diff.clone())],
//!     ..Options::default()
//! })?;
//! // ... serve; then, say from an admin endpoint:
//! let report = diff.report();
//! # let _ = (layer, report);
//! # Ok::<(), tower_mirror::ConfigError>(())
//! ```

mod compare;
mod json;
mod report;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Method, StatusCode, Uri};

pub use report::{DiffReport, Example, FieldDiff, LatencySummary, RouteDiff};

use crate::error::ConfigError;
use crate::head::RequestHead;
use crate::observe::{Observation, Observer, PrimaryResponse};
use crate::response::MirrorResponse;
use crate::target::Target;
use compare::{Captured, Rules};
use report::{Aggregator, Limits, Observation as Observation_};

/// Which part of a response a difference is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// The status code.
    Status,
    /// A header.
    Header,
    /// The body.
    Body,
}

impl Part {
    /// `status`, `header` or `body`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Header => "header",
            Self::Body => "body",
        }
    }
}

/// How a value differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// Present in both, with different values.
    Changed,
    /// Only in the shadow's response.
    Added,
    /// Only in the primary's response.
    Removed,
    /// A JSON value of another type (a number became a string, say).
    TypeChanged,
}

impl Change {
    /// `changed`, `added`, `removed` or `type_changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Added => "added",
            Self::Removed => "removed",
            Self::TypeChanged => "type_changed",
        }
    }
}

/// One difference between the primary's response and a shadow's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Difference {
    /// Status, a header, or the body.
    pub part: Part,
    /// The header name, or the body's JSON pointer (`/items/0/price`); empty for the status
    /// or a whole non-JSON body.
    pub path: String,
    /// How it differs.
    pub change: Change,
    /// The primary's value, shown short; `None` when it had none.
    pub primary: Option<String>,
    /// The shadow's value, shown short; `None` when it had none.
    pub shadow: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
        write!(
            f,
            "{} {} {}: {} -> {}",
            self.part.as_str(),
            if self.path.is_empty() {
                "-"
            } else {
                &self.path
            },
            self.change.as_str(),
            show(&self.primary),
            show(&self.shadow)
        )
    }
}

/// One shadow response compared with the primary's, as passed to
/// [`DiffOptions::on_comparison`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Comparison {
    /// The compared target's name.
    pub target: String,
    /// Method and path with identifiers folded: `GET /users/{id}`.
    pub route: String,
    /// The original request's method.
    pub method: Method,
    /// The original request's URI.
    pub uri: Uri,
    /// The primary's status.
    pub primary_status: StatusCode,
    /// The shadow's status.
    pub shadow_status: StatusCode,
    /// What differs, noise and ignored parts aside: the regressions.
    pub differences: Vec<Difference>,
    /// What differs but also differed between the primary and the baseline.
    pub noise: Vec<Difference>,
    /// False when a body was over the cap, so only status and headers were compared.
    pub body_compared: bool,
    /// The primary's latency to its response head.
    pub primary_latency: Duration,
    /// The shadow's latency to its response head.
    pub shadow_latency: Duration,
}

impl Comparison {
    /// True when nothing but noise and ignored parts differ.
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Called with each comparison.
pub type ComparisonCallback = Arc<dyn Fn(&Comparison) + Send + Sync>;

/// Headers not compared unless [`DiffOptions::ignore_headers`] says otherwise: they differ
/// between any two servers, or any two responses, without meaning anything.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "age",
    "expires",
    "last-modified",
    "etag",
    "set-cookie",
    "via",
    "alt-svc",
    "x-request-id",
    "x-response-time",
    "x-runtime",
    "x-served-by",
    "x-mirrored-from",
];

/// How comparisons are made and reported.
#[derive(Clone)]
pub struct DiffOptions {
    /// Bytes of each response body kept for comparison, the primary's and each shadow's.
    /// When either body is longer, only status and headers are compared. Default 256 KiB.
    pub max_body_bytes: usize,
    /// Headers not compared (any letter case). Default [`DEFAULT_IGNORED_HEADERS`].
    pub ignore_headers: Vec<String>,
    /// JSON pointer patterns of body fields not compared; `*` matches any one segment, and a
    /// pattern covers everything below it: `/items/*/updated_at`, `/meta`. Default none.
    pub ignore_fields: Vec<String>,
    /// Called with each comparison.
    pub on_comparison: Option<ComparisonCallback>,
    /// The most routes (per target) the report tracks; later ones are only counted.
    /// Default 256.
    pub max_routes: usize,
    /// The most fields per route the report tracks; later ones are only counted. Default 64.
    pub max_fields: usize,
    /// The most example values kept per field. Default 3.
    pub max_examples: usize,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 << 10,
            ignore_headers: DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            ignore_fields: Vec::new(),
            on_comparison: None,
            max_routes: 256,
            max_fields: 64,
            max_examples: 3,
        }
    }
}

impl fmt::Debug for DiffOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiffOptions")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("ignore_headers", &self.ignore_headers)
            .field("ignore_fields", &self.ignore_fields)
            .field("on_comparison", &self.on_comparison.is_some())
            .field("max_routes", &self.max_routes)
            .field("max_fields", &self.max_fields)
            .field("max_examples", &self.max_examples)
            .finish()
    }
}

impl Target {
    /// This target, with its responses compared with the primary's by a [`Diff`] observer
    /// (feature `diff`).
    pub fn with_comparison(mut self) -> Self {
        self.compare = true;
        self
    }

    /// This target as the noise baseline of a [`Diff`] observer: it runs the primary's own
    /// build, so whatever differs between its responses and the primary's is noise (feature
    /// `diff`).
    pub fn as_baseline(mut self) -> Self {
        self.baseline = true;
        self
    }

    /// True when [`with_comparison`](Self::with_comparison) marked this target.
    pub fn is_compared(&self) -> bool {
        self.compare
    }

    /// True when [`as_baseline`](Self::as_baseline) marked this target.
    pub fn is_baseline(&self) -> bool {
        self.baseline
    }
}

/// A target's part in comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Compared,
    Baseline,
}

fn role(target: &Target) -> Option<Role> {
    match (target.compare, target.baseline) {
        (true, _) => Some(Role::Compared),
        (false, true) => Some(Role::Baseline),
        (false, false) => None,
    }
}

/// Shadow diffing: an [`Observer`] that compares the responses of the targets marked with
/// [`Target::with_comparison`] with the primary's, and keeps the report. See the
/// [module docs](self).
///
/// Cloning is cheap and shares the report: keep a clone to read it while the layer owns
/// the other.
#[derive(Clone)]
pub struct Diff {
    engine: Arc<DiffEngine>,
}

impl Diff {
    /// A comparison by `options`.
    ///
    /// # Errors
    /// [`ConfigError::InvalidOption`] for a zero report bound, an invalid header name in
    /// `ignore_headers`, or a pattern in `ignore_fields` that does not start with `/`.
    pub fn new(options: DiffOptions) -> Result<Self, ConfigError> {
        DiffEngine::new(options).map(|engine| Self {
            engine: Arc::new(engine),
        })
    }

    /// The comparisons so far, per compared target and route.
    pub fn report(&self) -> DiffReport {
        self.engine.aggregator.snapshot()
    }
}

impl Diff {
    /// Compares `shadow`, the response of the target named `target`, with `primary`, the
    /// response to the same request (`method`, `uri`), by this diff's rules, and adds the
    /// result to the [report](Self::report) and to [`DiffOptions::on_comparison`], as for a
    /// live mirror of a compared target. For responses captured elsewhere: mirror-proxy's
    /// `replay --compare` compares each replayed response with the recorded one.
    ///
    /// With no baseline response here nothing is learnt as noise; fields learnt as noise
    /// by live comparisons on the same route still count as noise. A body longer than
    /// [`DiffOptions::max_body_bytes`], or not [complete](CapturedResponse::complete), is
    /// not compared.
    pub fn compare(
        &self,
        target: &str,
        method: &Method,
        uri: &Uri,
        primary: CapturedResponse,
        shadow: CapturedResponse,
    ) {
        let request = RequestInfo {
            route: crate::route::route(method, uri.path()),
            method: method.clone(),
            uri: uri.clone(),
        };
        let max = self.engine.max_body_bytes;
        let side = |response: CapturedResponse| Side {
            response: Captured {
                status: response.status,
                headers: response.headers,
                complete: response.complete && response.body.len() <= max,
                body: response.body,
            },
            latency: response.latency,
        };
        let shadow = Shadow {
            name: target.to_owned(),
            redact: None,
            role: Role::Compared,
            side: side(shadow),
        };
        self.engine.evaluate(&request, &side(primary), &[shadow]);
    }
}

/// A response as [`Diff::compare`] takes it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CapturedResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, or its first bytes when not `complete`.
    pub body: Bytes,
    /// Whether `body` is the whole body. Default `true`.
    pub complete: bool,
    /// The time to the response head. Default zero.
    pub latency: Duration,
}

impl CapturedResponse {
    /// A complete response with no latency recorded.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            status,
            headers,
            body,
            complete: true,
            latency: Duration::ZERO,
        }
    }

    /// Marks `body` as the first bytes only: see [`complete`](Self::complete).
    pub fn incomplete(mut self) -> Self {
        self.complete = false;
        self
    }

    /// Sets the time to the response head: see [`latency`](Self::latency).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

impl fmt::Debug for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Diff").finish_non_exhaustive()
    }
}

/// Checks the roles: each target is compared or the baseline, not both; at most one
/// baseline, and only with a compared target.
impl Observer for Diff {
    fn check(&self, targets: &[Target]) -> Result<(), ConfigError> {
        let invalid = |reason| ConfigError::InvalidOption {
            option: "targets",
            reason,
        };
        if let Some(both) = targets.iter().find(|t| t.compare && t.baseline) {
            return Err(ConfigError::InvalidTarget {
                url: both.url.clone(),
                reason: "a target is either compared or the baseline, not both".to_owned(),
            });
        }
        let compared = targets.iter().filter(|t| t.compare).count();
        let baselines = targets.iter().filter(|t| t.baseline).count();
        if baselines > 1 {
            return Err(invalid("at most one target can be the baseline"));
        }
        if baselines == 1 && compared == 0 {
            return Err(invalid("a baseline needs at least one compared target"));
        }
        Ok(())
    }

    fn observe(
        &self,
        request: &RequestHead<'_>,
        targets: &[&Target],
    ) -> Option<Arc<dyn Observation>> {
        if !targets.iter().any(|t| t.compare) {
            return None;
        }
        Some(DiffCell::new(
            Arc::clone(&self.engine),
            request.method(),
            request.uri(),
        ))
    }
}

/// Everything comparisons share: rules and the report.
struct DiffEngine {
    rules: Rules,
    max_body_bytes: usize,
    on_comparison: Option<ComparisonCallback>,
    aggregator: Aggregator,
}

impl DiffEngine {
    fn new(options: DiffOptions) -> Result<Self, ConfigError> {
        let invalid = |option, reason| ConfigError::InvalidOption { option, reason };
        if options.max_routes == 0 || options.max_fields == 0 {
            return Err(invalid(
                "diff",
                "max_routes and max_fields must be at least 1",
            ));
        }
        let ignore_headers = options
            .ignore_headers
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| invalid("diff.ignore_headers", "not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        let ignore_fields = options
            .ignore_fields
            .iter()
            .map(|pattern| {
                json::Pattern::parse(pattern).ok_or(invalid(
                    "diff.ignore_fields",
                    "a JSON pointer pattern starts with `/`, such as /items/*/updated_at",
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            rules: Rules {
                ignore_headers,
                ignore_fields,
            },
            max_body_bytes: options.max_body_bytes,
            on_comparison: options.on_comparison,
            aggregator: Aggregator::new(Limits {
                routes: options.max_routes,
                fields: options.max_fields,
                examples: options.max_examples,
            }),
        })
    }

    fn evaluate(&self, request: &RequestInfo, primary: &Side, shadows: &[Shadow]) {
        let baseline = shadows.iter().find(|s| s.role == Role::Baseline);
        let noise_now = match baseline {
            Some(shadow) => {
                let (found, _) =
                    compare::compare(&primary.response, &shadow.side.response, &self.rules);
                self.aggregator.learn_noise(&request.route, &found)
            }
            None => Default::default(),
        };
        for shadow in shadows.iter().filter(|s| s.role == Role::Compared) {
            let side = &shadow.side;
            let (mut found, body_compared) =
                compare::compare(&primary.response, &side.response, &self.rules);
            let mut uri = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let redacted_uri;
            if let Some(redact) = &shadow.redact {
                redact_values(redact, &mut found);
                if let Some(redacted) = redact.path_and_query(uri) {
                    redacted_uri = redacted;
                    uri = &redacted_uri;
                }
            }
            let (differences, noise) = self.aggregator.split(&request.route, found, &noise_now);
            self.aggregator.record(Observation_ {
                target: &shadow.name,
                route: &request.route,
                uri,
                regressions: &differences,
                noise: &noise,
                body_compared,
                primary_latency: primary.latency,
                shadow_latency: side.latency,
            });
            if let Some(callback) = &self.on_comparison {
                let comparison = Comparison {
                    target: shadow.name.clone(),
                    route: request.route.clone(),
                    method: request.method.clone(),
                    uri: shadow
                        .redact
                        .as_ref()
                        .and_then(|r| r.uri(&request.uri))
                        .unwrap_or_else(|| request.uri.clone()),
                    primary_status: primary.response.status,
                    shadow_status: side.response.status,
                    differences,
                    noise,
                    body_compared,
                    primary_latency: primary.latency,
                    shadow_latency: side.latency,
                };
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    callback(&comparison)
                }));
            }
        }
    }
}

/// Replaces the values shown for the headers and body fields `redact` covers by their
/// placeholders, so that a report shows no more than the target received.
fn redact_values(redact: &crate::redact::Redact, found: &mut [Difference]) {
    for difference in found {
        let path = match difference.part {
            Part::Status => continue,
            Part::Header => {
                if HeaderName::from_bytes(difference.path.as_bytes())
                    .is_ok_and(|name| redact.redacts_header(&name))
                {
                    for text in [&mut difference.primary, &mut difference.shadow]
                        .into_iter()
                        .flatten()
                    {
                        *text = redact.placeholder(text.as_bytes());
                    }
                }
                continue;
            }
            // A whole body compared as text is the root: any redacted field may be in it.
            Part::Body => crate::pointer::segments(&difference.path).unwrap_or_default(),
        };
        for text in [&mut difference.primary, &mut difference.shadow]
            .into_iter()
            .flatten()
        {
            if let Some(shown) = redact.shown_field(&path, text) {
                *text = shown;
            }
        }
    }
}

/// One shadow's response, with the target's name, role and redaction.
struct Shadow {
    name: String,
    redact: Option<crate::redact::Redact>,
    role: Role,
    side: Side,
}

struct RequestInfo {
    method: Method,
    uri: Uri,
    route: String,
}

/// A response with the time to its head.
struct Side {
    response: Captured,
    latency: Duration,
}

#[derive(Default)]
struct Slots {
    primary: Option<PendingSide>,
    shadows: Vec<Shadow>,
}

/// One request's responses, gathered as they complete. Compared when the last holder —
/// the primary's response body, or a mirror task — lets go of it.
struct DiffCell {
    engine: Arc<DiffEngine>,
    request: Option<RequestInfo>,
    slots: Mutex<Slots>,
}

impl DiffCell {
    fn new(engine: Arc<DiffEngine>, method: &Method, uri: &Uri) -> Arc<Self> {
        Arc::new(Self {
            request: Some(RequestInfo {
                route: crate::route::route(method, uri.path()),
                method: method.clone(),
                uri: uri.clone(),
            }),
            engine,
            slots: Mutex::default(),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Observation for DiffCell {
    fn body_limit(&self) -> usize {
        self.engine.max_body_bytes
    }

    fn wants(&self, target: &Target) -> bool {
        role(target).is_some()
    }

    fn shadow(&self, target: &Target, response: &MirrorResponse, complete: bool) {
        let Some(role) = role(target) else {
            return;
        };
        self.slots().shadows.push(Shadow {
            name: target.name().to_owned(),
            redact: target.redact.clone(),
            role,
            side: Side {
                response: Captured {
                    status: response.status(),
                    headers: response.headers().clone(),
                    body: response.body().clone(),
                    complete,
                },
                latency: response.latency(),
            },
        });
    }

    /// The primary's response, complete (or cut at the cap). Its body chunks are joined
    /// later, off the request path.
    fn primary(&self, response: PrimaryResponse) {
        let body = match <[Bytes; 1]>::try_from(response.body) {
            Ok([single]) => Body::Joined(single),
            Err(chunks) => Body::Chunks(chunks),
        };
        self.slots().primary = Some(PendingSide {
            status: response.status,
            headers: response.headers,
            body,
            complete: response.complete,
            latency: response.latency,
        });
    }
}

/// The primary's body, joined into one buffer only when compared.
enum Body {
    Joined(Bytes),
    Chunks(Vec<Bytes>),
}

impl Body {
    fn join(self) -> Bytes {
        match self {
            Self::Joined(bytes) => bytes,
            Self::Chunks(chunks) => chunks.concat().into(),
        }
    }
}

/// The primary's response as the cell first keeps it.
struct PendingSide {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
    complete: bool,
    latency: Duration,
}

impl PendingSide {
    fn into_side(self) -> Side {
        Side {
            response: Captured {
                status: self.status,
                headers: self.headers,
                body: self.body.join(),
                complete: self.complete,
            },
            latency: self.latency,
        }
    }
}

impl Drop for DiffCell {
    fn drop(&mut self) {
        let slots = std::mem::take(self.slots.get_mut().unwrap_or_else(|p| p.into_inner()));
        let (Some(primary), Some(request)) = (slots.primary, self.request.take()) else {
            return; // the primary did not complete: nothing to compare with
        };
        if slots.shadows.is_empty() {
            return;
        }
        let engine = Arc::clone(&self.engine);
        let evaluate = move || engine.evaluate(&request, &primary.into_side(), &slots.shadows);
        // Off the request path when the primary's body was the last to finish.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move { evaluate() })),
            Err(_) => evaluate(),
        }
    }
}
