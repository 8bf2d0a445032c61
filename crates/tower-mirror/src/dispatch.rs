//! Dispatch: the state shared by every clone of the layer and service, the decisions made for
//! each request (eligibility, sampling), and the task that sends one mirror and records its
//! outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{Method, Request, header};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::body::{MirrorBody, Payload};
use crate::budget::ByteBudget;
use crate::client::{Sender, ShadowBody};
use crate::error::MirrorError;
use crate::options::{ErrorCallback, Mode, SuccessCallback};
use crate::request::{self, RequestSnapshot, X_MIRRORED_FROM};
use crate::response::MirrorResponse;
use crate::sample::Sampler;
use crate::stats::{Ineligible, IneligibleCounters, SkipReason, TargetCounters};
use crate::target::{CompiledTarget, Target};

/// The most targets one layer supports: sampled targets are kept in a 64-bit set.
pub(crate) const MAX_TARGETS: usize = 64;

/// How much of a shadow response body is read so that its connection can be reused; a longer
/// body is dropped unread and its connection closed.
const DRAIN_LIMIT: usize = 1 << 20;

/// Everything the layer, its services and its mirror tasks share, in one `Arc`.
pub(crate) struct Shared {
    pub(crate) targets: Box<[TargetState]>,
    pub(crate) timeout: Duration,
    pub(crate) mode: Mode,
    pub(crate) copy_body: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) loop_guard: bool,
    pub(crate) capture_response_body: usize,
    pub(crate) budget: Arc<ByteBudget>,
    pub(crate) on_error: Option<ErrorCallback>,
    pub(crate) on_success: Option<SuccessCallback>,
    pub(crate) sender: Arc<dyn Sender>,
    pub(crate) not_mirrored: IneligibleCounters,
    /// Mirrors in flight over all targets, and a wake-up for whoever waits for them to end.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) idle: Notify,
    /// Comparisons with the primary, when a target is compared.
    #[cfg(feature = "diff")]
    pub(crate) diff: Option<Arc<crate::diff::DiffEngine>>,
}

/// One configured target with its sampling and counters.
pub(crate) struct TargetState {
    pub(crate) target: Target,
    pub(crate) compiled: CompiledTarget,
    pub(crate) sampler: Sampler,
    pub(crate) counters: TargetCounters,
}

impl Shared {
    /// Why this request must not be mirrored, if it must not.
    pub(crate) fn ineligible<B>(&self, request: &Request<B>) -> Option<Ineligible> {
        // One walk over the few header names present costs less than two hash lookups.
        let (mut mirrored, mut upgrade) = (false, false);
        for name in request.headers().keys() {
            if *name == header::UPGRADE {
                upgrade = true;
            } else if *name == X_MIRRORED_FROM {
                mirrored = true;
            }
        }
        // The loop guard first, so that a mirror of a CONNECT still counts as a mirror.
        if self.loop_guard && mirrored {
            Some(Ineligible::AlreadyMirrored)
        } else if request.method() == Method::CONNECT {
            Some(Ineligible::Connect)
        } else if !request.uri().path().starts_with('/') {
            Some(Ineligible::UnsupportedUri)
        } else if upgrade {
            Some(Ineligible::Upgrade)
        } else {
            None
        }
    }

    /// Advances every target's sampling by one request and returns the targets that take it.
    ///
    /// A target already at `max_in_flight` is counted as dropped here, before any work is
    /// spent on copying the request for it.
    pub(crate) fn sample(&self) -> TargetSet {
        let mut chosen = TargetSet::default();
        for (index, state) in self.targets.iter().enumerate() {
            if !state.sampler.sample() {
                continue;
            }
            let counters = &state.counters;
            counters.sampled.fetch_add(1, Ordering::Relaxed);
            if counters.in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
                counters.dropped_overload.fetch_add(1, Ordering::Relaxed);
            } else {
                chosen.insert(index);
            }
        }
        chosen
    }
}

/// A set of target indexes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TargetSet(u64);

impl TargetSet {
    fn insert(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let index = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(index)
        })
    }
}

/// Mirrors decided for one request, waiting for its body.
pub(crate) struct PendingMirror {
    shared: Arc<Shared>,
    targets: TargetSet,
    snapshot: Arc<RequestSnapshot>,
    /// The request's comparison, for the targets that take part in it.
    #[cfg_attr(not(feature = "diff"), allow(dead_code))]
    cell: Option<CellRef>,
}

impl PendingMirror {
    pub(crate) fn new(shared: Arc<Shared>, targets: TargetSet, snapshot: RequestSnapshot) -> Self {
        Self {
            shared,
            targets,
            snapshot: Arc::new(snapshot),
            cell: None,
        }
    }

    /// Gives the targets that take part in comparisons a share of `cell`.
    #[cfg(feature = "diff")]
    pub(crate) fn compared_in(mut self, cell: CellRef) -> Self {
        self.cell = Some(cell);
        self
    }

    /// The chosen targets.
    #[cfg(feature = "diff")]
    pub(crate) fn targets(&self) -> impl Iterator<Item = usize> {
        self.targets.iter()
    }

