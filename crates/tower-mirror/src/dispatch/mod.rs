//! Dispatch: the mirrors decided for one request, sent once its body is known — one task per
//! chosen target, each holding its target and the plan it started under.

mod exchange;
mod task;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use std::time::SystemTime;

use crate::body::{BodySink, MirrorBody, Payload};
use crate::client::Reservation;
use crate::control::Tracker;
use crate::decisions::{Decision, Decisions};
use crate::observe::Observation;
use crate::outbound::request::RequestSnapshot;
use crate::plan::{Plan, TargetRuntime};
use crate::sink::{Record, ResponseJoin};
use crate::stats::SkipReason;

use task::{InFlight, mirror_one};

/// Mirrors decided for one request, waiting for its body.
///
/// Every sampled mirror ends counted: sent, dropped or skipped. One dropped before either
/// (the request was abandoned: a sync-mode read-ahead or a held mirror whose client went
/// away) counts as skipped, `primary_aborted`.
pub(crate) struct PendingMirror {
    plan: Arc<Plan>,
    tracker: Arc<Tracker>,
    targets: Vec<Arc<TargetRuntime>>,
    /// The sampling key of `targets[i]` for its records, at `i` (shorter when the last
    /// targets have none).
    keys: Vec<Option<Vec<u8>>>,
    snapshot: Arc<RequestSnapshot>,
    observations: Vec<Arc<dyn Observation>>,
    /// Where records that keep the primary's response wait for it (one of `observations`).
    join: Option<Arc<ResponseJoin>>,
    /// The caller's record of this request's decisions, if it asked for one.
    decisions: Option<Decisions>,
    /// Sent or skipped: nothing left to count when dropped.
    settled: bool,
}

impl PendingMirror {
    // One request's parts, each needed to dispatch it; called from one place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: Arc<Plan>,
        tracker: Arc<Tracker>,
        targets: Vec<Arc<TargetRuntime>>,
        keys: Vec<Option<Vec<u8>>>,
        snapshot: RequestSnapshot,
        observations: Vec<Arc<dyn Observation>>,
        join: Option<Arc<ResponseJoin>>,
        decisions: Option<Decisions>,
    ) -> Self {
        Self {
            plan,
            tracker,
            targets,
            keys,
            snapshot: Arc::new(snapshot),
            observations,
            join,
            decisions,
            settled: false,
        }
    }

    /// Records `decision` for `target` in the caller's record, if there is one.
    fn decide(&self, target: &TargetRuntime, decision: Decision) {
        if let Some(decisions) = &self.decisions {
            decisions.set(target.name(), decision);
        }
    }

    /// Counts every chosen target as skipped.
    pub(crate) fn skip(mut self, reason: SkipReason) {
        self.count_skipped(reason);
    }

    fn count_skipped(&mut self, reason: SkipReason) {
        for target in &self.targets {
            target.state.counters.skip(reason);
            if let Some(decisions) = &self.decisions {
                decisions.skipped(target.name(), reason);
            }
        }
        self.settled = true;
    }

    /// Sends the mirrors in the background, one task per chosen target that still has room.
    pub(crate) fn send(self, payload: Option<Arc<Payload>>) {
        self.spawn_each(payload, drop);
    }

    /// Like [`send`](Self::send), returning the tasks so that a sync-mode request can wait
    /// for them.
    pub(crate) fn send_and_track(self, payload: Option<Arc<Payload>>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        self.spawn_each(payload, |task| tasks.push(task));
        tasks
    }

    fn spawn_each(
        mut self,
        payload: Option<Arc<Payload>>,
        mut spawned: impl FnMut(JoinHandle<()>),
    ) {
        let Some(runtime) = runtime() else {
            self.count_skipped(SkipReason::NoRuntime);
            return;
        };
        self.settled = true;
        for (index, target) in self.targets.iter().enumerate() {
            let counters = &target.state.counters;
            let Some(slot) = InFlight::acquire(target, &self.tracker) else {
                counters
                    .dropped_overload
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.decide(target, Decision::Dropped("overload"));
                continue;
            };
            // Only a mirror that can be written at once is sent: no queue behind a busy pool.
            let Some(reservation) = target.client.reserve() else {
                drop(slot);
                counters
                    .dropped_no_connection
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.decide(target, Decision::Dropped("no_connection"));
                continue;
            };
            counters
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.decide(target, Decision::Sent);
            let outbound = match reservation {
                Reservation::Send(outbound) => outbound,
                Reservation::Sink(sink) => {
                    let record = Record {
                        time: SystemTime::now(),
                        id: crate::sink::next_id(),
                        snapshot: Arc::clone(&self.snapshot),
                        body: payload.clone(),
                        response: None,
                        redact: target.spec.redact.clone(),
                        key: self.keys.get_mut(index).and_then(Option::take),
                        settle: Box::new(slot),
                    };
                    match &self.join {
                        Some(join) if target.spec.record.response => join.hold(sink, record),
                        _ => {
                            if !crate::sink::deliver(&*sink, record) {
                                self.decide(target, Decision::Dropped("overload"));
                            }
                        }
                    }
                    continue;
                }
            };
            let body = payload
                .clone()
                .map_or_else(MirrorBody::empty, MirrorBody::from_payload);
            let observations = self
                .observations
                .iter()
                .filter(|o| o.wants(&target.spec))
                .cloned()
                .collect();
            spawned(runtime.spawn(mirror_one(
                slot,
                outbound,
                Arc::clone(&self.plan),
                Arc::clone(&self.snapshot),
                body,
                observations,
            )));
        }
    }
}

impl Drop for PendingMirror {
    fn drop(&mut self) {
        if !self.settled {
            self.count_skipped(SkipReason::PrimaryAborted);
        }
    }
}

impl BodySink for PendingMirror {
    fn complete(self: Box<Self>, payload: Arc<Payload>) {
        self.send(Some(payload));
    }

    fn abandon(self: Box<Self>, reason: SkipReason) {
        self.skip(reason);
    }
}

/// The Tokio runtime to send mirrors on, if one is running and has its time driver (each
/// mirror's timeout needs it). Never panics: without them, mirrors are skipped and counted.
pub(crate) fn runtime() -> Option<tokio::runtime::Handle> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    // Tokio offers no query for the time driver; creating a timer is the test, and it panics
    // (reported by the panic hook) only on a runtime built without `enable_time`.
    let timers = std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
    timers.is_ok().then_some(handle)
}
