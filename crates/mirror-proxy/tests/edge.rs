//! End-to-end tests of mirror-proxy at the edge: the request the upstream gets and the one
//! each shadow gets are the same, whatever the client sent.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Proxy, Received, Server, client, send, within};

/// The headers both legs must agree on (`Host` first: the mirror's is its target's own).
fn forwarding(received: &Received) -> Vec<(String, Vec<String>)> {
    [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "cookie",
    ]
    .iter()
    .map(|name| {
        let values = received
            .header_all(name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        ((*name).to_owned(), values)
    })
    .collect()
}

/// The one request each server got for `path`, upstream and shadow.
async fn both(upstream: &Server, shadow: &Server, path: &str) -> (Received, Received) {
    let mirrored = within(path, async {
        loop {
            if let Some(r) = shadow.received().into_iter().find(|r| r.uri.path() == path) {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    (upstream.only(path), mirrored)
}

/// `X-Forwarded-For` lines a client sent (two of them here) are kept in order and joined,
/// the client's address appended; `-Proto` and `-Host` set; the same on both legs. Without
/// any, both learn the client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_legs_get_the_same_forwarding_headers() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let client = client();
    let request = Request::get(proxy.url("/xff"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-for", "7.7.7.7, 8.8.8.8")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    let (up, mirrored) = both(&upstream, &shadow, "/xff").await;
    assert_eq!(
        up.header_all("x-forwarded-for"),
        ["6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"]
    );
    assert_eq!(up.header("x-forwarded-proto"), "http");
    assert_eq!(up.header("x-forwarded-host"), proxy.addr.to_string());
    // Host is each target's own; X-Mirrored-From carries the original on the mirror.
    assert_eq!(forwarding(&up)[1..], forwarding(&mirrored)[1..]);
    assert_eq!(mirrored.header("x-mirrored-from"), up.header("host"));

    let request = Request::get(proxy.url("/plain"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    let (up, mirrored) = both(&upstream, &shadow, "/plain").await;
    assert_eq!(mirrored.header("x-forwarded-for"), "127.0.0.1");
    // Host is each target's own; X-Mirrored-From carries the original on the mirror.
    assert_eq!(forwarding(&up)[1..], forwarding(&mirrored)[1..]);
    assert_eq!(mirrored.header("x-mirrored-from"), up.header("host"));
}

/// An absolute-form request target's authority wins over `Host` (RFC 9112 §3.2.2), on both
/// legs: the upstream's `Host` and the shadow's `X-Mirrored-From` agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_authority_is_the_host_on_both_legs() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET http://a.example:4444/absolute HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (up, mirrored) = both(&upstream, &shadow, "/absolute").await;
    assert_eq!(up.header("host"), "a.example:4444");
    assert_eq!(mirrored.header("x-mirrored-from"), "a.example:4444");
    assert_eq!(
        forwarding(&up)[1..],
        forwarding(&mirrored)[1..],
        "all but Host"
    );
}

/// HTTP/2: `Host` comes from `:authority`, and separate `cookie` fields reach the HTTP/1.1
/// legs as one line joined with "; " (RFC 9113 §8.2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookies_and_authority_reach_http1_legs_intact() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://h2.example:8443/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::default())
        .unwrap();
    let response = within("the h2 answer", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (up, mirrored) = both(&upstream, &shadow, "/cookies").await;
    assert_eq!(up.header_all("cookie"), ["a=1; b=2"]);
    assert_eq!(up.header("host"), "h2.example:8443");
    assert_eq!(mirrored.header("x-mirrored-from"), "h2.example:8443");
    assert_eq!(
        forwarding(&up)[1..],
        forwarding(&mirrored)[1..],
        "all but Host"
    );
}

/// A bare `Upgrade` header (no `Connection: upgrade`) asks for nothing: the request is
/// forwarded as a plain one, and mirrored like one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_upgrade_header_is_forwarded_and_mirrored_as_a_plain_request() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let request = Request::post(proxy.url("/bare-upgrade"))
        .header("upgrade", "x")
        .body(Full::new(Bytes::from_static(b"body")))
        .unwrap();
    assert_eq!(send(&client(), request).await.status(), StatusCode::OK);
    let (up, mirrored) = both(&upstream, &shadow, "/bare-upgrade").await;
    assert_eq!(&up.body[..], b"body");
    assert_eq!(&mirrored.body[..], b"body");
    assert!(!up.headers.contains_key("upgrade") && !mirrored.headers.contains_key("upgrade"));
}
