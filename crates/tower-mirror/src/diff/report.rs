//! The aggregate report: per target and route, what was compared and which fields differ most,
//! in bounded memory.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::json::fold_indexes;
use super::{Difference, Part};

/// How much one report may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) routes: usize,
    pub(crate) fields: usize,
    pub(crate) examples: usize,
}

/// Latency samples kept per route and side, the most recent ones.
const SAMPLES: usize = 256;

/// A field as the report counts it: array indexes folded, so `/items/3/price` is
/// `/items/*/price`.
type FieldKey = (Part, String);

fn key(difference: &Difference) -> FieldKey {
    (difference.part, fold_indexes(&difference.path))
}

#[derive(Debug, Default)]
struct Samples {
    micros: Vec<u32>,
    next: usize,
}

impl Samples {
    fn record(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if self.micros.len() < SAMPLES {
            self.micros.push(micros);
        } else {
            self.micros[self.next] = micros;
        }
        self.next = (self.next + 1) % SAMPLES;
    }

    fn summary(&self) -> LatencySummary {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted
                .get(index)
                .map(|&m| Duration::from_micros(u64::from(m)))
        };
        LatencySummary {
            samples: sorted.len(),
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

#[derive(Debug, Default)]
struct FieldAgg {
    differing: u64,
    noise: u64,
    examples: Vec<Example>,
}

#[derive(Debug, Default)]
struct RouteAgg {
    compared: u64,
    equal: u64,
    status: u64,
    headers: u64,
    body: u64,
    body_not_compared: u64,
    fields: HashMap<FieldKey, FieldAgg>,
    untracked_fields: u64,
    primary: Samples,
    shadow: Samples,
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<(String, String), RouteAgg>,
    untracked_routes: u64,
    /// Per route, fields the baseline showed to differ from the primary anyway.
    noise: HashMap<String, HashSet<FieldKey>>,
}

/// One comparison, as the aggregator takes it.
pub(crate) struct Observation<'a> {
    pub(crate) target: &'a str,
    pub(crate) route: &'a str,
    pub(crate) uri: &'a str,
    pub(crate) regressions: &'a [Difference],
    pub(crate) noise: &'a [Difference],
    pub(crate) body_compared: bool,
    pub(crate) primary_latency: Duration,
    pub(crate) shadow_latency: Duration,
}

/// Collects comparisons into a bounded report.
#[derive(Debug)]
pub(crate) struct Aggregator {
    limits: Limits,
    state: Mutex<State>,
}

impl Aggregator {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counters that are still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns from one primary-versus-baseline comparison: the fields that differed are
    /// noise on `route`. Returns them, to cancel in this very request's comparisons too.
    pub(crate) fn learn_noise(&self, route: &str, baseline: &[Difference]) -> HashSet<FieldKey> {
        let found: HashSet<FieldKey> = baseline.iter().map(key).collect();
        if found.is_empty() {
            return found;
        }
        let mut state = self.lock();
        let tracked = state.noise.len();
        if let Some(noise) = state.noise.get_mut(route) {
            for field in &found {
                if noise.len() < self.limits.fields {
                    noise.insert(field.clone());
                }
            }
        } else if tracked < self.limits.routes {
            let fields = found.iter().take(self.limits.fields).cloned().collect();
            state.noise.insert(route.to_owned(), fields);
        }
        found
    }

    /// Splits `differences` into regressions and noise for `route`.
    pub(crate) fn split(
        &self,
        route: &str,
        differences: Vec<Difference>,
        noise_now: &HashSet<FieldKey>,
    ) -> (Vec<Difference>, Vec<Difference>) {
        let state = self.lock();
        let known = state.noise.get(route);
        differences.into_iter().partition(|d| {
            let field = key(d);
            !(noise_now.contains(&field) || known.is_some_and(|k| k.contains(&field)))
        })
    }

    pub(crate) fn record(&self, seen: Observation<'_>) {
        let limits = self.limits;
        let mut state = self.lock();
        let id = (seen.target.to_owned(), seen.route.to_owned());
        if !state.routes.contains_key(&id) && state.routes.len() >= limits.routes {
            state.untracked_routes += 1;
            return;
        }
        let route = state.routes.entry(id).or_default();
        route.compared += 1;
        route.primary.record(seen.primary_latency);
        route.shadow.record(seen.shadow_latency);
        if !seen.body_compared {
            route.body_not_compared += 1;
        }
        let has = |part| seen.regressions.iter().any(|d| d.part == part);
        if seen.regressions.is_empty() {
            route.equal += 1;
        }
        route.status += u64::from(has(Part::Status));
        route.headers += u64::from(has(Part::Header));
        route.body += u64::from(has(Part::Body));
        let mut counted = HashSet::new();
        let all = seen
            .regressions
            .iter()
            .map(|d| (d, false))
            .chain(seen.noise.iter().map(|d| (d, true)));
        for (difference, is_noise) in all {
            let field = key(difference);
            // A field that differs at several array indexes counts once per comparison.
            if !counted.insert((field.clone(), is_noise)) {
                continue;
            }
            if !route.fields.contains_key(&field) && route.fields.len() >= limits.fields {
                route.untracked_fields += 1;
                continue;
            }
            let agg = route.fields.entry(field).or_default();
            if is_noise {
                agg.noise += 1;
            } else {
                agg.differing += 1;
            }
            if !is_noise && agg.examples.len() < limits.examples {
                agg.examples.push(Example {
                    uri: seen.uri.to_owned(),
                    primary: difference.primary.clone(),
                    shadow: difference.shadow.clone(),
                });
            }
        }
    }

