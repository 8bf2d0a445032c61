//! End-to-end tests of the `mirror-proxy` binary: the real executable in a child process,
//! in front of real upstream and shadow servers on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{
    Answer, Gate, Proxy, Server, TempDir, client, eventually, get, run_to_exit, sample, send,
    settled, target_named, within,
};

/// The one target in /stats with this URL.
fn target<'a>(stats: &'a Value, url: &str) -> &'a Value {
    let targets = stats["mirror"]["targets"].as_array().unwrap();
    let matching: Vec<_> = targets.iter().filter(|t| t["url"] == url).collect();
    assert_eq!(matching.len(), 1, "{url} in {stats:#}");
    matching[0]
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)))
}

/// 1. Method, path, query, end-to-end headers and body reach the upstream and the shadow;
/// hop-by-hop headers do not; the client gets the upstream's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_and_mirrored_intact() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let client = client();
    let proxy_host = proxy.addr.to_string();

    // A JSON POST, with end-to-end headers (one repeated) and hop-by-hop ones.
    let json = br#"{"order":{"id":7,"items":["tea","milk"]},"note":"caf\u00e9"}"#;
    let path = "/api/orders?id=7&tag=a%20b";
    let request = Request::post(proxy.url(path))
        .header("content-type", "application/json")
        .header("authorization", "Bearer token-1")
        .header("cookie", "session=abc")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("x-reply-status", "201")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "connection-specific")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .body(Full::from(&json[..]))
        .unwrap();
    let response = send(&client, request).await;

    // The client gets the upstream's status, headers and body, without its hop-by-hop ones.
    assert_eq!(response.status(), StatusCode::CREATED);
    let h = response.headers();
    assert_eq!(h["x-served-by"], "upstream");
    assert_eq!(h["content-type"], "application/json");
    let multi: Vec<_> = h.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(!h.contains_key("x-upstream-hop"), "{h:?}");
    let answer = body_json(response.body());
    assert_eq!(answer["served_by"], "upstream");
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["path_and_query"], path);
    assert_eq!(answer["body_len"], json.len());

    let at_upstream = upstream.only(path);
    let at_shadow = {
        shadow.wait_for(1).await;
        shadow.only(path)
    };
    for (who, r) in [("upstream", &at_upstream), ("shadow", &at_shadow)] {
        assert_eq!(r.method, "POST", "{who}");
        assert_eq!(r.version, Version::HTTP_11, "{who}");
        assert_eq!(r.body.as_ref(), json, "{who}: body");
        assert_eq!(r.header("content-type"), "application/json", "{who}");
        assert_eq!(r.header("authorization"), "Bearer token-1", "{who}");
        assert_eq!(r.header("cookie"), "session=abc", "{who}");
        assert_eq!(r.header_all("x-custom"), ["one", "two"], "{who}");
        assert_eq!(r.header("x-reply-status"), "201", "{who}");
        for hop in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-authorization",
            "te",
        ] {
            assert!(
                !r.headers.contains_key(hop),
                "{who} got hop-by-hop {hop}: {:?}",
                r.headers
            );
        }
    }
    // The upstream sees the client's Host and the X-Forwarded-* headers, and no mirror mark.
    assert_eq!(at_upstream.header("host"), proxy_host);
    assert_eq!(at_upstream.header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(at_upstream.header("x-forwarded-proto"), "http");
    assert_eq!(at_upstream.header("x-forwarded-host"), proxy_host);
    assert!(!at_upstream.headers.contains_key("x-mirrored-from"));
    // The shadow's copy is addressed to it and marked with the original host.
    assert_eq!(at_shadow.header("host"), shadow.addr.to_string());
    assert_eq!(at_shadow.header("x-mirrored-from"), proxy_host);
    assert_eq!(at_shadow.header("content-length"), json.len().to_string());

    // A GET with a query and no body.
    let request = Request::get(proxy.url("/search?q=rust&page=2"))
        .header("accept", "text/html")
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response.body())["method"], "GET");
    shadow.wait_for(2).await;
    for (who, r) in [
        ("upstream", upstream.only("/search?q=rust&page=2")),
        ("shadow", shadow.only("/search?q=rust&page=2")),
    ] {
        assert_eq!(r.method, "GET", "{who}");
        assert!(r.body.is_empty(), "{who}");
        assert_eq!(
            r.header_all("accept"),
            ["text/html", "application/json"],
            "{who}"
        );
    }
    assert_eq!(
        shadow
            .only("/search?q=rust&page=2")
            .header("x-mirrored-from"),
        proxy_host
    );

    // A 1 MiB binary POST arrives byte for byte at both.
    let big: Bytes = (0..1usize << 20)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let request = Request::post(proxy.url("/upload/big"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(big.clone()))
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response.body())["body_len"], big.len());
    shadow.wait_for(3).await;
    for (who, r) in [
        ("upstream", upstream.only("/upload/big")),
        ("shadow", shadow.only("/upload/big")),
    ] {
        assert_eq!(r.method, "POST", "{who}");
        assert_eq!(r.body.len(), big.len(), "{who}");
        assert!(r.body == big, "{who}: the 1 MiB body differs");
    }
    assert_eq!(upstream.count(), 3);
    let stats = proxy.wait_stats("settled mirrors", settled).await;
    assert_eq!(target(&stats, &shadow.url)["responded"], 3, "{stats:#}");
    assert_eq!(shadow.count(), 3);
}

