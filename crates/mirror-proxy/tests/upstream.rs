//! End-to-end tests of the upstream leg: the real `mirror-proxy` binary in front of real
//! servers on loopback. When the upstream timeout runs, whose fault a failing request body
//! is, the version of the answer to the client, and HTTP/2 (gRPC) upstreams.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{Proxy, Server, TempDir, bind, client, eventually, send, within};

/// One HTTP/1.1 response read off a raw connection: status, head, body. Every response
/// these tests read this way has a `Content-Length` (the proxy's own answers, and the test
/// upstream's).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    within("a response on the raw connection", async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().unwrap())
                    })
                    .unwrap_or_else(|| panic!("no content-length in {head:?}"));
                if buf.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]);
                    return (status, head, body.into_owned());
                }
            }
            let n = stream.read(&mut chunk).await.expect("reading the response");
            assert!(n > 0, "the connection closed in a response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// `/stats` `primary` counters.
fn primary(stats: &Value, key: &str) -> u64 {
    stats["primary"][key].as_u64().unwrap()
}

fn rejected(stats: &Value, reason: &str) -> u64 {
    stats["primary"]["rejected"][reason].as_u64().unwrap()
}

/// A raw upstream: for every connection it reads the request head, writes `answer` (if any),
/// and then holds the connection open without reading another byte.
async fn raw_upstream(answer: Option<&'static [u8]>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = bind().await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if let Some(answer) = answer {
                let _ = stream.write_all(answer).await;
            }
            held.push(stream);
        }
    });
    (url, task)
}

/// 1a. A slow upload is the client's time, not the upstream's: a body that takes longer
/// than `--upstream-timeout` to arrive is forwarded and answered; and the timeout still
/// runs once the body is done, from its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_timeout_runs_from_the_end_of_the_body() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    // The body's pieces are spaced out on purpose: the upload must outlast the timeout.
    const PACE: Duration = Duration::from_millis(100);
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--upstream-timeout", "300ms"]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /stream HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    for i in 1..=6 {
        stream
            .write_all(b"2\r\nab\r\n")
            .await
            .expect("the proxy still reads the body");
        eventually("the chunk at the upstream", || upstream.streamed() >= 2 * i).await;
        tokio::time::sleep(PACE).await;
    }
    assert!(
        started.elapsed() > TIMEOUT,
        "the upload outlasts the timeout"
    );
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "streamed 12"));

    // On the same connection: a slow upload to an upstream that then never answers. The 504
    // comes one timeout after the body's end, not one after the request's start.
    let head = format!(
        "POST /hang HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        stream
            .write_all(b"2\r\nab\r\n")
            .await
            .expect("the proxy still reads the body");
        tokio::time::sleep(PACE).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let body_end = tokio::time::Instant::now();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body_end.elapsed() >= TIMEOUT,
        "504 after {:?} from the body's end",
        body_end.elapsed()
    );
    assert_eq!(upstream.only("/hang").body, "abababab");

    let stats = proxy.stats().await;
    assert_eq!(primary(&stats, "upstream_timeouts"), 1, "{stats:#}");
    assert_eq!(stats["primary"]["responses"]["2xx"], 1, "{stats:#}");
}

/// 1b. An upstream that stops reading a body part-way is still timed out: the timeout runs
/// while the upstream is not taking the body, not only after the body's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_is_timed_out() {
    let (upstream, _task) = raw_upstream(None).await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-timeout", "300ms"]).await;

    // Far more than the socket buffers on the way hold, so the upload stalls.
    const LEN: usize = 64 << 20;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {LEN}\r\n\r\n",
        proxy.addr
    );
    let upload = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.unwrap();
        // Fails or stalls once the proxy gives up; the response is what counts.
        let _ = writer.write_all(&vec![b'x'; LEN]).await;
        writer
    });
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    within("the 504", async {
        while !response.ends_with(b"did not answer in time\n") {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without an answer: {response:?}");
            response.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
    upload.abort();

    let stats = proxy.stats().await;
    assert_eq!(primary(&stats, "upstream_timeouts"), 1, "{stats:#}");
    assert_eq!(rejected(&stats, "body_error"), 0, "{stats:#}");
}

/// 1c. An upstream may answer before the request body is done: the answer reaches the
/// client at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_is_forwarded_before_the_body_ends() {
    let (upstream, _task) = raw_upstream(Some(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 5\r\n\r\nearly",
    ))
    .await;
    let proxy = Proxy::start(&["--upstream", &upstream, "--upstream-timeout", "300ms"]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\r\nabc",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!((status, body.as_str()), (413, "early"));

    let stats = proxy.stats().await;
    assert_eq!(primary(&stats, "upstream_timeouts"), 0, "{stats:#}");
    assert_eq!(stats["primary"]["responses"]["4xx"], 1, "{stats:#}");
}

/// 2a. A client that goes away in the middle of its body: counted as the client's body
/// error, not as an unavailable upstream (also with the body mirrored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_its_body_is_not_an_upstream_error() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /stream HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n0123456789",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    eventually("the first bytes at the upstream", || {
        upstream.streamed() >= 10
    })
    .await;
    drop(stream);

    // The refusal and the 4xx are counted one after the other by the worker thread; /stats
    // may be read between the two, so wait for both.
    let stats = proxy
        .wait_stats("a body error answered 4xx", |s| {
            rejected(s, "body_error") == 1 && s["primary"]["responses"]["4xx"] == 1
        })
        .await;
    assert_eq!(primary(&stats, "upstream_unavailable"), 0, "{stats:#}");
    assert_eq!(primary(&stats, "upstream_timeouts"), 0, "{stats:#}");
    assert_eq!(stats["primary"]["responses"]["4xx"], 1, "{stats:#}");
    assert_eq!(stats["primary"]["responses"]["5xx"], 0, "{stats:#}");
    assert_eq!(shadow.count(), 0, "a failed body is not mirrored");
}