    /// The report, routes sorted by divergence, fields by how often they differ.
    pub(crate) fn snapshot(&self) -> DiffReport {
        let state = self.lock();
        let mut routes: Vec<RouteDiff> = state
            .routes
            .iter()
            .map(|((target, route), agg)| {
                let mut fields: Vec<FieldDiff> = agg
                    .fields
                    .iter()
                    .map(|((part, path), f)| FieldDiff {
                        part: *part,
                        path: path.clone(),
                        differing: f.differing,
                        noise: f.noise,
                        examples: f.examples.clone(),
                    })
                    .collect();
                fields.sort_by(|a, b| {
                    (b.differing, b.noise, &a.path).cmp(&(a.differing, a.noise, &b.path))
                });
                RouteDiff {
                    target: target.clone(),
                    route: route.clone(),
                    compared: agg.compared,
                    equal: agg.equal,
                    differing_status: agg.status,
                    differing_headers: agg.headers,
                    differing_body: agg.body,
                    body_not_compared: agg.body_not_compared,
                    fields,
                    untracked_fields: agg.untracked_fields,
                    primary_latency: agg.primary.summary(),
                    shadow_latency: agg.shadow.summary(),
                }
            })
            .collect();
        routes.sort_by(|a, b| {
            b.divergence()
                .total_cmp(&a.divergence())
                .then(b.compared.cmp(&a.compared))
                .then(a.route.cmp(&b.route))
        });
        DiffReport {
            routes,
            untracked_routes: state.untracked_routes,
        }
    }
}

/// The aggregate of every comparison so far, from
/// [`Diff::report`](super::Diff::report).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DiffReport {
    /// Per compared target and route, most divergent first.
    pub routes: Vec<RouteDiff>,
    /// Comparisons not counted because the report already held as many routes as it may.
    pub untracked_routes: u64,
}

/// The comparisons of one target on one route.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RouteDiff {
    /// The compared target's name.
    pub target: String,
    /// Method and path with identifiers folded: `GET /users/{id}`.
    pub route: String,
    /// Requests whose primary and shadow responses were both complete and compared.
    pub compared: u64,
    /// Comparisons without a difference (noise aside).
    pub equal: u64,
    /// Comparisons whose statuses differed.
    pub differing_status: u64,
    /// Comparisons with a differing header (ignored headers aside).
    pub differing_headers: u64,
    /// Comparisons with a differing body (ignored fields and noise aside).
    pub differing_body: u64,
    /// Comparisons where a body was over the cap, so only status and headers were compared.
    pub body_not_compared: u64,
    /// The fields that differed, most often first (array indexes folded to `*`).
    pub fields: Vec<FieldDiff>,
    /// Differences not counted because the route already held as many fields as it may.
    pub untracked_fields: u64,
    /// The primary's latency to its response head, over recent comparisons.
    pub primary_latency: LatencySummary,
    /// The shadow's latency to its response head, over recent comparisons.
    pub shadow_latency: LatencySummary,
}

impl RouteDiff {
    /// The share of comparisons with a difference, from 0 to 1.
    pub fn divergence(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            (self.compared - self.equal) as f64 / self.compared as f64
        }
    }
}

/// One field of a route's report.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldDiff {
    /// Status, a header, or the body.
    pub part: Part,
    /// The header name, or the JSON pointer (array indexes folded to `*`); empty for the
    /// status or a whole non-JSON body.
    pub path: String,
    /// Comparisons where it differed.
    pub differing: u64,
    /// Comparisons where it differed but the baseline differed too: noise, not counted above.
    pub noise: u64,
    /// The first few differing values.
    pub examples: Vec<Example>,
}

/// One differing value, as an example.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Example {
    /// The request's path and query.
    pub uri: String,
    /// The primary's value, if it had one.
    pub primary: Option<String>,
    /// The shadow's value, if it had one.
    pub shadow: Option<String>,
}

/// Latency percentiles over the most recent samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// How many samples the percentiles are taken over (at most 256, the most recent).
    pub samples: usize,
    /// The median.
    pub p50: Option<Duration>,
    /// The 99th percentile.
    pub p99: Option<Duration>,
}
