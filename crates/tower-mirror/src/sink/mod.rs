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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::body::Payload;
use crate::error::ConfigError;
use crate::outbound::request::RequestSnapshot;
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
    /// The target's sticky-sampling key value for this request, when the target samples by
    /// key, the request has one, and the sink asked for it ([`Sink::wants_key`]).
    pub(crate) key: Option<Vec<u8>>,
    /// Told how writing went; holds the record's place among the target's in-flight ones.
    pub(crate) settle: Box<dyn Settle>,
}

/// How writing a record went, for its target's counters.
#[allow(dead_code)] // Called by the sinks only (features `record`, `kafka`).
pub(crate) trait Settle: Send {
    fn settle(self: Box<Self>, written: bool);
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
