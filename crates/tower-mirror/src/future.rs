//! [`ResponseFuture`]: the inner service's response, untouched.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Method, Response, StatusCode, header};
use pin_project_lite::pin_project;

use crate::body::{ResponseBody, Tap};
use crate::dispatch::PendingMirror;
use crate::observe::{Observation, PrimaryTap};
use crate::stats::SkipReason;

pin_project! {
    /// The response future of [`Mirror`](crate::Mirror): resolves to exactly what the inner
    /// service returns, its body wrapped in [`ResponseBody`].
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        kind: Kind<F>,
        // What waits for the response, if anything: one pointer, so that a request no target
        // takes moves and drops no more than that.
        after: Option<Box<After>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F>
    where
        F: Future,
    {
        // Not mirrored, or mirrored in the background: the inner future itself.
        Direct { #[pin] future: F },
        // Sync mode: read the body ahead, wait for the mirrors, then call the inner service.
        Sync { future: Pin<Box<dyn Future<Output = F::Output> + Send>> },
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn direct(future: F) -> Self {
        Self {
            kind: Kind::Direct { future },
            after: None,
        }
    }

    pub(crate) fn sync(future: Pin<Box<dyn Future<Output = F::Output> + Send>>) -> Self {
        Self {
            kind: Kind::Sync { future },
            after: None,
        }
    }

    /// `pending` is sent when the inner service answers, skipped if it never does.
    pub(crate) fn held(mut self, pending: PendingMirror) -> Self {
        self.after.get_or_insert_with(Box::default).held = Some(pending);
        self
    }

    /// The response will be handed to these observations.
    pub(crate) fn observed(mut self, observed: Option<Observed>) -> Self {
        if let Some(observed) = observed {
            self.after.get_or_insert_with(Box::default).observed = Some(observed);
        }
        self
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(match this.kind.project() {
            KindProj::Direct { future } => future.poll(cx),
            KindProj::Sync { future } => future.as_mut().poll(cx),
        });
        let Some(mut after) = this.after.take() else {
            return Poll::Ready(result.map(|response| response.map(ResponseBody::new)));
        };
        if let Some(pending) = after.held.take() {
            match &result {
                Ok(_) => pending.send(None),
                Err(_) => pending.skip(SkipReason::PrimaryAborted),
            }
        }
        let observed = after.observed.take();
        Poll::Ready(result.map(|response| match observed {
            Some(observed) => {
                let tap = PrimaryTap::new(observed.observations, observed.started, &response);
                if bodiless(&response, observed.head) {
                    Box::new(tap).end();
                    response.map(ResponseBody::new)
                } else {
                    response.map(|body| ResponseBody::tapped(body, Box::new(tap)))
                }
            }
            None => response.map(ResponseBody::new),
        }))
    }
}

/// What waits for the primary's response.
#[derive(Default)]
struct After {
    /// Observations, which get the response once its body has streamed.
    observed: Option<Observed>,
    /// Mirrors held until the primary answers (`Options::send_after_primary`); dropped
    /// unanswered, they count themselves as skipped (`PendingMirror`'s drop).
    held: Option<PendingMirror>,
}

/// Observations waiting for the primary's response, and when its request arrived.
pub(crate) struct Observed {
    observations: Vec<Arc<dyn Observation>>,
    started: Instant,
    /// The request was `HEAD`: its response has no body, whatever its headers say.
    head: bool,
}

impl Observed {
    /// `None` when nothing observes the request.
    pub(crate) fn new(observations: &[Arc<dyn Observation>], method: &Method) -> Option<Self> {
        (!observations.is_empty()).then(|| Self {
            observations: observations.to_vec(),
            started: Instant::now(),
            head: method == Method::HEAD,
        })
    }
}

/// Whether `response` has no body by the protocol (RFC 9110 §6.4.1: a response to `HEAD`,
/// 1xx, 204, 304) or by its `Content-Length: 0`. A server sends no body for it, and need not
/// poll or even ask the body it was given, so its tap ends at once.
fn bodiless<B>(response: &Response<B>, head: bool) -> bool {
    let status = response.status();
    head || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || response
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() == b"0")
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
