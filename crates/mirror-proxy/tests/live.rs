//! End-to-end tests of operating the real binary live: reloads under load, the kill switch,
//! pausing a target, changing its percentage, a refused reload, the admin token, SIGHUP.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use support::{
    Answer, Gate, Proxy, Server, TempDir, client, eventually, run_to_exit, sample, send, settled,
    signal, target_named,
};

/// A counter of the target named `name` in /stats.
fn count(stats: &Value, name: &str, key: &str) -> u64 {
    target_named(stats, name)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}.{key} in {stats:#}"))
}

/// `name` percent-encoded as one path segment (target names default to their URL).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An admin request: status and JSON body (`Null` when the body is not JSON).
async fn admin(
    proxy: &Proxy,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(proxy.admin_url(path));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_owned()));
    let response = send(&client(), request.body(Full::new(body)).unwrap()).await;
    let json = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status(), json)
}

async fn post(proxy: &Proxy, path: &str) -> (StatusCode, Value) {
    admin(proxy, Method::POST, path, None, None).await
}

/// Sends `n` GETs to `path`, one after the other; each must be answered 200.
async fn requests(proxy: &Proxy, path: &str, n: usize) {
    let client = client();
    for i in 0..n {
        let request = Request::get(proxy.url(&format!("{path}/{i}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
}

/// Writes the config file: listen and admin on port 0, then `rest`.
fn config_file(dir: &TempDir, rest: &str) -> std::path::PathBuf {
    dir.file(
        "proxy.toml",
        &format!("listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{rest}"),
    )
}

async fn start_with_file(path: &std::path::Path) -> Proxy {
    Proxy::spawn(&["--config", path.to_str().unwrap()], true).await
}

/// A bounded client loop on loopback: `tasks` tasks, each sending GETs until told to stop or
/// `max` requests, recording every answer.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &Proxy, tasks: usize, max: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|task| {
                let (stop, answered, failures) = (
                    Arc::clone(&stop),
                    Arc::clone(&answered),
                    Arc::clone(&failures),
                );
                let base = proxy.url(&format!("/load/{task}"));
                tokio::spawn(async move {
                    let client = client();
                    for i in 0..max {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let request = Request::get(format!("{base}/{i}"))
                            .body(Full::default())
                            .unwrap();
                        let outcome = match client.request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                match response.into_body().collect().await {
                                    Ok(_) if status.is_success() => Ok(()),
                                    Ok(_) => Err(format!("{status}")),
                                    Err(e) => Err(format!("{status}, body: {e}")),
                                }
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        if let Err(failure) = outcome {
                            failures.lock().unwrap().push(failure);
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Self {
            stop,
            answered,
            failures,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests than now have been answered.
    async fn advance(&self, n: u64) {
        let target = self.answered() + n;
        eventually(&format!("the load to reach {target} requests"), || {
            self.answered() >= target
        })
        .await;
    }

    /// Stops the loop; returns how many requests were sent and the failures.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            support::within("the load to stop", task).await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.answered.load(Ordering::SeqCst), failures)
    }
}

/// Twenty reloads under continuous load — adding, changing and removing targets, switching
/// the upstream and the mirror options — lose no primary request, and the target they all
/// keep never loses a count: its `sampled` never goes backwards, and at the end the shadow
/// received exactly what it counts as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_lose_no_request_and_keep_the_counts() {
    let upstreams = [Server::upstream().await, Server::upstream().await];
    let (steady_shadow, extra_shadow) = (Server::shadow().await, Server::shadow().await);
    let dir = TempDir::new();
    let percentages = [100, 50, 100, 75];
    let config = |i: usize| {
        let mut text = format!(
            "upstream = \"{}\"\ntimeout = \"{}\"\nmax_in_flight = {}\n\
             [[mirror]]\nname = \"steady\"\nurl = \"{}\"\npercentage = {}\n",
            upstreams[i % 2].url,
            if i.is_multiple_of(3) { "5s" } else { "4s" },
            if i.is_multiple_of(2) { 256 } else { 128 },
            steady_shadow.url,
            percentages[i % 4],
        );
        // Reload i adds extra-i and removes extra-(i-2).
        for j in i.saturating_sub(1).max(1)..=i {
            text.push_str(&format!(
                "[[mirror]]\nname = \"extra-{j}\"\nurl = \"{}/extra-{j}\"\n",
                extra_shadow.url
            ));
        }
        text
    };
    let path = config_file(&dir, &config(0));
    let proxy = start_with_file(&path).await;
    let load = Load::start(&proxy, 4, 50_000);
    load.advance(50).await;

    let mut sampled = count(&proxy.stats().await, "steady", "sampled");
    for i in 1..=20 {
        config_file(&dir, &config(i));
        let (status, changes) = post(&proxy, "/reload").await;
        assert_eq!(status, StatusCode::OK, "reload {i}: {changes}");
        assert_eq!(
            changes["added"],
            json!([format!("extra-{i}")]),
            "reload {i}"
        );
        let removed: Vec<String> = (i >= 3)
            .then(|| format!("extra-{}", i - 2))
            .into_iter()
            .collect();
        assert_eq!(changes["removed"], json!(removed), "reload {i}");
        let steady_changed = percentages[i % 4] != percentages[(i - 1) % 4];
        let changed = changes["changed"].as_array().unwrap();
        assert_eq!(
            changed.contains(&json!("steady")),
            steady_changed,
            "reload {i}: {changes}"
        );
        assert!(
            changes["settings"]
                .as_array()
                .unwrap()
                .contains(&json!("upstream")),
            "reload {i}: {changes}"
        );

        let stats = proxy.stats().await;
        let now = count(&stats, "steady", "sampled");
        assert!(
            now >= sampled,
            "reload {i}: steady's sampled went from {sampled} to {now}"
        );
        sampled = now;
        assert_eq!(
            target_named(&stats, "steady")["percentage"],
            percentages[i % 4]
        );
        if let Some(gone) = removed.first() {
            assert_eq!(target_named(&stats, gone)["removed"], true, "{stats:#}");
        }
        let metrics = proxy.metrics().await;
        let enabled = format!("mirror_proxy_mirror_enabled{{target=\"extra-{i}\"}}");
        assert_eq!(sample(&metrics, &enabled), Some(1.0), "reload {i}");
        // Requests flow between every two reloads.
        load.advance(20).await;
    }
    let (sent, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let stats = proxy.wait_stats("every mirror ended", settled).await;
    let steady = target_named(&stats, "steady");
    assert!(count(&stats, "steady", "sampled") >= sampled);
    assert_eq!(steady["failed"], 0, "{steady:#}");
    assert_eq!(
        steady["sent"],
        steady_shadow.count() as u64,
        "the shadow received exactly what steady counts as sent"
    );
    assert_eq!(
        upstreams[0].count() + upstreams[1].count(),
        sent as usize,
        "every request reached one upstream or the other"
    );
    assert!(upstreams.iter().all(|u| u.count() > 0));
    assert_eq!(stats["config"]["reloads"], json!({ "ok": 20, "error": 0 }));

    // The last reload named upstreams[0]: a request now goes there.
    let before = upstreams[0].count();
    requests(&proxy, "/after", 1).await;
    assert_eq!(upstreams[0].count(), before + 1);
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(&metrics, "mirror_proxy_config_reloads_total{result=\"ok\"}"),
        Some(20.0)
    );
    assert_eq!(
        sample(&metrics, "mirror_proxy_mirror_enabled{target=\"extra-20\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "mirror_proxy_mirror_enabled{target=\"extra-18\"}"),
        Some(0.0),
        "a removed target drops to 0"
    );
    let last = sample(
        &metrics,
        "mirror_proxy_config_last_reload_success_timestamp_seconds",
    )
    .expect("the reload timestamp");
    assert!(last > 1.0e9, "{last}");
}

/// The kill switch: a request sent after `POST /mirroring/disable` returns is not mirrored
/// (counted as `disabled`), while the mirror already in flight finishes; enabling mirrors the
/// next request again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_stops_new_mirrors_while_in_flight_ones_finish() {
    let upstream = Server::upstream().await;
    let gate = Gate::closed();
    let shadow =
        Server::shadow_answering(Answer::AfterGate(gate.clone(), Default::default())).await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let name = shadow.url.as_str();

    requests(&proxy, "/before", 1).await;
    shadow.wait_for(1).await;
    proxy
        .wait_stats("one mirror in flight", |s| count(s, name, "in_flight") == 1)
        .await;

    let (status, body) = post(&proxy, "/mirroring/disable").await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({ "enabled": false }))
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(&metrics, "mirror_proxy_mirroring_enabled"),
        Some(0.0)
    );

    requests(&proxy, "/during", 3).await;
    let stats = proxy.stats().await;
    assert_eq!(stats["mirror"]["not_mirrored"]["disabled"], 3, "{stats:#}");
    assert_eq!(stats["mirror"]["enabled"], false);
    assert_eq!(
        count(&stats, name, "sampled"),
        1,
        "nothing sampled while disabled"
    );
    assert_eq!(
        count(&stats, name, "in_flight"),
        1,
        "the mirror in flight goes on"
    );

    gate.open();
    let stats = proxy
        .wait_stats("the mirror in flight to finish", settled)
        .await;
    assert_eq!(count(&stats, name, "responded"), 1);
    assert_eq!(shadow.count(), 1, "{:?}", shadow.received());

    let (status, body) = post(&proxy, "/mirroring/enable").await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({ "enabled": true }))
    );
    requests(&proxy, "/after", 1).await;
    let received = shadow.wait_for(2).await;
    assert_eq!(received[1].uri.path(), "/after/0");
    assert_eq!(upstream.count(), 5, "every request was forwarded");
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("mirroring disabled") && stderr.contains("admin API"),
        "{stderr}"
    );
}

/// A paused target gets nothing and counts `paused`, the other target goes on, and resuming
/// brings it back; an unknown target is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_target_gets_nothing_and_counts_paused() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let dir = TempDir::new();
    let path = config_file(
        &dir,
        &format!(
            "upstream = \"{}\"\n[[mirror]]\nname = \"a\"\nurl = \"{url}/a\"\n[[mirror]]\nname = \"b\"\nurl = \"{url}/b\"\n",
            upstream.url,
            url = shadow.url
        ),
    );
    let proxy = start_with_file(&path).await;
    let under = |prefix: &str| {
        shadow
            .received()
            .iter()
            .filter(|r| r.uri.path().starts_with(prefix))
            .count()
    };

    let (status, body) = post(&proxy, "/targets/a/pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false);
    let (_, list) = admin(&proxy, Method::GET, "/targets", None, None).await;
    let a = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "a")
        .unwrap();
    assert_eq!(
        (a["enabled"].clone(), a["percentage"].clone()),
        (json!(false), json!(100))
    );
    assert_eq!(
        sample(
            &proxy.metrics().await,
            "mirror_proxy_mirror_enabled{target=\"a\"}"
        ),
        Some(0.0)
    );

    requests(&proxy, "/paused", 10).await;
    let stats = proxy.wait_stats("b's mirrors to end", settled).await;
    assert_eq!(count(&stats, "a", "paused"), 10, "{stats:#}");
    assert_eq!(count(&stats, "a", "sampled"), 0);
    assert_eq!(count(&stats, "b", "sampled"), 10);
    assert_eq!(under("/a/"), 0, "a paused target gets nothing");
    assert_eq!(under("/b/"), 10);

    let (status, body) = post(&proxy, "/targets/a/resume").await;
    assert_eq!(
        (status, body["enabled"].clone()),
        (StatusCode::OK, json!(true))
    );
    requests(&proxy, "/resumed", 1).await;
    eventually("a to get the request after resume", || under("/a/") == 1).await;

    // A reload that keeps the target keeps it paused.
    assert_eq!(post(&proxy, "/targets/a/pause").await.0, StatusCode::OK);
    config_file(
        &dir,
        &format!(
            "upstream = \"{}\"\n[[mirror]]\nname = \"a\"\nurl = \"{url}/a\"\n[[mirror]]\nname = \"b\"\nurl = \"{url}/b\"\npercentage = 50\n",
            upstream.url,
            url = shadow.url
        ),
    );
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(
        (status, body["changed"].clone()),
        (StatusCode::OK, json!(["b"])),
        "{body}"
    );
    let (_, list) = admin(&proxy, Method::GET, "/targets", None, None).await;
    assert_eq!(list[0]["enabled"], false, "{list}");

    let (status, body) = post(&proxy, "/targets/nobody/pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nobody"), "{body}");
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("target paused") && stderr.contains("target resumed"),
        "{stderr}"
    );
}

