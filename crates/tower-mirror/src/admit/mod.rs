//! Admission: the steps each request passes, per target, before anything is copied:
//! eligibility (once per request) → filter → sample → limits. Each refusal is counted under
//! its own reason; a request that no target admits goes straight to the inner service.

mod eligible;
mod filter;
mod limit;
mod sample;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

pub(crate) use eligible::ineligible;
pub(crate) use filter::Filter;
pub(crate) use limit::{Limits, RateLimiter, Refused};
pub(crate) use sample::{Sampled, Sampler};

use crate::decisions::Decision;
use crate::head::RequestHead;
use crate::stats::TargetCounters;

/// One target's admission steps, as configured.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) filter: Filter,
    pub(crate) sampler: Sampler,
    pub(crate) limits: Limits,
}

/// What a target keeps across configuration replacements that leave its URL and transport
/// alone, and what a [`MirrorHandle`](crate::MirrorHandle) changes while requests run.
#[derive(Debug)]
pub(crate) struct TargetState {
    pub(crate) counters: TargetCounters,
    /// The counter sampler's next request number.
    pub(crate) position: AtomicU64,
    /// The live percentage (0 to 100).
    pub(crate) percentage: AtomicU32,
    pub(crate) paused: AtomicBool,
}

impl TargetState {
    pub(crate) fn new(percentage: u32) -> Self {
        Self {
            counters: TargetCounters::default(),
            position: AtomicU64::new(0),
            percentage: AtomicU32::new(percentage.min(100)),
            paused: AtomicBool::new(false),
        }
    }
}

impl Admission {
    /// Runs the steps for an eligible `request`, counting the outcome in `state`'s counters;
    /// `Ok` when the target takes it, else the step that refused it. A paused target takes
    /// nothing (counted as `paused`).
    #[inline]
    pub(crate) fn admit(
        &self,
        state: &TargetState,
        request: &RequestHead<'_>,
    ) -> Result<(), Decision> {
        let counters = &state.counters;
        if state.paused.load(Relaxed) {
            counters.paused.fetch_add(1, Relaxed);
            return Err(Decision::Paused);
        }
        if !self.filter.matches(request) {
            counters.filtered.fetch_add(1, Relaxed);
            return Err(Decision::Filtered);
        }
        let percentage = u64::from(state.percentage.load(Relaxed));
        match self.sampler.decide(percentage, &state.position, request) {
            Sampled::No => return Err(Decision::NotSampled),
            Sampled::Yes => {}
            Sampled::WithoutKey => {
                counters.sampled_without_key.fetch_add(1, Relaxed);
            }
        }
        counters.sampled.fetch_add(1, Relaxed);
        match self.limits.check(&counters.in_flight) {
            Ok(()) => Ok(()),
            Err(Refused::Overload) => {
                counters.dropped_overload.fetch_add(1, Relaxed);
                Err(Decision::Dropped("overload"))
            }
            Err(Refused::RateLimited) => {
                counters.dropped_rate_limited.fetch_add(1, Relaxed);
                Err(Decision::Dropped("rate_limited"))
            }
        }
    }
}
