//! [`MirrorBody`]: the copy of a request body that mirrored requests carry, and the
//! [`Payload`] its bytes are held in once for all targets.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::budget::Reservation;

/// A request body's bytes, held once for all of the request's mirrors.
#[derive(Debug)]
pub(crate) struct Payload {
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) len: u64,
    pub(crate) _reservation: Reservation,
}

/// The body of a mirrored request: the original body's bytes, shared by every target's copy.
///
/// Cloning one is cheap: the chunks are reference-counted.
#[derive(Clone, Debug, Default)]
pub struct MirrorBody {
    payload: Option<Arc<Payload>>,
    next: usize,
    remaining: u64,
}

impl MirrorBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Self::default()
    }

    pub(crate) fn from_payload(payload: Arc<Payload>) -> Self {
        Self {
            remaining: payload.len,
            payload: Some(payload),
            next: 0,
        }
    }

    /// Its bytes, in the chunks they came in (all of them, whatever has been sent).
    pub(crate) fn chunks(&self) -> &[Bytes] {
        self.payload.as_ref().map_or(&[], |p| &p.chunks[..])
    }

    /// The number of bytes still to be sent.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// True when there are no bytes left to send.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl From<Bytes> for MirrorBody {
    fn from(bytes: Bytes) -> Self {
        let len = bytes.len() as u64;
        let chunks = if bytes.is_empty() {
            Vec::new()
        } else {
            vec![bytes]
        };
        Self::from_payload(Arc::new(Payload {
            chunks,
            len,
            _reservation: Reservation::default(),
        }))
    }
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let Some(chunk) = this.payload.as_ref().and_then(|p| p.chunks.get(this.next)) else {
            return Poll::Ready(None);
        };
        let chunk = chunk.clone();
        this.next += 1;
        this.remaining -= chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
