//! Admission: the steps each request passes, per target, before anything is copied:
//! eligibility (once per request) → filter → sample → limits. Each refusal is counted under
//! its own reason; a request that no target admits goes straight to the inner service.

mod eligible;
mod filter;
mod limit;
mod sample;

use std::sync::atomic::Ordering::Relaxed;

pub(crate) use eligible::ineligible;
pub(crate) use filter::Filter;
pub(crate) use limit::{Limits, RateLimiter, Refused};
pub(crate) use sample::{Sampled, Sampler};

use crate::head::RequestHead;
use crate::stats::TargetCounters;

/// One target's admission steps.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) filter: Filter,
    pub(crate) sampler: Sampler,
    pub(crate) limits: Limits,
}

impl Admission {
    /// Runs the steps for an eligible `request`, counting the outcome in `counters`; true when
    /// the target takes it.
    #[inline]
    pub(crate) fn admit(&self, counters: &TargetCounters, request: &RequestHead<'_>) -> bool {
        if !self.filter.matches(request) {
            counters.filtered.fetch_add(1, Relaxed);
            return false;
        }
        match self.sampler.decide(request) {
            Sampled::No => return false,
            Sampled::Yes => {}
            Sampled::WithoutKey => {
                counters.sampled_without_key.fetch_add(1, Relaxed);
            }
        }
        counters.sampled.fetch_add(1, Relaxed);
        match self.limits.check(&counters.in_flight) {
            Ok(()) => true,
            Err(Refused::Overload) => {
                counters.dropped_overload.fetch_add(1, Relaxed);
                false
            }
            Err(Refused::RateLimited) => {
                counters.dropped_rate_limited.fetch_add(1, Relaxed);
                false
            }
        }
    }
}
