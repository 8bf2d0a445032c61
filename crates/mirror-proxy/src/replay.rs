//! `mirror-proxy replay`: sends a recording (the NDJSON a `file://` target writes, plain or
//! gzip, or the topic a `kafka://` target produces to) to a URL, paced as recorded, at a
//! fixed rate or as fast as it can, and prints what came back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tower_mirror::diff::{CapturedResponse, Diff};
use tower_mirror::outbound::BaseUrl;
use tower_mirror::record::{Recorded, RecordedResponse};

use crate::telemetry::LatencyHistogram;

/// Flags of `mirror-proxy replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Recording files, in order (`.gz` files are read through gzip, `.gor` files as
    /// GoReplay captures), or Kafka topics
    /// (`kafka://host:port/topic`: every record up to the end the topic had when the replay
    /// started).
    #[arg(value_name = "SOURCE", required = true)]
    pub sources: Vec<PathBuf>,
    /// Kafka sources: start at this offset in each partition read [default: the earliest].
    #[arg(long, value_name = "N", conflicts_with = "from_time")]
    pub from_offset: Option<i64>,
    /// Kafka sources: start at the first record at or after this time (RFC 3339, such as
    /// 2026-11-30T01:00:00Z), in each partition read.
    #[arg(long, value_name = "TIME")]
    pub from_time: Option<String>,
    /// Kafka sources: read only these partitions ("0,2"), so that several replayers can
    /// share a topic.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        conflicts_with = "member"
    )]
    pub partitions: Vec<i32>,
    /// Kafka sources: read only the partitions of member I of N replayers ("0/3": those
    /// whose number modulo N is I), so that N replayers share a topic.
    #[arg(long, value_name = "I/N")]
    pub member: Option<String>,
    /// Where to send the requests: http:// or https:// URL, optionally with a path prefix.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Keep the recorded gaps between requests, divided by this factor ("2x", "0.5") [default: 1x].
    #[arg(long, value_name = "FACTOR", value_parser = parse_speed, conflicts_with_all = ["rate", "max"])]
    pub speed: Option<f64>,
    /// Send at this fixed rate instead ("500/s", "100/m").
    #[arg(long, value_name = "RATE", conflicts_with = "max")]
    pub rate: Option<tower_mirror::RateLimit>,
    /// Send as fast as the target answers, `--concurrency` at a time.
    #[arg(long)]
    pub max: bool,
    /// Requests in flight at most (1 to 65536); a request due while all are busy waits for
    /// one.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub concurrency: u32,
    /// Replay the whole recording this many times.
    #[arg(long = "loop", value_name = "N", default_value_t = 1)]
    pub loops: u32,
    /// Compare each response with the primary's recorded one (records written with
    /// `record_response = true`) and print the differences per route.
    #[arg(long)]
    pub compare: bool,
    /// Also write the comparison report as an HTML page to this file (implies --compare).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Compare by this config file's `[diff]` rules (ignored headers and fields); with
    /// --compare or --report.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// "2x", "2", "0.5x": a positive factor.
fn parse_speed(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix(['x', 'X']).unwrap_or(text);
    match number.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!(
            "{text:?} is not a speed: use a positive factor such as 2x or 0.5x"
        )),
    }
}

/// How requests are spaced.
#[derive(Clone, Copy, Debug)]
enum Pacing {
    /// The recorded gaps divided by the factor.
    Recorded(f64),
    /// One every this long.
    Every(Duration),
    /// As fast as the concurrency allows.
    Max,
}

/// What came back, counted as the replay goes.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    by_class: [AtomicU64; 5],
    errors: AtomicU64,
    latency: LatencyHistogram,
    /// With --compare: responses compared, and records without a recorded response.
    compared: AtomicU64,
    no_recorded_response: AtomicU64,
}

/// The name replayed responses are reported under.
const REPLAY_TARGET: &str = "replay";

