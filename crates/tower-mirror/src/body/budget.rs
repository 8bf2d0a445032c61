//! The byte budget: a bound on request body bytes held for unfinished mirrors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Body bytes held, over all requests and targets, for mirrors that have not finished.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A share of the budget held by one request's body copy, given back when dropped.
///
/// Shared by all of the request's targets through the body copy's `Arc`, so a body mirrored
/// to four targets costs its length once.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    budget: Option<Arc<ByteBudget>>,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn new(budget: &Arc<ByteBudget>) -> Self {
        Self {
            budget: Some(Arc::clone(budget)),
            bytes: 0,
        }
    }

    /// Takes `n` more bytes from the budget; `false`, taking nothing, when they don't fit.
    pub(crate) fn try_grow(&mut self, n: usize) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let before = budget.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > budget.limit {
            budget.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_released() {
        let budget = ByteBudget::new(100);
        let mut a = Reservation::new(&budget);
        assert!(a.try_grow(60));
        let mut b = Reservation::new(&budget);
        assert!(!b.try_grow(41), "60 + 41 exceeds 100");
        assert!(b.try_grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_unbudgeted_reservation_always_fits() {
        let mut r = Reservation::default();
        assert!(r.try_grow(usize::MAX));
    }
}
