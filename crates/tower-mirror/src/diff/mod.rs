//! Shadow diffing (feature `diff`): compare each shadow response with the primary's.
//!
//! Mark the targets to compare with [`Target::with_comparison`](crate::Target::with_comparison).
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
//! [`baseline`](crate::Target::as_baseline) role (at the same percentage as the compared
//! targets, so it receives the same requests). A field that differs between the primary and
//! the baseline is noise — a timestamp, a random id — and from then on is not reported as a
//! regression on that route, as Diffy does.
//!
//! Each comparison goes to [`DiffOptions::on_comparison`], and into an aggregate report per
//! target and route ([`MirrorLayer::diff_report`](crate::MirrorLayer::diff_report)) whose
//! memory is bounded by [`DiffOptions::max_routes`], [`DiffOptions::max_fields`] and
//! [`DiffOptions::max_examples`].

mod compare;
mod json;
mod report;
mod route;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Method, StatusCode, Uri};

pub use report::{DiffReport, Example, FieldDiff, LatencySummary, RouteDiff};

use crate::error::ConfigError;
use crate::target::Target;
use compare::{Captured, Rules};
use report::{Aggregator, Limits, Observation};

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
    /// The compared target's URL as configured.
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

/// A target's part in comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Compared,
    Baseline,
}

/// Everything comparisons share: rules, roles, the report.
pub(crate) struct DiffEngine {
    rules: Rules,
    max_body_bytes: usize,
    on_comparison: Option<ComparisonCallback>,
    roles: Box<[Option<Role>]>,
    urls: Box<[String]>,
    aggregator: Aggregator,
}

impl DiffEngine {
    /// The engine for `targets`, or `None` when no target is compared.
    pub(crate) fn new(
        options: DiffOptions,
        targets: &[Target],
    ) -> Result<Option<Self>, ConfigError> {
        let invalid = |option, reason| ConfigError::InvalidOption { option, reason };
        let roles: Box<[Option<Role>]> = targets
            .iter()
            .map(|t| match (t.compare, t.baseline) {
                (true, true) => Err(ConfigError::InvalidTarget {
                    url: t.url.clone(),
                    reason: "a target is either compared or the baseline, not both".to_owned(),
                }),
                (true, false) => Ok(Some(Role::Compared)),
                (false, true) => Ok(Some(Role::Baseline)),
                (false, false) => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        let compared = roles.iter().filter(|r| **r == Some(Role::Compared)).count();
        let baselines = roles.iter().filter(|r| **r == Some(Role::Baseline)).count();
        if baselines > 1 {
            return Err(invalid("targets", "at most one target can be the baseline"));
        }
        if compared == 0 {
            return if baselines == 0 {
                Ok(None)
            } else {
                Err(invalid(
                    "targets",
                    "a baseline needs at least one compared target",
                ))
            };
        }
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
        Ok(Some(Self {
            rules: Rules {
                ignore_headers,
                ignore_fields,
            },
            max_body_bytes: options.max_body_bytes,
            on_comparison: options.on_comparison,
            roles,
            urls: targets.iter().map(|t| t.url.clone()).collect(),
            aggregator: Aggregator::new(Limits {
                routes: options.max_routes,
                fields: options.max_fields,
                examples: options.max_examples,
            }),
        }))
    }

    /// Bytes of a response body kept for comparison.
    pub(crate) fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// True when the target at `index` is compared or the baseline.
    pub(crate) fn takes_part(&self, index: usize) -> bool {
        self.roles.get(index).is_some_and(Option::is_some)
    }

    pub(crate) fn report(&self) -> DiffReport {
        let urls: Vec<&str> = self.urls.iter().map(String::as_str).collect();
        self.aggregator.snapshot(&urls)
    }

    fn evaluate(&self, request: &RequestInfo, primary: &Side, shadows: &[(usize, Side)]) {
        let baseline = shadows
            .iter()
            .find(|(index, _)| self.roles[*index] == Some(Role::Baseline));
        let noise_now = match baseline {
            Some((_, side)) => {
                let (found, _) = compare::compare(&primary.response, &side.response, &self.rules);
                self.aggregator.learn_noise(&request.route, &found)
            }
            None => Default::default(),
        };
        for (index, shadow) in shadows {
            if self.roles[*index] != Some(Role::Compared) {
                continue;
            }
            let (found, body_compared) =
                compare::compare(&primary.response, &shadow.response, &self.rules);
            let (differences, noise) = self.aggregator.split(&request.route, found, &noise_now);
            let uri = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
            self.aggregator.record(Observation {
                target: *index,
                route: &request.route,
                uri,
                regressions: &differences,
                noise: &noise,
                body_compared,
                primary_latency: primary.latency,
                shadow_latency: shadow.latency,
            });
            if let Some(callback) = &self.on_comparison {
                let comparison = Comparison {
                    target: self.urls[*index].clone(),
                    route: request.route.clone(),
                    method: request.method.clone(),
                    uri: request.uri.clone(),
                    primary_status: primary.response.status,
                    shadow_status: shadow.response.status,
                    differences,
                    noise,
                    body_compared,
                    primary_latency: primary.latency,
                    shadow_latency: shadow.latency,
                };
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    callback(&comparison)
                }));
            }
        }
    }
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
    shadows: Vec<(usize, Side)>,
}

/// One request's responses, gathered as they complete. Compared when the last holder —
/// the primary's response body, or a mirror task — lets go of it.
pub(crate) struct DiffCell {
    engine: Arc<DiffEngine>,
    request: Option<RequestInfo>,
    started: Instant,
    slots: Mutex<Slots>,
}

impl DiffCell {
    pub(crate) fn new(engine: Arc<DiffEngine>, method: &Method, uri: &Uri) -> Arc<Self> {
        Arc::new(Self {
            request: Some(RequestInfo {
                route: route::route(method, uri.path()),
                method: method.clone(),
                uri: uri.clone(),
            }),
            engine,
            started: Instant::now(),
            slots: Mutex::default(),
        })
    }

    pub(crate) fn engine(&self) -> &DiffEngine {
        &self.engine
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time since the request reached the layer.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The primary's response, complete (or cut at the cap). Its body chunks are joined
    /// later, off the request path.
    pub(crate) fn primary(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        chunks: Vec<Bytes>,
        complete: bool,
        latency: Duration,
    ) {
        let body = match <[Bytes; 1]>::try_from(chunks) {
            Ok([single]) => Body::Joined(single),
            Err(chunks) => Body::Chunks(chunks),
        };
        self.slots().primary = Some(PendingSide {
            status,
            headers,
            body,
            complete,
            latency,
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

impl DiffCell {
    /// A shadow's response, complete (or cut at the cap).
    pub(crate) fn shadow(
        &self,
        index: usize,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        complete: bool,
        latency: Duration,
    ) {
        self.slots().shadows.push((
            index,
            Side {
                response: Captured {
                    status,
                    headers,
                    body,
                    complete,
                },
                latency,
            },
        ));
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
