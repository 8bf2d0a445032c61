//! Hostile and odd requests, written byte for byte onto a TCP socket to a real axum server
//! wrapped in the layer, and to an identical server without it. The two must answer with the
//! same bytes (but for `Date`), and each mirror must be exactly right or not sent and counted.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use http::StatusCode;
use support::{App, DEADLINE, Received, Shadow, serve, settled};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_mirror::{MirrorLayer, MirrorStats, Options, Target};

/// What the primary app answers: the request as its handler saw it, escaped, so that any
/// difference the layer made to the method, URI, version, headers or body shows in the bytes.
async fn describe(route: &'static str, request: Request) -> String {
    let (parts, body) = request.into_parts();
    let mut text = format!(
        "{route} {} {:?} {:?}\n",
        parts.method, parts.uri, parts.version
    );
    for (name, value) in &parts.headers {
        text.push_str(&format!("{name}: {value:?}\n"));
    }
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => text.push_str(&format!("body {body:?}\n")),
        Err(error) => text.push_str(&format!("body error {error}\n")),
    }
    text
}

fn app() -> Router {
    Router::new()
        .route("/x", any(|r: Request| describe("route", r)))
        .fallback(|r: Request| describe("fallback", r))
}

/// The base path every mirror goes under: `/base/` on the shadow, so joined paths start `/base/`.
const PREFIX: &str = "/base";

/// One shadow target, the app with the layer, and the same app without it.
struct Harness {
    shadow: Shadow,
    layer: MirrorLayer,
    with_layer: App,
    without: App,
    /// Statuses the shadow answered mirrors with, as `on_success` saw them.
    statuses: Arc<Mutex<Vec<StatusCode>>>,
    /// Errors `on_error` saw.
    errors: Arc<Mutex<Vec<String>>>,
}

impl Harness {
    async fn start() -> Self {
        Self::with(|options| options).await
    }

    async fn with(configure: impl FnOnce(Options) -> Options) -> Self {
        let shadow = Shadow::start().await;
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (seen, failed) = (Arc::clone(&statuses), Arc::clone(&errors));
        let options = Options {
            targets: vec![Target::new(format!("{}{PREFIX}/", shadow.url))],
            on_success: Some(Arc::new(move |_, response| {
                seen.lock().unwrap().push(response.status());
            })),
            on_error: Some(Arc::new(move |_, error| {
                failed.lock().unwrap().push(error.to_string());
            })),
            ..Options::default()
        };
        let layer = MirrorLayer::with_options(configure(options)).unwrap();
        Self {
            with_layer: serve(app().layer(layer.clone())).await,
            without: serve(app()).await,
            shadow,
            layer,
            statuses,
            errors,
        }
    }

    /// Writes `request` to both apps and asserts they answer with the same bytes (but for
    /// `Date`); returns the answer.
    async fn compare(&self, request: &[u8]) -> Answer {
        let with_layer = exchange(self.with_layer.addr, request).await;
        let without = exchange(self.without.addr, request).await;
        assert_eq!(
            String::from_utf8_lossy(&with_layer),
            String::from_utf8_lossy(&without),
            "the layer changed the answer to {:?}",
            String::from_utf8_lossy(request)
        );
        Answer::parse(&with_layer)
    }

    /// The `n`th mirror the shadow received (counting from 1), waiting for it.
    async fn mirror(&self, n: usize) -> Received {
        self.shadow.wait_for(n).await[n - 1].clone()
    }

    /// Waits for every mirror to finish and checks that each sampled one is accounted for.
    async fn accounted(&self) -> MirrorStats {
        let stats = settled(&self.layer).await;
        for t in &stats.targets {
            assert_eq!(
                t.sampled,
                t.sent + t.dropped_overload + t.skipped.total(),
                "{t:?}"
            );
            assert_eq!(t.sent, t.responded + t.failed + t.timed_out, "{t:?}");
            assert_eq!(t.in_flight, 0, "{t:?}");
        }
        assert_eq!(stats.buffered_bytes, 0);
        stats
    }
}

/// Sends `request` on a new connection and reads until the server closes it, without `Date`.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut response))
        .await
        .expect("the server answered and closed the connection in time")
        .expect("the connection ended cleanly");
    without_date(&response)
}

