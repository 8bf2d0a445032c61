//! Bodies: [`TeeBody`], the primary's body as the inner service reads it (copied on the way
//! through when mirrored), and [`MirrorBody`], the copy a mirrored request carries.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::budget::Reservation;
use crate::dispatch::PendingMirror;
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

enum State<E> {
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

pin_project! {
    /// The primary's response body, as the layer returns it: exactly the inner service's
    /// frames.
    ///
    /// When the request is compared with a shadow's (feature `diff`), its first bytes are also
    /// kept, as reference-counted clones while they stream to the client, and handed to the
    /// comparison once the body has ended.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        capture: Option<Box<PrimaryCapture>>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            capture: None,
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

    #[cfg(feature = "diff")]
    pub(crate) fn compared(inner: B, capture: PrimaryCapture) -> Self {
        Self {
            inner,
            capture: Some(Box::new(capture)),
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
        if let Some(capture) = this.capture.as_mut() {
            let finished = match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        capture.push(data);
                    }
                    this.inner.is_end_stream()
                }
                // A failed body is not compared: drop the capture unreported.
                Some(Err(_)) => {
                    *this.capture = None;
                    false
                }
                None => true,
            };
            if finished {
                if let Some(capture) = this.capture.take() {
                    capture.finish();
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("compared", &self.capture.is_some())
            .finish()
    }
}

/// The primary response kept for a comparison (feature `diff`).
#[cfg(feature = "diff")]
pub(crate) struct PrimaryCapture {
    cell: std::sync::Arc<crate::diff::DiffCell>,
    status: http::StatusCode,
    headers: http::HeaderMap,
    latency: std::time::Duration,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
}

#[cfg(feature = "diff")]
impl PrimaryCapture {
    pub(crate) fn new<B>(
        cell: std::sync::Arc<crate::diff::DiffCell>,
        response: &http::Response<B>,
    ) -> Self {
        Self {
            limit: cell.engine().max_body_bytes(),
            latency: cell.elapsed(),
            status: response.status(),
            headers: response.headers().clone(),
            cell,
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, data: &Bytes) {
        self.len = self.len.saturating_add(data.len());
        if self.len <= self.limit && !data.is_empty() {
            self.chunks.push(data.clone());
        } else if self.len > self.limit {
            // Over the cap the body will not be compared: keep nothing more.
            self.chunks = Vec::new();
        }
    }

    fn finish(self) {
        let complete = self.len <= self.limit;
        self.cell.primary(
            self.status,
            self.headers,
            self.chunks,
            complete,
            self.latency,
        );
    }
}

/// Without the `diff` feature nothing is ever captured.
#[cfg(not(feature = "diff"))]
pub(crate) enum PrimaryCapture {}

#[cfg(not(feature = "diff"))]
impl PrimaryCapture {
    fn push(&mut self, _: &Bytes) {
        match *self {}
    }

    fn finish(self) {
        match self {}
    }
}

/// Async mode's copy of a body in flight to the inner service.
pub(crate) struct Tee {
    /// `Some` until the mirrors are sent or given up.
    pending: Option<PendingMirror>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    reservation: Reservation,
}

impl Tee {
    pub(crate) fn new(pending: PendingMirror, limit: usize, reservation: Reservation) -> Self {
        Self {
            pending: Some(pending),
            chunks: Vec::new(),
            len: 0,
            limit,
            reservation,
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.pending.is_none() {
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
        if let Some(pending) = self.pending.take() {
            let payload = Payload {
                chunks: std::mem::take(&mut self.chunks),
                len: self.len as u64,
                _reservation: std::mem::take(&mut self.reservation),
            };
            pending.send(Some(Arc::new(payload)));
        }
    }

    fn abandon(&mut self, reason: SkipReason) {
        if let Some(pending) = self.pending.take() {
            pending.skip(reason);
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

/// Sync mode's read-ahead: frames the inner service has not seen yet.
struct Replay<E> {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    buffered: u64,
    /// An error the original body returned after `frames`.
    error: Option<E>,
    /// The original body has nothing more to give: don't poll it again.
    ended: bool,
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
    let body = TeeBody {
        inner: body,
        state: State::Replay(Box::new(Replay {
            frames,
            buffered,
            error,
            ended,
        })),
    };
    let payload = outcome.map(|()| {
        Arc::new(Payload {
            chunks,
            len: len as u64,
            _reservation: reservation,
        })
    });
    (body, payload)
}

/// A request body's bytes, held once for all of the request's mirrors.
#[derive(Debug)]
pub(crate) struct Payload {
    chunks: Vec<Bytes>,
    len: u64,
    _reservation: Reservation,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ByteBudget;
    use http_body_util::BodyExt;
    use std::time::Duration;

    /// A deadline the read-ahead tests never reach.
    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(10)
    }

    type TestFrame = Result<Frame<Bytes>, std::io::Error>;

    /// A body that yields a fixed list of frames.
    struct FrameList(VecDeque<TestFrame>);

    impl Body for FrameList {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn stream(frames: Vec<TestFrame>) -> FrameList {
        FrameList(frames.into())
    }

    fn data(s: &'static str) -> TestFrame {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn mirror_body_yields_its_chunks_with_exact_size() {
        let body = MirrorBody::from(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let empty = MirrorBody::empty();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn read_ahead_replays_everything_in_order() {
        let budget = ByteBudget::new(1024);
        let original = stream(vec![data("ab"), data("cd"), data("ef")]);
        let (body, payload) = read_ahead(original, 1024, Reservation::new(&budget), soon()).await;
        let payload = payload.unwrap();
        assert_eq!(payload.len, 6);
        assert_eq!(budget.used(), 6);
        let replayed = body.collect().await.unwrap().to_bytes();
        assert_eq!(&replayed[..], b"abcdef");
        let mirrored = MirrorBody::from_payload(payload)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&mirrored[..], b"abcdef");
    }

    #[tokio::test]
    async fn read_ahead_over_the_limit_forwards_the_rest_intact() {
        let budget = ByteBudget::new(1024);
        let original = stream(vec![data("abc"), data("def"), data("ghi")]);
        let (body, payload) = read_ahead(original, 4, Reservation::new(&budget), soon()).await;
        assert_eq!(payload.unwrap_err(), SkipReason::BodyTooLarge);
        assert_eq!(budget.used(), 0, "a skipped copy holds no budget");
        let replayed = body.collect().await.unwrap().to_bytes();
        assert_eq!(&replayed[..], b"abcdefghi");
    }

    #[tokio::test]
    async fn read_ahead_replays_an_error_after_the_data() {
        let budget = ByteBudget::new(1024);
        let failure = Err(std::io::Error::other("boom"));
        let original = stream(vec![data("ab"), failure, data("never")]);
        let (mut body, payload) =
            read_ahead(original, 1024, Reservation::new(&budget), soon()).await;
        assert_eq!(payload.unwrap_err(), SkipReason::BodyError);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn read_ahead_keeps_trailers() {
        let budget = ByteBudget::new(1024);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        let original = stream(vec![data("ab"), Ok(Frame::trailers(trailers))]);
        let (body, payload) = read_ahead(original, 1024, Reservation::new(&budget), soon()).await;
        assert_eq!(payload.unwrap().len, 2);
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "1");
        assert_eq!(&collected.to_bytes()[..], b"ab");
    }

    /// Yields one chunk, then nothing until the end of time.
    struct Stalled(bool);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_ahead_gives_up_on_a_body_that_stalls_and_keeps_what_it_read() {
        let budget = ByteBudget::new(1024);
        let patience = Duration::from_secs(3);
        let started = tokio::time::Instant::now();
        let (mut body, payload) = read_ahead(
            Stalled(false),
            1024,
            Reservation::new(&budget),
            tokio::time::Instant::now() + patience,
        )
        .await;
        assert_eq!(started.elapsed(), patience);
        assert_eq!(payload.unwrap_err(), SkipReason::BodyTimeout);
        assert_eq!(budget.used(), 0);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        assert!(
            !body.is_end_stream(),
            "the rest still comes from the original body"
        );
    }

    #[tokio::test]
    async fn read_ahead_over_the_budget_is_skipped() {
        let budget = ByteBudget::new(3);
        let original = stream(vec![data("ab"), data("cd")]);
        let (body, payload) = read_ahead(original, 1024, Reservation::new(&budget), soon()).await;
        assert_eq!(payload.unwrap_err(), SkipReason::BudgetExhausted);
        assert_eq!(budget.used(), 0);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcd");
    }
}
