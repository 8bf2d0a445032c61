//! [`ResponseBody`]: the primary's response body, with an optional [`Tap`] that sees its data
//! as it streams and its end (the observers' tap lives in `crate::observe`).

use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What a [`ResponseBody`] reports to: each data chunk (reference-counted clones), then its
/// end. Not told when the body fails.
pub(crate) trait Tap: Send {
    /// A data chunk, as it goes to the client.
    fn data(&mut self, data: &Bytes);
    /// The body has ended.
    fn end(self: Box<Self>);
}

pin_project! {
    /// The primary's response body, as the layer returns it: exactly the inner service's
    /// frames.
    ///
    /// When the request is observed (compared with a shadow's, say), its first bytes are also
    /// kept, as reference-counted clones while they stream to the client, and handed to the
    /// observations once the body has ended.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        // A lock only so that `is_end_stream(&self)` can end it (uncontended: one atomic
        // operation, and `poll_frame` reaches it with `get_mut`, none).
        tap: Mutex<Option<Box<dyn Tap>>>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            tap: Mutex::new(None),
        }
    }

    /// The inner service's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner service's body, unwrapped.
    pub fn into_inner(self) -> B {
        self.inner
    }

    pub(crate) fn tapped(inner: B, tap: Box<dyn Tap>) -> Self {
        Self {
            inner,
            tap: Mutex::new(Some(tap)),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        let tap_slot = this.tap.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(tap) = tap_slot.as_mut() {
            let finished = match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        tap.data(data);
                    }
                    this.inner.is_end_stream()
                }
                // A failed body is not observed: drop the tap unreported.
                Some(Err(_)) => {
                    *tap_slot = None;
                    false
                }
                None => true,
            };
            if finished && let Some(tap) = tap_slot.take() {
                tap.end();
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        // A body at its end from the start (204, 304, HEAD, an empty one) is never polled by
        // hyper's servers, which ask this instead: it has streamed, so the tap ends here.
        if end
            && let Ok(mut tap) = self.tap.try_lock()
            && let Some(tap) = tap.take()
        {
            tap.end();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field(
                "observed",
                &self.tap.try_lock().map_or(true, |tap| tap.is_some()),
            )
            .finish()
    }
}