/// 2. `--mirror A --mirror B=10`: of 100 requests A gets every one and B exactly ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentages_are_exact() {
    let upstream = Server::upstream().await;
    let a = Server::shadow().await;
    let b = Server::shadow().await;
    let b_flag = format!("{}=10", b.url);
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &a.url,
        "--mirror",
        &b_flag,
    ])
    .await;
    let client = client();
    for i in 0..100 {
        let request = Request::get(proxy.url(&format!("/item/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    let stats = proxy.wait_stats("settled mirrors", settled).await;
    for (url, expected) in [(&a.url, 100), (&b.url, 10)] {
        let t = target(&stats, url);
        for key in ["sampled", "sent", "responded"] {
            assert_eq!(t[key], expected, "{url} {key}: {stats:#}");
        }
    }
    assert_eq!(upstream.count(), 100);
    assert_eq!(a.count(), 100);
    assert_eq!(b.count(), 10);
}

/// 3a. Every setting can come from a TOML file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_configures_the_proxy() {
    let upstream = Server::upstream().await;
    let a = Server::shadow().await;
    let b = Server::shadow().await;
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            r#"
listen = "127.0.0.1:0"
upstream = "{upstream}"
admin = "127.0.0.1:0"
upstream_timeout = "300ms"
timeout = "2s"
max_body = "64B"
log_format = "json"

[[mirror]]
url = "{a}"
percentage = 50

[[mirror]]
url = "{b}"
"#,
            upstream = upstream.url,
            a = a.url,
            b = b.url,
        ),
    );
    let config = config.to_str().unwrap();
    let proxy = Proxy::spawn(&["--config", config], true).await;
    // The file's listen address (port 0), not the default 127.0.0.1:8080.
    assert!(proxy.addr.ip().is_loopback());
    assert_ne!(proxy.addr.port(), 8080);

    let client = client();
    for i in 0..10 {
        let request = Request::get(proxy.url(&format!("/get/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    // Over the file's max_body: forwarded whole, not mirrored. It is the 11th request: A's
    // 50 % does not take it, B's 100 % does and skips it.
    let request = Request::post(proxy.url("/too-big"))
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.only("/too-big").body.len(), 100);

    let stats = proxy.wait_stats("settled mirrors", settled).await;
    let (ta, tb) = (target(&stats, &a.url), target(&stats, &b.url));
    assert_eq!(ta["sampled"], 5, "{stats:#}");
    assert_eq!(ta["responded"], 5, "{stats:#}");
    assert_eq!(tb["sampled"], 11, "{stats:#}");
    assert_eq!(tb["responded"], 10, "{stats:#}");
    assert_eq!(tb["skipped"]["body_too_large"], 1, "{stats:#}");
    assert_eq!((a.count(), b.count()), (5, 10));

    // The file's upstream_timeout (the default, 30 s, is beyond the test's deadline).
    let request = Request::get(proxy.url("/hang"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client, request).await.status(),
        StatusCode::GATEWAY_TIMEOUT
    );

    // The file's log format: every stderr line is a JSON object.
    let stderr = proxy.stderr();
    let started = stderr
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .find(|event| event["fields"]["message"] == "mirror-proxy started")
        .unwrap_or_else(|| panic!("no start event in:\n{stderr}"));
    assert_eq!(started["fields"]["upstream"], upstream.url.as_str());
}

/// 3a. Per-target header rules from the config file: the target with `strip_headers` and
/// `set_headers` gets the request without the stripped headers and with the set ones; the
/// other target and the upstream get the client's headers unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_per_target_header_rules() {
    let upstream = Server::upstream().await;
    let staging = Server::shadow().await;
    let analytics = Server::shadow().await;
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            r#"
listen = "127.0.0.1:0"
upstream = "{upstream}"

[[mirror]]
url = "{staging}"
strip_headers = ["Authorization", "cookie"]
set_headers = {{ "X-Shadow" = "1", "authorization" = "Bearer staging-token" }}

[[mirror]]
url = "{analytics}"
"#,
            upstream = upstream.url,
            staging = staging.url,
            analytics = analytics.url,
        ),
    );
    let proxy = Proxy::spawn(&["--config", config.to_str().unwrap()], false).await;

    let request = Request::get(proxy.url("/account?id=7"))
        .header(header::AUTHORIZATION, "Bearer user-secret")
        .header(header::COOKIE, "session=abc")
        .header("x-request-id", "r-1")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), request).await.status(), StatusCode::OK);

    let primary = upstream.only("/account?id=7");
    assert_eq!(primary.header("authorization"), "Bearer user-secret");
    assert_eq!(primary.header("cookie"), "session=abc");
    assert!(primary.headers.get("x-shadow").is_none());

    let staged = &staging.wait_for(1).await[0];
    assert_eq!(staged.uri.to_string(), "/account?id=7");
    // Stripped, then set: the staging credentials replace the user's.
    assert_eq!(staged.header_all("authorization"), ["Bearer staging-token"]);
    assert!(staged.headers.get(header::COOKIE).is_none());
    assert_eq!(staged.header("x-shadow"), "1");
    assert_eq!(staged.header("x-request-id"), "r-1");

    let copied = &analytics.wait_for(1).await[0];
    assert_eq!(copied.header("authorization"), "Bearer user-secret");
    assert_eq!(copied.header("cookie"), "session=abc");
    assert!(copied.headers.get("x-shadow").is_none());
}