/// A percentage set live takes effect from the next request: with the counter sampler any
/// 100 consecutive requests hold exactly that many mirrored ones, wherever the counter stood.
/// Bad bodies are 400, an unknown target 404. Targets named by their URL are addressed
/// percent-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percentage_change_takes_effect_exactly() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::start(&["--upstream", &upstream.url, "--mirror", &shadow.url]).await;
    let name = shadow.url.as_str();
    let path = format!("/targets/{}/percentage", segment(name));
    let put = |body: &'static str| admin(&proxy, Method::PUT, &path, None, Some(body));

    // Move the counter off its start.
    requests(&proxy, "/warm", 7).await;
    let (status, body) = put(r#"{"percentage": 25}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["percentage"].as_u64()),
        (Some(name), Some(25))
    );

    for (percentage, body) in [
        (25, None),
        (60, Some(r#"{"percentage": 60}"#)),
        (0, Some(r#"{"percentage": 0}"#)),
    ] {
        if let Some(body) = body {
            let (status, answer) = put(body).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
        let before = count(&proxy.stats().await, name, "sampled");
        requests(&proxy, &format!("/at-{percentage}"), 100).await;
        let stats = proxy.wait_stats("the mirrors to end", settled).await;
        assert_eq!(
            count(&stats, name, "sampled") - before,
            percentage,
            "{percentage} % of the next 100"
        );
        let prefix = format!("/at-{percentage}/");
        let got = shadow
            .received()
            .iter()
            .filter(|r| r.uri.path().starts_with(&prefix))
            .count() as u64;
        assert_eq!(got, percentage);
    }

    for bad in [
        r#"{"percentage": 101}"#,
        r#"{"percentage": -1}"#,
        r#"{"percentage": "ten"}"#,
        "25",
        "",
        r#"{"share": 5}"#,
    ] {
        let (status, body) = put(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, _) = admin(
        &proxy,
        Method::PUT,
        "/targets/nobody/percentage",
        None,
        Some(r#"{"percentage": 5}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = admin(&proxy, Method::GET, "/targets", None, None).await;
    assert_eq!(
        list[0]["percentage"], 0,
        "the bad bodies changed nothing: {list}"
    );
    assert!(proxy.stderr().contains("target percentage set"));
}

/// A reload of a bad file, or of one that changes what needs a restart, is refused with one
/// line — for a bad file, the CLI's own — and changes nothing; a good one then applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_changes_nothing_and_says_why() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let dir = TempDir::new();
    let good = |percentage: u32| {
        format!(
            "upstream = \"{}\"\n[[mirror]]\nname = \"staging\"\nurl = \"{}\"\npercentage = {percentage}\n",
            upstream.url, shadow.url
        )
    };
    let path = config_file(&dir, &good(100));
    let proxy = start_with_file(&path).await;
    let targets = || async { admin(&proxy, Method::GET, "/targets", None, None).await.1 };
    let before = targets().await;

    // A file the CLI refuses: the same line, without the CLI's prefix.
    let bad_file = format!("{}rate = \"fast\"\n", good(50));
    config_file(&dir, &bad_file);
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap().to_owned();
    let (exit, _, stderr) = run_to_exit(&["--config", path.to_str().unwrap()]).await;
    assert_eq!(exit.code(), Some(2));
    assert_eq!(stderr.trim_end(), format!("mirror-proxy: error: {error}"));
    assert!(error.contains("rate") && !error.contains('\n'), "{error}");

    // Settings that need a restart: named, and nothing of the reload applied (the percentage
    // in the same file neither).
    for (key, line) in [
        ("listen", "listen = \"127.0.0.1:1\"\n"),
        ("workers", "workers = 3\n"),
        ("max_connections", "max_connections = 5\n"),
    ] {
        let text = format!(
            "{line}upstream = \"{}\"\n[[mirror]]\nname = \"staging\"\nurl = \"{}\"\npercentage = 50\n",
            upstream.url, shadow.url
        );
        let file = if key == "listen" {
            dir.file("proxy.toml", &format!("admin = \"127.0.0.1:0\"\n{text}"))
        } else {
            config_file(&dir, &text)
        };
        assert_eq!(file, path);
        let (status, body) = post(&proxy, "/reload").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(key) && error.contains("restart") && !error.contains('\n'),
            "{key}: {error}"
        );
    }
    // Every target removed: the layer keeps one.
    config_file(&dir, &format!("upstream = \"{}\"\n", upstream.url));
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("restart"),
        "{body}"
    );
    assert_eq!(
        targets().await,
        before,
        "nothing of the refused reloads applied"
    );
    requests(&proxy, "/still", 4).await;
    shadow.wait_for(4).await;

    config_file(&dir, &good(50));
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], json!(["staging"]));
    assert_eq!(targets().await[0]["percentage"], 50);
    let stats = proxy.stats().await;
    assert_eq!(stats["config"]["reloads"], json!({ "ok": 1, "error": 5 }));
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "mirror_proxy_config_reloads_total{result=\"error\"}"
        ),
        Some(5.0)
    );
    assert!(proxy.stderr().contains("reload refused"));
}