    /// Counts every chosen target as skipped.
    pub(crate) fn skip(self, reason: SkipReason) {
        for index in self.targets.iter() {
            self.shared.targets[index].counters.skip(reason);
        }
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

    #[cfg(feature = "diff")]
    fn cell_for(&self, index: usize) -> Option<CellRef> {
        self.cell
            .as_ref()
            .filter(|cell| cell.engine().takes_part(index))
            .cloned()
    }

    #[cfg(not(feature = "diff"))]
    fn cell_for(&self, _: usize) -> Option<CellRef> {
        None
    }

    fn spawn_each(self, payload: Option<Arc<Payload>>, mut spawned: impl FnMut(JoinHandle<()>)) {
        let Some(runtime) = runtime() else {
            self.skip(SkipReason::NoRuntime);
            return;
        };
        for index in self.targets.iter() {
            let counters = &self.shared.targets[index].counters;
            let Some(slot) = InFlight::acquire(&self.shared, index) else {
                counters.dropped_overload.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counters.sent.fetch_add(1, Ordering::Relaxed);
            let body = payload
                .clone()
                .map_or_else(MirrorBody::empty, MirrorBody::from_payload);
            let snapshot = Arc::clone(&self.snapshot);
            let cell = self.cell_for(index);
            spawned(runtime.spawn(mirror_one(slot, snapshot, body, cell)));
        }
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

/// A place among a target's `max_in_flight`, given back when dropped.
struct InFlight {
    shared: Arc<Shared>,
    index: usize,
}

impl InFlight {
    fn acquire(shared: &Arc<Shared>, index: usize) -> Option<Self> {
        let counter = &shared.targets[index].counters.in_flight;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < shared.max_in_flight).then_some(n + 1)
            })
            .ok()?;
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Self {
            shared: Arc::clone(shared),
            index,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.targets[self.index]
            .counters
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
        if shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.idle.notify_waiters();
        }
    }
}

/// Sends one mirror, records its outcome and tells the callbacks.
async fn mirror_one(
    slot: InFlight,
    snapshot: Arc<RequestSnapshot>,
    body: MirrorBody,
    cell: Option<CellRef>,
) {
    let shared = &*slot.shared;
    let state = &shared.targets[slot.index];
    let counters = &state.counters;
    let Some(request) = request::build(snapshot, &state.compiled, body) else {
        // `ineligible` lets only origin-form paths through, so this is a request target that
        // fits a URI but not with the base's path in front of it.
        if let Some(on_error) = &shared.on_error {
            contain_panic(|| on_error(&state.target.url, &MirrorError::uri()));
        }
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };

    let capture = shared
        .capture_response_body
        .max(cell.as_ref().map_or(0, cell_capture));
    let outcome = tokio::time::timeout(shared.timeout, exchange(shared, request, capture)).await;
    let url = state.target.url.as_str();
    // Callbacks run before the counters move, so whoever sees a count also sees its callback.
    let counter = match outcome {
        Ok(Ok((mut response, complete))) => {
            if let Some(cell) = &cell {
                give_to_cell(cell, slot.index, &response, complete);
            }
            // The user gets only the bytes they asked for, whatever the comparison kept.
            let wanted = shared.capture_response_body.min(response.body.len());
            response.body.truncate(wanted);
            if let Some(on_success) = &shared.on_success {
                contain_panic(|| on_success(url, &response));
            }
            &counters.responded
        }
        Ok(Err(error)) => {
            if let Some(on_error) = &shared.on_error {
                contain_panic(|| on_error(url, &error));
            }
            &counters.failed
        }
        Err(_elapsed) => {
            if let Some(on_error) = &shared.on_error {
                contain_panic(|| on_error(url, &MirrorError::timeout(shared.timeout)));
            }
            &counters.timed_out
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The comparison's share of one request, held by the mirror tasks that take part in it.
#[cfg(feature = "diff")]
pub(crate) type CellRef = Arc<crate::diff::DiffCell>;
/// Without the `diff` feature there is no comparison to take part in.
#[cfg(not(feature = "diff"))]
pub(crate) type CellRef = std::convert::Infallible;

#[cfg(feature = "diff")]
fn cell_capture(cell: &CellRef) -> usize {
    cell.engine().max_body_bytes()
}

#[cfg(not(feature = "diff"))]
fn cell_capture(cell: &CellRef) -> usize {
    match *cell {}
}

#[cfg(feature = "diff")]
fn give_to_cell(cell: &CellRef, index: usize, response: &MirrorResponse, complete: bool) {
    cell.shadow(
        index,
        response.status,
        response.headers.clone(),
        response.body.clone(),
        complete,
        response.latency,
    );
}

#[cfg(not(feature = "diff"))]
fn give_to_cell(cell: &CellRef, _: usize, _: &MirrorResponse, _: bool) {
    match *cell {}
}

/// Runs a user callback so that its panic (reported by the panic hook as usual) cannot leave
/// the outcome uncounted.
fn contain_panic(callback: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
}

/// One exchange: send, receive the head, read the body, keeping its first `capture` bytes;
/// also says whether the whole body fit in them.
async fn exchange(
    shared: &Shared,
    request: Request<MirrorBody>,
    capture: usize,
) -> Result<(MirrorResponse, bool), MirrorError> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let response = shared
        .sender
        .send(request)
        .await
        .map_err(MirrorError::from_send)?;
    let latency = started.elapsed();
    let (parts, body) = response.into_parts();
    let (body, complete) = drain(body, capture)
        .await
        .map_err(MirrorError::response_body)?;
    let response = MirrorResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        method,
        uri,
        latency,
        body: body.freeze(),
    };
    Ok((response, complete))
}

/// Reads a response body so its connection can be reused, keeping its first `capture`
/// bytes; says whether the whole body fit in them.
async fn drain(
    mut body: ShadowBody,
    capture: usize,
) -> Result<(BytesMut, bool), crate::error::BoxError> {
    let mut captured = BytesMut::new();
    let mut read = 0usize;
    let limit = DRAIN_LIMIT.max(capture);
    while read < limit {
        let Some(frame) = body.frame().await.transpose()? else {
            return Ok((captured, read <= capture));
        };
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            let room = capture.saturating_sub(captured.len());
            captured.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    Ok((captured, false))
}