/// 3b. Flags override the file: `--listen` its address, `--mirror` its targets, `--timeout`
/// its timeout; what no flag names is still taken from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() {
    let upstream = Server::upstream().await;
    let file_shadow = Server::shadow().await;
    let flag_shadow = Server::shadow_answering(Answer::Never).await;
    // The file's listen address is taken: only the flag lets the proxy start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            r#"
listen = "{taken}"
upstream = "{upstream}"
admin = "127.0.0.1:0"
timeout = "1h"

[[mirror]]
url = "{shadow}"
"#,
            taken = taken.local_addr().unwrap(),
            upstream = upstream.url,
            shadow = file_shadow.url,
        ),
    );
    let config = config.to_str().unwrap();
    let proxy = Proxy::spawn(
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--mirror",
            &flag_shadow.url,
            "--timeout",
            "300ms",
        ],
        true,
    )
    .await;
    assert_ne!(proxy.addr, taken.local_addr().unwrap());

    let client = client();
    for i in 0..2 {
        let request = Request::get(proxy.url(&format!("/r/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    assert_eq!(upstream.count(), 2, "the file's upstream is kept");
    flag_shadow.wait_for(2).await;
    // The flag's 300 ms timeout, not the file's hour.
    let stats = proxy
        .wait_stats("two timed-out mirrors", |s| {
            s["mirror"]["targets"][0]["timed_out"] == 2
        })
        .await;
    let targets = stats["mirror"]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "the flag's targets replace the file's");
    assert_eq!(targets[0]["url"], flag_shadow.url.as_str());
    assert_eq!(file_shadow.count(), 0);
}

/// 3c. MIRROR_PROXY_* environment variables set any flag: they override the file, and flags
/// override them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_sit_between_the_file_and_the_flags() {
    let (from_file, from_env) = (Server::upstream().await, Server::upstream().await);
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
            from_file.url
        ),
    );
    let config = config.to_str().unwrap();
    let proxy = Proxy::spawn_with_env(
        &["--config", config],
        &[("MIRROR_PROXY_UPSTREAM", &from_env.url)],
        false,
    )
    .await;
    let (status, _, _) = get(&proxy.url("/which")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (from_env.count(), from_file.count()),
        (1, 0),
        "the environment wins"
    );
    drop(proxy);

    let flagged = Proxy::spawn_with_env(
        &["--config", config, "--upstream", &from_file.url],
        &[("MIRROR_PROXY_UPSTREAM", &from_env.url)],
        false,
    )
    .await;
    let (status, _, _) = get(&flagged.url("/which")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (from_env.count(), from_file.count()),
        (1, 1),
        "the flag wins"
    );
}

