//! The task that sends one mirror to one target and records its outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;

use crate::body::MirrorBody;
use crate::client::Outbound;
use crate::control::Tracker;
use crate::error::MirrorError;
use crate::observe::Observation;
use crate::outbound::request::{self, RequestSnapshot};
use crate::plan::{Plan, TargetRuntime};
use crate::redact::Redacted;
use crate::response::MirrorResponse;

use super::exchange::exchange;
use tracing::Instrument;

/// A place among a target's `max_in_flight`, given back when dropped.
pub(super) struct InFlight {
    target: Arc<TargetRuntime>,
    tracker: Arc<Tracker>,
}

impl InFlight {
    pub(super) fn acquire(target: &Arc<TargetRuntime>, tracker: &Arc<Tracker>) -> Option<Self> {
        let max = target.admission.limits.max_in_flight;
        target
            .state
            .counters
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        tracker.start();
        Some(Self {
            target: Arc::clone(target),
            tracker: Arc::clone(tracker),
        })
    }
}

/// A record's place: counted `responded` once written, `failed` if writing failed.
impl crate::sink::Settle for InFlight {
    fn settle(self: Box<Self>, written: bool) {
        let counters = &self.target.state.counters;
        let counter = if written {
            &counters.responded
        } else {
            &counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(self: Box<Self>) {
        let counters = &self.target.state.counters;
        counters.sent.fetch_sub(1, Ordering::Relaxed);
        counters.dropped_overload.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target
            .state
            .counters
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
        self.tracker.finish();
    }
}

/// Sends one mirror, records its outcome, tells the callbacks and observations.
pub(super) async fn mirror_one(
    slot: InFlight,
    outbound: Outbound,
    plan: Arc<Plan>,
    snapshot: Arc<RequestSnapshot>,
    body: MirrorBody,
    observations: Vec<Arc<dyn Observation>>,
) {
    let target = &*slot.target;
    let counters = &target.state.counters;
    let name = target.name();
    let redact = target.spec.redact.as_ref();
    // The body first, so that the request is built with the redacted body's length.
    let body = match redact.map(|r| r.body(snapshot.headers(), body.chunks())) {
        None | Some(Redacted::Keep) => body,
        Some(Redacted::Replace(bytes)) => MirrorBody::from(bytes),
        Some(Redacted::Withhold) => MirrorBody::empty(),
    };
    let built = target.rules.as_ref().and_then(|rules| {
        let mut request = request::build(snapshot, rules, body)?;
        if let Some(redact) = redact {
            // The original's values only: a header the target itself sets is its own.
            let set = |name: &http::HeaderName| rules.set_headers.iter().any(|(n, _)| n == name);
            redact.headers_except(request.headers_mut(), set);
            if let Some(uri) = redact.uri(request.uri()) {
                *request.uri_mut() = uri;
            }
        }
        Some(request)
    });
    let Some(request) = built else {
        // Eligibility lets only origin-form paths through, so this is a request target that
        // fits a URI but not with the base's path in front of it, or a rewrite gone wrong.
        if let Some(on_error) = &plan.on_error {
            contain_panic(|| on_error(name, &MirrorError::uri()));
        }
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };

    let capture = observations
        .iter()
        .map(|o| o.body_limit())
        .fold(plan.capture_response_body, usize::max);
    // One span per exchange, at debug: nothing but a level check when no one listens.
    // Field names follow OpenTelemetry's HTTP semantic conventions; `mirror.*` are ours.
    let span = tracing::debug_span!(
        "mirror",
        mirror.target = name,
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = %crate::route::template(request.uri().path()),
        http.response.status_code = tracing::field::Empty,
        mirror.outcome = tracing::field::Empty,
    );
    let outcome = send(outbound, request, plan.timeout, capture)
        .instrument(span.clone())
        .await;
    let (status, label) = match &outcome {
        Ok((response, _)) => (Some(response.status.as_u16()), "responded"),
        Err(error) if error.is_timeout() => (None, "timed_out"),
        Err(_) => (None, "failed"),
    };
    span.record("mirror.outcome", label);
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    // Callbacks run before the counters move, so whoever sees a count also sees its callback.
    let counter = match outcome {
        Ok((mut response, complete)) => {
            for observation in &observations {
                contain_panic(|| observation.shadow(&target.spec, &response, complete));
            }
            // The user gets only the bytes they asked for, whatever the observers kept.
            let wanted = plan.capture_response_body.min(response.body.len());
            response.body.truncate(wanted);
            if let Some(on_success) = &plan.on_success {
                contain_panic(|| on_success(name, &response));
            }
            &counters.responded
        }
        Err(error) => {
            if let Some(on_error) = &plan.on_error {
                contain_panic(|| on_error(name, &error));
            }
            if error.is_timeout() {
                &counters.timed_out
            } else {
                &counters.failed
            }
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sends `request` over `outbound` and reads the response, all within `timeout`.
///
/// With the layer's pool, a connection that cannot be opened in time is a connect error,
/// not a timeout: the request never went out. An error after it went out carries the time
/// since.
async fn send(
    outbound: Outbound,
    request: Request<MirrorBody>,
    timeout: Duration,
    capture: usize,
) -> Result<(MirrorResponse, bool), MirrorError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let method = request.method().clone();
    let uri = request.uri().clone();
    let sending = match outbound {
        Outbound::Custom(sender) => sender.send(request),
        Outbound::Pooled(lease) => match tokio::time::timeout_at(deadline, lease.connect()).await {
            Ok(Ok(ready)) => ready.send(request),
            Ok(Err(error)) => return Err(MirrorError::connect(error)),
            Err(_elapsed) => return Err(MirrorError::connect_timeout(timeout)),
        },
    };
    let went_out = Instant::now();
    match tokio::time::timeout_at(deadline, exchange(sending, method, uri, capture)).await {
        Ok(Ok(exchanged)) => Ok(exchanged),
        Ok(Err(error)) => Err(error.after(went_out.elapsed())),
        Err(_elapsed) => Err(MirrorError::timeout(timeout).after(went_out.elapsed())),
    }
}

/// Runs a user callback so that its panic (reported by the panic hook as usual) cannot leave
/// the outcome uncounted.
fn contain_panic(callback: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
}
