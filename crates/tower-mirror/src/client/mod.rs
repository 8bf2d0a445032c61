//! Sending mirrored requests: the [`Sender`] trait and the default [`HttpSender`], and the
//! TLS client set-up ([`tls`]) that mirror-proxy's upstream client shares.

pub(crate) mod pool;
pub mod tls;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::Arc;

use crate::body::MirrorBody;

use crate::error::BoxError;
use crate::sink::Sink;
use pool::{Lease, Pool, Protocol};

/// The body of a shadow target's response, as a [`Sender`] returns it.
pub type ShadowBody = UnsyncBoxBody<Bytes, BoxError>;

/// The future a [`Sender`] returns: the response head, with its body still to be read.
pub type SendFuture =
    Pin<Box<dyn Future<Output = Result<Response<ShadowBody>, BoxError>> + Send + 'static>>;

/// Sends mirrored requests to their targets.
///
/// The layer builds each mirrored request (URL, headers, body) and bounds the exchange with
/// its timeout; a sender only moves bytes. The default is [`HttpSender`]. Implement this to
/// route mirrors through your own client, or, in tests and benchmarks, to send nowhere.
///
/// An error whose chain holds an [`std::io::Error`] of kind `ConnectionRefused`, or a
/// `hyper_util` client error that `is_connect()`, is reported as a connect error.
pub trait Sender: Send + Sync + 'static {
    /// Sends one mirrored request and resolves to the target's response head.
    fn send(&self, request: Request<MirrorBody>) -> SendFuture;

    /// The [`HttpSender`] this sender is, if it is one. The layer then does not call
    /// [`send`](Self::send): it gives each target a bounded connection pool of its own,
    /// connecting as that `HttpSender` does (its TLS set-up). Leave the default, `None`, in
    /// your own senders; a mirror given to one is never refused for want of a connection.
    fn as_http_sender(&self) -> Option<&HttpSender> {
        None
    }
}

impl<F> Sender for F
where
    F: Fn(Request<MirrorBody>) -> SendFuture + Send + Sync + 'static,
{
    fn send(&self, request: Request<MirrorBody>) -> SendFuture {
        self(request)
    }
}

/// The default [`Sender`]: hyper speaking HTTP/1.1 to `http` targets and HTTP/1.1 or HTTP/2
/// (as ALPN negotiates) to `https` targets, over rustls with verified certificates (Mozilla's
/// root store, from `webpki-roots`). Targets with [`Target::http2`](crate::Target::http2) get
/// HTTP/2 only, with prior knowledge on `http`. Redirects are never followed.
///
/// **In a layer** (the default sender, or one given as
/// [`Options::sender`](crate::Options::sender)), each target gets a connection pool of its
/// own, kept across [`replace`](crate::MirrorHandle::replace)s that leave the target's URL,
/// transport and connection limit alone. A mirror is sent only when a connection can take it
/// at once: an idle HTTP/1.1 connection, a free HTTP/2 stream (within the target's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; a new connection takes one stream until the target's
/// SETTINGS arrive), or room for one more connection under
/// [`Target::max_connections`](crate::Target::max_connections). Otherwise the mirror is
/// dropped and counted (`dropped_no_connection`). An HTTP/2 target gets another connection
/// when every stream of the open ones is taken. Connections are kept per thread (on
/// mirror-proxy's single-threaded workers, a mirror and its connection stay on one), and a
/// thread with none free borrows another's before opening one. Idle connections close after
/// [`POOL_IDLE_TIMEOUT`](Self::POOL_IDLE_TIMEOUT); all close when the target is removed or
/// the layer dropped.
///
/// **Called directly** through [`Sender::send`], it uses one shared pool without those limits,
/// which clones share. The per-target pools belong to the layer.
#[derive(Clone)]
pub struct HttpSender {
    /// What the layer's per-target pools connect with.
    connector: HttpsConnector<HttpConnector>,
    /// Tells senders apart, so that a replacement keeps a target's pool only when its
    /// sender is the same.
    id: usize,
    /// For [`Sender::send`] called directly, outside a layer.
    client: Client<HttpsConnector<HttpConnector>, MirrorBody>,
    /// For requests marked `HTTP/2` (targets with [`Target::http2`](crate::Target::http2)).
    http2_client: Client<HttpsConnector<HttpConnector>, MirrorBody>,
}