/// 4. Each configuration error: exit code 2, one stderr line naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_2_with_one_line() {
    let dir = TempDir::new();
    let unknown_key = dir.file(
        "unknown.toml",
        "upstream = \"http://127.0.0.1:1\"\nlisten_adress = \"127.0.0.1:0\"\n",
    );
    let bad_value = dir.file(
        "bad-value.toml",
        "upstream = \"http://127.0.0.1:1\"\n\ntimeout = \"5 parsecs\"\n",
    );
    let bad_rate = dir.file(
        "bad-rate.toml",
        "upstream = \"http://127.0.0.1:1\"\n[[mirror]]\nname = \"staging\"\nurl = \"http://127.0.0.1:2\"\nrate = \"fast\"\n",
    );
    let missing = dir.path().join("missing.toml");
    let empty_token = dir.file("empty-token", " \n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (taken, a.to_string())).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "unknown key in the file",
            vec!["--config".into(), s(&unknown_key)],
            vec![s(&unknown_key), "line 2".into(), "listen_adress".into()],
        ),
        (
            "bad duration in the file",
            vec!["--config".into(), s(&bad_value)],
            vec![s(&bad_value), "line 3".into(), "5 parsecs".into()],
        ),
        (
            "missing config file",
            vec!["--config".into(), s(&missing)],
            vec!["--config".into(), s(&missing)],
        ),
        (
            "unreadable config file (a directory)",
            vec!["--config".into(), s(dir.path())],
            vec!["--config".into(), s(dir.path())],
        ),
        (
            "upstream not a URL",
            vec!["--upstream".into(), "not a url".into()],
            vec!["--upstream".into(), "not a url".into()],
        ),
        (
            "upstream with another scheme",
            vec!["--upstream".into(), "ftp://127.0.0.1:21".into()],
            vec!["--upstream".into(), "ftp://127.0.0.1:21".into()],
        ),
        (
            "mirror with another scheme",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "gopher://127.0.0.1:70".into(),
            ],
            vec!["gopher://127.0.0.1:70".into()],
        ),
        (
            "percentage over 100",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "http://127.0.0.1:2=150".into(),
            ],
            vec!["http://127.0.0.1:2".into(), "150".into()],
        ),
        (
            "listen port in use",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--listen".into(),
                taken.1.clone(),
            ],
            vec!["--listen".into(), taken.1.clone()],
        ),
        (
            "admin port in use",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin".into(),
                taken.1.clone(),
            ],
            vec!["--admin".into(), taken.1.clone()],
        ),
        (
            "bad duration for --timeout",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--timeout".into(),
                "5parsecs".into(),
            ],
            vec!["--timeout".into(), "5parsecs".into()],
        ),
        (
            "missing --upstream",
            vec!["--listen".into(), "127.0.0.1:0".into()],
            vec!["--upstream".into()],
        ),
        (
            "percentage =abc",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "http://127.0.0.1:14000=abc".into(),
            ],
            vec![
                "--mirror".into(),
                "http://127.0.0.1:14000=abc".into(),
                "whole number".into(),
            ],
        ),
        (
            "percentage =10.5",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "http://127.0.0.1:14000=10.5".into(),
            ],
            vec![
                "--mirror".into(),
                "http://127.0.0.1:14000=10.5".into(),
                "whole number".into(),
            ],
        ),
        (
            "percentage =-5",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "http://127.0.0.1:14000=-5".into(),
            ],
            vec![
                "--mirror".into(),
                "http://127.0.0.1:14000=-5".into(),
                "whole number".into(),
            ],
        ),
        (
            "percentage =10%",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "http://127.0.0.1:14000=10%".into(),
            ],
            vec![
                "--mirror".into(),
                "http://127.0.0.1:14000=10%".into(),
                "whole number".into(),
            ],
        ),
        (
            "port over 65535",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--mirror".into(),
                "http://127.0.0.1:70000".into(),
            ],
            vec!["http://127.0.0.1:70000".into(), "port 70000".into()],
        ),
        (
            "upstream is the proxy itself",
            vec![
                "--listen".into(),
                "127.0.0.1:18087".into(),
                "--upstream".into(),
                "http://localhost:18087".into(),
            ],
            vec!["--upstream".into(), "forward to itself".into()],
        ),
        (
            "a [[mirror]] key with a bad value",
            vec!["--config".into(), s(&bad_rate)],
            vec![
                "[[mirror]] \"staging\"".into(),
                "rate".into(),
                "fast".into(),
            ],
        ),
        (
            "admin off loopback without a token",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin".into(),
                "0.0.0.0:0".into(),
            ],
            vec![
                "--admin 0.0.0.0:0".into(),
                "loopback".into(),
                "--admin-token-file".into(),
            ],
        ),
        (
            "an empty admin token file",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--admin-token-file".into(),
                s(&empty_token),
            ],
            vec!["--admin-token-file".into(), s(&empty_token), "empty".into()],
        ),
        (
            "a missing admin token file",
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--admin-token-file".into(),
                s(&missing),
            ],
            vec!["--admin-token-file".into(), s(&missing)],
        ),
    ];
    for (case, args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, stdout, stderr) = run_to_exit(&args).await;
        assert_eq!(status.code(), Some(2), "{case}: {status}; stderr: {stderr}");
        assert_eq!(stdout, "", "{case}: nothing on stdout");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{case}: one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("mirror-proxy: "),
            "{case}: {:?}",
            lines[0]
        );
        for word in &expected {
            assert!(
                lines[0].contains(word.as_str()),
                "{case}: {:?} does not name {word:?}",
                lines[0]
            );
        }
    }
}

