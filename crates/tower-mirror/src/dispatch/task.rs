//! The task that sends one mirror to one target and records its outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::body::MirrorBody;
use crate::control::Tracker;
use crate::error::MirrorError;
use crate::observe::Observation;
use crate::outbound::request::{self, RequestSnapshot};
use crate::plan::{Plan, TargetRuntime};

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
    plan: Arc<Plan>,
    snapshot: Arc<RequestSnapshot>,
    body: MirrorBody,
    observations: Vec<Arc<dyn Observation>>,
) {
    let target = &*slot.target;
    let counters = &target.state.counters;
    let name = target.name();
    let Some(request) = request::build(snapshot, &target.rules, body) else {
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
    let span = tracing::debug_span!(
        "mirror",
        target = name,
        method = %request.method(),
        path = request.uri().path(),
        status = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let exchange = exchange(&*target.client, request, capture).instrument(span.clone());
    let outcome = tokio::time::timeout(plan.timeout, exchange).await;
    let (status, label) = match &outcome {
        Ok(Ok((response, _))) => (Some(response.status.as_u16()), "responded"),
        Ok(Err(_)) => (None, "failed"),
        Err(_) => (None, "timed_out"),
    };
    span.record("outcome", label);
    if let Some(status) = status {
        span.record("status", status);
    }
    // Callbacks run before the counters move, so whoever sees a count also sees its callback.
    let counter = match outcome {
        Ok(Ok((mut response, complete))) => {
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
        Ok(Err(error)) => {
            if let Some(on_error) = &plan.on_error {
                contain_panic(|| on_error(name, &error));
            }
            &counters.failed
        }
        Err(_elapsed) => {
            if let Some(on_error) = &plan.on_error {
                contain_panic(|| on_error(name, &MirrorError::timeout(plan.timeout)));
            }
            &counters.timed_out
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Runs a user callback so that its panic (reported by the panic hook as usual) cannot leave
/// the outcome uncounted.
fn contain_panic(callback: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
}
