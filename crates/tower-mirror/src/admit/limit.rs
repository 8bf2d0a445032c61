//! A target's limits: mirrors in flight, and its rate cap. Both drop, never wait: a mirror
//! that does not fit is counted and forgotten (`tower::limit::RateLimit` waits in
//! `poll_ready`, which would hold the primary up).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::target::RateLimit;

/// Why a limit refused a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_in_flight` mirrors were in flight already.
    Overload,
    /// The rate cap was reached.
    RateLimited,
}

/// A target's limits.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) max_in_flight: usize,
    /// Shared with the next plan when a replacement keeps the same cap, so the bucket's
    /// state carries over.
    pub(crate) rate: Option<Arc<RateLimiter>>,
}

impl Limits {
    pub(crate) fn new(max_in_flight: usize, rate: Option<Arc<RateLimiter>>) -> Self {
        Self {
            max_in_flight,
            rate,
        }
    }

    /// Checks the limits for one more mirror, in flight count first (so a mirror dropped for
    /// overload spends no token).
    #[inline]
    pub(crate) fn check(&self, in_flight: &AtomicUsize) -> Result<(), Refused> {
        if in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
            return Err(Refused::Overload);
        }
        match &self.rate {
            Some(rate) if !rate.try_acquire() => Err(Refused::RateLimited),
            _ => Ok(()),
        }
    }
}

/// A lock-free token bucket, as the generic cell rate algorithm (GCRA): one atomic holds the
/// theoretical arrival time of the next mirror, in nanoseconds since the limiter was made.
/// A mirror at time `t` fits when that time is at most `burst - 1` intervals ahead of `t`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    origin: Instant,
    /// Nanoseconds between two mirrors at the steady rate.
    interval: u64,
    /// How far ahead of now the next arrival time may run: `(burst - 1) × interval`.
    tolerance: u64,
    next: AtomicU64,
}

impl RateLimiter {
    /// A limiter for `limit`, with a burst of one second's worth (at least one mirror).
    /// `None` when the count or period is zero.
    pub(crate) fn new(limit: RateLimit) -> Option<Self> {
        if limit.count() == 0 || limit.per().is_zero() {
            return None;
        }
        let per = u64::try_from(limit.per().as_nanos()).unwrap_or(u64::MAX);
        // At most a year between mirrors: beyond that the arithmetic below could overflow,
        // and "once a year" is as good as "once ever" for a process.
        let interval = (per / u64::from(limit.count())).clamp(1, YEAR_NS);
        let burst = (Duration::from_secs(1).as_nanos() as u64 / interval).max(1);
        Some(Self {
            origin: Instant::now(),
            interval,
            tolerance: (burst - 1) * interval,
            next: AtomicU64::new(0),
        })
    }

    fn try_acquire(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.try_acquire_at(now)
    }

    /// Takes a token at `now` (nanoseconds since the origin), if there is one.
    fn try_acquire_at(&self, now: u64) -> bool {
        self.next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                let next = next.max(now);
                (next - now <= self.tolerance).then(|| next.saturating_add(self.interval))
            })
            .is_ok()
    }
}

/// A year in nanoseconds: the longest interval between two mirrors a cap can ask for.
const YEAR_NS: u64 = 365 * 24 * 3600 * 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let limiter = RateLimiter::new(RateLimit::per_second(50)).unwrap();
        // 1000 attempts a second for 3 seconds, on a synthetic clock.
        let mut granted = 0;
        for ms in 0..3000u64 {
            if limiter.try_acquire_at(ms * SECOND / 1000) {
                granted += 1;
            }
        }
        // 50 at once, then one every 20 ms: 50 + 149 more before 3 s.
        assert_eq!(granted, 50 + 149);
    }

    #[test]
    fn a_quiet_spell_refills_at_most_one_second() {
        let limiter = RateLimiter::new(RateLimit::per_second(10)).unwrap();
        let burst = |at: u64| (0..100).filter(|_| limiter.try_acquire_at(at)).count();
        assert_eq!(burst(0), 10);
        assert_eq!(
            burst(60 * SECOND),
            10,
            "a minute of quiet still gives one second's worth"
        );
        assert_eq!(burst(60 * SECOND + SECOND / 10), 1);
    }

    #[test]
    fn slow_rates_burst_one() {
        let limiter = RateLimiter::new(RateLimit::new(2, Duration::from_secs(60))).unwrap();
        assert!(limiter.try_acquire_at(0));
        assert!(!limiter.try_acquire_at(SECOND));
        assert!(limiter.try_acquire_at(30 * SECOND));
        assert!(RateLimiter::new(RateLimit::per_second(0)).is_none());
    }

    #[test]
    fn the_longest_periods_neither_panic_nor_stop_limiting() {
        for limit in [
            RateLimit::new(1, Duration::MAX),
            RateLimit::new(1, Duration::from_secs(u64::MAX / 4)),
        ] {
            let limiter = RateLimiter::new(limit).unwrap();
            assert!(limiter.try_acquire_at(0));
            assert!(!limiter.try_acquire_at(SECOND));
            assert!(
                !limiter.try_acquire_at(YEAR_NS / 2),
                "still limited half a year on"
            );
            assert!(
                limiter.try_acquire_at(u64::MAX / 2),
                "no overflow centuries later"
            );
            assert!(!limiter.try_acquire_at(u64::MAX / 2 + SECOND));
        }
    }

    #[test]
    fn in_flight_is_checked_before_the_rate() {
        let limits = Limits::new(1, RateLimiter::new(RateLimit::per_second(1)).map(Arc::new));
        let in_flight = AtomicUsize::new(1);
        assert_eq!(limits.check(&in_flight), Err(Refused::Overload));
        in_flight.store(0, Ordering::Relaxed);
        assert_eq!(
            limits.check(&in_flight),
            Ok(()),
            "the overload spent no token"
        );
        assert_eq!(limits.check(&in_flight), Err(Refused::RateLimited));
    }
}
