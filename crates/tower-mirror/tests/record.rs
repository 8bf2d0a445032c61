//! Recording targets (`file://`, feature `record`) with real files: a recording under load is
//! complete and byte-exact, files rotate and are pruned, a full disk is counted and never
//! blocks the primary, and a path that cannot be written is a configuration error.
#![cfg(feature = "record")]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::{eventually, settled};
use tower::{Layer, Service, ServiceExt};
use tower_mirror::{ConfigError, MirrorLayer, Options, RecordFile, Target};

/// A directory of its own under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-mirror-record-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn url(&self, file: &str) -> String {
        format!("file://{}", self.0.join(file).display())
    }

    /// The files in it, by name.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn layer(target: Target) -> MirrorLayer {
    MirrorLayer::with_options(Options {
        targets: vec![target],
        max_in_flight: 10_000,
        ..Options::default()
    })
    .unwrap()
}

/// Sends `request` through `layer` to a primary that reads the body and answers 200.
async fn primary(layer: &MirrorLayer, request: Request<Full<Bytes>>) {
    let mut service = layer.layer(tower::service_fn(|request: Request<_>| async move {
        let _ = BodyExt::collect(request.into_body()).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"primary"))))
    }));
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn body_of(record: &Value) -> Vec<u8> {
    STANDARD
        .decode(record["body"]["base64"].as_str().unwrap())
        .unwrap()
}

