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

/// `primary.rejected.REASON` in /stats.
fn rejected(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["primary"]["rejected"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no rejected.{reason} in {stats:#}"))
}

/// Reads from `stream` until the proxy closes it (or resets it); fails after the deadline.
async fn closed_by_proxy(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    within("the proxy to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

/// Sends a raw request head, reads the answer until the proxy closes the connection.
async fn exchange(addr: std::net::SocketAddr, head: String) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&closed_by_proxy(&mut stream).await).into_owned()
}

/// The proxy's peak resident memory (VmHWM), from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Slow clients are closed by the header timeout: one that sends part of a head and stops,
/// one that drips a byte at a time (the timeout is for the whole head, so dripping does not
/// extend it), and an idle keep-alive connection after its request. Each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_by_the_header_timeout() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--header-timeout", "300ms"]).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let mut dripping = TcpStream::connect(proxy.addr).await.unwrap();
    let drip = tokio::spawn(async move {
        // One byte every 50 ms, for at most 10 s: the header timeout ends it long before.
        for byte in b"GET /drip HTTP/1.1\r\nHost: x\r\nX-Long: "
            .iter()
            .cycle()
            .take(200)
        {
            if dripping.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    });
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = closed_by_proxy(&mut idle).await;
    assert!(
        answered.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answered)
    );
    for stream in &mut stalled {
        closed_by_proxy(stream).await;
    }
    assert!(
        within("the dripping client to be cut off", drip)
            .await
            .unwrap()
    );
    let stats = proxy
        .wait_stats("21 header timeouts", |s| {
            rejected(s, "header_timeout") >= 21
        })
        .await;
    assert_eq!(upstream.count(), 1, "{stats:#}");
}

/// Request heads: 121 header fields are forwarded (hyper's default limit of 100 would refuse
/// them, nginx does not); over --max-headers or --max-header-bytes a 431, counted; a head
/// that cannot be parsed a 400, counted. Neither reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_answer_431_and_count_every_refusal() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let raw = |path: &str, fields: usize, field_len: usize| {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..fields {
            head.push_str(&format!("x-field-{i}: {}\r\n", "v".repeat(field_len)));
        }
        head.push_str("\r\n");
        head
    };
    let ok = exchange(proxy.addr, raw("/many", 121, 8)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let too_many = exchange(proxy.addr, raw("/too-many", 300, 8)).await;
    assert!(too_many.starts_with("HTTP/1.1 431"), "{too_many}");
    let too_big = exchange(proxy.addr, raw("/too-big", 10, 4000)).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
    let garbage = exchange(proxy.addr, "GET /bad HTTP/1.1\r\nHost x\r\n\r\n".to_owned()).await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    let stats = proxy
        .wait_stats("the refusals counted", |s| {
            rejected(s, "head_too_large") == 2 && rejected(s, "bad_request") == 1
        })
        .await;
    let paths: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/many"], "{stats:#}");
    shadow.wait_for(1).await;
    let metrics = proxy.metrics().await;
    assert_eq!(
        support::sample(
            &metrics,
            "mirror_proxy_rejected_total{reason=\"head_too_large\",status=\"431\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
}

/// 300 connections each pushing a 100 KB request head (and holding it open) cost bounded
/// memory: each is refused with 431 once it passes the 32 KiB head limit, instead of being
/// buffered up to the ~400 KiB hyper allows by default. Peak RSS read from /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_cost_bounded_memory() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--header-timeout", "30s"]).await;
    let before = peak_rss_kib(proxy.pid());
    let field = format!("x-pad: {}\r\n", "p".repeat(1000));
    let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{}", field.repeat(100));
    let mut writers = Vec::new();
    for _ in 0..300 {
        let head = head.clone();
        let addr = proxy.addr;
        writers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // The proxy stops reading (and closes) past its limit: a failed write is expected.
            let _ = stream.write_all(head.as_bytes()).await;
            stream
        }));
    }
    let mut streams = Vec::new();
    for writer in writers {
        streams.push(within("a head written", writer).await.unwrap());
    }
    let stats = proxy
        .wait_stats("300 heads refused", |s| {
            rejected(s, "head_too_large") == 300
        })
        .await;
    let grown = peak_rss_kib(proxy.pid()).saturating_sub(before);
    // 300 × 100 KB held would be 29 MiB; 300 × 32 KiB at most 9.4 MiB.
    assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB: {stats:#}");
    assert_eq!(upstream.count(), 0);
    drop(streams);
}

