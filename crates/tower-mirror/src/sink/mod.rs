//! Recording targets: mirrors written down instead of sent. A `file://` target writes NDJSON
//! records ([`RecordFile`](crate::RecordFile), feature `record`); a `kafka://` target
//! produces the same records to a topic ([`KafkaTopic`](crate::KafkaTopic), feature
//! `kafka`). The format is documented in `docs/record-format.md`.
//!
//! A sink takes [`Record`]s without ever waiting and settles each once written (or not), so
//! the target's counters and in-flight bound work as for any target.

#[cfg(feature = "record")]
mod file;
#[cfg(any(feature = "record", feature = "kafka"))]
mod format;
#[cfg(feature = "kafka")]
mod kafka;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::body::Payload;
use crate::error::ConfigError;
use crate::observe::{Observation, PrimaryResponse};
use crate::outbound::request::RequestSnapshot;
use crate::response::MirrorResponse;
use crate::target::Target;

/// The record format version the sinks write (and `record::FORMAT_VERSION` reads).
#[cfg_attr(not(any(feature = "record", feature = "kafka")), allow(dead_code))]
pub(crate) const FORMAT_VERSION: u64 = 1;

/// Where a recording target's records go.
pub(crate) trait Sink: Send + Sync {
    /// Queues `record` for writing; gives it back if the queue is full. Never waits.
    fn record(&self, record: Record) -> Result<(), Record>;

    /// Whether this sink writes what `target` asks for, so that a replacement keeping the
    /// target may keep the sink.
    fn serves(&self, target: &Target) -> bool;

    /// Whether its records need the sampling key's value ([`Record::key`]); taking it costs
    /// a second look at the request, so only a sink that uses it asks.
    fn wants_key(&self) -> bool {
        false
    }
}

/// One mirrored request, to be written.
#[allow(dead_code)] // Read by the sinks only (features `record`, `kafka`).
pub(crate) struct Record {
    /// When the request was captured.
    pub(crate) time: SystemTime,
    /// Unique within the process: see [`next_id`].
    pub(crate) id: u64,
    pub(crate) snapshot: Arc<RequestSnapshot>,
    pub(crate) body: Option<Arc<Payload>>,
    /// The primary's response, for a target that records it ([`RecordFile::response`]
    /// (crate::RecordFile::response)) and once it has streamed; `None` otherwise.
    pub(crate) response: Option<Arc<PrimaryResponse>>,
    /// The target's redaction, applied as the record is written (off the request path).
    pub(crate) redact: Option<crate::redact::Redact>,
    /// The target's sticky-sampling key value for this request, when the target samples by
    /// key, the request has one, and the sink asked for it ([`Sink::wants_key`]).
    pub(crate) key: Option<Vec<u8>>,
    /// Told how writing went; holds the record's place among the target's in-flight ones.
    pub(crate) settle: Box<dyn Settle>,
}

/// How writing a record went, for its target's counters.
pub(crate) trait Settle: Send {
    /// Written (`responded`) or not (`failed`).
    #[cfg_attr(not(feature = "record"), allow(dead_code))]
    fn settle(self: Box<Self>, written: bool);

    /// Never queued: the sink's queue was full. Counted as dropped for overload, not sent.
    fn dropped(self: Box<Self>);
}

/// Hands `record` to `sink`, counting it as dropped if the sink's queue is full; false then.
pub(crate) fn deliver(sink: &dyn Sink, record: Record) -> bool {
    // The queue is as long as `max_in_flight`, so this is rare: written off as any mirror
    // over the bound.
    match sink.record(record) {
        Ok(()) => true,
        Err(record) => {
            record.settle.dropped();
            false
        }
    }
}

/// One request's records that wait for the primary's response: an [`Observation`] whose
/// only interest is the primary's response. Records arrive when the request body is known,
/// the response when its body has streamed; whichever comes second writes. Records still
/// waiting when the request is done with (no response came) are written without one.
pub(crate) struct ResponseJoin {
    body_limit: usize,
    state: Mutex<JoinState>,
}

#[derive(Default)]
struct JoinState {
    waiting: Vec<(Arc<dyn Sink>, Record)>,
    response: Option<Arc<PrimaryResponse>>,
}

