//! Sync mode's read-ahead: the body is read before the inner service sees it, and replayed
//! to it afterwards.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http_body::{Body, Frame};

use super::budget::Reservation;
use super::payload::Payload;
use super::tee::{State, TeeBody};
use crate::stats::SkipReason;

/// Sync mode's read-ahead: frames the inner service has not seen yet.
pub(super) struct Replay<E> {
    pub(super) frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    pub(super) buffered: u64,
    /// An error the original body returned after `frames`.
    pub(super) error: Option<E>,
    /// The original body has nothing more to give: don't poll it again.
    pub(super) ended: bool,
}

/// Reads `body` ahead for a sync-mode mirror, up to `limit` bytes and until `deadline` at the
/// latest (the request's whole sync-mode deadline, which the mirrors then share).
///
/// Returns the body for the inner service, which replays what was read and then continues
/// with the rest, and the copy to mirror, or why there is none. The time bound matters for
/// streaming requests whose client waits for an answer before it ends the body.
pub(crate) async fn read_ahead<B>(
    mut body: B,
    limit: usize,
    mut reservation: Reservation,
    deadline: tokio::time::Instant,
) -> (TeeBody<B>, Result<Arc<Payload>, SkipReason>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut deadline = std::pin::pin!(tokio::time::sleep_until(deadline));
    let mut frames = VecDeque::new();
    let mut chunks = Vec::new();
    let mut len = 0usize;
    let mut error = None;
    let mut ended = false;
    let outcome = loop {
        if body.is_end_stream() {
            ended = true;
            break Ok(());
        }
        let next = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => deadline.as_mut().poll(cx).map(|()| None),
        });
        let Some(frame) = next.await else {
            break Err(SkipReason::BodyTimeout);
        };
        let frame = match frame {
            None => {
                ended = true;
                break Ok(());
            }
            Some(Err(e)) => {
                error = Some(e);
                break Err(SkipReason::BodyError);
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            len = len.saturating_add(data.len());
            let over = if len > limit {
                Some(SkipReason::BodyTooLarge)
            } else if !reservation.try_grow(data.len()) {
                Some(SkipReason::BudgetExhausted)
            } else {
                if !data.is_empty() {
                    chunks.push(data.clone());
                }
                None
            };
            if let Some(reason) = over {
                frames.push_back(frame);
                break Err(reason);
            }
        }
        frames.push_back(frame);
    };
    let buffered = frames
        .iter()
        .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
        .sum();
    let body = TeeBody::with_state(
        body,
        State::Replay(Box::new(Replay {
            frames,
            buffered,
            error,
            ended,
        })),
    );
    let payload = outcome.map(|()| {
        Arc::new(Payload {
            chunks,
            len: len as u64,
            _reservation: reservation,
        })
    });
    (body, payload)
}