impl HttpSender {
    /// How long an idle pooled connection is kept.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

    /// A sender that trusts the Mozilla root certificates.
    pub fn new() -> Self {
        Self::with_root_certificates(tls::webpki_roots())
    }

    /// A sender that trusts exactly the given root certificates, such as a private CA that
    /// signs a staging environment's certificates.
    pub fn with_root_certificates(roots: rustls::RootCertStore) -> Self {
        Self::with_tls_config(tls::client_config(roots))
    }

    /// **Dangerous:** a sender that accepts any certificate from `https` targets — expired,
    /// self-signed, or for another name — so anyone on the path can read and alter the
    /// mirrored traffic. Only for test environments whose certificates cannot be fixed; log
    /// that it is on (mirror-proxy warns at start-up).
    pub fn dangerous_accept_invalid_certificates() -> Self {
        Self::with_tls_config(tls::dangerous_client_config())
    }

    /// A sender using the given rustls configuration for `https` targets (for client
    /// certificates, custom verification, or a different crypto provider). Its ALPN protocols
    /// are replaced by `h2` and `http/1.1`.
    pub fn with_tls_config(config: rustls::ClientConfig) -> Self {
        let https = tls::connector(config);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Self::POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let client = builder.build(https.clone());
        let http2_client = builder.http2_only(true).build(https.clone());
        Self {
            connector: https,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            client,
            http2_client,
        }
    }
}

impl Default for HttpSender {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender").finish_non_exhaustive()
    }
}

impl Sender for HttpSender {
    fn send(&self, request: Request<MirrorBody>) -> SendFuture {
        let client = if request.version() == http::Version::HTTP_2 {
            &self.http2_client
        } else {
            &self.client
        };
        let response = client.request(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
        })
    }

    fn as_http_sender(&self) -> Option<&HttpSender> {
        Some(self)
    }
}

impl HttpSender {
    /// A pool of connections to `target` alone, connecting as this sender does; the pool of
    /// `previous` if it would be the same.
    pub(crate) fn pool_for(
        &self,
        target: &crate::Target,
        previous: Option<&Arc<Pool>>,
    ) -> Option<Arc<Pool>> {
        let url: http::Uri = target.url.parse().ok()?;
        let origin = pool::origin(&url)?;
        let protocol = if target.http2 {
            Protocol::Http2
        } else if url.scheme() == Some(&http::uri::Scheme::HTTPS) {
            Protocol::Negotiated
        } else {
            Protocol::Http1
        };
        let max = target.max_connections;
        if let Some(previous) = previous.filter(|p| {
            p.sender_id == self.id && p.max_connections() == max && p.protocol() == protocol
        }) {
            return Some(Arc::clone(previous));
        }
        Some(Arc::new(Pool::new(
            self.connector.clone(),
            origin,
            protocol,
            max,
            self.id,
        )))
    }
}

/// How a target's mirrors are sent.
#[derive(Clone)]
pub(crate) enum Transport {
    /// The layer's own bounded pool for the target.
    Pooled(Arc<Pool>),
    /// A user's [`Sender`]: no connection check, the sender decides.
    Custom(Arc<dyn Sender>),
    /// A recording target: written down, not sent.
    Sink(Arc<dyn Sink>),
}

impl Transport {
    /// Connections the layer holds open to the target (0 for a user's sender).
    pub(crate) fn connections(&self) -> usize {
        match self {
            Self::Pooled(pool) => pool.connections(),
            Self::Custom(_) | Self::Sink(_) => 0,
        }
    }

    /// A place for one request that can be written at once, or `None`.
    pub(crate) fn reserve(&self) -> Option<Reservation> {
        match self {
            Self::Pooled(pool) => pool
                .reserve()
                .map(|lease| Reservation::Send(Outbound::Pooled(lease))),
            Self::Custom(sender) => Some(Reservation::Send(Outbound::Custom(Arc::clone(sender)))),
            Self::Sink(sink) => Some(Reservation::Sink(Arc::clone(sink))),
        }
    }
}

/// A place for one request, from [`Transport::reserve`].
pub(crate) enum Reservation {
    /// To be sent.
    Send(Outbound),
    /// To be written down by a recording target's sink.
    Sink(Arc<dyn Sink>),
}

/// How a mirror that is sent goes out.
pub(crate) enum Outbound {
    Pooled(Lease),
    Custom(Arc<dyn Sender>),
}
