//! What an operator sees: `/metrics` checked by `promtool`, warn lines for 502s and dropped
//! mirrors, the access log, and the configuration read from the environment and `--no-…`
//! switches. The real binary, on loopback.

mod support;

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use support::{Answer, Gate, Proxy, Server, TempDir, client, eventually, sample, send, within};

/// The JSON log events on `stderr` whose message is `message`.
fn events(stderr: &str, message: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["fields"]["message"] == message)
        .collect()
}

async fn get_status(client: &support::HttpClient, url: String) -> StatusCode {
    let request = Request::get(url).body(Full::default()).unwrap();
    send(client, request).await.status()
}

/// `promtool check metrics` on the live `/metrics` after traffic that makes most series exist
/// (mirrors sent and dropped, a reload, a 404): no lint output at all. Every series the proxy
/// exports carries its one prefix (or is a standard `process_*` one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_passes_on_a_live_metrics_page() {
    let Some(promtool) = find_promtool() else {
        assert!(
            std::env::var_os("MIRROR_PROXY_REQUIRE_PROMTOOL").is_none(),
            "MIRROR_PROXY_REQUIRE_PROMTOOL is set but promtool is not on PATH"
        );
        eprintln!(
            "SKIPPED promtool_passes_on_a_live_metrics_page: no promtool on PATH \
             (Debian package `prometheus`); set MIRROR_PROXY_REQUIRE_PROMTOOL to make this fail"
        );
        return;
    };
    let upstream = Server::upstream().await;
    let (shadow, capped) = (Server::shadow().await, Server::shadow().await);
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            "upstream = \"{}\"\n\
             [[mirror]]\nname = \"shadow\"\nurl = \"{}\"\n\
             [[mirror]]\nname = \"capped\"\nurl = \"{}\"\nrate = \"1/h\"\n",
            upstream.url, shadow.url, capped.url
        ),
    );
    let proxy = Proxy::start(&["--config", config.to_str().unwrap(), "--log-format", "json"]).await;
    let client = client();
    for i in 0..5 {
        assert_eq!(
            get_status(&client, proxy.url(&format!("/p/{i}"))).await,
            StatusCode::OK
        );
    }
    let reload = Request::post(proxy.admin_url("/reload"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client, reload).await.status(), StatusCode::OK);
    let metrics = proxy
        .wait_metrics("the mirrors sent and dropped", |text| {
            sample(
                text,
                "mirror_proxy_mirror_requests_total{target=\"shadow\",outcome=\"responded\"}",
            ) == Some(5.0)
                && sample(
                    text,
                    "mirror_proxy_mirror_dropped_total{target=\"capped\",reason=\"rate_limited\"}",
                ) == Some(4.0)
        })
        .await;
    assert_eq!(
        sample(&metrics, "mirror_proxy_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!("mirror_proxy_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "process_start_time_seconds").is_some_and(|t| t > 1.0e9));
    for line in metrics.lines().filter(|l| !l.is_empty()) {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        assert!(
            name.starts_with("mirror_proxy_") || name.starts_with("process_"),
            "a series outside the prefix: {line}"
        );
    }
    assert!(
        metrics.contains("# HELP mirror_proxy_mirror_latency_seconds "),
        "{metrics}"
    );

    let mut check = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool starts");
    let mut stdin = check.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, metrics.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = within("promtool", check.wait_with_output()).await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}\non:\n{metrics}",
        output.status
    );

    // The drops were logged at warn, per target and reason, with their count.
    eventually("a warn line for the dropped mirrors", || {
        let lines = events(&proxy.stderr(), "mirrors dropped");
        let dropped: u64 = lines
            .iter()
            .filter(|e| e["fields"]["target"] == "capped")
            .map(|e| e["fields"]["dropped"].as_u64().unwrap())
            .sum();
        dropped == 4
    })
    .await;
    for event in events(&proxy.stderr(), "mirrors dropped") {
        assert_eq!(event["level"], "WARN", "{event}");
        assert_eq!(event["fields"]["reason"], "rate_limited", "{event}");
    }
}