/// 4a. A second proxy on a running proxy's port is refused, although both listen with
/// `SO_REUSEPORT` (several workers): it exits 2 naming `--listen`, and every request still
/// reaches the first proxy's upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_cannot_share_the_port() {
    let upstream = Server::upstream().await;
    let first = Proxy::start(&["--upstream", &upstream.url, "--workers", "2"]).await;
    let addr = first.addr.to_string();
    let (status, stdout, stderr) = run_to_exit(&[
        "--upstream",
        "http://127.0.0.1:1",
        "--listen",
        &addr,
        "--workers",
        "2",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with("mirror-proxy: ") && stderr.contains("--listen"),
        "{stderr}"
    );
    let client = client();
    for i in 0..20 {
        let request = Request::get(first.url(&format!("/after/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    assert_eq!(upstream.count(), 20);
}

/// 4b. `--help` exits 0 and documents every flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_flag() {
    let (status, stdout, _) = run_to_exit(&["--help"]).await;
    assert_eq!(status.code(), Some(0), "{status}");
    // Every flag --help shows is in README's flag table, and the table names no flag that
    // --help does not: the two cannot drift apart.
    let flags: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', ',', '=']).next())
        .filter(|flag| !["help", "version"].contains(flag))
        .collect();
    assert!(flags.len() >= 25, "{flags:?}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    for flag in &flags {
        assert!(
            readme.contains(&format!("| `--{flag}")) || readme.contains(&format!(", `--{flag}")),
            "README's flag table does not list --{flag}"
        );
    }
    for row in readme.lines().filter(|l| l.starts_with("| `--")) {
        let flag = row[3..]
            .split([' ', '`'])
            .next()
            .unwrap()
            .trim_start_matches("--");
        assert!(
            flags.contains(&flag),
            "README lists --{flag}, which --help does not show"
        );
    }
}

/// 5. /stats, /metrics and /healthz after some traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_count_the_traffic() {
    let upstream = Server::upstream().await;
    let a = Server::shadow().await;
    let b = Server::shadow().await;
    let b_flag = format!("{}=50", b.url);
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &a.url,
        "--mirror",
        &b_flag,
    ])
    .await;

    let (status, _, body) = get(&proxy.admin_url("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), b"ok\n");

    let client = client();
    for i in 0..10 {
        let status = if i < 8 { "200" } else { "404" };
        let request = Request::get(proxy.url(&format!("/s/{i}")))
            .header("x-reply-status", status)
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status().as_str(), status);
    }

    let stats = proxy
        .wait_stats("settled mirrors and their responses", |s| {
            settled(s)
                && s["mirror"]["targets"][0]["responses"]["2xx"] == 10
                && s["mirror"]["targets"][1]["responses"]["2xx"] == 5
        })
        .await;
    let primary = &stats["primary"];
    assert_eq!(primary["responses"]["2xx"], 8, "{stats:#}");
    assert_eq!(primary["responses"]["4xx"], 2, "{stats:#}");
    assert_eq!(primary["responses"]["5xx"], 0, "{stats:#}");
    assert_eq!(primary["upstream_unavailable"], 0, "{stats:#}");
    assert_eq!(primary["upstream_timeouts"], 0, "{stats:#}");
    assert_eq!(primary["upstream_latency_ms"]["count"], 10, "{stats:#}");
    for (url, n) in [(&a.url, 10), (&b.url, 5)] {
        let t = target(&stats, url);
        for key in ["sampled", "sent", "responded"] {
            assert_eq!(t[key], n, "{url} {key}: {stats:#}");
        }
        for key in ["failed", "timed_out", "dropped_overload", "in_flight"] {
            assert_eq!(t[key], 0, "{url} {key}: {stats:#}");
        }
        assert_eq!(t["latency_ms"]["count"], n, "{url}: {stats:#}");
    }
    assert_eq!(stats["mirror"]["not_mirrored"]["upgrade"], 0);
    assert_eq!((a.count(), b.count()), (10, 5));

    let (ra, rb) = (
        format!(
            "mirror_proxy_mirror_requests_total{{target=\"{}\",outcome=\"responded\"}}",
            a.url
        ),
        format!(
            "mirror_proxy_mirror_requests_total{{target=\"{}\",outcome=\"responded\"}}",
            b.url
        ),
    );
    let latency_count = format!(
        "mirror_proxy_mirror_latency_seconds_count{{target=\"{}\",outcome=\"responded\"}}",
        a.url
    );
    let text = proxy
        .wait_metrics("the mirror counters", |text| {
            sample(text, &ra) == Some(10.0)
                && sample(text, &rb) == Some(5.0)
                && sample(text, &latency_count) == Some(10.0)
        })
        .await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect(
        &format!(
            "mirror_proxy_mirror_requests_total{{target=\"{}\",outcome=\"failed\"}}",
            a.url
        ),
        0.0,
    );
    expect(
        &format!("mirror_proxy_mirror_sampled_total{{target=\"{}\"}}", b.url),
        5.0,
    );
    expect("mirror_proxy_requests_total{status_class=\"2xx\"}", 8.0);
    expect("mirror_proxy_requests_total{status_class=\"4xx\"}", 2.0);
    expect(
        &format!(
            "mirror_proxy_mirror_latency_seconds_bucket{{target=\"{}\",outcome=\"responded\",le=\"+Inf\"}}",
            a.url
        ),
        10.0,
    );
    expect(
        &format!(
            "mirror_proxy_mirror_latency_seconds_bucket{{target=\"{}\",outcome=\"responded\",le=\"+Inf\"}}",
            b.url
        ),
        5.0,
    );
    expect(
        "mirror_proxy_upstream_latency_seconds_bucket{le=\"+Inf\"}",
        10.0,
    );
    expect("mirror_proxy_upstream_latency_seconds_count", 10.0);
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("mirror_proxy_upstream_latency_seconds_bucket{le="))
        .count();
    assert!(buckets > 1, "upstream latency buckets in:\n{text}");
}

/// 6a. An upstream that does not answer in time: 504 with a short body, counted; the proxy
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_a_504_and_the_proxy_keeps_serving() {
    let upstream = Server::upstream().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--upstream-timeout", "300ms"]).await;
    let client = client();

    let request = Request::get(proxy.url("/hang"))
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    assert!(text.starts_with("504 Gateway Timeout"), "{text:?}");
    assert!(text.len() < 200, "{text:?}");
    upstream.only("/hang");

    let request = Request::get(proxy.url("/fast"))
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response.body())["path_and_query"], "/fast");

    let stats = proxy.stats().await;
    let primary = &stats["primary"];
    assert_eq!(primary["upstream_timeouts"], 1, "{stats:#}");
    assert_eq!(primary["upstream_unavailable"], 0, "{stats:#}");
    assert_eq!(primary["responses"]["5xx"], 1, "{stats:#}");
    assert_eq!(primary["responses"]["2xx"], 1, "{stats:#}");
}

