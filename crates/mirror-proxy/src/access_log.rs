//! The access log: one line per request, with the mirror decisions, written by a thread of
//! its own so that a slow disk or a full pipe never holds up a worker.
//!
//! Workers format a line when the response body has ended (or the client went away) and hand
//! it over through a bounded queue; when the queue is full the line is dropped and counted
//! (`mirror_proxy_access_log_dropped_total`), never waited for.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tower::Service;
use tower_mirror::Decisions;

use crate::config::{AccessLogFormat, AccessLogSettings, ConfigError};
use crate::telemetry::Telemetry;

/// Lines waiting for the writer, at most: past this, lines are dropped and counted.
const QUEUE: usize = 8192;

enum Message {
    Line(String),
    /// Write out everything before this, then answer.
    Flush(SyncSender<()>),
}

/// An open access log: the queue to its writer thread.
pub struct AccessLog {
    queue: SyncSender<Message>,
    format: AccessLogFormat,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the file (created if missing, appended to) or stdout, and starts the writer
    /// thread. An unopenable file is a configuration error naming `--access-log`.
    pub fn open(
        settings: &AccessLogSettings,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Self>, ConfigError> {
        let out: Box<dyn Write + Send> = if settings.is_stdout() {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&settings.path)
                .map_err(|e| {
                    ConfigError(format!("--access-log {}: {e}", settings.path.display()))
                })?;
            Box::new(file)
        };
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(lines, std::io::BufWriter::new(out)))
            .map_err(|e| ConfigError(format!("--access-log: cannot start its writer: {e}")))?;
        Ok(Arc::new(Self {
            queue,
            format: settings.format,
            telemetry,
        }))
    }

    fn send(&self, line: String) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.telemetry.record_access_log_dropped();
            }
        }
    }

    /// Waits, up to `timeout`, for every line queued so far to be written (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let (done, written) = std::sync::mpsc::sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(timeout);
        }
    }
}

/// The writer thread: writes lines as they come, and flushes whenever the queue is empty, so
/// that lines appear promptly without a write call per line under load.
fn write_lines(lines: Receiver<Message>, mut out: std::io::BufWriter<Box<dyn Write + Send>>) {
    let mut failed = false;
    let mut write = |out: &mut std::io::BufWriter<_>, line: &str| {
        if let Err(error) = out
            .write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            && !failed
        {
            tracing::warn!(%error, "access log: write failed; later failures are not logged");
            failed = true;
        }
    };
    while let Ok(message) = lines.recv() {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => write(&mut out, &line),
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = lines.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// What is known of a request when it arrives.
struct Entry {
    log: Arc<AccessLog>,
    time: SystemTime,
    started: Instant,
    client: SocketAddr,
    method: Method,
    target: String,
    version: Version,
    decisions: Decisions,
    status: u16,
    bytes: u64,
}

impl Entry {
    fn finish(self) {
        let line = match self.log.format {
            AccessLogFormat::Json => self.json(),
            AccessLogFormat::Common => self.common(),
        };
        self.log.send(line);
    }

    fn json(&self) -> String {
        let mirrors: Vec<Value> = self
            .decisions
            .targets()
            .into_iter()
            .map(|(target, decision)| match decision.reason() {
                Some(reason) => {
                    json!({ "target": target, "decision": decision.label(), "reason": reason })
                }
                None => json!({ "target": target, "decision": decision.label() }),
            })
            .collect();
        let mut line = json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "client": self.client.to_string(),
            "method": self.method.as_str(),
            "target": self.target,
            "version": version(self.version),
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            "mirrors": mirrors,
        });
        if let Some(reason) = self.decisions.not_mirrored() {
            line["not_mirrored"] = json!(reason);
        }
        line.to_string()
    }

    /// `client - - [10/Oct/2000:13:55:36 +0000] "GET /a HTTP/1.1" 200 2326`, then the
    /// duration in seconds and the mirrors as `name:decision` (`name:dropped:reason`).
    fn common(&self) -> String {
        let mut mirrors: Vec<String> = self
            .decisions
            .targets()
            .into_iter()
            .map(|(target, decision)| match decision.reason() {
                Some(reason) => format!("{target}:{}:{reason}", decision.label()),
                None => format!("{target}:{}", decision.label()),
            })
            .collect();
        if let Some(reason) = self.decisions.not_mirrored() {
            mirrors.push(format!("not_mirrored:{reason}"));
        }
        let bytes = match self.bytes {
            0 => "-".to_owned(),
            n => n.to_string(),
        };
        format!(
            "{} - - [{}] \"{} {} {}\" {} {bytes} {:.6} mirrors=\"{}\"",
            self.client.ip(),
            clf_time(self.time),
            self.method,
            escape(&self.target),
            version(self.version),
            self.status,
            self.started.elapsed().as_secs_f64(),
            escape(&mirrors.join(" ")),
        )
    }
}

