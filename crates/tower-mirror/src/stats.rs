//! Counters of every mirror outcome, and their snapshots returned by `stats()`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Why a sampled mirror was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SkipReason {
    BodyTooLarge,
    BodyError,
    BodyUnread,
    BudgetExhausted,
    BodyTimeout,
    NoRuntime,
    PrimaryAborted,
}

impl SkipReason {
    /// The snake_case name [`SkipStats::iter`] gives it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::BodyError => "body_error",
            Self::BodyUnread => "body_unread",
            Self::BudgetExhausted => "budget_exhausted",
            Self::BodyTimeout => "body_timeout",
            Self::NoRuntime => "no_runtime",
            Self::PrimaryAborted => "primary_aborted",
        }
    }
}

/// Why a request was not considered for mirroring at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ineligible {
    Disabled,
    AlreadyMirrored,
    Connect,
    Upgrade,
    UnsupportedUri,
}

impl Ineligible {
    /// The snake_case name [`NotMirroredStats::iter`] gives it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::AlreadyMirrored => "already_mirrored",
            Self::Connect => "connect",
            Self::Upgrade => "upgrade",
            Self::UnsupportedUri => "unsupported_uri",
        }
    }
}

/// The live counters of one target.
///
/// Those the request path writes come first; those the mirror tasks write start on a cache
/// line of their own, so that tasks on other cores do not slow every request down by
/// stealing the line it writes (false sharing).
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct TargetCounters {
    pub(crate) paused: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) sampled: AtomicU64,
    pub(crate) sampled_without_key: AtomicU64,
    pub(crate) dropped_overload: AtomicU64,
    pub(crate) dropped_rate_limited: AtomicU64,
    pub(crate) dropped_no_connection: AtomicU64,
    _tasks_line: [CacheLine; 0],
    pub(crate) sent: AtomicU64,
    pub(crate) responded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    skipped: [AtomicU64; 7],
}

/// Aligns the field after it to a new cache line (128 bytes: two lines on x86, whose
/// prefetcher pairs them; one on Apple silicon).
#[derive(Debug, Default)]
#[repr(align(128))]
struct CacheLine;