fn without_date(response: &[u8]) -> Vec<u8> {
    let head_end = find(response, b"\r\n\r\n").map_or(response.len(), |i| i + 4);
    let (head, body) = response.split_at(head_end);
    let mut out: Vec<u8> = head
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.to_ascii_lowercase().starts_with(b"date:"))
        .flatten()
        .copied()
        .collect();
    out.extend_from_slice(body);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn parse(bytes: &[u8]) -> Self {
        let head_end = find(bytes, b"\r\n\r\n").expect("a complete response head");
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Self {
            status,
            head,
            body: bytes[head_end + 4..].to_vec(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request: its request line, `Host: primary.example`, `headers`, `Connection: close` (so
/// that reading to the end reads one whole response), then `body`.
fn raw(request_line: &[u8], headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out = request_line.to_vec();
    out.extend_from_slice(b"\r\nHost: primary.example\r\n");
    for header in headers {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// The path and query the shadow received, as bytes.
fn target_of(received: &Received) -> Vec<u8> {
    received
        .uri
        .path_and_query()
        .expect("an origin-form target")
        .as_str()
        .as_bytes()
        .to_vec()
}

fn values<'a>(received: &'a Received, name: &str) -> Vec<&'a [u8]> {
    received
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes())
        .collect()
}

/// Checks the parts of a mirror every case shares: the shadow's own `Host`, one
/// `X-Mirrored-From` naming the original's, and no `Connection` or other hop-by-hop header.
fn assert_mirror_basics(received: &Received, shadow: &Shadow, mirrored_from: &[u8]) {
    assert_eq!(
        values(received, "host"),
        [shadow.addr.to_string().as_bytes()]
    );
    assert_eq!(values(received, "x-mirrored-from"), [mirrored_from]);
    for hop in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "expect",
    ] {
        assert!(!received.headers.contains_key(hop), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn obs_text_header_values_are_served_alike_and_mirrored_byte_for_byte() {
    let h = Harness::start().await;
    let request = raw(
        b"GET /x?q=1 HTTP/1.1",
        &[
            b"X-Obs: caf\xe9 \xff\x80\x81 end",
            b"X-Latin1: \xe9t\xe9",
            b"X-Utf8: \xe2\x9c\x93",
        ],
        b"",
    );
    let answer = h.compare(&request).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .text()
            .contains(r#"x-obs: "caf\xe9 \xff\x80\x81 end""#)
    );

    let mirror = h.mirror(1).await;
    assert_eq!(mirror.method, "GET");
    assert_eq!(target_of(&mirror), b"/base/x?q=1");
    assert_eq!(values(&mirror, "x-obs"), [b"caf\xe9 \xff\x80\x81 end"]);
    assert_eq!(values(&mirror, "x-latin1"), [b"\xe9t\xe9"]);
    assert_eq!(values(&mirror, "x-utf8"), ["✓".as_bytes()]);
    assert_mirror_basics(&mirror, &h.shadow, b"primary.example");

    // An obs-text Host is what X-Mirrored-From carries.
    let request = b"GET /x HTTP/1.1\r\nHost: pr\xefmary\xff\r\nConnection: close\r\n\r\n";
    assert_eq!(h.compare(request).await.status, 200);
    let mirror = h.mirror(2).await;
    assert_mirror_basics(&mirror, &h.shadow, b"pr\xefmary\xff");

    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].sampled, 2);
    assert_eq!(stats.targets[0].responded, 2);
    assert_eq!(*h.statuses.lock().unwrap(), [200, 200]);
}

#[tokio::test]
async fn a_60_kib_header_value_is_served_alike_and_mirrored_whole() {
    let h = Harness::start().await;
    let value: Vec<u8> = (0..60 * 1024).map(|i| b'!' + (i % 94) as u8).collect();
    let header = [b"X-Big: ".as_slice(), &value].concat();
    let answer = h.compare(&raw(b"GET /x HTTP/1.1", &[&header], b"")).await;
    assert_eq!(answer.status, 200);

    let mirror = h.mirror(1).await;
    assert_eq!(target_of(&mirror), b"/base/x");
    assert_eq!(values(&mirror, "x-big"), [value.as_slice()]);
    assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].responded, 1);
}

#[tokio::test]
async fn many_headers_up_to_hypers_limit_are_mirrored_in_order_and_beyond_it_refused_alike() {
    let h = Harness::start().await;
    // 60 distinct names and 38 values of one name: with Host and Connection, hyper's 100.
    let mut headers: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("X-H-{i:03}: v{i}").into_bytes())
        .collect();
    headers.extend((0..38).map(|i| format!("X-Repeat: r{i}").into_bytes()));
    let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
    let answer = h.compare(&raw(b"GET /x HTTP/1.1", &refs, b"")).await;
    assert_eq!(answer.status, 200);

    let mirror = h.mirror(1).await;
    for i in 0..60 {
        let expected = format!("v{i}");
        assert_eq!(
            values(&mirror, &format!("x-h-{i:03}")),
            [expected.as_bytes()]
        );
    }
    let repeats: Vec<String> = (0..38).map(|i| format!("r{i}")).collect();
    let repeats: Vec<&[u8]> = repeats.iter().map(|r| r.as_bytes()).collect();
    assert_eq!(
        values(&mirror, "x-repeat"),
        repeats,
        "values kept, in order"
    );
    assert_mirror_basics(&mirror, &h.shadow, b"primary.example");

    // One more header: hyper answers 431 before any service runs, with or without the layer.
    headers.push(b"X-One-Too-Many: 1".to_vec());
    let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
    let answer = h.compare(&raw(b"GET /x HTTP/1.1", &refs, b"")).await;
    assert_eq!(answer.status, 431);

    let stats = h.accounted().await;
    assert_eq!(
        stats.targets[0].sampled, 1,
        "the refused request never reached the layer"
    );
    assert_eq!(stats.targets[0].responded, 1);
}