/// 2b. Invalid chunked framing: 400, counted as a body error, not an upstream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunked_framing_is_a_400() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /stream HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    eventually("the first chunk at the upstream", || {
        upstream.streamed() >= 5
    })
    .await;
    stream.write_all(b"zz\r\nnot a chunk\r\n").await.unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("400 Bad Request"), "{body}");

    let stats = proxy.stats().await;
    assert_eq!(rejected(&stats, "body_error"), 1, "{stats:#}");
    assert_eq!(primary(&stats, "upstream_unavailable"), 0, "{stats:#}");
    assert_eq!(stats["primary"]["responses"]["4xx"], 1, "{stats:#}");
}

/// 2c. A body that stalls past `--body-timeout`: 408, counted as a body timeout, not as an
/// upstream timeout or error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_a_408() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--body-timeout", "300ms"]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /stream HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n0123456789",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.starts_with("408 Request Timeout"), "{body}");

    let stats = proxy.stats().await;
    assert_eq!(rejected(&stats, "body_timeout"), 1, "{stats:#}");
    assert_eq!(rejected(&stats, "body_error"), 0, "{stats:#}");
    assert_eq!(primary(&stats, "upstream_timeouts"), 0, "{stats:#}");
    assert_eq!(primary(&stats, "upstream_unavailable"), 0, "{stats:#}");
}

/// 3. An HTTP/1.0 upstream (answers `HTTP/1.0 200 OK` without a length and closes): the
/// client still gets HTTP/1.1 answers on one keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upstream_keeps_the_client_connection_alive() {
    let listener = bind().await;
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let _task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfrom 1.0")
                    .await;
                // Closing ends the body: HTTP/1.0 without a length.
            });
        }
    });
    let proxy = Proxy::start(&["--upstream", &upstream]).await;

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    for path in ["/first", "/second"] {
        within("the client connection to be ready", sender.ready())
            .await
            .unwrap_or_else(|e| panic!("{path}: the keep-alive connection closed: {e}"));
        let request = Request::get(path)
            .header("host", proxy.addr.to_string())
            .body(Full::default())
            .unwrap();
        let response = within(path, sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.version(), Version::HTTP_11, "{path}");
        assert!(
            !response.headers().contains_key("connection"),
            "{path}: {:?}",
            response.headers()
        );
        let body = within(path, response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "from 1.0", "{path}");
    }
    assert!(!connection.is_finished(), "still open after two requests");
}

