//! `https` targets over real TLS on loopback: a test CA and a certificate for `localhost` made
//! with rcgen, a rustls server offering HTTP/2 and HTTP/1.1 by ALPN, and the layer's
//! [`HttpSender`] trusting (or not) that CA.

mod support;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tower_mirror::{HttpSender, MirrorLayer, Options, Target, X_MIRRORED_FROM};

use support::{DEADLINE, eventually, serve};

/// A private CA and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tower-mirror test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        Self {
            ca: ca.der().clone(),
            chain: vec![cert.der().clone(), ca.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// A root store holding only the test CA.
    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }

    /// A sender that trusts only the test CA.
    fn sender(&self) -> Arc<HttpSender> {
        Arc::new(HttpSender::with_root_certificates(self.roots()))
    }

    fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// A request as the TLS shadow received it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which accepted TCP connection (0, 1, ...) carried it.
    connection: usize,
    /// The protocol ALPN settled on for that connection.
    alpn: Option<Vec<u8>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

/// The length of the shadow's answers: far more than socket buffers hold, so that an HTTP/1.1
/// connection is free again only once the client has read the whole answer.
const REPLY_LEN: usize = 512 * 1024;

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    arrived: Notify,
    connections: AtomicUsize,
    failed_handshakes: AtomicUsize,
}

/// An HTTPS shadow target on loopback (rustls + hyper-util's auto builder), answering
/// `200` with [`REPLY_LEN`] bytes and recording what it receives.
struct TlsShadow {
    port: u16,
    log: Arc<Log>,
}