#[tokio::test]
async fn a_request_at_the_header_limit_is_mirrored_and_an_identical_target_refuses_it() {
    // Without `Connection` to drop, the mirror carries one header more than the original
    // (X-Mirrored-From), so a hyper target with hyper's limit of 100 answers 431. The layer
    // sends it as it is and counts the answer; the primary is untouched. HTTP/1.0 closes the
    // connection after the response without a `Connection` header.
    let h = Harness::start().await;
    let mut request = b"GET /x HTTP/1.0\r\nHost: primary.example\r\n".to_vec();
    for i in 0..99 {
        request.extend_from_slice(format!("X-H-{i:02}: {i}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    assert_eq!(h.compare(&request).await.status, 200);

    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].responded, 1);
    assert_eq!(*h.statuses.lock().unwrap(), [431]);
}

#[tokio::test]
async fn absolute_form_targets_are_mirrored_by_path_and_query_only() {
    let h = Harness::start().await;
    let cases: [(&[u8], &[u8], &[u8]); 3] = [
        (
            b"GET http://other.example/x?y HTTP/1.1",
            b"/base/x?y",
            b"other.example",
        ),
        (
            b"GET https://user:pw@other.example:8443/x?a=1&b HTTP/1.1",
            b"/base/x?a=1&b",
            b"other.example:8443",
        ),
        (
            b"GET http://other.example HTTP/1.1",
            b"/base/",
            b"other.example",
        ),
    ];
    for (n, (line, expected, authority)) in cases.into_iter().enumerate() {
        let answer = h.compare(&raw(line, &[], b"")).await;
        assert_eq!(answer.status, 200);
        let mirror = h.mirror(n + 1).await;
        assert_eq!(mirror.method, "GET");
        assert_eq!(target_of(&mirror), expected);
        // X-Mirrored-From is the request target's authority, which wins over `Host` (RFC 9112
        // §3.2.2), without user information.
        assert_mirror_basics(&mirror, &h.shadow, authority);
    }
    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].responded, 3);
}

#[tokio::test]
async fn options_asterisk_and_other_pathless_targets_are_served_alike_and_not_mirrored() {
    let h = Harness::start().await;
    // `OPTIONS *`, and authority-form targets with methods other than CONNECT, which hyper
    // hands to the service as they are.
    let lines: [&[u8]; 3] = [
        b"OPTIONS * HTTP/1.1",
        b"OPTIONS other.example:443 HTTP/1.1",
        b"GET x HTTP/1.1",
    ];
    for line in lines {
        let answer = h.compare(&raw(line, &[], b"")).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.text().starts_with("fallback "), "{}", answer.text());
    }
    let stats = h.accounted().await;
    assert_eq!(stats.not_mirrored.unsupported_uri, 3);
    assert_eq!(stats.targets[0].sampled, 0);
    assert_eq!(h.shadow.count(), 0);
}

