//! The origin server of the mirror benchmark (`bench/run.sh`): it plays the upstream and each
//! shadow target, on loopback.
//!
//! - `normal` mode answers every request with a small fixed body over keep-alive HTTP/1.1
//!   (h2c too), after an optional delay;
//! - `blackhole` mode accepts connections and reads whatever comes, but never answers;
//! - with an expected body, every request body is compared byte for byte with it.
//!
//! Its [`Stats`] (requests, body bytes, bodies matching or not) are served as JSON on a
//! separate listener ([`serve_stats`]), so the benchmark can compute how many mirrored requests
//! reached a shadow, and whether their bodies arrived intact.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// The body of every answer in `normal` mode.
pub const ANSWER: &[u8] = b"hello from the bench origin\n";

/// How the origin behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Answer every request (after `--delay`).
    #[default]
    Normal,
    /// Accept connections and read them, but never answer.
    Blackhole,
}

/// What the origin does with each request.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Normal or blackhole.
    pub mode: Mode,
    /// Waited after the request body was read, before answering.
    pub delay: Duration,
    /// When set, each request body is compared with it (counted as matching or not).
    pub expect_body: Option<Bytes>,
}

/// The origin's counters, all monotonic since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Failed accepts: out of file descriptors, mostly.
    pub accept_errors: AtomicU64,
    /// Requests whose head was received (counted on arrival, before any delay).
    pub requests: AtomicU64,
    /// Requests answered.
    pub responses: AtomicU64,
    /// Request body bytes received (in blackhole mode: every byte after the first head).
    pub body_bytes: AtomicU64,
    /// Request bodies byte-identical to the expected body.
    pub bodies_matching: AtomicU64,
    /// Request bodies that differ from the expected body.
    pub bodies_mismatching: AtomicU64,
    /// Request bodies that failed to arrive whole (the peer reset or closed mid-body).
    pub body_errors: AtomicU64,
}

impl Stats {
    /// The counters as one JSON object, with `mode` and whether a body is expected.
    pub fn to_json(&self, behaviour: &Behaviour) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mode = match behaviour.mode {
            Mode::Normal => "normal",
            Mode::Blackhole => "blackhole",
        };
        let mut json = String::with_capacity(256);
        let _ = write!(
            json,
            "{{\"mode\":\"{mode}\",\"delay_ms\":{},\"expect_body_bytes\":{},\
             \"connections\":{},\"accept_errors\":{},\"requests\":{},\"responses\":{},\"body_bytes\":{},\
             \"bodies_matching\":{},\"bodies_mismatching\":{},\"body_errors\":{}}}",
            behaviour.delay.as_millis(),
            behaviour
                .expect_body
                .as_ref()
                .map_or_else(|| "null".to_owned(), |b| b.len().to_string()),
            get(&self.connections),
            get(&self.accept_errors),
            get(&self.requests),
            get(&self.responses),
            get(&self.body_bytes),
            get(&self.bodies_matching),
            get(&self.bodies_mismatching),
            get(&self.body_errors),
        );
        json
    }
}

/// Parses a duration written as a number with a unit: `0`, `250us`, `750ms`, `1s`, `2m`, and
/// decimals such as `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: give a unit (us, ms, s or m)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number followed by a unit"))?;
    let seconds = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (us, ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Accepts connections on `listener` forever, serving each as `behaviour` says and counting in
/// `stats`.
pub async fn serve_origin(listener: TcpListener, behaviour: Arc<Behaviour>, stats: Arc<Stats>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, or a connection reset before accept: keep serving.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (behaviour, stats) = (Arc::clone(&behaviour), Arc::clone(&stats));
        tokio::spawn(async move {
            match behaviour.mode {
                Mode::Normal => serve_connection(stream, behaviour, stats).await,
                Mode::Blackhole => swallow(stream, &stats).await,
            }
        });
    }
}

