//! [`RequestHead`]: the parts of a request that admission decisions look at, borrowed.

use std::net::SocketAddr;

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method, Request, Uri};

/// A borrowed view of a request's head: what a target's filter, key sampler and
/// [`SampleKey::custom`](crate::SampleKey::custom) closures see.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request target, as received.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions, where servers put connection details (axum's `ConnectInfo`,
    /// tonic's `TcpConnectInfo`, this crate's [`ClientAddr`]).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

/// The first value of `name`. A request with few header fields (the usual case) is scanned
/// in order, which costs less than hashing the name for a lookup.
pub(crate) fn first_value<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= SCAN_LIMIT {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// True when some value of `name` is exactly `value`; scanned like [`first_value`].
pub(crate) fn has_value(headers: &HeaderMap, name: &HeaderName, value: &HeaderValue) -> bool {
    if headers.keys_len() <= SCAN_LIMIT {
        headers.iter().any(|(n, v)| n == name && v == value)
    } else {
        headers.get_all(name).iter().any(|v| v == value)
    }
}

/// Up to this many distinct names, a scan beats a hashed lookup.
const SCAN_LIMIT: usize = 8;

/// The client's address, as a request extension: what
/// [`SampleKey::ClientIp`](crate::SampleKey::ClientIp) samples by.
///
/// mirror-proxy inserts it into every request. In an axum or hyper service, insert it from
/// the connection's peer address, or sample by a [`SampleKey::custom`](crate::SampleKey::custom)
/// closure that reads axum's `ConnectInfo` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);
