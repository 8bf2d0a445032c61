//! [`ResponseBody`]: the primary's response body, with an optional tap that hands its first
//! bytes to the request's observations (such as a comparison) once it has ended.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::observe::{Observation, PrimaryResponse};

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
        tap: Option<Box<PrimaryTap>>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self { inner, tap: None }
    }

    /// The inner service's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner service's body, unwrapped.
    pub fn into_inner(self) -> B {
        self.inner
    }

    pub(crate) fn tapped(inner: B, tap: PrimaryTap) -> Self {
        Self {
            inner,
            tap: Some(Box::new(tap)),
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
        if let Some(tap) = this.tap.as_mut() {
            let finished = match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        tap.push(data);
                    }
                    this.inner.is_end_stream()
                }
                // A failed body is not observed: drop the tap unreported.
                Some(Err(_)) => {
                    *this.tap = None;
                    false
                }
                None => true,
            };
            if finished {
                if let Some(tap) = this.tap.take() {
                    tap.finish();
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
            .field("observed", &self.tap.is_some())
            .finish()
    }
}

/// The primary response kept for the request's observations.
pub(crate) struct PrimaryTap {
    observations: Vec<Arc<dyn Observation>>,
    status: http::StatusCode,
    headers: http::HeaderMap,
    latency: std::time::Duration,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
}

impl PrimaryTap {
    /// A tap for `response`, whose request reached the layer at `started`.
    pub(crate) fn new<B>(
        observations: Vec<Arc<dyn Observation>>,
        started: Instant,
        response: &http::Response<B>,
    ) -> Self {
        Self {
            limit: observations
                .iter()
                .map(|o| o.body_limit())
                .max()
                .unwrap_or(0),
            observations,
            latency: started.elapsed(),
            status: response.status(),
            headers: response.headers().clone(),
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, data: &Bytes) {
        self.len = self.len.saturating_add(data.len());
        if self.len <= self.limit && !data.is_empty() {
            self.chunks.push(data.clone());
        } else if self.len > self.limit {
            // Over the cap the body is cut: keep nothing more.
            self.chunks = Vec::new();
        }
    }

    fn finish(self) {
        let response = PrimaryResponse {
            status: self.status,
            headers: self.headers,
            body: self.chunks,
            complete: self.len <= self.limit,
            latency: self.latency,
        };
        let Some((last, rest)) = self.observations.split_last() else {
            return;
        };
        for observation in rest {
            observation.primary(response.clone());
        }
        last.primary(response);
    }
}
