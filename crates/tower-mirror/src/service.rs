//! [`Mirror`]: the service that decides, per request, whether and how to mirror it.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::{ResponseBody, Tee, TeeBody, read_ahead};
use crate::budget::Reservation;
use crate::dispatch::{CellRef, PendingMirror, Shared, runtime};
use crate::future::ResponseFuture;
use crate::options::Mode;
use crate::request::RequestSnapshot;
use crate::stats::{MirrorStats, SkipReason};

/// Mirrors requests to shadow targets, then hands them, untouched, to the inner service.
///
/// Built by [`MirrorLayer`](crate::MirrorLayer). The inner service receives the same method,
/// URI, version, headers, extensions and body bytes; its body type is wrapped in [`TeeBody`],
/// which yields the original frames as they arrive. Errors are the inner service's own.
pub struct Mirror<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Mirror<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
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
        self.shared.stats()
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
        let shared = &self.shared;
        if let Some(reason) = shared.ineligible(&request) {
            shared.not_mirrored.count(reason);
            return self.forward(request);
        }
        let targets = shared.sample();
        if targets.is_empty() {
            return self.forward(request);
        }
        let pending = PendingMirror::new(
            Arc::clone(shared),
            targets,
            RequestSnapshot::capture(&request),
        );
        let (pending, cell) = compare(shared, pending, &request);
        let future = match shared.mode {
            Mode::Async => self.mirror_async(request, pending),
            Mode::Sync => self.mirror_sync(request, pending),
        };
        future.compared_in(cell)
    }
}

/// Opens the request's comparison when a chosen target is compared (or the baseline).
#[cfg(feature = "diff")]
fn compare<B>(
    shared: &Shared,
    pending: PendingMirror,
    request: &Request<B>,
) -> (PendingMirror, Option<CellRef>) {
    let Some(engine) = &shared.diff else {
        return (pending, None);
    };
    if !pending.targets().any(|index| engine.takes_part(index)) {
        return (pending, None);
    }
    let cell = crate::diff::DiffCell::new(Arc::clone(engine), request.method(), request.uri());
    (pending.compared_in(Arc::clone(&cell)), Some(cell))
}

#[cfg(not(feature = "diff"))]
fn compare<B>(
    _: &Shared,
    pending: PendingMirror,
    _: &Request<B>,
) -> (PendingMirror, Option<CellRef>) {
    (pending, None)
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
        request: Request<B>,
        pending: PendingMirror,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<TeeBody<B>>>,
        B: Body<Data = Bytes>,
    {
        let shared = &self.shared;
        let body = request.body();
        if !shared.copy_body || body.is_end_stream() {
            pending.send(None);
            return self.forward(request);
        }
        if body.size_hint().lower() > shared.max_body_bytes as u64 {
            pending.skip(SkipReason::BodyTooLarge);
            return self.forward(request);
        }
        let tee = Tee::new(
            pending,
            shared.max_body_bytes,
            Reservation::new(&shared.budget),
        );
        ResponseFuture::direct(self.inner.call(request.map(|body| TeeBody::tee(body, tee))))
    }

    /// Reads the body ahead, sends the mirrors, waits for them, and only then calls the inner
    /// service: all within one timeout from the request's arrival.
    fn mirror_sync<B>(
        &mut self,
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
        let shared = Arc::clone(&self.shared);
        ResponseFuture::sync(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + shared.timeout;
            let (parts, body) = request.into_parts();
            let (body, mirrors) = if runtime().is_none() {
                pending.skip(SkipReason::NoRuntime);
                (TeeBody::plain(body), Vec::new())
            } else if !shared.copy_body || body.is_end_stream() {
                (TeeBody::plain(body), pending.send_and_track(None))
            } else if body.size_hint().lower() > shared.max_body_bytes as u64 {
                pending.skip(SkipReason::BodyTooLarge);
                (TeeBody::plain(body), Vec::new())
            } else {
                let reservation = Reservation::new(&shared.budget);
                let (body, payload) =
                    read_ahead(body, shared.max_body_bytes, reservation, deadline).await;
                let mirrors = match payload {
                    Ok(payload) => pending.send_and_track(Some(payload)),
                    Err(reason) => {
                        pending.skip(reason);
                        Vec::new()
                    }
                };
                (body, mirrors)
            };
            drop(shared);
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
            shared: Arc::clone(&self.shared),
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