/// 6b. An upstream that refuses connections: 502 with a short body, counted; once it
/// listens, the same proxy forwards to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_upstream_is_a_502_and_the_proxy_recovers() {
    // Bound but not listening: connections to it are refused, and no one else can take it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream_url = format!("http://{}", socket.local_addr().unwrap());
    let proxy = Proxy::start(&["--upstream", &upstream_url]).await;
    let client = client();

    let request = Request::get(proxy.url("/first"))
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let text = String::from_utf8(response.body().to_vec()).unwrap();
    assert!(text.starts_with("502 Bad Gateway"), "{text:?}");
    assert!(text.len() < 200, "{text:?}");
    // Logged at warn, once a second at most: five more 502s add no line.
    for _ in 0..5 {
        let request = Request::get(proxy.url("/again"))
            .body(Full::default())
            .unwrap();
        assert_eq!(
            send(&client, request).await.status(),
            StatusCode::BAD_GATEWAY
        );
    }
    eventually("a warn line for the 502s", || {
        proxy.stderr().contains("upstream failed")
    })
    .await;
    let stderr = proxy.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("upstream failed"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("status=502"),
        "{stderr}"
    );

    let upstream = Server::upstream_on(socket.listen(64).unwrap());
    let request = Request::get(proxy.url("/second"))
        .body(Full::default())
        .unwrap();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response.body())["path_and_query"], "/second");
    assert_eq!(upstream.count(), 1);

    let stats = proxy.stats().await;
    let primary = &stats["primary"];
    assert_eq!(primary["upstream_unavailable"], 6, "{stats:#}");
    assert_eq!(primary["upstream_timeouts"], 0, "{stats:#}");
    assert_eq!(primary["responses"]["5xx"], 6, "{stats:#}");
    assert_eq!(primary["responses"]["2xx"], 1, "{stats:#}");
}

/// 7. A protocol upgrade goes through to the upstream and back, and is not mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_proxied_and_not_mirrored() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::get("/ws")
        .header(header::HOST, proxy.addr.to_string())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "echo")
        .body(Empty::new())
        .unwrap();
    let response = within("the 101", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()[header::UPGRADE], "echo");
    let upgraded = within("the upgrade", hyper::upgrade::on(response))
        .await
        .unwrap();
    let mut io = TokioIo::new(upgraded);
    for message in [&b"ping through the proxy"[..], &[0u8, 1, 2, 255, 254][..]] {
        within("the echo", async {
            io.write_all(message).await.unwrap();
            let mut echoed = vec![0; message.len()];
            io.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, message);
        })
        .await;
    }
    assert_eq!(upstream.upgrades(), 1);
    let at_upstream = upstream.only("/ws");
    assert_eq!(at_upstream.header("upgrade"), "echo");
    assert!(
        at_upstream
            .header("connection")
            .eq_ignore_ascii_case("upgrade")
    );

    let stats = proxy.stats().await;
    assert_eq!(stats["mirror"]["not_mirrored"]["upgrade"], 1, "{stats:#}");
    assert_eq!(target(&stats, &shadow.url)["sampled"], 0, "{stats:#}");
    // The next plain request is mirrored, and is the only thing the shadow ever got.
    let request = Request::get(proxy.url("/after"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), request).await.status(), StatusCode::OK);
    shadow.wait_for(1).await;
    shadow.only("/after");
    let stats = proxy.wait_stats("settled mirrors", settled).await;
    assert_eq!(target(&stats, &shadow.url)["responded"], 1, "{stats:#}");
    assert_eq!(shadow.count(), 1);
}

/// 8a. SIGTERM with a request and mirrors to a slow shadow in flight: the proxy stops
/// accepting, finishes the request, delivers the mirrors, exits 0 and says it shut down
/// cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_mirrors_in_flight() {
    let upstream_gate = Gate::closed();
    let upstream = Server::upstream_gated(&upstream_gate).await;
    let shadow_gate = Gate::closed();
    let shadow = Server::shadow_answering(Answer::AfterGate(
        shadow_gate.clone(),
        Duration::from_secs(1),
    ))
    .await;
    let mut proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &shadow.url,
        "--drain-timeout",
        "5s",
    ])
    .await;
    let client = client();
    for i in 0..5 {
        let request = Request::post(proxy.url(&format!("/job/{i}")))
            .body(Full::from(format!("job {i}")))
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    // One request still waiting for the upstream's answer.
    let in_flight = {
        let request = Request::get(proxy.url("/gated"))
            .body(Full::default())
            .unwrap();
        let client = client.clone();
        tokio::spawn(async move { send(&client, request).await })
    };
    upstream.wait_for(6).await;
    // The bodiless /gated request is mirrored once the upstream has answered it.
    shadow.wait_for(5).await;
    assert_eq!(shadow.answered(), 0, "the shadow holds every answer back");

    proxy.terminate();
    proxy.wait_refusing().await;
    assert!(!in_flight.is_finished());
    upstream_gate.open();
    let response = within("the request in flight", in_flight).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response.body())["path_and_query"], "/gated");
    // Its mirror left during the shutdown, and is drained with the others.
    shadow.wait_for(6).await;
    // The shadow answers each mirror a second from now.
    shadow_gate.open();
    let (status, stderr) = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{stderr}");
    assert_eq!(
        shadow.answered(),
        6,
        "every mirror answered before exit; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("shut down cleanly"),
        "no clean shutdown in stderr:\n{stderr}"
    );
    assert!(!stderr.contains("abandoning"), "{stderr}");
}

