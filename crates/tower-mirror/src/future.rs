//! [`ResponseFuture`]: the inner service's response, untouched.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::Response;
use pin_project_lite::pin_project;

use crate::body::{PrimaryTap, ResponseBody};
use crate::observe::Observation;

pin_project! {
    /// The response future of [`Mirror`](crate::Mirror): resolves to exactly what the inner
    /// service returns, its body wrapped in [`ResponseBody`].
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        kind: Kind<F>,
        // The request's observations, which get the response once its body has streamed.
        observed: Option<Box<Observed>>,
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
            observed: None,
        }
    }

    pub(crate) fn sync(future: Pin<Box<dyn Future<Output = F::Output> + Send>>) -> Self {
        Self {
            kind: Kind::Sync { future },
            observed: None,
        }
    }

    /// The response will be handed to these observations.
    pub(crate) fn observed(mut self, observed: Option<Box<Observed>>) -> Self {
        self.observed = observed;
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
        let observed = this.observed.take();
        Poll::Ready(result.map(|response| match observed {
            Some(observed) => {
                let tap = PrimaryTap::new(observed.observations, observed.started, &response);
                response.map(|body| ResponseBody::tapped(body, tap))
            }
            None => response.map(ResponseBody::new),
        }))
    }
}

/// Observations waiting for the primary's response, and when its request arrived.
pub(crate) struct Observed {
    observations: Vec<Arc<dyn Observation>>,
    started: Instant,
}

impl Observed {
    /// `None` when nothing observes the request.
    pub(crate) fn new(observations: &[Arc<dyn Observation>]) -> Option<Box<Self>> {
        (!observations.is_empty()).then(|| {
            Box::new(Self {
                observations: observations.to_vec(),
                started: Instant::now(),
            })
        })
    }
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