#[tokio::test]
async fn odd_paths_are_served_alike_and_mirrored_verbatim() {
    let h = Harness::start().await;
    let paths: [&[u8]; 12] = [
        b"/a/../b",
        b"/..",
        b"/./x",
        b"/%2e%2e/%2E%2E/etc/passwd",
        b"/a%2Fb%2fc",
        b"//double//slash",
        b"//",
        b"/x/",
        b"/caf%C3%A9/%E2%9C%93?q=%F0%9F%A6%80&nul=%00",
        b"/\xe2\x9c\x93/caf\xc3\xa9?\xf0\x9f\xa6\x80",
        b"/x?",
        b"/x??a=%zz&&=#",
    ];
    for (n, path) in paths.into_iter().enumerate() {
        let line = [b"GET ", path, b" HTTP/1.1"].concat();
        let answer = h.compare(&raw(&line, &[], b"")).await;
        assert_eq!(answer.status, 200, "{:?}", String::from_utf8_lossy(path));
        let mirror = h.mirror(n + 1).await;
        // A fragment is not part of a request target: hyper's URI drops it.
        let sent = path.split(|&b| b == b'#').next().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&target_of(&mirror)),
            String::from_utf8_lossy(&[PREFIX.as_bytes(), sent].concat())
        );
        assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
    }
    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].responded, paths.len() as u64);
}

#[tokio::test]
async fn a_30_kib_query_is_mirrored_exactly() {
    let h = Harness::start().await;
    let query: String = (0..30 * 1024 / 8).map(|i| format!("k{i:04}=v&")).collect();
    let line = format!("GET /x?{query} HTTP/1.1");
    let answer = h.compare(&raw(line.as_bytes(), &[], b"")).await;
    assert_eq!(answer.status, 200);
    let mirror = h.mirror(1).await;
    assert_eq!(
        String::from_utf8(target_of(&mirror)).unwrap(),
        format!("/base/x?{query}")
    );
    assert_eq!(h.accounted().await.targets[0].responded, 1);
}

#[tokio::test]
async fn a_request_target_too_long_to_join_is_served_alike_and_counted() {
    // hyper takes request targets up to 65,534 bytes; with the base path in front, the joined
    // target is longer than `http::Uri` allows, so there is nothing to send.
    let h = Harness::start().await;
    let line = format!("GET /x?{} HTTP/1.1", "q".repeat(65_534 - 3));
    assert_eq!(h.compare(&raw(line.as_bytes(), &[], b"")).await.status, 200);
    // One byte more and hyper refuses it, with or without the layer.
    let line = format!("GET /x?{} HTTP/1.1", "q".repeat(65_535 - 3));
    assert_eq!(h.compare(&raw(line.as_bytes(), &[], b"")).await.status, 414);

    let stats = h.accounted().await;
    let t = &stats.targets[0];
    assert_eq!(t.sampled, 1);
    assert_eq!(
        t.sent + t.skipped.total(),
        1,
        "sent or skipped, and counted"
    );
    assert_eq!(h.shadow.count(), 0);
}

#[tokio::test]
async fn duplicate_and_host_like_headers_are_served_alike_and_only_the_first_host_names_the_origin()
{
    let h = Harness::start().await;
    let request = b"GET /x HTTP/1.1\r\n\
        Host: first.example\r\n\
        X-Forwarded-Host: evil.example\r\n\
        Host: second.example:8080\r\n\
        Forwarded: host=evil2.example;proto=https\r\n\
        X-Host: x.example\r\n\
        Connection: close\r\n\r\n";
    let answer = h.compare(request).await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(
        text.contains("host: \"first.example\"\nhost: \"second.example:8080\""),
        "{text}"
    );

    let mirror = h.mirror(1).await;
    assert_mirror_basics(&mirror, &h.shadow, b"first.example");
    assert_eq!(values(&mirror, "x-forwarded-host"), [b"evil.example"]);
    assert_eq!(
        values(&mirror, "forwarded"),
        [b"host=evil2.example;proto=https"]
    );
    assert_eq!(values(&mirror, "x-host"), [b"x.example"]);

    // An empty Host, and none at all.
    let request = b"GET /x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n";
    assert_eq!(h.compare(request).await.status, 200);
    assert_mirror_basics(&h.mirror(2).await, &h.shadow, b"");
    let request = b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(h.compare(request).await.status, 200);
    assert_mirror_basics(&h.mirror(3).await, &h.shadow, b"");

    assert_eq!(h.accounted().await.targets[0].responded, 3);
}