fn find_promtool() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
}

/// A 502 from a refusing upstream is a warn line whose fields are plain JSON values: the
/// status, the upstream and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_is_a_structured_warn_line() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream = format!("http://{}", socket.local_addr().unwrap());
    let proxy = Proxy::start(&["--upstream", &upstream, "--log-format", "json"]).await;
    let client = client();
    assert_eq!(
        get_status(&client, proxy.url("/down")).await,
        StatusCode::BAD_GATEWAY
    );
    eventually("a warn line for the 502", || {
        !events(&proxy.stderr(), "upstream failed").is_empty()
    })
    .await;
    let event = &events(&proxy.stderr(), "upstream failed")[0];
    assert_eq!(event["level"], "WARN", "{event}");
    let fields = &event["fields"];
    assert_eq!(fields["status"], 502, "{event}");
    assert_eq!(fields["upstream"], upstream.as_str(), "{event}");
    assert_eq!(fields["reason"], "unavailable", "{event}");
    assert_eq!(fields["suppressed"], 0, "{event}");
    drop(socket);
}

/// The mirror decisions of each access-log line, as `target -> decision[:reason]`.
fn decisions(line: &Value) -> Vec<(String, String)> {
    line["mirrors"]
        .as_array()
        .unwrap_or_else(|| panic!("no mirrors array in {line}"))
        .iter()
        .map(|m| {
            let decision = match m["reason"].as_str() {
                Some(reason) => format!("{}:{reason}", m["decision"].as_str().unwrap()),
                None => m["decision"].as_str().unwrap().to_owned(),
            };
            (m["target"].as_str().unwrap().to_owned(), decision)
        })
        .collect()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `--access-log FILE` in JSON: one line per request, with the client, the request, the
/// status, the body bytes sent, and each target's decision (sent, filtered, dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_access_log_has_a_line_per_request_with_the_mirror_decisions() {
    let upstream = Server::upstream().await;
    let (all, only, capped) = (
        Server::shadow().await,
        Server::shadow().await,
        Server::shadow().await,
    );
    let dir = TempDir::new();
    let log = dir.path().join("access.log");
    let config = dir.file(
        "proxy.toml",
        &format!(
            "upstream = \"{}\"\naccess_log = \"{}\"\n\
             [[mirror]]\nname = \"all\"\nurl = \"{}\"\n\
             [[mirror]]\nname = \"only\"\nurl = \"{}\"\npaths = [\"/only\"]\n\
             [[mirror]]\nname = \"capped\"\nurl = \"{}\"\nrate = \"1/h\"\n",
            upstream.url,
            log.display(),
            all.url,
            only.url,
            capped.url
        ),
    );
    let proxy = Proxy::start(&["--config", config.to_str().unwrap()]).await;
    let client = client();
    let mut sent = Vec::new();
    for (method, path) in [
        (Method::GET, "/one?x=1"),
        (Method::POST, "/two"),
        (Method::GET, "/only/3"),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(proxy.url(path))
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let response = send(&client, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        sent.push((method, path, response.body().len()));
    }
    eventually("three access-log lines", || lines_of(&log).len() == 3).await;
    let lines: Vec<Value> = lines_of(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for (line, (method, path, bytes)) in lines.iter().zip(&sent) {
        assert_eq!(line["method"], method.as_str(), "{line}");
        assert_eq!(line["target"], *path, "{line}");
        assert_eq!(line["version"], "HTTP/1.1", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes"], *bytes as u64, "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        let client = line["client"].as_str().unwrap();
        assert!(client.starts_with("127.0.0.1:"), "{line}");
    }
    let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(t, d)| (t.to_string(), d.to_string()))
            .collect()
    };
    assert_eq!(
        decisions(&lines[0]),
        expect(&[("all", "sent"), ("only", "filtered"), ("capped", "sent")])
    );
    assert_eq!(
        decisions(&lines[1]),
        expect(&[
            ("all", "sent"),
            ("only", "filtered"),
            ("capped", "dropped:rate_limited")
        ])
    );
    assert_eq!(
        decisions(&lines[2]),
        expect(&[
            ("all", "sent"),
            ("only", "sent"),
            ("capped", "dropped:rate_limited")
        ])
    );
}

/// `--access-log -` in the Common Log Format: one line per request on stdout, the CLF fields
/// first, then the duration and the mirror decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_common_access_log_goes_to_stdout() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let mirror = format!("{}=100", shadow.url);
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream.url,
        "--mirror",
        &mirror,
        "--access-log",
        "-",
        "--access-log-format",
        "common",
    ])
    .await;
    let client = client();
    for path in ["/c/1", "/c/2?q=%22x%22"] {
        assert_eq!(get_status(&client, proxy.url(path)).await, StatusCode::OK);
    }
    eventually("two access-log lines on stdout", || {
        proxy.stdout().lines().count() == 2
    })
    .await;
    let stdout = proxy.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, request) in lines
        .iter()
        .zip(["GET /c/1 HTTP/1.1", "GET /c/2?q=%22x%22 HTTP/1.1"])
    {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains(" +0000] "), "{line}");
        assert!(line.contains(&format!("\"{request}\" 200 ")), "{line}");
        assert!(
            line.ends_with(&format!(" mirrors=\"{}:sent\"", shadow.url)),
            "{line}"
        );
    }
}