/// At --max-connections the proxy stops accepting: the next client waits (in the kernel's
/// backlog) until a connection closes, then is served; the event is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--max-connections",
        "2",
        "--workers",
        "1",
    ])
    .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET /held/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = within("an answer", stream.read(&mut buf)).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    proxy
        .wait_stats("the limit reached", |s| {
            s["primary"]["connection_limit_reached"].as_u64() >= Some(1)
        })
        .await;
    // The counter moves as soon as the second connection is accepted, so it proves little
    // alone: absence cannot be awaited, so give the proxy a bounded chance to (wrongly)
    // answer the third client.
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf));
    assert!(
        early.await.is_err(),
        "the third client was served at the limit"
    );
    assert_eq!(
        upstream.count(),
        2,
        "the third client is not served at the limit"
    );
    drop(held.pop());
    let answer = closed_by_proxy(&mut third).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(upstream.count(), 3);
}

/// A client that stops reading its response is cut off by the send timeout, and the
/// upstream connection that fed it is closed too (not left ESTABLISHED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_its_upstream_connection() {
    // An upstream that answers 64 MiB to anything and reports when its connection breaks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await.unwrap();
        let size = 64 << 20;
        let start = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
        stream.write_all(start.as_bytes()).await.unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            if stream.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    let proxy = Proxy::start(&["--upstream", &upstream_url, "--send-timeout", "300ms"]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Never read: the proxy's writes block, the send timeout closes the connection.
    assert!(
        within("the upstream connection to break", upstream)
            .await
            .unwrap(),
        "the upstream wrote all 64 MiB: nothing stopped"
    );
    proxy
        .wait_stats("a send timeout", |s| rejected(s, "send_timeout") == 1)
        .await;
    drop(client);
}

/// Requests whose client resets the connection straight after sending reach the shadow only
/// if the upstream answered them: a shadow never gets a request production did not process.
/// The rest are counted as `primary_aborted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_requests_never_reach_only_the_shadow() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    for i in 0..50 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let socket = socket2::SockRef::from(&stream);
        // Close with a reset, not a FIN: the abort a client's crash or cancel looks like.
        socket.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        let mut stream = stream;
        let request = format!("DELETE /hang/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        drop(stream);
    }
    // Some resets arrive before the proxy has read the request (nothing to mirror); every
    // request it did read was dropped unanswered, so none may reach the shadow.
    let stats = proxy
        .wait_stats("the aborted requests settled", |s| {
            let t = &s["mirror"]["targets"][0];
            let sampled = t["sampled"].as_u64().unwrap();
            sampled >= 10 && t["skipped"]["primary_aborted"].as_u64() == Some(sampled)
        })
        .await;
    assert_eq!(shadow.count(), 0, "{stats:#}");
    assert_eq!(stats["mirror"]["targets"][0]["sent"], 0, "{stats:#}");
}

/// An HTTP/2 connection with no traffic is closed after --idle-timeout, and counted (not
/// logged: closing idle connections is housekeeping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--idle-timeout", "300ms"]).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get(proxy.url("/once"))
        .body(Full::default())
        .unwrap();
    let response = within("an h2 answer", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Then nothing: the proxy closes the connection, which ends the client's side of it.
    within("the idle connection to close", connection)
        .await
        .unwrap()
        .ok();
    let stats = proxy
        .wait_stats("an idle close counted", |s| {
            rejected(s, "idle_timeout") == 1
        })
        .await;
    assert!(
        !proxy.stderr().contains("no traffic on the connection"),
        "{stats:#}"
    );
}

/// Opens a WebSocket-style upgrade through the proxy; returns the upgraded connection.
async fn upgraded(proxy: &Proxy) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("the 101", stream.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// An upgraded connection keeps its place among --max-connections for as long as it lives
/// (hyper hands it over and forgets it: without that, upgrades escaped the limit), and
/// gives it back when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_count_against_the_connection_limit() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--max-connections",
        "2",
        "--workers",
        "1",
    ])
    .await;
    let mut first = upgraded(&proxy).await;
    let _second = upgraded(&proxy).await;
    first.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    within("the echo", first.read_exact(&mut echo))
        .await
        .unwrap();
    assert_eq!(&echo, b"ping", "the upgraded connection works");

    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Absence cannot be awaited: give the proxy a bounded chance to (wrongly) answer.
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf));
    assert!(
        early.await.is_err(),
        "served beyond the limit while two upgrades are open"
    );
    drop(first);
    let answer = closed_by_proxy(&mut third).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// An upgraded connection with no traffic is closed after --idle-timeout, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_upgraded_connection_is_closed() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--idle-timeout", "300ms"]).await;
    let mut stream = upgraded(&proxy).await;
    closed_by_proxy(&mut stream).await;
    proxy
        .wait_stats("the idle close counted", |s| {
            rejected(s, "idle_timeout") >= 1
        })
        .await;
}
