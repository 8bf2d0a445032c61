//! Bodies: [`TeeBody`], the primary's request body as the inner service reads it (copied on
//! the way through when mirrored), [`MirrorBody`], the copy a mirrored request carries, and
//! [`ResponseBody`], the primary's response body.
//!
//! A leaf: the copy is handed to a [`BodySink`], so this module knows nothing of dispatch.

mod budget;
mod payload;
mod replay;
mod response;
mod tee;

use std::sync::Arc;

pub(crate) use budget::{ByteBudget, Reservation};
pub use payload::MirrorBody;
pub(crate) use payload::Payload;
pub(crate) use replay::read_ahead;
pub use response::ResponseBody;
pub(crate) use response::Tap;
pub(crate) use tee::Tee;
pub use tee::TeeBody;

use crate::stats::SkipReason;

/// Where an async-mode body copy goes: told once, when the body has been read to its end
/// (`complete`) or when the copy is given up (`abandon`).
pub(crate) trait BodySink: Send {
    /// The whole body was read and copied.
    fn complete(self: Box<Self>, payload: Arc<Payload>);
    /// The copy was given up, for `reason`.
    fn abandon(self: Box<Self>, reason: SkipReason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::{Body, Frame};
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};
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
