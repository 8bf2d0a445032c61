//! [`Control`]: the one cell every clone of a layer and its services shares — the current
//! plan (swappable while requests run), the count of mirrors in flight over every plan, and
//! the counts of requests not mirrored at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::plan::Plan;
use crate::stats::{IneligibleCounters, MirrorStats};

/// Shared by a layer, its services and its mirror tasks.
pub(crate) struct Control {
    /// Loaded once per request: one atomic load, no lock.
    pub(crate) plan: ArcSwap<Plan>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) not_mirrored: IneligibleCounters,
}

impl Control {
    pub(crate) fn new(plan: Plan) -> Self {
        Self {
            plan: ArcSwap::from_pointee(plan),
            tracker: Arc::default(),
            not_mirrored: IneligibleCounters::default(),
        }
    }

    pub(crate) fn stats(&self) -> MirrorStats {
        self.plan.load().stats(self.not_mirrored.snapshot())
    }
}

/// Mirrors in flight over all targets and plans, and a wake-up for whoever waits for them to
/// end (a drain).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    pub(crate) fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn finish(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Resolves when no mirror is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a wake-up between the two is not lost.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}