#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_alike_and_mirrored_with_its_real_length() {
    // hyper does not refuse the conflict: Transfer-Encoding wins, Content-Length is dropped
    // and the connection is closed after the response (RFC 9112 §6.3).
    let h = Harness::start().await;
    let chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let orders: [[&[u8]; 2]; 2] = [
        [b"Content-Length: 3", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 3"],
    ];
    for (n, headers) in orders.into_iter().enumerate() {
        let answer = h
            .compare(&raw(b"POST /x HTTP/1.1", &headers, chunked))
            .await;
        assert_eq!(answer.status, 200);
        let text = answer.text();
        assert!(text.contains("body b\"hello world\""), "{text}");
        assert!(!text.contains("content-length"), "{text}");

        let mirror = h.mirror(n + 1).await;
        assert_eq!(mirror.method, "POST");
        assert_eq!(mirror.body, "hello world");
        assert_eq!(values(&mirror, "content-length"), [b"11"]);
        assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
    }

    // What hyper does refuse, it refuses before any service runs, with or without the layer.
    let refused: [Vec<u8>; 4] = [
        raw(
            b"POST /x HTTP/1.1",
            &[b"Transfer-Encoding: gzip", b"Content-Length: 0"],
            b"",
        ),
        raw(
            b"POST /x HTTP/1.1",
            &[b"Content-Length: 0", b"Content-Length: 1"],
            b"",
        ),
        raw(b"POST /x HTTP/1.1", &[b"Content-Length: -1"], b""),
        raw(
            b"POST /x HTTP/1.0",
            &[b"Transfer-Encoding: chunked"],
            b"0\r\n\r\n",
        ),
    ];
    for request in &refused {
        assert_eq!(h.compare(request).await.status, 400);
    }
    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].sampled, 2);
    assert_eq!(stats.targets[0].responded, 2);
}

#[tokio::test]
async fn head_and_get_with_a_body_are_served_alike_and_mirrored_with_it() {
    let h = Harness::start().await;
    for (n, method) in ["HEAD", "GET"].into_iter().enumerate() {
        let line = format!("{method} /x HTTP/1.1");
        let answer = h
            .compare(&raw(line.as_bytes(), &[b"Content-Length: 5"], b"hello"))
            .await;
        assert_eq!(answer.status, 200);
        if method == "HEAD" {
            assert!(answer.body.is_empty(), "{answer:?}");
            assert!(answer.head.contains("content-length:"), "{}", answer.head);
        } else {
            assert!(answer.text().contains("body b\"hello\""));
        }
        let mirror = h.mirror(n + 1).await;
        assert_eq!(mirror.method, method);
        assert_eq!(target_of(&mirror), b"/base/x");
        assert_eq!(mirror.body, "hello");
        assert_eq!(values(&mirror, "content-length"), [b"5"]);
        assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
    }
    assert_eq!(h.accounted().await.targets[0].responded, 2);
}

#[tokio::test]
async fn a_garbage_mirrored_from_is_served_alike_and_stops_the_mirror() {
    let h = Harness::start().await;
    let garbage: [&[u8]; 3] = [
        b"X-Mirrored-From: \xff\xfe<script>;;,,\x80",
        b"X-Mirrored-From:",
        b"x-MIRRORED-from: a, b, c",
    ];
    for header in garbage {
        let answer = h.compare(&raw(b"GET /x HTTP/1.1", &[header], b"")).await;
        assert_eq!(answer.status, 200);
    }
    let stats = h.accounted().await;
    assert_eq!(stats.not_mirrored.already_mirrored, 3);
    assert_eq!(stats.targets[0].sampled, 0);
    assert_eq!(h.shadow.count(), 0);
}

#[tokio::test]
async fn without_the_loop_guard_a_garbage_mirrored_from_is_replaced_by_one_value() {
    let h = Harness::with(|options| Options {
        loop_guard: false,
        ..options
    })
    .await;
    let request = raw(
        b"GET /x HTTP/1.1",
        &[
            b"X-Mirrored-From: \xff\xfe<script>;;,,\x80",
            b"X-Mirrored-From: second",
        ],
        b"",
    );
    assert_eq!(h.compare(&request).await.status, 200);
    let mirror = h.mirror(1).await;
    assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
    assert_eq!(h.accounted().await.targets[0].responded, 1);
}

