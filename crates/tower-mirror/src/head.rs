//! [`RequestHead`]: the parts of a request that admission decisions look at, borrowed.

use std::net::SocketAddr;

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

/// The client's address, as a request extension: what
/// [`SampleKey::ClientIp`](crate::SampleKey::ClientIp) samples by.
///
/// mirror-proxy inserts it into every request. In an axum or hyper service, insert it from
/// the connection's peer address, or sample by a [`SampleKey::custom`](crate::SampleKey::custom)
/// closure that reads axum's `ConnectInfo` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);