/// Runs a replay; exit code 0 unless a source cannot be read or the flags are wrong (2).
pub async fn run(args: ReplayArgs) -> ExitCode {
    let bad = |message: String| {
        eprintln!("mirror-proxy replay: error: {message}");
        ExitCode::from(2)
    };
    let base = match BaseUrl::parse(&args.to) {
        Ok(base) => base,
        Err(error) => return bad(format!("--to {:?}: {error}", args.to)),
    };
    let compare = args.compare || args.report.is_some();
    if args.config.is_some() && !compare {
        return bad("--config gives the comparison's rules: use it with --compare".to_owned());
    }
    // The report's file is checked now: a replay is not run only to lose its report.
    if let Some(path) = &args.report
        && let Err(error) = std::fs::write(path, "")
    {
        return bad(format!("--report {}: {error}", path.display()));
    }
    let mut compare_limit = 0;
    let diff = if compare {
        let options = match &args.config {
            Some(path) => match crate::config::diff_options_from(path) {
                Ok(options) => options,
                Err(error) => return bad(error.to_string()),
            },
            None => tower_mirror::diff::DiffOptions::default(),
        };
        // One byte more than the diff compares, so that a longer body shows as not compared.
        compare_limit = options.max_body_bytes.saturating_add(1);
        match Diff::new(options) {
            Ok(diff) => Some(diff),
            Err(error) => return bad(format!("[diff]: {error}")),
        }
    } else {
        None
    };
    let pacing = match (args.max, args.rate, args.speed) {
        (true, _, _) => Pacing::Max,
        (_, Some(rate), _) if rate.count() == 0 || rate.per().is_zero() => {
            return bad(format!(
                "--rate {rate:?}: at least 1 request per a non-zero period"
            ));
        }
        (_, Some(rate), _) => Pacing::Every(rate.per() / rate.count()),
        (_, None, speed) => Pacing::Recorded(speed.unwrap_or(1.0)),
    };
    // Every source is checked first: one that cannot be opened stops the replay before
    // anything is sent.
    let mut sources = Vec::new();
    for path in &args.sources {
        match Source::of(path, &args) {
            Ok(source) => match source.check() {
                Ok(()) => sources.push(source),
                Err(error) => return bad(format!("{}: {error}", source.name())),
            },
            Err(error) => return bad(error),
        }
    }
    let sources = Arc::new(sources);
    let skipped = Arc::new(AtomicU64::new(0));
    let https = tower_mirror::client::tls::connector(tower_mirror::client::tls::client_config(
        tower_mirror::client::tls::webpki_roots(),
    ));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(args.concurrency as usize));
    let started = Instant::now();
    let progress = progress_bar();
    let mut next_at = tokio::time::Instant::now();
    let mut read_error = None;
    'loops: for _ in 0..args.loops {
        // Records stream in through a bounded queue: memory holds at most its length of
        // them, whatever the recording's size.
        let (records, mut queue) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(feed(Arc::clone(&sources), records, Arc::clone(&skipped)));
        let mut first = None;
        while let Some(record) = queue.recv().await {
            let record = &record;
            let first = *first.get_or_insert(record.time);
            match pacing {
                Pacing::Max => {}
                Pacing::Every(every) => {
                    tokio::time::sleep_until(next_at).await;
                    next_at += every;
                }
                Pacing::Recorded(speed) => {
                    let offset = record.time.duration_since(first).unwrap_or_default();
                    tokio::time::sleep_until(next_at + offset.div_f64(speed)).await;
                }
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let request = build(record, &base);
            let (client, tally) = (client.clone(), Arc::clone(&tally));
            // What the replayed response is compared with, if anything.
            let comparison = diff.as_ref().and_then(|diff| match &record.response {
                Some(recorded) => Some((
                    diff.clone(),
                    record.method.clone(),
                    record.uri.clone(),
                    recorded.clone(),
                )),
                None => {
                    tally.no_recorded_response.fetch_add(1, Relaxed);
                    None
                }
            });
            let done = Done(progress.clone());
            tokio::spawn(async move {
                let (_permit, _done) = (permit, done);
                tally.sent.fetch_add(1, Relaxed);
                let sent = Instant::now();
                match request {
                    Some(request) => match client.request(request).await {
                        Ok(response) => {
                            let class = usize::from(response.status().as_u16() / 100);
                            let latency = sent.elapsed();
                            let (head, body) = response.into_parts();
                            let limit = comparison.as_ref().map_or(0, |_| compare_limit);
                            let Ok((body, complete)) = read_body(body, limit).await else {
                                tally.errors.fetch_add(1, Relaxed);
                                return;
                            };
                            tally.latency.record(sent.elapsed());
                            tally.by_class[class.clamp(1, 5) - 1].fetch_add(1, Relaxed);
                            if let Some((diff, method, uri, recorded)) = comparison {
                                let mut replayed =
                                    CapturedResponse::new(head.status, head.headers, body)
                                        .latency(latency);
                                if !complete {
                                    replayed = replayed.incomplete();
                                }
                                diff.compare(
                                    REPLAY_TARGET,
                                    &method,
                                    &uri,
                                    captured(recorded),
                                    replayed,
                                );
                                tally.compared.fetch_add(1, Relaxed);
                            }
                        }
                        Err(_) => {
                            tally.errors.fetch_add(1, Relaxed);
                        }
                    },
                    None => {
                        tally.errors.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                read_error = Some(error);
                break 'loops;
            }
            Err(panicked) => {
                read_error = Some(format!("the reader failed: {panicked}"));
                break 'loops;
            }
        }
        if let Pacing::Recorded(_) = pacing {
            next_at = tokio::time::Instant::now();
        }
    }
    // Every permit back: every request answered or failed.
    let _ = permits.acquire_many(args.concurrency).await;
    progress.finish_and_clear();
    let skipped = skipped.load(Relaxed);
    print_summary(&tally, started.elapsed(), skipped);
    if let Some(diff) = &diff {
        let report = diff.report();
        print_comparison(&tally, &report);
        if let Some(path) = &args.report {
            let page = crate::diff_page::html(Some(&report), false);
            if let Err(error) = std::fs::write(path, page) {
                return bad(format!("--report {}: {error}", path.display()));
            }
        }
    }
    match read_error {
        // What was read before the failure has been replayed and summarised above.
        Some(error) => bad(error),
        None => ExitCode::SUCCESS,
    }
}

/// A line on stderr while the replay runs, when stderr is a terminal (hidden otherwise, so
/// that scripts and logs get only the summary): the time, the requests done (answered or
/// failed) and the rate. The recording streams in, so its length is not known ahead.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::no_length();
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {elapsed_precise} {human_pos} requests done, {per_sec}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Moves the bar on when a request is done with, however it ended.
struct Done(indicatif::ProgressBar);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.inc(1);
    }
}