/// An environment variable overrides the config file, and a flag the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_overrides_the_file_and_a_flag_the_environment() {
    let upstream = Server::upstream().await;
    let other = Server::upstream().await;
    let dir = TempDir::new();
    // The file's upstream refuses connections: only the environment's answers.
    let config = dir.file("proxy.toml", "upstream = \"http://127.0.0.1:1\"\n");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ];
    let env = [("MIRROR_PROXY_UPSTREAM", upstream.url.as_str())];
    let proxy = Proxy::spawn_with_env(&args, &env, true).await;
    let client = client();
    assert_eq!(get_status(&client, proxy.url("/env")).await, StatusCode::OK);
    assert_eq!(upstream.count(), 1);

    let mut with_flag = args.to_vec();
    with_flag.extend(["--upstream", other.url.as_str()]);
    let proxy = Proxy::spawn_with_env(&with_flag, &env, true).await;
    assert_eq!(
        get_status(&client, proxy.url("/flag")).await,
        StatusCode::OK
    );
    assert_eq!((upstream.count(), other.count()), (1, 1));
}

/// `--no-sync` turns off the file's `sync = true` (and beats `MIRROR_PROXY_SYNC=true`): the
/// upstream answers while the shadow still holds its mirror. In sync mode the request would
/// wait for the shadow, up to the file's 60 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_switch_overrides_the_file() {
    let upstream = Server::upstream().await;
    let gate = Gate::closed();
    let shadow =
        Server::shadow_answering(Answer::AfterGate(gate.clone(), Default::default())).await;
    let dir = TempDir::new();
    let config = dir.file(
        "proxy.toml",
        &format!(
            "upstream = \"{}\"\nsync = true\ntimeout = \"60s\"\n[[mirror]]\nurl = \"{}\"\n",
            upstream.url, shadow.url
        ),
    );
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--config",
        config.to_str().unwrap(),
        "--no-sync",
    ];
    let proxy = Proxy::spawn_with_env(&args, &[("MIRROR_PROXY_SYNC", "true")], true).await;
    eventually("the start line", || {
        !events(&proxy.stderr(), "mirror-proxy started").is_empty()
    })
    .await;
    let started = events(&proxy.stderr(), "mirror-proxy started");
    assert_eq!(started[0]["fields"]["mode"], "async", "{started:?}");
    let client = client();
    assert_eq!(
        get_status(&client, proxy.url("/async")).await,
        StatusCode::OK
    );
    shadow.wait_for(1).await;
    assert_eq!(
        shadow.answered(),
        0,
        "the primary did not wait for the shadow"
    );
    gate.open();
}