fn version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `"` and `\` escaped with a backslash, other bytes outside printable ASCII as `\xHH`, so
/// that a line stays one line and its quoted fields stay quoted.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02X}")),
        }
    }
    out
}

/// `10/Oct/2000:13:55:36 +0000`, in UTC.
fn clf_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // humantime writes `2000-10-10T13:55:36Z`: its fields, rearranged.
    let text = humantime::format_rfc3339_seconds(time).to_string();
    let month = text
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    match (text.get(0..4), text.get(8..10), text.get(11..19)) {
        (Some(year), Some(day), Some(clock)) => format!("{day}/{month}/{year}:{clock} +0000"),
        _ => text,
    }
}

/// The service behind the access log (or the service itself, when there is none).
#[derive(Clone)]
pub struct Logged<S> {
    inner: S,
    log: Option<Arc<AccessLog>>,
    client: SocketAddr,
}

impl<S> Logged<S> {
    /// `inner`, with a line per request to `log` (if any) for the client at `client`.
    pub fn new(inner: S, log: Option<Arc<AccessLog>>, client: SocketAddr) -> Self {
        Self { inner, log, client }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Logged<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = LoggedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let entry = self.log.as_ref().map(|log| {
            let decisions = Decisions::new();
            request.extensions_mut().insert(decisions.clone());
            let target = request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().to_string(), |p| p.as_str().to_owned());
            Box::new(Entry {
                log: Arc::clone(log),
                time: SystemTime::now(),
                started: Instant::now(),
                client: self.client,
                method: request.method().clone(),
                target,
                version: request.version(),
                decisions,
                status: 0,
                bytes: 0,
            })
        });
        LoggedFuture {
            inner: self.inner.call(request),
            entry,
        }
    }
}

/// The status logged for a request whose client went away before it was answered (nginx's
/// convention; no response was sent).
const CLIENT_CLOSED: u16 = 499;

pin_project! {
    /// The inner service's response, its body counted for the access log.
    pub struct LoggedFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Box<Entry>>,
    }

    impl<F> PinnedDrop for LoggedFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unanswered: the client went away while the upstream was working.
            if let Some(mut entry) = this.project().entry.take() {
                entry.status = CLIENT_CLOSED;
                entry.finish();
            }
        }
    }
}

impl<F, ResBody, E> Future for LoggedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<LoggedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut entry = this.entry.take();
        Poll::Ready(result.map(|response| {
            if let Some(entry) = &mut entry {
                entry.status = response.status().as_u16();
            }
            response.map(|body| LoggedBody { body, entry })
        }))
    }
}

pin_project! {
    /// A response body whose bytes are counted; the access-log line is written when it ends,
    /// or when it is dropped before (the client went away).
    pub struct LoggedBody<B> {
        #[pin]
        body: B,
        entry: Option<Box<Entry>>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(entry) = this.project().entry.take() {
                entry.finish();
            }
        }
    }
}

impl<B: Body<Data = Bytes>> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(entry), Some(data)) = (this.entry.as_mut(), frame.data_ref()) {
                    entry.bytes += data.len() as u64;
                }
            }
            None | Some(Err(_)) => {
                if let Some(entry) = this.entry.take() {
                    entry.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_log_time_and_escapes() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(971_185_736);
        assert_eq!(clf_time(time), "10/Oct/2000:13:48:56 +0000");
        assert_eq!(escape("/a\"b\\c\nd"), "/a\\\"b\\\\c\\x0Ad");
    }
}
