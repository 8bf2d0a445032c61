//! [`ResponseFuture`]: the inner service's response, untouched.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::dispatch::CellRef;

pin_project! {
    /// The response future of [`Mirror`](crate::Mirror): resolves to exactly what the inner
    /// service returns, its body wrapped in [`ResponseBody`].
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        kind: Kind<F>,
        // The request's comparison, which gets the response once its body has streamed.
        cell: Option<CellRef>,
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
            cell: None,
        }
    }

    pub(crate) fn sync(future: Pin<Box<dyn Future<Output = F::Output> + Send>>) -> Self {
        Self {
            kind: Kind::Sync { future },
            cell: None,
        }
    }

    /// The response will be handed to `cell` for comparison.
    pub(crate) fn compared_in(mut self, cell: Option<CellRef>) -> Self {
        self.cell = cell;
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
        let cell = this.cell.take();
        Poll::Ready(result.map(|response| wrap(response, cell)))
    }
}

#[cfg(feature = "diff")]
fn wrap<B>(response: Response<B>, cell: Option<CellRef>) -> Response<ResponseBody<B>> {
    match cell {
        Some(cell) => {
            let capture = crate::body::PrimaryCapture::new(cell, &response);
            response.map(|body| ResponseBody::compared(body, capture))
        }
        None => response.map(ResponseBody::new),
    }
}

#[cfg(not(feature = "diff"))]
fn wrap<B>(response: Response<B>, _: Option<CellRef>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::new)
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