impl TlsShadow {
    async fn start(pki: &Pki, alpn: &[&[u8]]) -> Self {
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(alpn)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Log::default());
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = shared.connections.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        log.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    let service = hyper::service::service_fn(move |request| {
                        record(Arc::clone(&log), connection, alpn.clone(), request)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { port, log }
    }

    /// `https://localhost:PORT` followed by `path`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    fn failed_handshakes(&self) -> usize {
        self.log.failed_handshakes.load(Ordering::SeqCst)
    }

    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let wait = async {
            loop {
                let arrived = self.log.arrived.notified();
                let seen = self.seen();
                if seen.len() >= n {
                    return seen;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("expected {n} requests, got {}", self.seen().len()))
    }
}

async fn record(
    log: Arc<Log>,
    connection: usize,
    alpn: Option<Vec<u8>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.seen.lock().unwrap().push(Seen {
        connection,
        alpn,
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    });
    log.arrived.notify_waiters();
    Ok(Response::new(Full::new(support::pattern(REPLY_LEN))))
}

/// What `on_success` was told: the status and the HTTP version the target answered with.
type Answers = Arc<Mutex<Vec<(StatusCode, Version)>>>;

fn layer_with(target: String, sender: Arc<HttpSender>, answers: &Answers) -> MirrorLayer {
    let answers = Arc::clone(answers);
    MirrorLayer::with_options(Options {
        targets: vec![Target::new(target)],
        sender: Some(sender),
        on_success: Some(Arc::new(move |_url, response| {
            answers
                .lock()
                .unwrap()
                .push((response.status(), response.version()));
        })),
        ..Options::default()
    })
    .unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The primary app: answers POST /v1/items with the size of the body it read.
fn items_app(layer: MirrorLayer) -> Router {
    Router::new()
        .route(
            "/v1/items",
            post(|body: Bytes| async move { format!("stored {} bytes", body.len()) }),
        )
        .route("/seq/{n}", get(|| async { "seq" }))
        .layer(layer)
}

async fn post_items(app: &support::App, body: &Bytes) -> support::Answer {
    support::send(
        Request::post(format!("{}/v1/items?page=2", app.url))
            .header("content-type", "application/json")
            .header("x-request-id", "req-42")
            .body(Full::new(body.clone()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn https_target_trusted_by_a_private_ca_gets_the_mirror_over_http2() {
    let pki = Pki::new();
    let shadow = TlsShadow::start(&pki, &[b"h2", b"http/1.1"]).await;
    let answers = Answers::default();
    let layer = layer_with(shadow.url("/base"), pki.sender(), &answers);
    let app = serve(items_app(layer.clone())).await;

    let body = Bytes::from(format!("{{\"items\":\"{}\"}}", "x".repeat(40_000)));
    let answer = post_items(&app, &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        std::str::from_utf8(&answer.body).unwrap(),
        format!("stored {} bytes", body.len())
    );

    let seen = shadow.wait_for(1).await;
    assert_eq!(seen.len(), 1);
    let mirror = &seen[0];
    assert_eq!(mirror.alpn.as_deref(), Some(&b"h2"[..]), "ALPN chose h2");
    assert_eq!(mirror.version, Version::HTTP_2);
    assert_eq!(mirror.method, Method::POST);
    // HTTP/2 carries scheme and authority as pseudo-headers, so the server sees a full URI.
    assert_eq!(mirror.uri.scheme_str(), Some("https"));
    assert_eq!(
        mirror.uri.authority().map(|a| a.as_str()),
        Some(format!("localhost:{}", shadow.port).as_str())
    );
    assert_eq!(
        mirror.uri.path_and_query().map(|p| p.as_str()),
        Some("/base/v1/items?page=2")
    );
    assert_eq!(mirror.body, body);
    assert_eq!(
        header(&mirror.headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(header(&mirror.headers, "x-request-id"), Some("req-42"));
    assert_eq!(
        header(&mirror.headers, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(
        header(&mirror.headers, X_MIRRORED_FROM.as_str()),
        Some(app.addr.to_string().as_str())
    );

    eventually("the mirror to be answered", || {
        layer.stats().targets[0].responded == 1
    })
    .await;
    assert_eq!(
        *answers.lock().unwrap(),
        [(StatusCode::OK, Version::HTTP_2)]
    );
    assert_eq!(layer.stats().targets[0].failed, 0);
}

#[tokio::test]
async fn https_target_offering_only_http1_gets_the_mirror_over_http1() {
    let pki = Pki::new();
    let shadow = TlsShadow::start(&pki, &[b"http/1.1"]).await;
    let answers = Answers::default();
    let layer = layer_with(shadow.url("/base/"), pki.sender(), &answers);
    let app = serve(items_app(layer.clone())).await;

    let body = support::pattern(20_000);
    let answer = post_items(&app, &body).await;
    assert_eq!(answer.status, StatusCode::OK);

    let seen = shadow.wait_for(1).await;
    let mirror = &seen[0];
    assert_eq!(mirror.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(mirror.version, Version::HTTP_11);
    assert_eq!(mirror.method, Method::POST);
    assert_eq!(mirror.uri.to_string(), "/base/v1/items?page=2");
    assert_eq!(
        header(&mirror.headers, "host"),
        Some(format!("localhost:{}", shadow.port).as_str())
    );
    assert_eq!(mirror.body, body);
    assert_eq!(header(&mirror.headers, "x-request-id"), Some("req-42"));

    eventually("the mirror to be answered", || {
        layer.stats().targets[0].responded == 1
    })
    .await;
    assert_eq!(
        *answers.lock().unwrap(),
        [(StatusCode::OK, Version::HTTP_11)]
    );
}

/// The rustls error somewhere in `error`'s chain, looking inside `io::Error`s too (whose
/// `source()` skips the error they wrap).
fn rustls_error_in(error: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = rustls_error_in(inner)
        {
            return Some(tls);
        }
        current = err.source();
    }
    None
}

#[tokio::test]
async fn default_roots_reject_a_self_signed_target_and_the_primary_is_untouched() {
    let pki = Pki::new();
    let shadow = TlsShadow::start(&pki, &[b"h2", b"http/1.1"]).await;
    let target = shadow.url("/base");

    /// What `on_error` was told.
    #[derive(Debug, PartialEq)]
    struct Failure {
        url: String,
        is_connect: bool,
        is_timeout: bool,
        tls: Option<rustls::Error>,
    }
    let failures: Arc<Mutex<Vec<Failure>>> = Arc::default();
    let record = Arc::clone(&failures);
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(target.clone())],
        // No sender: the default one, trusting Mozilla's roots only.
        on_error: Some(Arc::new(move |url, error| {
            record.lock().unwrap().push(Failure {
                url: url.to_owned(),
                is_connect: error.is_connect(),
                is_timeout: error.is_timeout(),
                tls: rustls_error_in(error),
            });
        })),
        ..Options::default()
    })
    .unwrap();
    let app = serve(items_app(layer.clone())).await;

    let body = support::pattern(5_000);
    let answer = post_items(&app, &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        std::str::from_utf8(&answer.body).unwrap(),
        "stored 5000 bytes",
        "the primary answer is untouched"
    );

    eventually("the mirror to fail", || {
        layer.stats().targets[0].failed == 1
    })
    .await;
    let stats = layer.stats().targets[0].clone();
    assert_eq!(
        (stats.sent, stats.responded, stats.failed, stats.timed_out),
        (1, 0, 1, 0)
    );
    assert_eq!(
        *failures.lock().unwrap(),
        [Failure {
            url: target,
            is_connect: true,
            is_timeout: false,
            tls: Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
        }]
    );
    // The server saw the handshake fail and never got a request.
    eventually("the server to see the handshake fail", || {
        shadow.failed_handshakes() == 1
    })
    .await;
    assert!(shadow.seen().is_empty());
}

/// Sends several mirrors one after another, each finished (response drained) before the next,
/// to a server offering `alpn`, and checks that they all went over one TLS connection.
async fn sequential_mirrors_share_one_connection(alpn: &[&[u8]], version: Version) {
    const MIRRORS: u64 = 5;
    let pki = Pki::new();
    let shadow = TlsShadow::start(&pki, alpn).await;
    let answers = Answers::default();
    let layer = layer_with(shadow.url(""), pki.sender(), &answers);
    let app = serve(items_app(layer.clone())).await;

    for n in 1..=MIRRORS {
        let answer = support::get(&format!("{}/seq/{n}", app.url)).await;
        assert_eq!(answer.status, StatusCode::OK);
        // Each mirror is finished before the next one starts.
        eventually(&format!("mirror {n} to be answered"), || {
            layer.stats().targets[0].responded == n
        })
        .await;
    }

    let seen = shadow.seen();
    let paths: Vec<String> = seen.iter().map(|s| s.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/seq/1", "/seq/2", "/seq/3", "/seq/4", "/seq/5"]);
    assert!(seen.iter().all(|s| s.version == version), "{seen:?}");
    assert!(
        seen.iter().all(|s| s.connection == 0),
        "every mirror on the first connection: {:?}",
        seen.iter().map(|s| s.connection).collect::<Vec<_>>()
    );
    assert_eq!(
        shadow.connections(),
        1,
        "one TCP connection, one TLS handshake"
    );
    assert_eq!(shadow.failed_handshakes(), 0);
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), MIRRORS as usize);
    assert!(
        answers
            .iter()
            .all(|&(status, v)| status == StatusCode::OK && v == version)
    );
}

#[tokio::test]
async fn sequential_mirrors_reuse_one_tls_connection_over_http2() {
    sequential_mirrors_share_one_connection(&[b"h2", b"http/1.1"], Version::HTTP_2).await;
}

#[tokio::test]
async fn sequential_mirrors_reuse_one_tls_connection_over_http1() {
    // Over HTTP/1.1 a connection goes back to the pool only once the response body has been
    // read to its end: the layer drains it even though nobody asked to capture it.
    sequential_mirrors_share_one_connection(&[b"http/1.1"], Version::HTTP_11).await;
}

#[tokio::test]
async fn the_dangerous_sender_accepts_a_self_signed_target() {
    let pki = Pki::new();
    let shadow = TlsShadow::start(&pki, &[b"h2", b"http/1.1"]).await;
    let answers: Answers = Arc::default();
    let sender = Arc::new(HttpSender::dangerous_accept_invalid_certificates());
    let layer = layer_with(shadow.url("/base"), sender, &answers);
    let app = serve(items_app(layer.clone())).await;

    let body = support::pattern(1_000);
    assert_eq!(post_items(&app, &body).await.status, StatusCode::OK);
    let report = layer.drain(support::DEADLINE).await;
    assert!(report.is_complete());
    assert_eq!(
        *answers.lock().unwrap(),
        [(StatusCode::OK, Version::HTTP_2)]
    );
    assert_eq!(shadow.seen().len(), 1);
    assert_eq!(shadow.failed_handshakes(), 0);
}