#[tokio::test]
async fn headers_named_by_connection_are_not_mirrored() {
    let h = Harness::start().await;
    let request = raw(
        b"GET /x HTTP/1.1",
        &[
            b"Connection: X-Hop, x-other",
            b"X-Hop: secret",
            b"X-Other: 2",
            b"X-Kept: 3",
        ],
        b"",
    );
    assert_eq!(h.compare(&request).await.status, 200);
    let mirror = h.mirror(1).await;
    assert!(!mirror.headers.contains_key("x-hop"));
    assert!(!mirror.headers.contains_key("x-other"));
    assert_eq!(values(&mirror, "x-kept"), [b"3"]);
    assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
    assert_eq!(h.accounted().await.targets[0].responded, 1);
}

/// Regression (found by fuzzing): a `Connection` value with an obs-text byte was skipped whole,
/// so the headers it names were forwarded to the target.
#[tokio::test]
async fn headers_named_by_a_connection_value_with_obs_text_are_not_mirrored() {
    let h = Harness::start().await;
    let request = raw(
        b"GET /x HTTP/1.1",
        &[b"Connection: x-hop, caf\xe9", b"X-Hop: secret"],
        b"",
    );
    assert_eq!(h.compare(&request).await.status, 200);
    let mirror = h.mirror(1).await;
    assert!(
        !mirror.headers.contains_key("x-hop"),
        "X-Hop, named by Connection, was mirrored: {:?}",
        mirror.headers
    );
    assert_eq!(h.accounted().await.targets[0].responded, 1);
}

/// Regression: a request target that hyper accepts but that is too long to join onto the base
/// path was counted as `failed` without `on_error` being told.
#[tokio::test]
async fn a_request_target_too_long_to_join_reaches_on_error() {
    let h = Harness::start().await;
    let line = format!("GET /x?{} HTTP/1.1", "q".repeat(65_534 - 3));
    assert_eq!(h.compare(&raw(line.as_bytes(), &[], b"")).await.status, 200);
    let stats = h.accounted().await;
    let t = &stats.targets[0];
    let errors = h.errors.lock().unwrap().len() as u64;
    assert_eq!((t.failed, errors), (1, 1), "{t:?}");
}

#[tokio::test]
async fn malformed_requests_are_refused_alike_before_the_layer() {
    let h = Harness::start().await;
    let requests: [&[u8]; 8] = [
        b"GET /x HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n b\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nX-Nul: a\x00b\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nHost : h\r\nConnection: close\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"G\xc3\x89T /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/9.9\r\nHost: h\r\nConnection: close\r\n\r\n",
    ];
    for request in requests {
        let answer = h.compare(request).await;
        assert!(
            (400..500).contains(&answer.status),
            "{:?}: {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    let stats = h.accounted().await;
    assert_eq!(stats.targets[0].sampled, 0);
    assert_eq!(stats.not_mirrored.iter().map(|(_, n)| n).sum::<u64>(), 0);
}

#[tokio::test]
async fn odd_but_valid_framing_is_served_alike_and_mirrored() {
    let h = Harness::start().await;
    let requests: [(&[u8], &str, &[u8]); 4] = [
        // Bare LF line endings.
        (
            b"POST /x HTTP/1.1\nHost: primary.example\nContent-Length: 2\nConnection: close\n\nok",
            "POST",
            b"ok",
        ),
        // An extension method and chunk extensions with trailers.
        (
            b"PURGE /x HTTP/1.1\r\nHost: primary.example\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n2;ext=1\r\nab\r\n0\r\nX-Trailer: t\r\n\r\n",
            "PURGE",
            b"ab",
        ),
        // Leading zeros in Content-Length.
        (
            b"PUT /x HTTP/1.1\r\nHost: primary.example\r\nContent-Length: 0003\r\n\
              Connection: close\r\n\r\nabc",
            "PUT",
            b"abc",
        ),
        // Empty lines before the request line (RFC 9112 §2.2).
        (
            b"\r\n\r\nDELETE /x HTTP/1.1\r\nHost: primary.example\r\nConnection: close\r\n\r\n",
            "DELETE",
            b"",
        ),
    ];
    for (n, (request, method, body)) in requests.into_iter().enumerate() {
        let answer = h.compare(request).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let mirror = h.mirror(n + 1).await;
        assert_eq!(mirror.method, method);
        assert_eq!(target_of(&mirror), b"/base/x");
        assert_eq!(mirror.body, body);
        assert_mirror_basics(&mirror, &h.shadow, b"primary.example");
        assert!(!mirror.headers.contains_key("x-trailer"));
    }
    assert_eq!(h.accounted().await.targets[0].responded, 4);
}