/// 4. `upstream_http2 = true` (and `--upstream-http2`): HTTP/2 with prior knowledge to the
/// upstream, `TE: trailers` kept (and only that), no `Host` beside `:authority`; the HTTP/1.1
/// client's answer is still HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_gets_h2c_with_te_trailers_and_no_host() {
    let upstream = Server::upstream().await;
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!("upstream = \"{}\"\nupstream_http2 = true\n", upstream.url),
    );
    let with_file = Proxy::start(&["--config", config.to_str().unwrap()]).await;
    let with_flag = Proxy::start(&["--upstream", &upstream.url, "--upstream-http2"]).await;
    let client = client();

    for (proxy, name) in [(&with_file, "file"), (&with_flag, "flag")] {
        for (te, expected) in [("trailers, deflate", Some("trailers")), ("deflate", None)] {
            let path = format!("/{name}/{}", expected.is_some());
            let request = Request::post(proxy.url(&path))
                .header("te", te)
                .body(Full::from("h2 body"))
                .unwrap();
            let response = send(&client, request).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.version(), Version::HTTP_11, "{path}");

            let at_upstream = upstream.only(&path);
            assert_eq!(at_upstream.version, Version::HTTP_2, "{path}");
            assert_eq!(at_upstream.body, "h2 body", "{path}");
            assert_eq!(
                at_upstream.header_all("te"),
                expected.into_iter().collect::<Vec<_>>(),
                "{path}"
            );
            assert!(!at_upstream.headers.contains_key("host"), "{path}");
            assert_eq!(
                at_upstream.uri.authority().unwrap().as_str(),
                upstream.addr.to_string(),
                "{path}: `:authority` names the upstream"
            );
            assert_eq!(
                at_upstream.header("x-forwarded-host"),
                proxy.addr.to_string(),
                "{path}: the client's host"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

const GRPC_SERVICE: &str = "mirror.proxy.Upstream";

/// A gRPC call as a server received it.
#[derive(Clone, Debug)]
struct GrpcCall {
    path: String,
    version: Version,
    authority: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

/// A real tonic server with the health service (`GRPC_SERVICE` serving) on loopback,
/// recording every call it receives.
async fn grpc_server() -> (SocketAddr, Arc<Mutex<Vec<GrpcCall>>>) {
    use tower::ServiceExt;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&calls);
    let record = tower::layer::layer_fn(move |routes: tonic::service::Routes| {
        let recorded = Arc::clone(&recorded);
        tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let (recorded, routes) = (Arc::clone(&recorded), routes.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                recorded.lock().unwrap().push(GrpcCall {
                    path: parts.uri.path().to_owned(),
                    version: parts.version,
                    authority: parts.uri.authority().map(|a| a.to_string()),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
                let request =
                    http::Request::from_parts(parts, tonic::body::Body::new(Full::new(body)));
                routes.oneshot(request).await
            }
        })
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(record)
        .add_service(health)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (addr, calls)
}

fn calls_to(calls: &Mutex<Vec<GrpcCall>>, method: &str) -> Vec<GrpcCall> {
    let path = format!("/grpc.health.v1.Health/{method}");
    let calls = calls.lock().unwrap();
    calls.iter().filter(|c| c.path == path).cloned().collect()
}

fn header<'a>(call: &'a GrpcCall, name: &str) -> Option<&'a str> {
    call.headers.get(name).map(|v| v.to_str().unwrap())
}

/// 5. gRPC through the proxy: `--upstream-http2` to a tonic upstream, a `[[mirror]]` with
/// `http2 = true` to a tonic shadow. A unary call and a server-streaming call succeed (the
/// `grpc-status` trailers reach the client), and the shadow gets the whole call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_goes_through_and_is_mirrored() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (upstream, upstream_calls) = grpc_server().await;
    let (shadow, shadow_calls) = grpc_server().await;
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!("[[mirror]]\nurl = \"http://{shadow}\"\nhttp2 = true\n"),
    );
    let upstream_url = format!("http://{upstream}");
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream_url,
        "--upstream-http2",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;

    let channel = tonic::transport::Endpoint::from_shared(proxy.url(""))
        .unwrap()
        .connect_timeout(support::DEADLINE)
        .connect()
        .await
        .expect("the proxy accepts h2c");
    let mut health = HealthClient::new(channel);
    let request = || HealthCheckRequest {
        service: GRPC_SERVICE.to_owned(),
    };

    // Unary: tonic fails a call whose response lacks the trailers; they are in its metadata.
    let answer = within("the Check call", health.check(request()))
        .await
        .expect("the Check call through the proxy succeeds");
    assert_eq!(
        answer
            .metadata()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "the trailers reached the client: {:?}",
        answer.metadata()
    );
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);

    // Server streaming: the first message of a watch that never ends.
    let mut watch = within("the Watch call", health.watch(request()))
        .await
        .expect("the Watch call through the proxy succeeds")
        .into_inner();
    let first = within("the first Watch message", watch.message())
        .await
        .expect("a message, not an error")
        .expect("a message, not the end of the stream");
    assert_eq!(first.status(), ServingStatus::Serving);

    let at_upstream = calls_to(&upstream_calls, "Check");
    assert_eq!(at_upstream.len(), 1);
    let at_upstream = &at_upstream[0];
    assert_eq!(at_upstream.version, Version::HTTP_2);
    assert_eq!(header(at_upstream, "te"), Some("trailers"));
    assert_eq!(header(at_upstream, "host"), None);
    assert_eq!(at_upstream.authority, Some(upstream.to_string()));
    assert_eq!(calls_to(&upstream_calls, "Watch").len(), 1);

    eventually("the Check call at the shadow", || {
        !calls_to(&shadow_calls, "Check").is_empty()
    })
    .await;
    let at_shadow = calls_to(&shadow_calls, "Check");
    assert_eq!(at_shadow.len(), 1);
    let at_shadow = &at_shadow[0];
    assert_eq!(at_shadow.version, Version::HTTP_2);
    assert_eq!(header(at_shadow, "content-type"), Some("application/grpc"));
    assert_eq!(header(at_shadow, "te"), Some("trailers"));
    assert!(!at_upstream.body.is_empty());
    assert_eq!(
        at_shadow.body.len(),
        at_upstream.body.len(),
        "the shadow got the whole call"
    );
    assert_eq!(at_shadow.body, at_upstream.body);
    assert_eq!(
        header(at_shadow, "x-mirrored-from"),
        Some(proxy.addr.to_string().as_str())
    );
    let stats = proxy
        .wait_stats("the Check mirror answered", |s| {
            s["mirror"]["targets"][0]["responded"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(primary(&stats, "upstream_unavailable"), 0, "{stats:#}");
}
