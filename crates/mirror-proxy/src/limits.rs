//! Inbound limits that hyper does not enforce itself: a connection with no traffic (idle),
//! a response the client stops reading (send stall), and a request body that stops arriving
//! (body stall). Each is a deadline re-armed by progress, so a slow but moving transfer is
//! never cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::telemetry::Rejection;

/// What an upgraded connection (WebSocket and friends) takes with it when hyper hands it
/// over: its place among `--max-connections`, and the activity its idle and send deadlines
/// watch. Without it an upgraded connection would escape every edge limit.
#[derive(Clone, Debug)]
pub struct UpgradeGuard {
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    activity: Arc<Activity>,
    idle: Duration,
    send: Duration,
}

impl UpgradeGuard {
    /// A guard holding `permit` and watching `activity`.
    pub fn new(
        permit: Arc<tokio::sync::OwnedSemaphorePermit>,
        activity: Arc<Activity>,
        idle: Duration,
        send: Duration,
    ) -> Self {
        Self {
            _permit: permit,
            activity,
            idle,
            send,
        }
    }

    /// Resolves when the connection has been idle, or its writes blocked, too long.
    pub async fn expired(&self) -> Rejection {
        self.activity.expired(self.idle, self.send).await
    }
}

/// What a connection's [`Watched`] IO reports: the last progress either way, and since when
/// a write has been waiting for the client to read (0: none is).
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    last_progress_ms: AtomicU64,
    write_blocked_since_ms: AtomicU64,
    /// Wakes [`Activity::expired`] when a write starts waiting, so its deadline moves closer.
    blocked: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last_progress_ms: AtomicU64::new(1),
            write_blocked_since_ms: AtomicU64::new(0),
            blocked: tokio::sync::Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "not blocked".
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms.saturating_sub(1))
    }

    /// Resolves when the connection has been idle for `idle`, or a write has been blocked for
    /// `send`, with the reason.
    pub async fn expired(&self, idle: Duration, send: Duration) -> Rejection {
        loop {
            let last = self.at(self.last_progress_ms.load(Relaxed));
            let blocked = self.write_blocked_since_ms.load(Relaxed);
            let idle_deadline = last + idle;
            let send_deadline = (blocked != 0).then(|| self.at(blocked) + send);
            let now = Instant::now();
            if let Some(deadline) = send_deadline
                && now >= deadline
            {
                return Rejection::SendTimeout;
            }
            if now >= idle_deadline {
                return Rejection::IdleTimeout;
            }
            let next = send_deadline.map_or(idle_deadline, |d| d.min(idle_deadline));
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.blocked.notified(), if send_deadline.is_none() => {}
            }
        }
    }
}

pin_project! {
    /// A client connection's IO, reporting its progress to an [`Activity`].
    pub struct Watched<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
    }
}

impl<IO> Watched<IO> {
    /// `io`, and the activity it reports to.
    pub fn new(io: IO) -> (Self, Arc<Activity>) {
        let activity = Activity::new();
        let watched = Self {
            io,
            activity: Arc::clone(&activity),
        };
        (watched, activity)
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = ready!(this.io.poll_read(cx, buf));
        if buf.filled().len() > before {
            let activity = &**this.activity;
            activity.last_progress_ms.store(activity.now_ms(), Relaxed);
        }
        Poll::Ready(polled)
    }
}

impl<IO: AsyncWrite> Watched<IO> {
    fn wrote<T>(activity: &Activity, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => {
                if activity.write_blocked_since_ms.load(Relaxed) == 0 {
                    activity
                        .write_blocked_since_ms
                        .store(activity.now_ms(), Relaxed);
                    activity.blocked.notify_one();
                }
            }
            Poll::Ready(_) => {
                activity.write_blocked_since_ms.store(0, Relaxed);
                activity.last_progress_ms.store(activity.now_ms(), Relaxed);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        Self::wrote(this.activity, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        Self::wrote(this.activity, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.io.poll_flush(cx);
        Self::wrote(this.activity, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

pin_project! {
    /// A request body that fails with an [`io::ErrorKind::TimedOut`] error when its next
    /// frame takes longer than the body timeout to arrive (nginx's `client_body_timeout`).
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // Boxed so the body stays `Unpin` (the mirror layer needs it); made on the first wait
        // and re-armed after, so a body costs at most one allocation.
        sleep: Option<Pin<Box<Sleep>>>,
        armed: bool,
    }
}

impl<B> TimeoutBody<B> {
    /// `inner`, whose frames may each take at most `timeout` to arrive.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = Instant::now() + *this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !*this.armed {
            sleep.as_mut().reset(deadline);
            *this.armed = true;
        }
        ready!(sleep.as_mut().poll(cx));
        *this.armed = false;
        Poll::Ready(Some(Err(Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the request body stalled for {:?}", this.timeout),
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that never yields.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let started = Instant::now();
        let error = TimeoutBody::new(Stalled, Duration::from_secs(7))
            .frame()
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        let io = error.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_expires_by_idle_or_by_a_blocked_write() {
        let activity = Activity::new();
        let started = Instant::now();
        let idle = Duration::from_secs(75);
        let send = Duration::from_secs(60);
        assert_eq!(activity.expired(idle, send).await, Rejection::IdleTimeout);
        assert!(started.elapsed() >= idle && started.elapsed() < idle + Duration::from_secs(1));
        // A write that blocks while the check already waits (for the idle deadline) wakes it.
        activity.last_progress_ms.store(activity.now_ms(), Relaxed);
        let waiting = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            activity
                .write_blocked_since_ms
                .store(activity.now_ms(), Relaxed);
            activity.blocked.notify_one();
        };
        let started = Instant::now();
        let (reason, ()) = tokio::join!(activity.expired(idle, send), waiting);
        assert_eq!(reason, Rejection::SendTimeout);
        let at = started.elapsed();
        assert!(at >= send + Duration::from_secs(5) && at < idle, "{at:?}");
    }
}