/// Serves one connection in normal mode: HTTP/1.1 keep-alive, or h2c.
async fn serve_connection(stream: TcpStream, behaviour: Arc<Behaviour>, stats: Arc<Stats>) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (behaviour, stats) = (Arc::clone(&behaviour), Arc::clone(&stats));
        async move { Ok::<_, Infallible>(answer(request, &behaviour, &stats).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Counts the request, reads and checks its body, waits the delay, answers.
async fn answer(
    request: Request<Incoming>,
    behaviour: &Behaviour,
    stats: &Stats,
) -> Response<Full<Bytes>> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            stats.body_errors.fetch_add(1, Ordering::Relaxed);
            let mut response = Response::new(Full::new(Bytes::from_static(b"bad body\n")));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    stats
        .body_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    if let Some(expected) = &behaviour.expect_body {
        let counter = if body == *expected {
            &stats.bodies_matching
        } else {
            &stats.bodies_mismatching
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    stats.responses.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Blackhole mode: reads the connection until the peer closes it, never writing a byte. The
/// first complete request head counts as one request; a client waiting for an answer sends no
/// second one on the same connection.
async fn swallow(mut stream: TcpStream, stats: &Stats) {
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut head = HeadFinder::default();
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        match head.push(&buffer[..read]) {
            HeadProgress::Pending => {}
            HeadProgress::Complete { body_bytes } => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats
                    .body_bytes
                    .fetch_add(body_bytes as u64, Ordering::Relaxed);
            }
            HeadProgress::Body => {
                stats.body_bytes.fetch_add(read as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Finds the end of the first request head (`\r\n\r\n`) in a stream read in pieces.
#[derive(Debug, Default)]
struct HeadFinder {
    /// The last bytes seen, up to 3, to find a terminator split across reads.
    tail: Vec<u8>,
    done: bool,
}

/// What a read brought, seen by [`HeadFinder`].
#[derive(Debug, PartialEq, Eq)]
enum HeadProgress {
    /// The head has not ended yet.
    Pending,
    /// The head ended in this read, followed by `body_bytes` bytes.
    Complete { body_bytes: usize },
    /// The head had ended in an earlier read: these are body bytes.
    Body,
}

impl HeadFinder {
    fn push(&mut self, chunk: &[u8]) -> HeadProgress {
        if self.done {
            return HeadProgress::Body;
        }
        const END: &[u8] = b"\r\n\r\n";
        let mut window = std::mem::take(&mut self.tail);
        let carried = window.len();
        window.extend_from_slice(chunk);
        if let Some(at) = window.windows(END.len()).position(|w| w == END) {
            self.done = true;
            let head_end_in_chunk = at + END.len() - carried;
            return HeadProgress::Complete {
                body_bytes: chunk.len() - head_end_in_chunk,
            };
        }
        let keep = window.len().min(END.len() - 1);
        self.tail = window[window.len() - keep..].to_vec();
        HeadProgress::Pending
    }
}

/// Serves `stats` as JSON (any method, any path) on `listener`, forever.
pub async fn serve_stats(listener: TcpListener, behaviour: Arc<Behaviour>, stats: Arc<Stats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (behaviour, stats) = (Arc::clone(&behaviour), Arc::clone(&stats));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let json = stats.to_json(&behaviour);
                async move {
                    let mut response = Response::new(Full::new(Bytes::from(json + "\n")));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("750ms"), Ok(Duration::from_millis(750)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn head_end_found_across_reads() {
        let mut finder = HeadFinder::default();
        assert_eq!(
            finder.push(b"GET / HTTP/1.1\r\nHost: x\r"),
            HeadProgress::Pending
        );
        assert_eq!(finder.push(b"\n"), HeadProgress::Pending);
        assert_eq!(
            finder.push(b"\r\nbody"),
            HeadProgress::Complete { body_bytes: 4 }
        );
        assert_eq!(finder.push(b"more"), HeadProgress::Body);

        let mut finder = HeadFinder::default();
        assert_eq!(
            finder.push(b"POST / HTTP/1.1\r\n\r\n"),
            HeadProgress::Complete { body_bytes: 0 }
        );
        let mut finder = HeadFinder::default();
        for byte in b"GET / HTTP/1.1\r\n\r" {
            assert_eq!(finder.push(&[*byte]), HeadProgress::Pending);
        }
        assert_eq!(
            finder.push(b"\nxy"),
            HeadProgress::Complete { body_bytes: 2 }
        );
    }

    #[test]
    fn json_has_every_counter() {
        let stats = Stats::default();
        stats.requests.fetch_add(3, Ordering::Relaxed);
        stats.bodies_matching.fetch_add(2, Ordering::Relaxed);
        let behaviour = Behaviour {
            expect_body: Some(Bytes::from_static(b"abc")),
            delay: Duration::from_secs(1),
            ..Behaviour::default()
        };
        assert_eq!(
            stats.to_json(&behaviour),
            "{\"mode\":\"normal\",\"delay_ms\":1000,\"expect_body_bytes\":3,\
             \"connections\":0,\"accept_errors\":0,\"requests\":3,\"responses\":0,\"body_bytes\":0,\
             \"bodies_matching\":2,\"bodies_mismatching\":0,\"body_errors\":0}"
        );
        let blackhole = Behaviour {
            mode: Mode::Blackhole,
            ..Behaviour::default()
        };
        assert!(
            stats
                .to_json(&blackhole)
                .starts_with("{\"mode\":\"blackhole\",\"delay_ms\":0,\"expect_body_bytes\":null,")
        );
    }

    async fn start(behaviour: Behaviour) -> (std::net::SocketAddr, Arc<Stats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        tokio::spawn(serve_origin(
            listener,
            Arc::new(behaviour),
            Arc::clone(&stats),
        ));
        (addr, stats)
    }

    /// Reads one response with a `Content-Length` body from `stream`.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        let mut buffer = [0_u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(
                read > 0,
                "closed early: {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some(end) = text.find("\r\n\r\n")
                && text.len() >= end + 4 + ANSWER.len()
            {
                return text;
            }
        }
    }

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn answers_keep_alive_and_checks_bodies() {
        let (addr, stats) = start(Behaviour {
            expect_body: Some(Bytes::from_static(b"hello")),
            ..Behaviour::default()
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for body in ["hello", "hellO"] {
            let request = format!(
                "POST /x HTTP/1.1\r\nHost: o\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let response = read_response(&mut stream).await;
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
            assert!(response.ends_with(std::str::from_utf8(ANSWER).unwrap()));
        }
        assert_eq!(stats.connections.load(Ordering::Relaxed), 1, "kept alive");
        assert_eq!(stats.requests.load(Ordering::Relaxed), 2);
        assert_eq!(stats.responses.load(Ordering::Relaxed), 2);
        assert_eq!(stats.body_bytes.load(Ordering::Relaxed), 10);
        assert_eq!(stats.bodies_matching.load(Ordering::Relaxed), 1);
        assert_eq!(stats.bodies_mismatching.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn delay_counts_the_request_on_arrival() {
        let (addr, stats) = start(Behaviour {
            delay: Duration::from_secs(3600),
            ..Behaviour::default()
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")
            .await
            .unwrap();
        wait_for("request counted", || {
            stats.requests.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(stats.responses.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn blackhole_reads_but_never_answers() {
        let (addr, stats) = start(Behaviour {
            mode: Mode::Blackhole,
            ..Behaviour::default()
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\n\r\nab")
            .await
            .unwrap();
        stream.write_all(b"c").await.unwrap();
        wait_for("request and body counted", || {
            stats.requests.load(Ordering::Relaxed) == 1
                && stats.body_bytes.load(Ordering::Relaxed) == 3
        })
        .await;
        let mut buffer = [0_u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await;
        assert!(read.is_err(), "the blackhole answered: {read:?}");
        assert_eq!(stats.responses.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn stats_listener_serves_json() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        stats.requests.fetch_add(7, Ordering::Relaxed);
        tokio::spawn(serve_stats(
            listener,
            Arc::new(Behaviour::default()),
            Arc::clone(&stats),
        ));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("application/json"));
        assert!(response.contains("\"requests\":7,"), "{response}");
    }
}
