//! [`ResponseFuture`]: the inner service's response, untouched.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The response future of [`Mirror`](crate::Mirror): resolves to exactly what the inner
    /// service returns.
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        kind: Kind<F>,
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
        }
    }

    pub(crate) fn sync(future: Pin<Box<dyn Future<Output = F::Output> + Send>>) -> Self {
        Self {
            kind: Kind::Sync { future },
        }
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project().kind.project() {
            KindProj::Direct { future } => future.poll(cx),
            KindProj::Sync { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