/// Reads `body` to its end, keeping at most `limit` bytes; true when they are all of it.
async fn read_body(
    mut body: hyper::body::Incoming,
    limit: usize,
) -> Result<(Bytes, bool), hyper::Error> {
    let mut kept = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = limit.saturating_sub(kept.len());
            complete &= data.len() <= room;
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok((Bytes::from(kept), complete))
}

/// A recorded response as the diff takes it.
fn captured(recorded: RecordedResponse) -> CapturedResponse {
    let headers = recorded.headers.into_iter().collect();
    let response =
        CapturedResponse::new(recorded.status, headers, recorded.body).latency(recorded.latency);
    if recorded.truncated {
        response.incomplete()
    } else {
        response
    }
}

/// The comparison, per route: how many differed, and in which fields.
fn print_comparison(tally: &Tally, report: &tower_mirror::diff::DiffReport) {
    let compared = tally.compared.load(Relaxed);
    let differed: u64 = report.routes.iter().map(|r| r.compared - r.equal).sum();
    println!("compared {compared} responses with the recorded ones: {differed} differed");
    let missing = tally.no_recorded_response.load(Relaxed);
    if missing > 0 {
        println!(
            "not compared: {missing} records without a recorded response (record_response = true records them)"
        );
    }
    for route in &report.routes {
        println!(
            "  {}: {} compared, {} differ ({:.1} %): status {}, headers {}, body {}{}",
            route.route,
            route.compared,
            route.compared - route.equal,
            route.divergence() * 100.0,
            route.differing_status,
            route.differing_headers,
            route.differing_body,
            if route.body_not_compared > 0 {
                format!(
                    "; {} bodies over the cap, not compared",
                    route.body_not_compared
                )
            } else {
                String::new()
            }
        );
        for field in route.fields.iter().filter(|f| f.differing > 0) {
            let example = field.examples.first().map_or_else(String::new, |e| {
                format!(
                    ", e.g. {}: {} -> {}",
                    e.uri,
                    e.primary.as_deref().unwrap_or("(none)"),
                    e.shadow.as_deref().unwrap_or("(none)")
                )
            });
            println!(
                "    {} {}: {} differ{example}",
                field.part.as_str(),
                if field.path.is_empty() {
                    "-"
                } else {
                    &field.path
                },
                field.differing
            );
        }
    }
}

