//! HTTPS upstreams and mirror targets through the real binary: a private CA trusted with
//! `--ca-file`, the Mozilla roots alone rejecting it, and `--danger-accept-invalid-certs`
//! (mirror targets only, warned about at start-up).

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{Proxy, TempDir, eventually, get};

/// A CA and a certificate it signed for `localhost`.
struct Pki {
    ca_pem: String,
    /// The certificate and the CA's, PEM: a chain for `--tls-cert`.
    chain_pem: String,
    /// The key, PEM: for `--tls-key`.
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mirror-proxy test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            chain_pem: format!("{}{}", cert.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
            ca_pem: ca.pem(),
            chain: vec![cert.der().clone(), ca.der().clone()],
            key_der: key.serialize_der(),
        }
    }
}

/// An HTTPS server on loopback that answers `200 <name>` and counts requests.
struct TlsServer {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl TlsServer {
    async fn start(pki: &Pki, name: &'static str) -> Self {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let counter = Arc::clone(&counter);
                        async move {
                            let _ = request.into_body().collect().await;
                            counter.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_private_ca_given_with_ca_file_is_trusted_for_upstream_and_mirror() {
    let pki = Pki::new();
    let (upstream, shadow) = (
        TlsServer::start(&pki, "upstream").await,
        TlsServer::start(&pki, "shadow").await,
    );
    let dir = TempDir::new();
    let ca = dir.file("ca.pem", &pki.ca_pem);
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &shadow.url,
        "--ca-file",
        ca.to_str().unwrap(),
    ])
    .await;

    let (status, _, body) = get(&proxy.url("/over-tls")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"upstream"[..]));
    eventually("the mirror to reach the TLS shadow", || {
        shadow.requests() == 1
    })
    .await;
    assert_eq!(upstream.requests(), 1);
    let stats = proxy
        .wait_stats("the mirror to finish", |s| {
            s["mirror"]["targets"][0]["responded"] == 1
        })
        .await;
    assert_eq!(stats["mirror"]["targets"][0]["failed"], 0);
}

#[tokio::test]
async fn without_the_ca_the_upstream_is_a_502_and_the_mirror_fails() {
    let pki = Pki::new();
    let (upstream, shadow) = (
        TlsServer::start(&pki, "upstream").await,
        TlsServer::start(&pki, "shadow").await,
    );
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;

    let (status, _, _) = get(&proxy.url("/x")).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "an unverified upstream is never used"
    );
    let stats = proxy
        .wait_stats("the mirror to fail", |s| {
            s["mirror"]["targets"][0]["failed"] == 1
        })
        .await;
    assert_eq!(stats["primary"]["upstream_unavailable"], 1);
    assert_eq!((upstream.requests(), shadow.requests()), (0, 0));
}

#[tokio::test]
async fn danger_accept_invalid_certs_applies_to_mirror_targets_only_and_is_logged() {
    let pki = Pki::new();
    let (upstream, shadow) = (
        TlsServer::start(&pki, "upstream").await,
        TlsServer::start(&pki, "shadow").await,
    );
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &shadow.url,
        "--danger-accept-invalid-certs",
    ])
    .await;
    eventually("the start-up warning", || {
        proxy.stderr().contains("danger-accept-invalid-certs is on")
    })
    .await;

    let (status, _, _) = get(&proxy.url("/x")).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the upstream is still verified"
    );
    eventually("the mirror to reach the shadow", || shadow.requests() == 1).await;
    assert_eq!(upstream.requests(), 0);
}

/// `--tls-cert`/`--tls-key` serve clients over TLS: a client that verifies the certificate
/// against the CA gets answers over HTTP/1.1 and HTTP/2 (ALPN), curl too; the upstream and
/// the shadow both see `X-Forwarded-Proto: https`. A bad key file exits 2 naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_are_served() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let cert = dir.file("cert.pem", &pki.chain_pem);
    let key = dir.file("key.pem", &pki.key_pem);
    let ca = dir.file("ca.pem", &pki.ca_pem);
    let upstream = support::Server::upstream().await;
    let shadow = support::Server::shadow().await;
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &shadow.url,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let base = format!("https://localhost:{}", proxy.addr.port());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.chain[1].clone()).unwrap();
    let connector =
        tower_mirror::client::tls::connector(tower_mirror::client::tls::client_config(roots));
    // A verifying client offering h2 and http/1.1: the proxy's ALPN picks h2.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let request = Request::get(format!("{base}/tls/h2"))
        .body(Full::default())
        .unwrap();
    let response = support::within("a TLS answer", client.request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    response.into_body().collect().await.unwrap();
    assert_eq!(
        upstream.only("/tls/h2").header("x-forwarded-proto"),
        "https"
    );

    let mirrored = shadow.wait_for(1).await;
    assert!(
        mirrored
            .iter()
            .all(|r| r.header("x-forwarded-proto") == "https")
    );

    // curl over HTTP/1.1, verifying against the CA.
    let curl = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
        ])
        .args(["--cacert", ca.to_str().unwrap()])
        .arg(format!("{base}/tls/curl"))
        .output()
        .await
        .expect("curl runs");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "1.1");
    assert_eq!(
        upstream.only("/tls/curl").header("x-forwarded-proto"),
        "https"
    );

    // A client speaking plain HTTP to the TLS listener fails the handshake: counted.
    let mut plain = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    proxy
        .wait_stats("a failed handshake counted", |s| {
            s["primary"]["rejected"]["tls_handshake"] == 1
        })
        .await;

    let (status, _, stderr) = support::run_to_exit(&[
        "--upstream",
        &upstream.url,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        ca.to_str().unwrap(),
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-key") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
