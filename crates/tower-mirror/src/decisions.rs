//! [`Decisions`]: what the layer decided for one request, per target, for a caller that asks
//! (an access log, say).

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::stats::{Ineligible, SkipReason};

/// What the layer decided for one request, per target: a handle the caller puts in the
/// request's extensions before the layer sees it, and reads once the response is done.
///
/// ```
/// use tower_mirror::Decisions;
///
/// let decisions = Decisions::new();
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(decisions.clone());
/// // ... the request goes through a `Mirror` service; then:
/// for (target, decision) in decisions.targets() {
///     println!("{target}: {}", decision.label());
/// }
/// ```
///
/// Without one in the extensions the layer records nothing and costs nothing more. With
/// one, each decision is a short lock of a mutex that only this request's tasks share.
/// A decision can change after the response: a chosen mirror is sent or dropped when the
/// request body has been read (and, for a bodiless request, once the inner service has
/// answered), so read it once the response body has ended. Targets are listed in
/// configuration order, by [`Target::name`](crate::Target::name); a request the layer did
/// not consider at all lists none and says why in [`not_mirrored`](Self::not_mirrored).
#[derive(Clone, Default)]
pub struct Decisions(Arc<Mutex<Recorded>>);

#[derive(Default)]
struct Recorded {
    not_mirrored: Option<&'static str>,
    targets: Vec<(String, Decision)>,
}

/// One target's decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The target is paused.
    Paused,
    /// The target's filter (methods, paths, headers) left the request out.
    Filtered,
    /// The target's sampling did not choose the request.
    NotSampled,
    /// Chosen, and waiting for the request body (or the inner service's answer).
    Chosen,
    /// Chosen, then dropped by a limit: `overload`, `rate_limited` or `no_connection`, the
    /// reasons of [`TargetStats`](crate::TargetStats)' `dropped_*` counters.
    Dropped(&'static str),
    /// Chosen, then not sent because of the request or its body: one of the reasons of
    /// [`SkipStats`](crate::SkipStats), such as `body_too_large` or `budget_exhausted`.
    Skipped(&'static str),
    /// The mirror was sent.
    Sent,
}

impl Decision {
    /// A stable snake_case label: `paused`, `filtered`, `not_sampled`, `chosen`, `dropped`,
    /// `skipped` or `sent` (the reason of a drop or skip is [`reason`](Self::reason)).
    pub fn label(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Filtered => "filtered",
            Self::NotSampled => "not_sampled",
            Self::Chosen => "chosen",
            Self::Dropped(_) => "dropped",
            Self::Skipped(_) => "skipped",
            Self::Sent => "sent",
        }
    }

    /// Why a mirror was dropped or skipped; `None` for the other decisions.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Dropped(reason) | Self::Skipped(reason) => Some(reason),
            _ => None,
        }
    }
}

impl Decisions {
    /// An empty record, to insert in a request's extensions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Why the layer considered no target for the request (`disabled`, `already_mirrored`,
    /// `connect`, `upgrade` or `unsupported_uri`, as in
    /// [`NotMirroredStats`](crate::NotMirroredStats)); `None` when it did consider them.
    pub fn not_mirrored(&self) -> Option<&'static str> {
        self.lock().not_mirrored
    }

    /// Each target considered, by name, with its decision so far, in configuration order.
    pub fn targets(&self) -> Vec<(String, Decision)> {
        self.lock().targets.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic elsewhere while holding it leaves plain data: still readable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn ineligible(&self, reason: Ineligible) {
        self.lock().not_mirrored = Some(reason.label());
    }

    /// Records `decision` for `target`, replacing an earlier one.
    pub(crate) fn set(&self, target: &str, decision: Decision) {
        let mut recorded = self.lock();
        match recorded.targets.iter_mut().find(|(name, _)| name == target) {
            Some((_, old)) => *old = decision,
            None => recorded.targets.push((target.to_owned(), decision)),
        }
    }

    pub(crate) fn skipped(&self, target: &str, reason: SkipReason) {
        self.set(target, Decision::Skipped(reason.label()));
    }
}

impl fmt::Debug for Decisions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recorded = self.lock();
        f.debug_struct("Decisions")
            .field("not_mirrored", &recorded.not_mirrored)
            .field("targets", &recorded.targets)
            .finish()
    }
}