impl TargetCounters {
    pub(crate) fn skip(&self, reason: SkipReason) {
        self.skipped[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, name: &str, url: &str, removed: bool) -> TargetStats {
        let skipped = |r: SkipReason| self.skipped[r as usize].load(Relaxed);
        TargetStats {
            name: name.to_owned(),
            url: url.to_owned(),
            removed,
            paused: self.paused.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            sampled: self.sampled.load(Relaxed),
            sampled_without_key: self.sampled_without_key.load(Relaxed),
            sent: self.sent.load(Relaxed),
            responded: self.responded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            dropped_overload: self.dropped_overload.load(Relaxed),
            dropped_rate_limited: self.dropped_rate_limited.load(Relaxed),
            dropped_no_connection: self.dropped_no_connection.load(Relaxed),
            // The pool's: filled in by the plan.
            connections: 0,
            in_flight: self.in_flight.load(Relaxed),
            skipped: SkipStats {
                body_too_large: skipped(SkipReason::BodyTooLarge),
                body_error: skipped(SkipReason::BodyError),
                body_unread: skipped(SkipReason::BodyUnread),
                budget_exhausted: skipped(SkipReason::BudgetExhausted),
                body_timeout: skipped(SkipReason::BodyTimeout),
                no_runtime: skipped(SkipReason::NoRuntime),
                primary_aborted: skipped(SkipReason::PrimaryAborted),
            },
        }
    }
}

/// The live counters of requests that were not considered for mirroring.
#[derive(Debug, Default)]
pub(crate) struct IneligibleCounters([AtomicU64; 5]);

impl IneligibleCounters {
    pub(crate) fn count(&self, reason: Ineligible) {
        self.0[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> NotMirroredStats {
        let get = |r: Ineligible| self.0[r as usize].load(Relaxed);
        NotMirroredStats {
            disabled: get(Ineligible::Disabled),
            already_mirrored: get(Ineligible::AlreadyMirrored),
            connect: get(Ineligible::Connect),
            upgrade: get(Ineligible::Upgrade),
            unsupported_uri: get(Ineligible::UnsupportedUri),
        }
    }
}

/// A snapshot of a layer's counters, from [`MirrorLayer::stats`](crate::MirrorLayer::stats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorStats {
    /// Per target, in the order they were configured.
    pub targets: Vec<TargetStats>,
    /// Requests that were not considered for mirroring at all, by reason. They do not advance
    /// any target's sampling.
    pub not_mirrored: NotMirroredStats,
    /// Request body bytes currently held for mirrors (bounded by
    /// [`Options::max_buffered_bytes`](crate::Options::max_buffered_bytes)).
    pub buffered_bytes: usize,
}

/// The counters of one target.
///
/// A request the layer considers ([`MirrorStats::not_mirrored`] aside) passes each target's
/// admission steps in order: its filter (else `filtered`), its sampling (else nothing is
/// counted), then its limits. Every **sampled** mirror ends in exactly one of: `sent`,
/// `dropped_overload`, `dropped_rate_limited`, `dropped_no_connection`, or one of `skipped`;
/// every sent mirror ends in exactly one of `responded`, `failed`, `timed_out` (or is still
/// `in_flight`):
///
/// ```text
/// sampled = sent + dropped_overload + dropped_rate_limited + dropped_no_connection
///         + skipped.total()
/// sent    = responded + failed + timed_out + in_flight
/// ```
///
/// (Each holds once the request bodies being copied have ended.) `filtered` counts requests
/// outside that: they were never sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TargetStats {
    /// The target's name ([`Target::with_name`](crate::Target::with_name); by default its URL).
    pub name: String,
    /// The target's URL as configured.
    pub url: String,
    /// True for a target the last [`MirrorHandle::replace`](crate::MirrorHandle::replace)
    /// removed: its counts stay readable until the next replacement.
    pub removed: bool,
    /// Requests not considered because the target was paused
    /// ([`MirrorHandle::pause`](crate::MirrorHandle::pause)). They take no sampling turn.
    pub paused: u64,
    /// Requests the target's filter turned away (methods, paths, headers, path regex). They
    /// take no sampling turn.
    pub filtered: u64,
    /// Eligible requests this target's sampling chose.
    pub sampled: u64,
    /// Of `sampled`, those a key sampler ([`Target::sample_by`](crate::Target::sample_by))
    /// found no key in, so the counter sampler chose them instead.
    pub sampled_without_key: u64,
    /// Mirrors handed to the sender.
    pub sent: u64,
    /// Mirrors that got a response (any status).
    pub responded: u64,
    /// Mirrors that failed before a complete response: connect errors, resets, bad responses.
    pub failed: u64,
    /// Mirrors whose request went out but did not complete within the timeout. (With the
    /// layer's own connection pool, one that could not even connect in time is `failed`: it
    /// never left. A [`Sender`](crate::Sender) of your own connects inside its `send`, so
    /// there a connect that takes the whole timeout counts here.)
    pub timed_out: u64,
    /// Mirrors not sent because the target already had `max_in_flight` mirrors in flight.
    pub dropped_overload: u64,
    /// Mirrors not sent because the target's rate cap
    /// ([`Target::rate_limit`](crate::Target::rate_limit)) was reached; never queued.
    pub dropped_rate_limited: u64,
    /// Mirrors not sent because no connection could take them at once: every connection
    /// (or HTTP/2 stream) busy and [`Target::max_connections`](crate::Target::max_connections)
    /// open. Never queued.
    pub dropped_no_connection: u64,
    /// Connections open to the target now, or being opened (0 with a sender of your own).
    pub connections: usize,
    /// Mirrors sent and not yet finished.
    pub in_flight: usize,
    /// Mirrors not sent, by reason.
    pub skipped: SkipStats,
}

/// Sampled mirrors that were not sent, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkipStats {
    /// The request body was over `max_body_bytes`.
    pub body_too_large: u64,
    /// Reading the request body failed.
    pub body_error: u64,
    /// The inner service dropped the request body before reading it to its end.
    pub body_unread: u64,
    /// Holding the body would have exceeded `max_buffered_bytes`.
    pub budget_exhausted: u64,
    /// Sync mode only: the body did not arrive within the timeout, so the primary went ahead
    /// without a mirror.
    pub body_timeout: u64,
    /// No Tokio runtime (with its time driver) was running to send the mirror on.
    pub no_runtime: u64,
    /// The request was abandoned before its mirror could leave: with
    /// [`Options::send_after_primary`](crate::Options::send_after_primary), the primary
    /// never answered (the client went away, or the inner service failed); in
    /// [`Mode::Sync`](crate::Mode::Sync), the request was dropped while its body was being
    /// read ahead.
    pub primary_aborted: u64,
}

impl SkipStats {
    /// Each reason with its stable, snake_case name (for metric labels).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("body_too_large", self.body_too_large),
            ("body_error", self.body_error),
            ("body_unread", self.body_unread),
            ("budget_exhausted", self.budget_exhausted),
            ("body_timeout", self.body_timeout),
            ("no_runtime", self.no_runtime),
            ("primary_aborted", self.primary_aborted),
        ]
        .into_iter()
    }

    /// All skipped mirrors.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

/// Requests that were not considered for mirroring, by reason.
///
/// A request with several reasons is counted once, under the first that applies, in the
/// order of the fields: a mirror that loops back always counts as `already_mirrored`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotMirroredStats {
    /// Requests that came while mirroring was switched off
    /// ([`MirrorHandle::disable`](crate::MirrorHandle::disable), the kill switch).
    pub disabled: u64,
    /// Requests that already carried `X-Mirrored-From` (the loop guard).
    pub already_mirrored: u64,
    /// `CONNECT` requests.
    pub connect: u64,
    /// Request targets without a path to join onto a base URL, such as `OPTIONS *`.
    pub unsupported_uri: u64,
    /// Protocol upgrades, such as WebSocket.
    pub upgrade: u64,
}

impl NotMirroredStats {
    /// Each reason with its stable, snake_case name (for metric labels).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("disabled", self.disabled),
            ("already_mirrored", self.already_mirrored),
            ("connect", self.connect),
            ("unsupported_uri", self.unsupported_uri),
            ("upgrade", self.upgrade),
        ]
        .into_iter()
    }
}

/// What [`MirrorLayer::drain`](crate::MirrorLayer::drain) left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Each target's name, with the mirrors still in flight to it.
    pub in_flight: Vec<(String, usize)>,
}

impl DrainReport {
    /// True when every mirror finished before the deadline.
    pub fn is_complete(&self) -> bool {
        self.abandoned() == 0
    }

    /// Mirrors still in flight at the deadline, over all targets.
    pub fn abandoned(&self) -> usize {
        self.in_flight.iter().map(|(_, n)| n).sum()
    }
}