/// With a token, every change needs it: a missing or a wrong one is 401, counted and logged
/// (at most once a second); reading needs none. A reload re-reads the token file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_admin_token() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let dir = TempDir::new();
    let token_file = dir.file("token", "  s3cret-token\n");
    let path = config_file(
        &dir,
        &format!(
            "upstream = \"{}\"\nadmin_token_file = \"{}\"\n[[mirror]]\nname = \"staging\"\nurl = \"{}\"\n",
            upstream.url,
            token_file.display(),
            shadow.url
        ),
    );
    let proxy = start_with_file(&path).await;

    let changes = [
        (Method::POST, "/mirroring/disable", None),
        (Method::POST, "/targets/staging/pause", None),
        (
            Method::PUT,
            "/targets/staging/percentage",
            Some(r#"{"percentage": 1}"#),
        ),
        (Method::POST, "/reload", None),
    ];
    let mut refused = 0;
    for (method, path, body) in &changes {
        for token in [
            None,
            Some("wrong"),
            Some("s3cret-token-and-more"),
            Some("s3cret-toke"),
        ] {
            let (status, answer) = admin(&proxy, method.clone(), path, token, *body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {answer}"
            );
            refused += 1;
        }
    }
    let (status, list) = admin(&proxy, Method::GET, "/targets", None, None).await;
    assert_eq!(status, StatusCode::OK, "reading needs no token");
    assert_eq!(
        (list[0]["enabled"].clone(), list[0]["percentage"].clone()),
        (json!(true), json!(100))
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(&metrics, "mirror_proxy_admin_unauthorized_total"),
        Some(refused as f64)
    );
    assert_eq!(
        sample(&metrics, "mirror_proxy_mirroring_enabled"),
        Some(1.0)
    );
    let stderr = proxy.stderr();
    let logged = stderr.matches("admin request refused").count();
    assert!(
        (1..refused).contains(&logged),
        "{logged} lines for {refused} refusals:\n{stderr}"
    );

    let (status, body) = admin(
        &proxy,
        Method::POST,
        "/mirroring/disable",
        Some("s3cret-token"),
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "enabled": false }))
    );

    // Rotate: the reload still takes the old token, then only the new one works.
    dir.file("token", "n3w-token");
    let (status, body) = admin(&proxy, Method::POST, "/reload", Some("s3cret-token"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settings"], json!(["admin_token_file"]));
    let (_, switch) = admin(&proxy, Method::GET, "/mirroring", None, None).await;
    assert_eq!(
        switch,
        json!({ "enabled": false }),
        "the kill switch outlasts a reload"
    );
    let (status, _) = admin(
        &proxy,
        Method::POST,
        "/mirroring/enable",
        Some("s3cret-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = admin(
        &proxy,
        Method::POST,
        "/mirroring/enable",
        Some("n3w-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, index) = admin(&proxy, Method::GET, "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index["token_required"], true);
    let paths: Vec<&str> = index["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for path in [
        "/targets",
        "/targets/{name}/pause",
        "/targets/{name}/percentage",
        "/mirroring/disable",
        "/reload",
        "/metrics",
    ] {
        assert!(paths.contains(&path), "{path} in {index:#}");
    }
}

/// SIGHUP reloads as POST /reload does, and a bad file then leaves the proxy running,
/// unchanged, with the error logged.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let dir = TempDir::new();
    let one = format!(
        "upstream = \"{}\"\n[[mirror]]\nname = \"one\"\nurl = \"{}/one\"\n",
        upstream.url, shadow.url
    );
    let path = config_file(&dir, &one);
    let proxy = start_with_file(&path).await;

    config_file(
        &dir,
        &format!(
            "{one}[[mirror]]\nname = \"two\"\nurl = \"{}/two\"\n",
            shadow.url
        ),
    );
    signal(proxy.pid(), "-HUP");
    proxy
        .wait_stats("the reload to add target two", |s| {
            s["config"]["reloads"]["ok"] == 1
                && s["mirror"]["targets"].as_array().unwrap().len() == 2
        })
        .await;
    requests(&proxy, "/hup", 1).await;
    let received = shadow.wait_for(2).await;
    let mut paths: Vec<&str> = received.iter().map(|r| r.uri.path()).collect();
    paths.sort();
    assert_eq!(paths, ["/one/hup/0", "/two/hup/0"]);

    config_file(&dir, "upstream = \"not a url\"\n");
    signal(proxy.pid(), "-HUP");
    proxy
        .wait_stats("the bad reload to be counted", |s| {
            s["config"]["reloads"]["error"] == 1
        })
        .await;
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("configuration reloaded") && stderr.contains("SIGHUP"),
        "{stderr}"
    );
    assert!(
        stderr.contains("reload refused") && stderr.contains("not a url"),
        "{stderr}"
    );
    let (_, list) = admin(&proxy, Method::GET, "/targets", None, None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "unchanged: {list}");
    requests(&proxy, "/still", 1).await;
}

/// Polls /diff until the first route has `compared` comparisons; returns the report.
async fn wait_compared(proxy: &Proxy, compared: u64) -> Value {
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    loop {
        let (status, report) = admin(proxy, Method::GET, "/diff", None, None).await;
        assert_eq!(status, StatusCode::OK);
        if report["routes"][0]["compared"] == compared {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {compared} comparisons; last:\n{report:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A reload can turn comparison on; one that keeps the `[diff]` settings keeps the report,
/// one that changes them starts a new report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_comparison_on_and_keeps_its_report() {
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let dir = TempDir::new();
    let config = |compare: bool, percentage: u32, diff: &str| {
        format!(
            "upstream = \"{}\"\n[[mirror]]\nname = \"candidate\"\nurl = \"{}\"\ncompare = {compare}\npercentage = {percentage}\n{diff}",
            upstream.url, shadow.url
        )
    };
    let path = config_file(&dir, &config(false, 100, ""));
    let proxy = start_with_file(&path).await;
    requests(&proxy, "/users", 2).await;
    let (_, report) = admin(&proxy, Method::GET, "/diff", None, None).await;
    assert_eq!(report["routes"], json!([]), "{report:#}");

    config_file(&dir, &config(true, 100, ""));
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], json!(["candidate"]));
    requests(&proxy, "/users", 3).await;
    wait_compared(&proxy, 3).await;

    config_file(&dir, &config(true, 50, ""));
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    requests(&proxy, "/users", 2).await;
    wait_compared(&proxy, 4).await;

    config_file(
        &dir,
        &config(true, 100, "[diff]\nignore_fields = [\"/at\"]\n"),
    );
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settings"], json!(["diff"]));
    requests(&proxy, "/users", 1).await;
    wait_compared(&proxy, 1).await;
}

/// A proxy started without mirror targets has no mirror layer: its changes are 409 and a
/// reload cannot add a target (that takes a restart), but a reload moves its upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_proxy_reloads_its_upstream() {
    let (first, second) = (Server::upstream().await, Server::upstream().await);
    let shadow = Server::shadow().await;
    let dir = TempDir::new();
    let path = config_file(&dir, &format!("upstream = \"{}\"\n", first.url));
    let proxy = start_with_file(&path).await;
    requests(&proxy, "/one", 2).await;
    assert_eq!(first.count(), 2);

    let (status, list) = admin(&proxy, Method::GET, "/targets", None, None).await;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    let (status, body) = post(&proxy, "/mirroring/disable").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    config_file(
        &dir,
        &format!(
            "upstream = \"{}\"\n[[mirror]]\nurl = \"{}\"\n",
            second.url, shadow.url
        ),
    );
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("restart"),
        "{body}"
    );
    requests(&proxy, "/two", 1).await;
    assert_eq!(first.count(), 3, "nothing of the refused reload applied");

    config_file(
        &dir,
        &format!("upstream = \"{}\"\nupstream_timeout = \"9s\"\n", second.url),
    );
    let (status, body) = post(&proxy, "/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settings"], json!(["upstream", "upstream_timeout"]));
    requests(&proxy, "/three", 2).await;
    assert_eq!((first.count(), second.count()), (3, 2));
    assert_eq!(shadow.count(), 0);
}