/// 8a'. The same with two workers: each runs its own event loop and spawns its own mirrors,
/// and each must keep running them after SIGTERM until they are delivered. Sixteen
/// connections, which the kernel spreads over both workers' listeners (all on one worker has a
/// chance of 2^-15; the test checks delivery either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_mirrors_of_every_worker() {
    const CONNECTIONS: usize = 16;
    let upstream = Server::upstream().await;
    let shadow_gate = Gate::closed();
    let shadow =
        Server::shadow_answering(Answer::AfterGate(shadow_gate.clone(), Duration::ZERO)).await;
    let mut proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &shadow.url,
        "--workers",
        "2",
        "--drain-timeout",
        "10s",
    ])
    .await;
    for i in 0..CONNECTIONS {
        // A client of its own: a new connection, so a new pick among the listeners.
        let request = Request::get(proxy.url(&format!("/worker-spread/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client(), request).await.status(), StatusCode::OK);
    }
    shadow.wait_for(CONNECTIONS).await;
    assert_eq!(shadow.answered(), 0, "the shadow holds every answer back");

    proxy.terminate();
    proxy.wait_refusing().await;
    shadow_gate.open();
    let (status, stderr) = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{stderr}");
    assert_eq!(
        shadow.answered(),
        CONNECTIONS,
        "every mirror answered before exit; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("shut down cleanly"),
        "no clean shutdown in stderr:\n{stderr}"
    );
}

/// 8b. SIGTERM with mirrors to a shadow that never answers: after the drain timeout the
/// process exits 0 and reports the abandoned mirrors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_abandons_mirrors_after_the_drain_timeout() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow_answering(Answer::Never).await;
    // The mirror timeout is far beyond the test's deadline: only the drain timeout can end it.
    let mut proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &shadow.url,
        "--timeout",
        "1h",
        "--drain-timeout",
        "200ms",
        "--log-format",
        "json",
    ])
    .await;
    let client = client();
    for i in 0..3 {
        let request = Request::get(proxy.url(&format!("/stuck/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    shadow.wait_for(3).await;

    proxy.terminate();
    let (status, stderr) = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{stderr}");
    let events: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let report = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("abandoning"))
        })
        .unwrap_or_else(|| panic!("no abandoned-work report in stderr:\n{stderr}"));
    assert_eq!(report["level"], "WARN", "{report}");
    assert_eq!(report["fields"]["mirrors"], 3, "{report}");
    assert_eq!(report["fields"]["connections"], 0, "{report}");
    assert!(!stderr.contains("shut down cleanly"), "{stderr}");
    assert_eq!(shadow.answered(), 0);
}

/// 9. HTTP/2 with prior knowledge (h2c) from the client: several streams on one connection,
/// forwarded as HTTP/1.1 and mirrored; the idle connection does not hold up a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let mut proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let authority = proxy.addr.to_string();

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..5 {
        let mut sender = sender.clone();
        let request = Request::post(proxy.url(&format!("/h2/{i}?n={i}")))
            .header("x-stream", i.to_string())
            .body(Full::from(format!("h2 body {i}")))
            .unwrap();
        streams.push(tokio::spawn(async move {
            let response = within("an h2 response", sender.send_request(request))
                .await
                .unwrap();
            let version = response.version();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (version, status, body)
        }));
    }
    for (i, stream) in streams.into_iter().enumerate() {
        let (version, status, body) = stream.await.unwrap();
        assert_eq!(version, Version::HTTP_2);
        assert_eq!(status, StatusCode::OK);
        let answer = body_json(&body);
        assert_eq!(answer["path_and_query"], format!("/h2/{i}?n={i}"));
        assert_eq!(answer["body_len"], format!("h2 body {i}").len());
    }

    shadow.wait_for(5).await;
    for i in 0..5 {
        let path = format!("/h2/{i}?n={i}");
        let body = format!("h2 body {i}");
        let (up, sh) = (upstream.only(&path), shadow.only(&path));
        assert_eq!(up.version, Version::HTTP_11);
        assert_eq!(up.method, "POST");
        assert_eq!(up.body, body);
        assert_eq!(up.header("x-stream"), i.to_string());
        assert_eq!(up.header("host"), authority);
        assert_eq!(up.header("x-forwarded-host"), authority);
        assert_eq!(sh.method, "POST");
        assert_eq!(sh.body, body);
        assert_eq!(sh.header("x-stream"), i.to_string());
        assert_eq!(sh.header("x-mirrored-from"), authority);
    }

    // The h2 connection is still open, idle: a SIGTERM closes it and the proxy exits cleanly.
    assert!(!sender.is_closed());
    let _ = proxy.wait_stats("settled mirrors", settled).await;
    proxy.terminate();
    let (status, stderr) = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("shut down cleanly"),
        "no clean shutdown in stderr:\n{stderr}"
    );
}

