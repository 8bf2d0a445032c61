//! [`Mirror`]: the service that decides, per request, whether and how to mirror it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::admit::ineligible;
use crate::body::{Reservation, ResponseBody, Tee, TeeBody, read_ahead};
use crate::config::Mode;
use crate::control::Control;
use crate::decisions::{Decision, Decisions};
use crate::dispatch::{PendingMirror, runtime};
use crate::future::{Observed, ResponseFuture};
use crate::head::RequestHead;
use crate::observe::Observation;
use crate::outbound::request::RequestSnapshot;
use crate::plan::Plan;
use crate::sink::ResponseJoin;
use crate::stats::{Ineligible, MirrorStats, SkipReason};
use std::sync::atomic::Ordering::Relaxed;

/// Mirrors requests to shadow targets, then hands them, untouched, to the inner service.
///
/// Built by [`MirrorLayer`](crate::MirrorLayer). The inner service receives the same method,
/// URI, version, headers, extensions and body bytes; its body type is wrapped in [`TeeBody`],
/// which yields the original frames as they arrive. Errors are the inner service's own.
pub struct Mirror<S> {
    inner: S,
    control: Arc<Control>,
}

impl<S> Mirror<S> {
    pub(crate) fn new(inner: S, control: Arc<Control>) -> Self {
        Self { inner, control }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the mirror, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A snapshot of the counters shared with the layer that built this service.
    pub fn stats(&self) -> MirrorStats {
        self.control.stats()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Mirror<S>
where
    S: Service<Request<TeeBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let control = &*self.control;
        // Only a caller that asked for them (an access log) pays for the decisions.
        let decisions = request.extensions().get::<Decisions>().cloned();
        if !control.enabled.load(Relaxed) {
            control.not_mirrored.count(Ineligible::Disabled);
            if let Some(decisions) = &decisions {
                decisions.ineligible(Ineligible::Disabled);
            }
            return self.forward(request);
        }
        let plan = control.plan.load();
        let head = RequestHead::of(&request);
        if let Some(reason) = ineligible(&head, plan.loop_guard) {
            control.not_mirrored.count(reason);
            if let Some(decisions) = &decisions {
                decisions.ineligible(reason);
            }
            return self.forward(request);
        }
        // No allocation unless a target takes the request.
        let mut chosen = Vec::new();
        // The sampling keys of the chosen targets that key their records by it (Kafka), by
        // position in `chosen`; empty (no allocation) when there are none.
        let mut keys = Vec::new();
        for target in plan.targets.iter() {
            let admitted = target.admission.admit(&target.state, &head);
            if let Some(decisions) = &decisions {
                decisions.set(target.name(), admitted.err().unwrap_or(Decision::Chosen));
            }
            if admitted.is_ok() {
                if let Some(key) = target.record_key(&head) {
                    keys.resize(chosen.len(), None);
                    keys.push(Some(key));
                }
                chosen.push(Arc::clone(target));
            }
        }
        if chosen.is_empty() {
            return self.forward(request);
        }
        let mut observations: Vec<Arc<dyn Observation>> = if plan.observers.is_empty() {
            Vec::new()
        } else {
            let specs: Vec<_> = chosen.iter().map(|t| &t.spec).collect();
            plan.observers
                .iter()
                .filter_map(|observer| observer.observe(&head, &specs))
                .collect()
        };
        let join = if plan.records_responses {
            ResponseJoin::for_targets(chosen.iter().map(|t| &t.spec))
        } else {
            None
        };
        if let Some(join) = &join {
            observations.push(Arc::clone(join) as Arc<dyn Observation>);
        }
        let observed = Observed::new(&observations, head.method());
        let plan: Arc<Plan> = arc_swap::Guard::into_inner(plan);
        let pending = PendingMirror::new(
            Arc::clone(&plan),
            Arc::clone(&control.tracker),
            chosen,
            keys,
            RequestSnapshot::capture(&request),
            observations,
            join,
            decisions,
        );
        let future = match plan.mode {
            Mode::Async => self.mirror_async(&plan, request, pending),
            Mode::Sync => self.mirror_sync(plan, request, pending),
        };
        future.observed(observed)
    }
}

impl<S> Mirror<S> {
    fn forward<B>(&mut self, request: Request<B>) -> ResponseFuture<S::Future>
    where
        S: Service<Request<TeeBody<B>>>,
        B: Body,
    {
        ResponseFuture::direct(self.inner.call(request.map(TeeBody::plain)))
    }

    /// Sends the mirrors in the background: at once when there is no body to copy, otherwise
    /// once the inner service has read the body through the tee.
    fn mirror_async<B>(
        &mut self,
        plan: &Plan,
        request: Request<B>,
        pending: PendingMirror,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<TeeBody<B>>>,
        B: Body<Data = Bytes>,
    {
        let body = request.body();
        if !plan.copy_body || body.is_end_stream() {
            if plan.send_after_primary {
                return self.forward(request).held(pending);
            }
            pending.send(None);
            return self.forward(request);
        }
        if body.size_hint().lower() > plan.max_body_bytes as u64 {
            pending.skip(SkipReason::BodyTooLarge);
            return self.forward(request);
        }
        let tee = Tee::new(
            Box::new(pending),
            plan.max_body_bytes,
            Reservation::new(&plan.budget),
        );
        ResponseFuture::direct(self.inner.call(request.map(|body| TeeBody::tee(body, tee))))
    }

    /// Reads the body ahead, sends the mirrors, waits for them, and only then calls the inner
    /// service: all within one timeout from the request's arrival.
    fn mirror_sync<B>(
        &mut self,
        plan: Arc<Plan>,
        request: Request<B>,
        pending: PendingMirror,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<TeeBody<B>>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Send + 'static,
    {
        // The ready service goes with the future; this clone waits for the next poll_ready.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        ResponseFuture::sync(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + plan.timeout;
            let (parts, body) = request.into_parts();
            let (body, mirrors) = if runtime().is_none() {
                pending.skip(SkipReason::NoRuntime);
                (TeeBody::plain(body), Vec::new())
            } else if !plan.copy_body || body.is_end_stream() {
                (TeeBody::plain(body), pending.send_and_track(None))
            } else if body.size_hint().lower() > plan.max_body_bytes as u64 {
                pending.skip(SkipReason::BodyTooLarge);
                (TeeBody::plain(body), Vec::new())
            } else {
                let reservation = Reservation::new(&plan.budget);
                let (body, payload) =
                    read_ahead(body, plan.max_body_bytes, reservation, deadline).await;
                let mirrors = match payload {
                    Ok(payload) => pending.send_and_track(Some(payload)),
                    Err(reason) => {
                        pending.skip(reason);
                        Vec::new()
                    }
                };
                (body, mirrors)
            };
            drop(plan);
            // Reading ahead and the mirrors share one timeout, so that it bounds the latency
            // added to the primary. A mirror still running then goes on in the background and
            // ends within its own timeout (dropping its handle does not cancel it).
            if !mirrors.is_empty() {
                let all = async {
                    for mirror in mirrors {
                        let _ = mirror.await;
                    }
                };
                let _ = tokio::time::timeout_at(deadline, all).await;
            }
            inner.call(Request::from_parts(parts, body)).await
        }))
    }
}

impl<S: Clone> Clone for Mirror<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            control: Arc::clone(&self.control),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Mirror<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
