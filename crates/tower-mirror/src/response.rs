//! What a shadow target answered, as passed to [`Options::on_success`](crate::Options::on_success).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// A shadow target's response to one mirrored request.
#[derive(Debug, Clone)]
pub struct MirrorResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) latency: Duration,
    pub(crate) body: Bytes,
}

impl MirrorResponse {
    /// The response status, as sent by the target (redirects are not followed).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The HTTP version the target answered with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The method of the mirrored request (the original request's method).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The full URI the mirror was sent to: the target's base joined with the original path
    /// and query. `uri().path()` is the path the target saw.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Time from handing the request to the sender to receiving the response head.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The first bytes of the response body, at most
    /// [`Options::capture_response_body`](crate::Options::capture_response_body); empty when
    /// that is 0 (the default).
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}