/// 10. A chunked request body streams through to the upstream as it arrives, and the
/// shadow gets all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_stream_through_and_are_mirrored() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /stream HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        proxy.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"6\r\nhello,\r\n").await.unwrap();
    // The first chunk reaches the upstream while the rest has not been sent.
    eventually("the first chunk at the upstream", || {
        upstream.streamed() >= 6
    })
    .await;
    assert_eq!(upstream.count(), 0, "the request is still open");
    stream
        .write_all(b"a\r\n streaming\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    within("the response", stream.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("streamed 22"), "{response}");

    let body = "hello, streaming world";
    assert_eq!(upstream.only("/stream").body, body);
    shadow.wait_for(1).await;
    let at_shadow = shadow.only("/stream");
    assert_eq!(at_shadow.method, "POST");
    assert_eq!(at_shadow.body, body);
    assert_eq!(at_shadow.header("content-type"), "text/plain");
    assert_eq!(at_shadow.header("content-length"), "22");
    assert!(!at_shadow.headers.contains_key("transfer-encoding"));
}

/// 5b. A target whose connections are all busy: further mirrors are dropped at once and
/// counted (`no_connection`), never queued; the exchanges that went out and hung show in
/// `mirror_proxy_mirror_latency_seconds{outcome="timed_out"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_target_drops_mirrors_for_want_of_a_connection() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow_answering(Answer::Never).await;
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            r#"
[[mirror]]
name = "slow"
url = "{}"
max_connections = 2
"#,
            shadow.url
        ),
    );
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--config",
        config.to_str().unwrap(),
        "--timeout",
        "2s",
    ])
    .await;
    let client = client();
    for i in 0..5 {
        let request = Request::get(proxy.url(&format!("/busy/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    shadow.wait_for(2).await;
    let stats = proxy
        .wait_stats("two mirrors sent and three dropped", |s| {
            let t = target_named(s, "slow");
            t["sent"] == 2 && t["dropped_no_connection"] == 3
        })
        .await;
    let t = target_named(&stats, "slow");
    assert_eq!(t["connections"], 2, "{t:#}");
    assert_eq!(t["in_flight"], 2, "{t:#}");
    assert_eq!(shadow.count(), 2, "nothing waits to go out");

    // The callback that records the latency runs before the counter moves: wait for both.
    let latency =
        "mirror_proxy_mirror_latency_seconds_count{target=\"slow\",outcome=\"timed_out\"}";
    let timed_out = "mirror_proxy_mirror_requests_total{target=\"slow\",outcome=\"timed_out\"}";
    let text = proxy
        .wait_metrics("the hung exchanges' latency", |text| {
            sample(text, latency) == Some(2.0) && sample(text, timed_out) == Some(2.0)
        })
        .await;
    assert_eq!(
        sample(
            &text,
            "mirror_proxy_mirror_dropped_total{target=\"slow\",reason=\"no_connection\"}"
        ),
        Some(3.0),
        "{text}"
    );
}

/// 5c. A recording target writes each mirror it takes as one NDJSON line, counted as
/// responded; a path that cannot be written stops the start with exit 2 naming the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_target_writes_one_line_per_mirror() {
    let upstream = Server::upstream().await;
    let dir = TempDir::new();
    let file = dir.path().join("traffic.ndjson");
    let config = dir.file(
        "proxy.toml",
        &format!(
            r#"
[[mirror]]
name = "recording"
url = "file://{}"
paths = ["/api"]
"#,
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
    for path in ["/api/a?x=1", "/other", "/api/b"] {
        let request = Request::post(proxy.url(path))
            .body(Full::new(Bytes::from(format!("body of {path}"))))
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    proxy
        .wait_stats("two records written", |s| {
            target_named(s, "recording")["responded"] == 2
        })
        .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let uris: Vec<&str> = records.iter().map(|r| r["uri"].as_str().unwrap()).collect();
    assert_eq!(uris, ["/api/a?x=1", "/api/b"]);
    assert_eq!(records[0]["body"]["base64"], "Ym9keSBvZiAvYXBpL2E/eD0x");

    let bad = dir.file(
        "bad.toml",
        "[[mirror]]\nname = \"recording\"\nurl = \"file:///no/such/dir/t.ndjson\"\n",
    );
    let (status, _, stderr) = run_to_exit(&[
        "--upstream",
        &upstream.url,
        "--config",
        bad.to_str().unwrap(),
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("recording") && stderr.contains("/no/such/dir/t.ndjson"),
        "{stderr}"
    );
}
