//! `mirror-proxy replay`, run as a process against real servers on loopback: a recording the
//! proxy made is replayed byte-exact (method, path, query, headers, body), from plain and gzip
//! files in order, and a source that cannot be read stops it with exit code 2.

mod support;

use std::io::Write;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use support::{Proxy, Received, Server, TempDir, client, run_to_exit, send, target_named};

/// What the tests send through the proxy, and expect again from the replay.
fn originals() -> Vec<Request<Full<Bytes>>> {
    let binary: Bytes = (0..=255u8).cycle().take(3000).collect();
    vec![
        Request::get("/api/users?page=2&q=a%20b")
            .header("x-user-id", "42")
            .header("accept", "application/json")
            .body(Full::default())
            .unwrap(),
        Request::post("/api/upload")
            .header("content-type", "application/octet-stream")
            .header("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .body(Full::new(binary))
            .unwrap(),
        Request::builder()
            .method(Method::DELETE)
            .uri("/api/users/7")
            .header("x-twice", "one")
            .header("x-twice", "two")
            .body(Full::default())
            .unwrap(),
    ]
}

/// Records the originals through a proxy whose only target is a file, with `settings`
/// added to its `[[mirror]]` table; returns the file's path.
async fn record(dir: &TempDir, settings: &str) -> std::path::PathBuf {
    let upstream = Server::upstream().await;
    let file = dir.path().join("traffic.ndjson");
    let config = dir.file(
        "proxy.toml",
        &format!(
            "[[mirror]]\nname = \"recording\"\nurl = \"file://{}\"\n{settings}",
            file.display()
        ),
    );
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let client = client();
    for original in originals() {
        let (parts, body) = original.into_parts();
        let mut request = Request::from_parts(parts, body);
        *request.uri_mut() = proxy.url(&request.uri().to_string()).parse().unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    proxy
        .wait_stats("three records written", |s| {
            target_named(s, "recording")["responded"] == 3
        })
        .await;
    file
}

/// The replayed request matches the original: method, path and query, its own headers in
/// order (repeated ones too), and the body byte for byte.
fn assert_replayed(received: &Received, original: &Request<Full<Bytes>>, body: &[u8]) {
    assert_eq!(received.method, original.method());
    assert_eq!(
        received.uri.path_and_query().unwrap().as_str(),
        original.uri().path_and_query().unwrap().as_str()
    );
    for name in original.headers().keys() {
        let sent: Vec<&HeaderValue> = original.headers().get_all(name).iter().collect();
        let got: Vec<&HeaderValue> = received.headers.get_all(name).iter().collect();
        assert_eq!(got, sent, "{name}");
    }
    assert_eq!(&received.body[..], body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_replayed_byte_exact_from_plain_and_gzip_files() {
    let dir = TempDir::new();
    let plain = record(&dir, "").await;
    let gz = dir.path().join("traffic.1.ndjson.gz");
    {
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        encoder.write_all(&std::fs::read(&plain).unwrap()).unwrap();
        encoder.finish().unwrap();
    }
    // A line cut short, as a crash mid-write leaves one: skipped and counted.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&plain)
        .unwrap()
        .write_all(b"{\"v\":1,\"time\":\"2026-11-30T01:0\n")
        .unwrap();
    let target = Server::shadow().await;
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        plain.to_str().unwrap(),
        gz.to_str().unwrap(),
        "--to",
        &target.url,
        "--max",
        "--concurrency",
        "1",
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 6 requests"), "{stdout}");
    assert!(stdout.contains("2xx 6"), "{stdout}");
    assert!(stdout.contains("skipped 1 lines"), "{stdout}");
    let received = target.wait_for(6).await;
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        (0..=255u8).cycle().take(3000).collect(),
        Vec::new(),
    ];
    // One at a time, in recorded order: the plain file, then the gzip one.
    for (n, received) in received.iter().enumerate() {
        let i = n % 3;
        assert_replayed(received, &originals()[i], &bodies[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_read_exits_2_with_one_line() {
    let (status, _, stderr) = run_to_exit(&[
        "replay",
        "/no/such/recording.ndjson",
        "--to",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/no/such/recording.ndjson"), "{stderr}");
}

/// A server answering as the test upstream does (the same JSON, content type and headers),
/// but as "candidate" in `served_by`, and with `body_len` one more on `/api/upload`: a
/// regression planted on one route, and noise on every one.
async fn candidate() -> (String, tokio::task::JoinHandle<()>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service =
                hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let (parts, body) = request.into_parts();
                    let len = body.collect().await.map_or(0, |b| b.to_bytes().len());
                    let planted = usize::from(parts.uri.path() == "/api/upload");
                    let text = serde_json::json!({
                        "served_by": "candidate",
                        "method": parts.method.as_str(),
                        "path_and_query": parts.uri.path_and_query().map(|p| p.as_str()),
                        "body_len": len + planted,
                    })
                    .to_string();
                    let response = http::Response::builder()
                        .header("content-type", "application/json")
                        .header("x-multi", "one")
                        .header("x-multi", "two")
                        .body(Full::new(Bytes::from(text)))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_finds_a_planted_difference_and_ignores_configured_noise() {
    let dir = TempDir::new();
    let recording = record(&dir, "record_response = true\n").await;
    let (url, _candidate) = candidate().await;
    let rules = dir.file("rules.toml", "[diff]\nignore_fields = [\"/served_by\"]\n");
    let report = dir.path().join("report.html");
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        recording.to_str().unwrap(),
        "--to",
        &url,
        "--max",
        "--compare",
        "--config",
        rules.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("compared 3 responses with the recorded ones: 1 differed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("POST /api/upload: 1 compared, 1 differ"),
        "{stdout}"
    );
    assert!(stdout.contains("body /body_len: 1 differ"), "{stdout}");
    assert!(
        stdout.contains("3000 -> 3001"),
        "the example values: {stdout}"
    );
    assert!(!stdout.contains("served_by"), "ignored by [diff]: {stdout}");
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("/body_len"), "{page}");
    assert!(!page.contains("served_by"), "{page}");
    assert!(page.contains("No baseline target is configured"), "{page}");

    // Without the rules, the noise is a difference on every route.
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        recording.to_str().unwrap(),
        "--to",
        &url,
        "--max",
        "--compare",
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("compared 3 responses with the recorded ones: 3 differed"),
        "{stdout}"
    );
    assert!(stdout.contains("body /served_by: 1 differ"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_says_when_records_hold_no_response() {
    let dir = TempDir::new();
    let recording = record(&dir, "").await;
    let target = Server::shadow().await;
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        recording.to_str().unwrap(),
        "--to",
        &target.url,
        "--compare",
        "--max",
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("compared 0 responses"), "{stdout}");
    assert!(
        stdout.contains("not compared: 3 records without a recorded response"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goreplay_capture_is_replayed_and_compared_with_its_original_responses() {
    let dir = TempDir::new();
    let sep = "\n🐵🙈🙉\n";
    let messages = [
        "1 a1 1700000000000000000 0\nGET /users?id=7&q=a%20b HTTP/1.1\r\nHost: shop.example\r\nX-Twice: one\r\nX-Twice: two\r\n\r\n",
        "2 a1 1700000000001000000 1500000\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nshadow",
        "1 b2 1700000000002000000 0\nPOST /orders HTTP/1.1\r\nHost: shop.example\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "2 b2 1700000000003000000 2000\nHTTP/1.1 202 Accepted\r\nContent-Length: 6\r\n\r\nshadow",
    ];
    let capture: String = messages.iter().map(|m| format!("{m}{sep}")).collect();
    let gor = dir.file("requests_0.gor", &capture);
    let target = Server::shadow().await;
    let (status, stdout, stderr) = run_to_exit(&[
        "replay",
        gor.to_str().unwrap(),
        "--to",
        &target.url,
        "--max",
        "--concurrency",
        "1",
        "--compare",
    ])
    .await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 2 requests"), "{stdout}");
    let received = target.wait_for(2).await;
    assert_eq!(received[0].method, Method::GET);
    assert_eq!(
        received[0].uri.path_and_query().unwrap().as_str(),
        "/users?id=7&q=a%20b"
    );
    assert_eq!(received[0].header_all("x-twice"), ["one", "two"]);
    assert_eq!(received[1].method, Method::POST);
    assert_eq!(
        &received[1].body[..],
        b"hello world",
        "the chunked body, decoded"
    );
    // The test shadow answers 202 "shadow": the GET's original 200 differs, the POST's
    // original 202 does not.
    assert!(
        stdout.contains("compared 2 responses with the recorded ones: 1 differed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("status -: 1 differ, e.g. /users?id=7&q=a%20b: 200 -> 202"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_fails_part_way_is_replayed_up_to_the_failure_then_exits_2() {
    let dir = TempDir::new();
    let plain = record(&dir, "").await;
    // A gzip file whose second member is garbage: the records before it stream out and are
    // sent, then reading fails.
    let gz = dir.path().join("broken.ndjson.gz");
    {
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        encoder.write_all(&std::fs::read(&plain).unwrap()).unwrap();
        let mut file = encoder.finish().unwrap();
        file.write_all(b"\x1f\x8b\x08\x00garbage that is not deflate")
            .unwrap();
    }
    let target = Server::shadow().await;
    let (status, stdout, stderr) =
        run_to_exit(&["replay", gz.to_str().unwrap(), "--to", &target.url, "--max"]).await;
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 3 requests"), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("broken.ndjson.gz"), "{stderr}");
    assert_eq!(target.wait_for(3).await.len(), 3);
}

/// Responses without a body (a 204, the answer to a `HEAD`) are recorded too, through the
/// real proxy, whose server never polls such a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_primary_responses_are_recorded() {
    let dir = TempDir::new();
    let upstream = Server::upstream().await;
    let file = dir.path().join("traffic.ndjson");
    let config = dir.file(
        "proxy.toml",
        &format!(
            "[[mirror]]\nname = \"recording\"\nurl = \"file://{}\"\nrecord_response = true\n",
            file.display()
        ),
    );
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let client = client();
    let no_content = Request::get(proxy.url("/gone"))
        .header("x-reply-status", "204")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client, no_content).await.status(),
        StatusCode::NO_CONTENT
    );
    let head = Request::head(proxy.url("/head"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, head).await.status(), StatusCode::OK);
    proxy
        .wait_stats("two records written", |s| {
            target_named(s, "recording")["responded"] == 2
        })
        .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let mut statuses: Vec<(String, u16)> = text
        .lines()
        .map(|line| {
            let record = tower_mirror::record::Recorded::parse(line).unwrap();
            let status = record.response.expect("the response is recorded").status;
            (record.uri.path().to_owned(), status.as_u16())
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [("/gone".to_owned(), 204), ("/head".to_owned(), 200)]
    );
}
