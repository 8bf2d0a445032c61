//! Observers: a hook that sees the requests chosen for mirroring, the primary's response
//! and each shadow's response, off the request path. Shadow diffing (feature `diff`) is one;
//! a recorder of primary responses would be another.
//!
//! An [`Observer`] is asked once per mirrored request, after the targets are chosen, whether
//! it wants to follow it; if so it returns an [`Observation`], which then receives the
//! primary's response ([`Observation::primary`], once its body has streamed to the client)
//! and each chosen shadow's it [`wants`](Observation::wants) ([`Observation::shadow`]), in
//! whatever order they complete. The observation is dropped when the last of them has been
//! delivered (or will never be): the place to act on what it gathered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::body::Tap;
use crate::error::ConfigError;
use crate::head::RequestHead;
use crate::response::MirrorResponse;
use crate::target::Target;

/// Follows mirrored requests: see the [module docs](self).
pub trait Observer: Send + Sync + 'static {
    /// Checks this observer's settings against the layer's targets, when a layer is built.
    ///
    /// # Errors
    /// The [`ConfigError`] that stops the layer from being built.
    fn check(&self, targets: &[Target]) -> Result<(), ConfigError> {
        let _ = targets;
        Ok(())
    }

    /// `request` is being mirrored to `targets`: return an observation to follow it, or
    /// `None`. Called on the request path, so keep it cheap.
    fn observe(
        &self,
        request: &RequestHead<'_>,
        targets: &[&Target],
    ) -> Option<Arc<dyn Observation>>;
}

/// One request, followed by an [`Observer`].
pub trait Observation: Send + Sync + 'static {
    /// How many bytes of each response body (the primary's and the shadows') to keep for it.
    fn body_limit(&self) -> usize;

    /// Whether `target`'s response goes to [`shadow`](Self::shadow).
    fn wants(&self, target: &Target) -> bool;

    /// `target`'s response; its [`body`](MirrorResponse::body) holds the first
    /// [`body_limit`](Self::body_limit) bytes, and `complete` says whether that is all of it.
    fn shadow(&self, target: &Target, response: &MirrorResponse, complete: bool);

    /// The primary's response, once its body has streamed to the client (not called when it
    /// failed to).
    fn primary(&self, response: PrimaryResponse);
}

/// The primary's response, as an [`Observation`] receives it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PrimaryResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The first [`Observation::body_limit`] bytes of the body (the largest limit of the
    /// request's observations), in the chunks they came in.
    pub body: Vec<Bytes>,
    /// True when `body` is the whole body.
    pub complete: bool,
    /// The whole body's length, in bytes (what streamed to the client).
    pub length: u64,
    /// Time from the request reaching the layer to the response head.
    pub latency: Duration,
}

/// The primary response kept for the request's observations.
pub(crate) struct PrimaryTap {
    observations: Vec<Arc<dyn Observation>>,
    status: http::StatusCode,
    headers: http::HeaderMap,
    latency: std::time::Duration,
    chunks: Vec<Bytes>,
    /// Bytes kept in `chunks`: at most `limit`.
    kept: usize,
    len: u64,
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
            kept: 0,
            len: 0,
        }
    }
}

impl Tap for PrimaryTap {
    fn data(&mut self, data: &Bytes) {
        self.len = self.len.saturating_add(data.len() as u64);
        // The first `limit` bytes: reference-counted slices, never copies.
        let take = data.len().min(self.limit - self.kept);
        if take > 0 {
            self.chunks.push(data.slice(..take));
            self.kept += take;
        }
    }

    fn end(self: Box<Self>) {
        let response = PrimaryResponse {
            status: self.status,
            headers: self.headers,
            body: self.chunks,
            complete: self.len <= self.kept as u64,
            length: self.len,
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
