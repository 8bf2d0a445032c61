//! Deterministic, evenly spread percentage sampling, one counter per target.

use std::sync::atomic::{AtomicU64, Ordering};

/// Decides which requests a target receives.
///
/// Request number `n` (counting from 0) is chosen when `⌊(n+1)·p/100⌋ > ⌊n·p/100⌋`: the
/// chosen requests are spread like the steps of a line drawn with Bresenham's algorithm, so
/// any 100 consecutive requests contain exactly `p` chosen ones and 50 % is every other request.
#[derive(Debug)]
pub(crate) struct Sampler {
    percentage: u64,
    counter: AtomicU64,
}

impl Sampler {
    pub(crate) fn new(percentage: u32) -> Self {
        Self {
            percentage: u64::from(percentage.min(100)),
            counter: AtomicU64::new(0),
        }
    }

    /// Takes the next request number and says whether that request is mirrored.
    #[inline]
    pub(crate) fn sample(&self) -> bool {
        match self.percentage {
            0 => false,
            100 => true,
            p => is_chosen(self.counter.fetch_add(1, Ordering::Relaxed), p),
        }
    }
}

#[inline]
fn is_chosen(n: u64, percentage: u64) -> bool {
    // The pattern repeats every 100 requests, so reducing first avoids overflow.
    let n = n % 100;
    (n + 1) * percentage / 100 > n * percentage / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: u32, count: usize) -> Vec<bool> {
        let s = Sampler::new(p);
        (0..count).map(|_| s.sample()).collect()
    }

    #[test]
    fn every_window_of_100_has_exactly_p() {
        for p in 0..=100 {
            let picks = pattern(p, 400);
            for start in 0..300 {
                let n = picks[start..start + 100].iter().filter(|&&b| b).count();
                assert_eq!(n, p as usize, "p={p} window at {start}");
            }
        }
    }

    #[test]
    fn fifty_percent_is_every_other_request() {
        let picks = pattern(50, 10);
        assert_eq!(
            picks,
            [
                false, true, false, true, false, true, false, true, false, true
            ]
        );
    }

    #[test]
    fn ten_percent_is_every_tenth_request() {
        let picks = pattern(10, 30);
        let chosen: Vec<usize> = (0..30).filter(|&i| picks[i]).collect();
        assert_eq!(chosen, [9, 19, 29]);
    }

    #[test]
    fn counter_wrap_does_not_panic() {
        let s = Sampler::new(37);
        s.counter.store(u64::MAX - 1, Ordering::Relaxed);
        for _ in 0..4 {
            s.sample();
        }
    }
}
