//! `replay kafka://host:port/topic` (feature `kafka`): the records a Kafka recording target
//! produced, read back from the topic.
//!
//! Each partition read is read from its start (the earliest offset, `--from-offset`, or the
//! first offset at `--from-time`) up to the high watermark it had when the replay started, so
//! a replay ends even while the topic is still written to. With `--from-time`, records
//! captured before the time are also left out by their own `time`, so a broker whose time
//! index answers coarsely (or not at all) still gives the right records. Records of several partitions are
//! merged in capture order. rskafka speaks no consumer-group protocol, so replayers share a
//! topic by partitions: `--partitions 0,2`, or `--member I/N` for the partitions whose number
//! modulo N is I. Nothing is committed to the broker.

use std::time::{Duration, SystemTime};

use rskafka::BackoffConfig;
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use tower_mirror::KafkaUrl;
use tower_mirror::record::Recorded;

use crate::replay::ReplayArgs;

/// How long connecting, or one request to the broker, may take before the replay gives up.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes one fetch asks for.
const FETCH_BYTES: i32 = 4 << 20;

/// Where a partition's reading starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    Earliest,
    Offset(i64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// Which partitions are read.
#[derive(Clone, Debug)]
enum Share {
    All,
    These(Vec<i32>),
    Member { index: i32, of: i32 },
}

/// A topic to replay, with the flags that say what to read of it.
#[derive(Debug)]
pub(crate) struct KafkaSource {
    url: String,
    kafka: KafkaUrl,
    start: Start,
    /// `--from-time`: records captured before it are left out.
    from_time: Option<SystemTime>,
    share: Share,
}

impl KafkaSource {
    /// Checks the URL and the Kafka flags; the error is for the user.
    pub(crate) fn new(url: &str, args: &ReplayArgs) -> Result<Self, String> {
        let kafka = KafkaUrl::parse(url)?;
        let mut from_time = None;
        let start = match (args.from_offset, &args.from_time) {
            (Some(offset), _) if offset < 0 => {
                return Err(format!("--from-offset {offset}: an offset is 0 or more"));
            }
            (Some(offset), _) => Start::Offset(offset),
            (None, Some(time)) => {
                let bad = || format!("--from-time {time:?}: not an RFC 3339 time");
                let time = humantime::parse_rfc3339_weak(time).map_err(|_| bad())?;
                from_time = Some(time);
                let millis = time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_err(|_| bad())?
                    .as_millis();
                let millis = i64::try_from(millis).map_err(|_| bad())?;
                Start::Time(chrono::DateTime::from_timestamp_millis(millis).ok_or_else(bad)?)
            }
            (None, None) => Start::Earliest,
        };
        let share = match (&args.member, args.partitions.as_slice()) {
            (Some(member), _) => {
                let bad = || format!("--member {member:?}: use I/N with 0 <= I < N, such as 0/3");
                let (index, of) = member.split_once('/').ok_or_else(bad)?;
                let (index, of): (i32, i32) = (
                    index.trim().parse().map_err(|_| bad())?,
                    of.trim().parse().map_err(|_| bad())?,
                );
                if of < 1 || index < 0 || index >= of {
                    return Err(bad());
                }
                Share::Member { index, of }
            }
            (None, []) => Share::All,
            (None, partitions) => {
                if let Some(bad) = partitions.iter().find(|p| **p < 0) {
                    return Err(format!("--partitions: {bad} is not a partition"));
                }
                Share::These(partitions.to_vec())
            }
        };
        Ok(Self {
            url: url.to_owned(),
            kafka,
            start,
            from_time,
            share,
        })
    }

    /// The URL as given.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The records of the partitions read, in capture order, and how many Kafka records
    /// were not records of this format.
    pub(crate) async fn read(&self) -> Result<(Vec<Recorded>, u64), String> {
        tokio::time::timeout(TIMEOUT * 6, self.read_all())
            .await
            .unwrap_or_else(|_| Err("reading the topic took over a minute".to_owned()))
    }

    async fn read_all(&self) -> Result<(Vec<Recorded>, u64), String> {
        let client = ClientBuilder::new(self.kafka.brokers.clone())
            .client_id("mirror-proxy-replay")
            .backoff_config(BackoffConfig {
                deadline: Some(TIMEOUT),
                ..BackoffConfig::default()
            })
            .build()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let topic = client
            .list_topics()
            .await
            .map_err(|e| format!("cannot list the topics: {e}"))?
            .into_iter()
            .find(|t| t.name == self.kafka.topic)
            .ok_or_else(|| format!("the topic {:?} does not exist", self.kafka.topic))?;
        let mut partitions: Vec<i32> = topic.partitions.into_iter().collect();
        partitions.sort_unstable();
        let chosen: Vec<i32> = match &self.share {
            Share::All => partitions,
            Share::These(these) => {
                if let Some(missing) = these.iter().find(|p| !partitions.contains(p)) {
                    return Err(format!(
                        "the topic {:?} has no partition {missing} (it has {})",
                        self.kafka.topic,
                        partitions.len()
                    ));
                }
                these.clone()
            }
            Share::Member { index, of } => partitions
                .into_iter()
                .filter(|p| p % of == *index)
                .collect(),
        };
        let mut records = Vec::new();
        let mut skipped = 0;
        for partition in chosen {
            let client = client
                .partition_client(
                    self.kafka.topic.clone(),
                    partition,
                    UnknownTopicHandling::Error,
                )
                .await
                .map_err(|e| format!("partition {partition}: {e}"))?;
            skipped += self
                .read_partition(&client, &mut records)
                .await
                .map_err(|e| format!("partition {partition}: {e}"))?;
        }
        // Merged in capture order (stable: one partition's order is kept for equal times).
        records.sort_by_key(|r: &Recorded| r.time);
        Ok((records, skipped))
    }

    /// Appends the partition's records from the start up to its high watermark now; returns
    /// how many were not records.
    async fn read_partition(
        &self,
        client: &PartitionClient,
        records: &mut Vec<Recorded>,
    ) -> Result<u64, String> {
        let earliest = client
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| e.to_string())?;
        // The end is the high watermark a fetch reports (not ListOffsets' latest, which some
        // Kafka-compatible brokers answer with the last batch's start).
        let (_, end) = client
            .fetch_records(earliest, 1..FETCH_BYTES, 0)
            .await
            .map_err(|e| e.to_string())?;
        let mut offset = match self.start {
            Start::Earliest => earliest,
            Start::Offset(offset) => offset.max(earliest),
            Start::Time(time) => {
                let at = client
                    .get_offset(OffsetAt::Timestamp(time))
                    .await
                    .map_err(|e| e.to_string())?;
                // -1: no record at or after the time.
                if at < 0 { end } else { at.max(earliest) }
            }
        }
        .min(end);
        let mut skipped = 0;
        while offset < end {
            let (batch, _) = client
                .fetch_records(offset, 1..FETCH_BYTES, 100)
                .await
                .map_err(|e| e.to_string())?;
            // Nothing below the end it announced: a gap (such as transaction markers) ends it.
            let Some(last) = batch.last().map(|r| r.offset) else {
                break;
            };
            for entry in batch {
                if entry.offset < offset || entry.offset >= end {
                    continue;
                }
                let parsed = entry
                    .record
                    .value
                    .as_deref()
                    .and_then(|value| std::str::from_utf8(value).ok())
                    .map(Recorded::parse);
                match parsed {
                    // The broker's time index only finds where to start: records captured
                    // before the time are left out here, whatever it answered.
                    Some(Ok(record)) if self.from_time.is_some_and(|from| record.time < from) => {}
                    Some(Ok(record)) => records.push(record),
                    _ => skipped += 1,
                }
            }
            offset = last + 1;
        }
        Ok(skipped)
    }
}