/// A body of `len` bytes that differs for each `n`, with every byte value in it.
fn body(n: usize, len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 + n * 13) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_under_load_is_complete_and_byte_exact() {
    let dir = TempDir::new("load");
    let layer = layer(Target::new(dir.url("traffic.ndjson")).with_name("recording"));
    const REQUESTS: usize = 2_000;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let layer = layer.clone();
        tasks.push(tokio::spawn(async move {
            for n in (worker..REQUESTS).step_by(8) {
                let request = Request::post(format!("/upload/{n}?q=a%20b"))
                    .header("x-request", n.to_string())
                    .header("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap())
                    .body(Full::new(body(n, n % 3000)))
                    .unwrap();
                primary(&layer, request).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.sampled as usize, REQUESTS, "{stats:?}");
    assert_eq!(
        stats.responded + stats.dropped_overload,
        stats.sampled,
        "{stats:?}"
    );
    assert_eq!(stats.failed, 0, "{stats:?}");

    let records = lines(&dir.0.join("traffic.ndjson"));
    assert_eq!(
        records.len() as u64,
        stats.responded,
        "one line per written record"
    );
    let mut seen = BTreeMap::new();
    for record in &records {
        assert_eq!(record["v"], 1);
        assert_eq!(record["method"], "POST");
        let n: usize = record["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "x-request")
            .and_then(|h| h[1].as_str())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(record["uri"], format!("/upload/{n}?q=a%20b"));
        assert_eq!(body_of(record), body(n, n % 3000), "request {n}'s body");
        assert_eq!(record["body"]["length"], n % 3000);
        let bytes = record["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "x-bytes")
            .unwrap();
        assert_eq!(
            STANDARD
                .decode(bytes[1]["base64"].as_str().unwrap())
                .unwrap(),
            b"caf\xe9",
            "a value that is not UTF-8 is base64, marked"
        );
        let time = record["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(
            seen.insert(record["id"].as_str().unwrap().to_owned(), n)
                .is_none()
        );
    }
    assert_eq!(seen.len(), records.len(), "ids are unique");
}

#[tokio::test]
async fn files_rotate_by_size_and_only_the_newest_are_kept() {
    let dir = TempDir::new("rotate");
    let layer = layer(
        Target::new(dir.url("traffic.ndjson"))
            .record_file(RecordFile::default().rotate_bytes(2_000).keep_files(2)),
    );
    // One at a time, each written before the next, so that every batch is one record and
    // the file rotates as soon as it passes 2,000 bytes.
    for n in 0..40 {
        let request = Request::post(format!("/r/{n}"))
            .body(Full::new(body(n, 500)))
            .unwrap();
        primary(&layer, request).await;
        settled(&layer).await;
    }
    eventually("two rotated files besides the current one", || {
        let files = dir.files();
        files.len() == 3 && files.iter().filter(|f| f.ends_with(".ndjson")).count() == 3
    })
    .await;
    let files = dir.files();
    assert!(files.contains(&"traffic.ndjson".to_owned()), "{files:?}");
    // The kept files hold the newest records, in order, up to the last one.
    let mut paths: Vec<String> = files
        .iter()
        .filter(|f| *f != "traffic.ndjson")
        .cloned()
        .collect();
    paths.push("traffic.ndjson".to_owned());
    let numbers: Vec<usize> = paths
        .iter()
        .flat_map(|f| lines(&dir.0.join(f)))
        .map(|r| r["uri"].as_str().unwrap()[3..].parse().unwrap())
        .collect();
    assert_eq!(numbers.last(), Some(&39));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive: {numbers:?}"
    );
}

#[tokio::test]
async fn rotated_files_are_compressed() {
    let dir = TempDir::new("gzip");
    let layer = layer(
        Target::new(dir.url("traffic.ndjson"))
            .record_file(RecordFile::default().rotate_bytes(1_000).gzip(true)),
    );
    for n in 0..6 {
        let request = Request::post(format!("/r/{n}"))
            .body(Full::new(body(n, 800)))
            .unwrap();
        primary(&layer, request).await;
        settled(&layer).await;
    }
    eventually("the rotated files to be compressed", || {
        let files = dir.files();
        files.iter().filter(|f| f.ends_with(".ndjson.gz")).count() >= 2
            && !files
                .iter()
                .any(|f| f != "traffic.ndjson" && f.ends_with(".ndjson"))
    })
    .await;
    let gz = dir
        .files()
        .into_iter()
        .find(|f| f.ends_with(".gz"))
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(dir.0.join(gz)).unwrap()),
        &mut text,
    )
    .unwrap();
    let record: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(record["method"], "POST");
}

/// `/dev/full` fails every write with ENOSPC, as a full disk does.
#[tokio::test]
async fn a_full_disk_is_counted_and_never_blocks_the_primary() {
    let layer = layer(Target::new("file:///dev/full"));
    for n in 0..20 {
        let request = Request::post(format!("/r/{n}"))
            .body(Full::new(body(n, 100)))
            .unwrap();
        // Each answered: the primary never waits for the disk.
        tokio::time::timeout(Duration::from_secs(10), primary(&layer, request))
            .await
            .expect("the primary answered");
    }
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(
        (stats.sent, stats.failed, stats.responded),
        (20, 20, 0),
        "{stats:?}"
    );
}

#[test]
fn a_path_that_cannot_be_written_is_a_configuration_error() {
    let missing = "file:///no/such/directory/traffic.ndjson";
    let error = MirrorLayer::with_options(Options {
        targets: vec![Target::new(missing).with_name("recording")],
        ..Options::default()
    })
    .unwrap_err();
    assert!(
        matches!(&error, ConfigError::InvalidSetting { target, setting: "url", .. } if target == "recording"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("/no/such/directory/traffic.ndjson"),
        "{error}"
    );
    for bad in ["file://relative.ndjson", "file://host/t.ndjson"] {
        assert!(
            MirrorLayer::with_options(Options {
                targets: vec![Target::new(bad)],
                ..Options::default()
            })
            .is_err(),
            "{bad}"
        );
    }
}

/// A primary that answers 201 with an `x-answer` header naming the request and a body of
/// `n * 37 % 3000` bytes.
async fn answered(layer: &MirrorLayer, n: usize, read_response: bool) {
    let mut service = layer.layer(tower::service_fn(|request: Request<_>| async move {
        let n: usize = request.headers()["x-request"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let _ = BodyExt::collect(request.into_body()).await;
        let response = Response::builder()
            .status(201)
            .header("x-answer", n.to_string())
            .body(Full::new(body(n, n * 37 % 3000)))
            .unwrap();
        Ok::<_, Infallible>(response)
    }));
    let request = Request::post(format!("/orders/{n}"))
        .header("x-request", n.to_string())
        .body(Full::new(body(n, 100)))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 201);
    if read_response {
        let got = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            got,
            body(n, n * 37 % 3000),
            "the primary's body is untouched"
        );
    } else {
        // As hyper's servers do: a body already at its end is not polled, only asked.
        let _ = http_body::Body::is_end_stream(response.body());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primarys_response_is_recorded_with_its_request() {
    let dir = TempDir::new("response");
    let recording = Target::new(dir.url("traffic.ndjson"))
        .with_name("recording")
        .record_file(
            RecordFile::default()
                .response(true)
                .max_response_body_bytes(1000),
        );
    let layer = layer(recording);
    const REQUESTS: usize = 200;
    for n in 0..REQUESTS {
        // Every tenth response is dropped unread: its record is written without one, unless
        // its body is empty.
        answered(&layer, n, n % 10 != 0).await;
    }
    let stats = settled(&layer).await.targets.remove(0);
    assert_eq!(stats.responded as usize, REQUESTS, "{stats:?}");

    let text = std::fs::read_to_string(dir.0.join("traffic.ndjson")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let record = tower_mirror::record::Recorded::parse(line).unwrap();
        let n: usize = record
            .headers
            .iter()
            .find(|(name, _)| name == "x-request")
            .map(|(_, v)| v.to_str().unwrap().parse().unwrap())
            .unwrap();
        assert!(seen.insert(n), "request {n} recorded twice");
        // Request 0's body is empty: at its end from the start, so it has streamed even
        // though nobody polls it (as hyper's servers never poll such a body).
        let streamed = !n.is_multiple_of(10) || (n * 37).is_multiple_of(3000);
        let Some(response) = record.response else {
            assert!(
                !streamed,
                "request {n}: its response streamed, so it is recorded"
            );
            continue;
        };
        assert!(streamed, "request {n}: its response never streamed");
        assert_eq!(response.status, 201);
        let answer = response.headers.iter().find(|(name, _)| name == "x-answer");
        assert_eq!(answer.unwrap().1, n.to_string().as_str(), "request {n}");
        let whole = body(n, n * 37 % 3000);
        assert_eq!(response.body_length, whole.len() as u64, "request {n}");
        assert_eq!(response.truncated, whole.len() > 1000, "request {n}");
        assert_eq!(response.body, whole[..whole.len().min(1000)], "request {n}");
    }
    assert_eq!(seen.len(), REQUESTS);
}
