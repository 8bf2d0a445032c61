//! [`TeeBody`]: the request body handed to the inner service, copied on the way through when
//! mirrored in async mode, or replayed after a sync-mode read-ahead.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::BodySink;
use super::budget::Reservation;
use super::payload::Payload;
use super::replay::Replay;
use crate::stats::SkipReason;

pin_project! {
    /// The request body handed to the inner service.
    ///
    /// It yields exactly the frames of the original body, as they arrive. When the request is
    /// mirrored in [`Mode::Async`](crate::Mode::Async), the data is copied on the way through
    /// (reference-counted [`Bytes`] clones, no byte copies) and the mirrors are sent once the
    /// inner service has read the body to its end. In [`Mode::Sync`](crate::Mode::Sync) it
    /// first replays the frames that were read ahead for the mirrors, then continues with the
    /// rest of the original body.
    pub struct TeeBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        state: State<B::Error>,
    }
}

pub(super) enum State<E> {
    /// Nothing to do but forward.
    Plain,
    /// Async mode: copy data as it passes, send the mirrors at the end.
    Tee(Box<Tee>),
    /// Sync mode: frames read ahead of the inner service.
    Replay(Box<Replay<E>>),
}

impl<B: Body> TeeBody<B> {
    pub(crate) fn plain(inner: B) -> Self {
        Self {
            inner,
            state: State::Plain,
        }
    }

    pub(crate) fn tee(inner: B, tee: Tee) -> Self {
        Self {
            inner,
            state: State::Tee(Box::new(tee)),
        }
    }
}

impl<B> Body for TeeBody<B>
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
        if let State::Replay(replay) = this.state {
            if let Some(frame) = replay.frames.pop_front() {
                if let Some(data) = frame.data_ref() {
                    replay.buffered -= data.len() as u64;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if let Some(error) = replay.error.take() {
                replay.ended = true;
                return Poll::Ready(Some(Err(error)));
            }
            if replay.ended {
                return Poll::Ready(None);
            }
            *this.state = State::Plain;
        }

        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        if let State::Tee(tee) = this.state {
            let finished = match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        tee.push(data);
                    }
                    // Readers may stop at `is_end_stream` without polling for the end.
                    this.inner.is_end_stream()
                }
                Some(Err(_)) => {
                    tee.abandon(SkipReason::BodyError);
                    true
                }
                None => true,
            };
            if finished {
                tee.finish();
                *this.state = State::Plain;
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Replay(replay) => {
                replay.frames.is_empty()
                    && (replay.ended || (replay.error.is_none() && self.inner.is_end_stream()))
            }
            _ => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Replay(replay) if replay.ended => SizeHint::with_exact(replay.buffered),
            State::Replay(replay) if replay.error.is_some() => {
                let mut hint = SizeHint::new();
                hint.set_lower(replay.buffered);
                hint
            }
            State::Replay(replay) => {
                let inner = self.inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(replay.buffered));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(replay.buffered));
                }
                hint
            }
            _ => self.inner.size_hint(),
        }
    }
}

impl<B> fmt::Debug for TeeBody<B>
where
    B: Body + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Plain => "plain",
            State::Tee(_) => "tee",
            State::Replay(_) => "replay",
        };
        f.debug_struct("TeeBody")
            .field("inner", &self.inner)
            .field("state", &state)
            .finish()
    }
}

impl<B: Body> TeeBody<B> {
    pub(super) fn with_state(inner: B, state: State<B::Error>) -> Self {
        Self { inner, state }
    }
}

/// Async mode's copy of a body in flight to the inner service.
pub(crate) struct Tee {
    /// `Some` until the copy is handed over or given up.
    sink: Option<Box<dyn BodySink>>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    reservation: Reservation,
}

impl Tee {
    pub(crate) fn new(sink: Box<dyn BodySink>, limit: usize, reservation: Reservation) -> Self {
        Self {
            sink: Some(sink),
            chunks: Vec::new(),
            len: 0,
            limit,
            reservation,
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.sink.is_none() {
            return;
        }
        self.len = self.len.saturating_add(data.len());
        if self.len > self.limit {
            self.abandon(SkipReason::BodyTooLarge);
        } else if !self.reservation.try_grow(data.len()) {
            self.abandon(SkipReason::BudgetExhausted);
        } else if !data.is_empty() {
            self.chunks.push(data.clone());
        }
    }

    fn finish(&mut self) {
        if let Some(sink) = self.sink.take() {
            let payload = Payload {
                chunks: std::mem::take(&mut self.chunks),
                len: self.len as u64,
                _reservation: std::mem::take(&mut self.reservation),
            };
            sink.complete(Arc::new(payload));
        }
    }

    fn abandon(&mut self, reason: SkipReason) {
        if let Some(sink) = self.sink.take() {
            sink.abandon(reason);
            // Give the bytes and the budget back now, not when the primary finishes.
            self.chunks = Vec::new();
            self.reservation = Reservation::default();
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Still pending here means the inner service let go of the body before its end.
        self.abandon(SkipReason::BodyUnread);
    }
}