/// Where recorded requests come from: a file, or (feature `kafka`) a topic.
enum Source {
    File(PathBuf),
    #[cfg(feature = "kafka")]
    Kafka(crate::replay_kafka::KafkaSource),
}

impl Source {
    /// The source `path` names, with the flags that apply to it; the error is for the user.
    fn of(path: &Path, args: &ReplayArgs) -> Result<Self, String> {
        // The same scheme rule as a recording target's (tower-mirror's `Target::is_kafka`).
        let kafka = path
            .to_str()
            .filter(|p| tower_mirror::Target::new(*p).is_kafka());
        let Some(url) = kafka else {
            let flags = [
                ("--from-offset", args.from_offset.is_some()),
                ("--from-time", args.from_time.is_some()),
                ("--partitions", !args.partitions.is_empty()),
                ("--member", args.member.is_some()),
            ];
            if let Some((flag, _)) = flags.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{flag} is for kafka:// sources, and {} is a file",
                    path.display()
                ));
            }
            return Ok(Self::File(path.to_owned()));
        };
        #[cfg(feature = "kafka")]
        {
            crate::replay_kafka::KafkaSource::new(url, args).map(Self::Kafka)
        }
        #[cfg(not(feature = "kafka"))]
        {
            Err(format!(
                "{url}: this mirror-proxy was built without its `kafka` feature"
            ))
        }
    }

    fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            #[cfg(feature = "kafka")]
            Self::Kafka(source) => source.url().to_owned(),
        }
    }

    /// Whether it can be read: a file opens (a topic is checked when read).
    fn check(&self) -> Result<(), String> {
        match self {
            Self::File(path) => std::fs::File::open(path)
                .map(drop)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => Ok(()),
        }
    }

    /// Sends its records, in order, into `records`; counts the entries that are not records
    /// in `skipped`. Stops early, without error, when the receiver is gone.
    async fn read_into(
        &self,
        records: &tokio::sync::mpsc::Sender<Recorded>,
        skipped: &AtomicU64,
    ) -> Result<(), String> {
        match self {
            Self::File(path) => {
                let (path, records) = (path.clone(), records.clone());
                let skipped_here = tokio::task::spawn_blocking(move || stream(&path, &records))
                    .await
                    .map_err(|e| format!("the reader failed: {e}"))?
                    .map_err(|e| e.to_string())?;
                skipped.fetch_add(skipped_here, Relaxed);
                Ok(())
            }
            // A topic's partitions are merged into capture order in memory (replay_kafka.rs).
            #[cfg(feature = "kafka")]
            Self::Kafka(source) => {
                let (read, bad) = source.read().await?;
                skipped.fetch_add(bad, Relaxed);
                for record in read {
                    if records.send(record).await.is_err() {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

/// How many records may wait between the reader and the sender: the replay's memory for
/// records, whatever the recording's size.
const READ_AHEAD: usize = 4096;

/// Reads `sources` in order into `records`, counting what is not a record in `skipped`; the
/// first source that fails to read ends it with its error.
async fn feed(
    sources: Arc<Vec<Source>>,
    records: tokio::sync::mpsc::Sender<Recorded>,
    skipped: Arc<AtomicU64>,
) -> Result<(), String> {
    for source in sources.iter() {
        source
            .read_into(&records, &skipped)
            .await
            .map_err(|error| format!("{}: {error}", source.name()))?;
    }
    Ok(())
}

/// Streams one file's records into `records` (blocking: run it on a blocking thread), and
/// returns how many lines (or GoReplay messages) were not records. A name ending in `.gor`
/// (or `.gor.gz`) is read as GoReplay's format ([`crate::gor`]), whole.
fn stream(path: &Path, records: &tokio::sync::mpsc::Sender<Recorded>) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let name = path.to_string_lossy();
    let gzip = name.ends_with(".gz");
    let mut reader: Box<dyn BufRead> = if gzip {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    if name.trim_end_matches(".gz").ends_with(".gor") {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut data)?;
        let (read, skipped) = crate::gor::parse(&data);
        for record in read {
            if records.blocking_send(record).is_err() {
                break;
            }
        }
        return Ok(skipped);
    }
    let mut skipped = 0;
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        if reader.read_until(b'\n', &mut bytes)? == 0 {
            break;
        }
        // A line cut by a crash or a failed write is skipped, as the format says: one that
        // is not even UTF-8 (cut inside a character) too.
        let Ok(line) = std::str::from_utf8(&bytes) else {
            skipped += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match Recorded::parse(line) {
            Ok(record) => {
                if records.blocking_send(record).is_err() {
                    break;
                }
            }
            Err(_) => skipped += 1,
        }
    }
    Ok(skipped)
}

/// The request to send for `record`: its method, path and query joined onto `base`, its
/// headers but those a mirror never copies (tower-mirror's `outbound::is_reserved`: `Host`,
/// which the target's URL sets, the framing, which the body sets, hop-by-hop headers and
/// those `Connection` names, `Expect`), and its body.
fn build(record: &Recorded, base: &BaseUrl) -> Option<Request<Full<Bytes>>> {
    let uri = base.join(&record.uri)?;
    let recorded: http::HeaderMap = record.headers.iter().cloned().collect();
    let named = tower_mirror::outbound::hop::connection_options(&recorded);
    let mut request = Request::builder().method(record.method.clone()).uri(uri);
    for (name, value) in &record.headers {
        if !tower_mirror::outbound::is_reserved(name) && !named.contains(name) {
            request = request.header(name, value);
        }
    }
    request.body(Full::new(record.body.clone())).ok()
}

fn print_summary(tally: &Tally, elapsed: Duration, skipped: u64) {
    let sent = tally.sent.load(Relaxed);
    let rate = sent as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "replayed {sent} requests in {:.2} s ({rate:.0} req/s)",
        elapsed.as_secs_f64()
    );
    let classes: Vec<String> = tally
        .by_class
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}xx {}", i + 1, n.load(Relaxed)))
        .collect();
    println!(
        "responses: {}; errors {}",
        classes.join(", "),
        tally.errors.load(Relaxed)
    );
    let ms = |q: f64| {
        tally.latency.quantile(q).map_or_else(
            || "-".to_owned(),
            |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0),
        )
    };
    println!("latency: p50 {}, p99 {}", ms(0.5), ms(0.99));
    if skipped > 0 {
        println!("skipped {skipped} lines that are not records");
    }
}
