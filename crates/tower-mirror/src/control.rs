//! [`Control`]: the one cell every clone of a layer, its services and its handle share — the
//! current plan (swappable while requests run), the kill switch, the count of mirrors in
//! flight over every plan, and the counts of requests not mirrored at all.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::client::HttpSender;
use crate::config::Options;
use crate::error::ConfigError;
use crate::plan::Plan;
use crate::stats::DrainReport;
use crate::stats::{IneligibleCounters, MirrorStats};

/// Shared by a layer, its services, its handles and its mirror tasks.
pub(crate) struct Control {
    /// Loaded once per request: one atomic load, no lock.
    pub(crate) plan: ArcSwap<Plan>,
    /// The kill switch: one relaxed load per request.
    pub(crate) enabled: AtomicBool,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) not_mirrored: IneligibleCounters,
    /// The client used when `Options::sender` is `None`: one for the layer's life, so that a
    /// replacement keeps its connection pools.
    default_client: OnceLock<HttpSender>,
    /// Replacements one at a time (never taken on the request path).
    replacing: Mutex<()>,
}

impl Control {
    pub(crate) fn new(options: Options) -> Result<Self, ConfigError> {
        let default_client = OnceLock::new();
        let plan = Plan::compile(options, None, || default(&default_client))?;
        Ok(Self {
            plan: ArcSwap::from_pointee(plan),
            enabled: AtomicBool::new(true),
            tracker: Arc::default(),
            not_mirrored: IneligibleCounters::default(),
            default_client,
            replacing: Mutex::new(()),
        })
    }

    pub(crate) fn stats(&self) -> MirrorStats {
        self.plan.load().stats(self.not_mirrored.snapshot())
    }

    /// Compiles `options` against the current plan and swaps it in; see
    /// [`MirrorHandle::replace`](crate::MirrorHandle::replace).
    pub(crate) fn replace(&self, options: Options) -> Result<Changes, ConfigError> {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.plan.load_full();
        let new = Plan::compile(options, Some(&old), || default(&self.default_client))?;
        let name_in = |plan: &Plan, name: &str| plan.target(name).is_some();
        let changes = Changes {
            added: new
                .targets
                .iter()
                .filter(|t| !name_in(&old, t.name()))
                .map(|t| t.name().to_owned())
                .collect(),
            removed: old
                .targets
                .iter()
                .filter(|t| !name_in(&new, t.name()))
                .map(|t| t.name().to_owned())
                .collect(),
            changed: new
                .targets
                .iter()
                .filter(|t| old.target(t.name()).is_some_and(|o| o.spec != t.spec))
                .map(|t| t.name().to_owned())
                .collect(),
        };
        self.plan.store(Arc::new(new));
        Ok(changes)
    }

    /// Waits until no mirror is in flight, for at most `timeout`.
    pub(crate) async fn drain(&self, timeout: Duration) -> DrainReport {
        let _ = tokio::time::timeout(timeout, self.tracker.idle()).await;
        let plan = self.plan.load();
        DrainReport {
            in_flight: plan
                .targets
                .iter()
                .chain(plan.retired.iter())
                .map(|t| {
                    let n = t.state.counters.in_flight.load(Ordering::Acquire);
                    (t.name().to_owned(), n)
                })
                .collect(),
        }
    }
}

fn default(cell: &OnceLock<HttpSender>) -> HttpSender {
    cell.get_or_init(HttpSender::new).clone()
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

/// What a [`MirrorHandle::replace`](crate::MirrorHandle::replace) changed, by target name, each list in configuration
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// Targets the new configuration adds.
    pub added: Vec<String>,
    /// Targets it removes.
    pub removed: Vec<String>,
    /// Targets it keeps with a different setting.
    pub changed: Vec<String>,
}