impl ResponseJoin {
    /// A join for a request chosen by `targets`, if any of them records responses.
    pub(crate) fn for_targets<'a>(targets: impl Iterator<Item = &'a Target>) -> Option<Arc<Self>> {
        let body_limit = targets
            .filter(|t| t.is_recording() && t.record.response)
            .map(|t| t.record.max_response_body_bytes)
            .max()?;
        Some(Arc::new(Self {
            body_limit,
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JoinState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `record` with the primary's response: now if it has come, else when it does.
    pub(crate) fn hold(&self, sink: Arc<dyn Sink>, mut record: Record) {
        let mut state = self.state();
        match &state.response {
            Some(response) => {
                record.response = Some(Arc::clone(response));
                drop(state);
                let _ = deliver(&*sink, record);
            }
            None => state.waiting.push((sink, record)),
        }
    }
}

impl Observation for ResponseJoin {
    fn body_limit(&self) -> usize {
        self.body_limit
    }

    fn wants(&self, _target: &Target) -> bool {
        false
    }

    fn shadow(&self, _target: &Target, _response: &MirrorResponse, _complete: bool) {}

    fn primary(&self, response: PrimaryResponse) {
        let response = Arc::new(response);
        let waiting = {
            let mut state = self.state();
            state.response = Some(Arc::clone(&response));
            std::mem::take(&mut state.waiting)
        };
        for (sink, mut record) in waiting {
            record.response = Some(Arc::clone(&response));
            let _ = deliver(&*sink, record);
        }
    }
}

impl Drop for ResponseJoin {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for (sink, record) in state.waiting.drain(..) {
            let _ = deliver(&*sink, record);
        }
    }
}

/// A record id, unique within the process: a counter (the per-process prefix is added when
/// the id is written, from [`process_nonce`]).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Tells this process's records from another's: a hash of the process id and start time.
#[cfg_attr(not(any(feature = "record", feature = "kafka")), allow(dead_code))]
pub(crate) fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!("{}:{now}", std::process::id());
        xxhash_rust::xxh3::xxh3_64(seed.as_bytes())
    })
}

/// Opens the sink of a recording target (whose URL is `file://…` or `kafka://…`), or keeps
/// `previous` if it serves the same. `capacity` bounds its queue. Errors name the target: a
/// path that cannot be written, a Kafka URL or setting that cannot work, or (without the
/// `record` or `kafka` feature) a recording target of that kind at all.
pub(crate) fn open(
    target: &Target,
    previous: Option<&Arc<dyn Sink>>,
    capacity: usize,
) -> Result<Arc<dyn Sink>, ConfigError> {
    if let Some(previous) = previous.filter(|p| p.serves(target)) {
        return Ok(Arc::clone(previous));
    }
    let invalid = |setting: &'static str| {
        move |reason: String| ConfigError::InvalidSetting {
            target: target.name().to_owned(),
            setting,
            reason,
        }
    };
    if target.is_kafka() {
        #[cfg(feature = "kafka")]
        {
            kafka::KafkaSink::open(target, capacity)
                .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
                .map_err(|(setting, reason)| invalid(setting)(reason))
        }
        #[cfg(not(feature = "kafka"))]
        {
            let _ = capacity;
            Err(invalid("url")(
                "kafka:// (recording) targets need tower-mirror's `kafka` feature".to_owned(),
            ))
        }
    } else {
        #[cfg(feature = "record")]
        {
            file::FileSink::open(target, capacity)
                .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
                .map_err(invalid("url"))
        }
        #[cfg(not(feature = "record"))]
        {
            let _ = capacity;
            Err(invalid("url")(
                "file:// (recording) targets need tower-mirror's `record` feature".to_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{ConfigError, MirrorLayer, Options, Target};

    fn layer(target: Target) -> Result<MirrorLayer, ConfigError> {
        MirrorLayer::with_options(Options {
            targets: vec![target],
            ..Options::default()
        })
    }

    /// A Kafka target connects lazily: no broker on the port does not stop the layer. Only
    /// with the `kafka` feature; without it, the error names the feature.
    #[test]
    fn a_kafka_target_needs_its_feature_and_no_broker_at_start() {
        let result = layer(Target::new("kafka://127.0.0.1:9/traffic").with_name("kafka"));
        if cfg!(feature = "kafka") {
            assert!(result.is_ok(), "{:?}", result.err());
        } else {
            let Err(error) = result else {
                panic!("a kafka:// target without the feature is refused")
            };
            let text = error.to_string();
            assert!(
                text.contains("\"kafka\"") && text.contains("`kafka` feature"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bad_kafka_url_or_setting_names_the_target_and_setting() {
        if !cfg!(feature = "kafka") {
            return;
        }
        for (target, setting) in [
            (Target::new("kafka://127.0.0.1:9092"), "url"),
            (Target::new("kafka://127.0.0.1:70000/t"), "url"),
            (
                Target::new("kafka://127.0.0.1:9/t")
                    .kafka(crate::KafkaTopic::default().max_batch_bytes(0)),
                "kafka_max_batch",
            ),
            (
                Target::new("kafka://127.0.0.1:9/t")
                    .kafka(crate::KafkaTopic::default().timeout(std::time::Duration::ZERO)),
                "kafka_timeout",
            ),
        ] {
            let url = target.url.clone();
            match layer(target.with_name("k")) {
                Err(ConfigError::InvalidSetting {
                    target, setting: s, ..
                }) => {
                    assert_eq!((target.as_str(), s), ("k", setting), "{url}");
                }
                other => panic!("{url}: {:?}", other.err()),
            }
        }
    }
}
