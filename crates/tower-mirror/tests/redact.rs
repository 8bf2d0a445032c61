//! Redaction (feature `redact`) against a real shadow on loopback and a real recording file:
//! the configured headers, query parameters and JSON fields reach the target as keyed-hash
//! placeholders, the same value always as the same placeholder, while the primary sees the
//! request untouched.
#![cfg(all(feature = "redact", feature = "record"))]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::{Shadow, settled};
use tower::{Layer, Service, ServiceExt};
use tower_mirror::record::Recorded;
use tower_mirror::{MirrorLayer, Options, RecordFile, Redact, Target};

fn redact() -> Redact {
    Redact::new(b"a test key of thirty-two bytes!!")
        .header("authorization")
        .query_param("token")
        .json_pointer("/user/email")
        .json_pointer("/cards/*/number")
}

/// The request each test sends, for user `n`: two of its three secrets repeat across users.
fn request(n: usize) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "user": { "email": format!("user{}@example.com", n % 2), "name": format!("user {n}") },
        "cards": [ { "number": "4111 1111" }, { "number": n } ],
    });
    Request::post(format!("/checkout?token=t{}&page={n}", n % 2))
        .header("authorization", format!("Bearer {}", n % 2))
        .header("content-type", "application/json")
        .header("x-n", n.to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Sends `request(n)` for each `n` through `layer` to a primary that keeps what it saw and
/// answers JSON with the user's email.
async fn send_all(layer: &MirrorLayer, n: usize) -> Vec<(String, Bytes)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..n {
        let seen = Arc::clone(&seen);
        let mut service = layer.layer(tower::service_fn(move |request: Request<_>| {
            let seen = Arc::clone(&seen);
            async move {
                let uri = request.uri().to_string();
                let auth = request.headers()["authorization"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = BodyExt::collect(request.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                seen.lock().unwrap().push((format!("{uri} {auth}"), body));
                let answer = r#"{"user":{"email":"user0@example.com"},"total":3}"#;
                let response = Response::builder()
                    .header("content-type", "application/json")
                    .header("authorization", "echo")
                    .body(Full::new(Bytes::from_static(answer.as_bytes())))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }));
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(i))
            .await
            .unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    std::mem::take(&mut *seen.lock().unwrap())
}

/// The distinct values among `received`.
fn distinct(received: &[String]) -> std::collections::BTreeSet<String> {
    received.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_target_receives_placeholders_and_the_primary_the_original() {
    let shadow = Shadow::start().await;
    let layer = MirrorLayer::with_options(Options {
        targets: vec![Target::new(shadow.url.clone()).redact(redact())],
        ..Options::default()
    })
    .unwrap();
    let primary = send_all(&layer, 4).await;
    // The primary saw every secret in clear.
    assert_eq!(primary[1].0, "/checkout?token=t1&page=1 Bearer 1");
    assert!(String::from_utf8_lossy(&primary[1].1).contains("user1@example.com"));

    let received = shadow.wait_for(4).await;
    settled(&layer).await;
    let mut by_n: Vec<_> = received.iter().collect();
    by_n.sort_by_key(|r| r.headers["x-n"].to_str().unwrap().parse::<usize>().unwrap());
    let mut tokens = Vec::new();
    let mut auths = Vec::new();
    let mut emails = Vec::new();
    for (n, received) in by_n.iter().enumerate() {
        let query = received.uri.query().unwrap();
        let (token, page) = query.split_once('&').unwrap();
        assert_eq!(page, format!("page={n}"), "other parameters are kept");
        assert!(token.starts_with("token=redacted:"), "{query}");
        tokens.push(token.to_owned());
        let auth = received.headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with("redacted:"), "{auth}");
        auths.push(auth.to_owned());
        let body: Value = serde_json::from_slice(&received.body).unwrap();
        let email = body["user"]["email"].as_str().unwrap();
        assert!(email.starts_with("redacted:"), "{body}");
        emails.push(email.to_owned());
        assert_eq!(
            body["user"]["name"],
            format!("user {n}"),
            "other fields are kept"
        );
        for card in body["cards"].as_array().unwrap() {
            assert!(
                card["number"].as_str().unwrap().starts_with("redacted:"),
                "{body}"
            );
        }
        // The body's length is the redacted body's.
        let length: usize = received.headers["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, received.body.len());
    }
    // Users 0 and 2 share their secrets, as do 1 and 3: the same value, the same placeholder.
    for values in [&tokens, &auths, &emails] {
        assert_eq!(values[0], values[2]);
        assert_eq!(values[1], values[3]);
        assert_ne!(values[0], values[1]);
        assert_eq!(distinct(values).len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_redacted_request_and_response_alike() {
    let dir = std::env::temp_dir().join(format!("tower-mirror-redact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("traffic.ndjson");
    let _ = std::fs::remove_file(&file);
    let recording = Target::new(format!("file://{}", file.display()))
        .redact(redact())
        .record_file(RecordFile::default().response(true));
    let layer = MirrorLayer::with_options(Options {
        targets: vec![recording],
        ..Options::default()
    })
    .unwrap();
    send_all(&layer, 4).await;
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.responded, 4, "{stats:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!text.contains("example.com"), "no email in clear: {text}");
    assert!(!text.contains("Bearer"), "no credential in clear: {text}");
    assert!(!text.contains("token=t"), "no token in clear: {text}");
    let mut request_emails = Vec::new();
    for line in text.lines() {
        let record = Recorded::parse(line).unwrap();
        assert!(record.uri.query().unwrap().starts_with("token=redacted:"));
        let body: Value = serde_json::from_slice(&record.body).unwrap();
        request_emails.push(body["user"]["email"].as_str().unwrap().to_owned());
        let response = record.response.unwrap();
        let answer: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(answer["total"], 3, "other fields are kept");
        let auth = response
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap();
        assert!(auth.1.to_str().unwrap().starts_with("redacted:"));
        // The primary always answers user 0's email: the placeholder of user 0's request.
        let n: usize = record
            .headers
            .iter()
            .find(|(n, _)| n == "x-n")
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if n.is_multiple_of(2) {
            assert_eq!(answer["user"]["email"], body["user"]["email"]);
        }
    }
    assert_eq!(distinct(&request_emails).len(), 2);
}

#[test]
fn bad_redaction_settings_name_the_target_and_setting() {
    let build = |redact: Redact| {
        MirrorLayer::with_options(Options {
            targets: vec![
                Target::new("http://127.0.0.1:9")
                    .with_name("shadow")
                    .redact(redact),
            ],
            ..Options::default()
        })
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let error = build(Redact::new(b"k").json_pointer("user/email"));
    assert!(
        error.contains("\"shadow\"") && error.contains("redact_fields"),
        "{error}"
    );
    let error = build(Redact::new(b"k").header("bad header"));
    assert!(error.contains("redact_headers"), "{error}");
    let error = build(Redact::new(b"").header("authorization"));
    assert!(error.contains("key is empty"), "{error}");
}

/// A diff report shows a redacting target's values as placeholders: it shows no more than
/// the target received.
#[cfg(feature = "diff")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_examples_of_a_redacting_target_show_placeholders() {
    use tower_mirror::diff::{Diff, DiffOptions};
    let shadow = Shadow::with_reply(support::Reply {
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("authorization", "shadow".to_owned()),
        ],
        // No `user` at all: the difference is at `/user`, above the redacted `/user/email`,
        // and the primary's value there holds the email.
        body: Bytes::from_static(br#"{"total":4}"#),
        ..support::Reply::default()
    })
    .await;
    let diff = Diff::new(DiffOptions::default()).unwrap();
    let layer = MirrorLayer::with_options(Options {
        targets: vec![
            Target::new(shadow.url.clone())
                .with_comparison()
                .redact(redact()),
        ],
        observers: vec![Arc::new(diff.clone())],
        ..Options::default()
    })
    .unwrap();
    send_all(&layer, 2).await;
    settled(&layer).await;
    support::eventually("two comparisons", || {
        diff.report().routes.iter().map(|r| r.compared).sum::<u64>() == 2
    })
    .await;
    let report = format!("{:?}", diff.report());
    assert!(!report.contains("example.com"), "{report}");
    assert!(!report.contains("token=t"), "{report}");
    assert!(report.contains("redacted:"), "{report}");
    // What is not redacted still shows.
    assert!(report.contains("/total"), "{report}");
}
