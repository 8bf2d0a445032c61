//! The `kafka://` sink: a producer on a thread of its own (with a single-threaded Tokio
//! runtime, so it needs nothing of the caller's runtime and never runs on a worker that
//! serves requests), taking records from a bounded queue, batching them by linger and size,
//! and producing them to the topic's partitions with rskafka.
//!
//! The producer connects lazily and drops its connection on any error: the next batch
//! reconnects (not more often than `reconnect_after`), so a broker that was down or
//! restarted is used again without anyone's help.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rskafka::BackoffConfig;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use tokio::sync::mpsc::{Receiver, Sender, error::TrySendError};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Record, Settle, Sink, format};
use crate::kafka::{KafkaCompression, KafkaTopic, KafkaUrl, SaslMechanism};
use crate::target::Target;

pub(super) struct KafkaSink {
    url: String,
    settings: KafkaTopic,
    queue: Sender<Record>,
}

impl KafkaSink {
    /// Checks the target's URL and settings and starts its producer, which connects when
    /// the first records come. The error names the setting (as mirror-proxy's key) and says
    /// what is wrong with it.
    pub(super) fn open(target: &Target, capacity: usize) -> Result<Self, (&'static str, String)> {
        let url = KafkaUrl::parse(&target.url).map_err(|e| ("url", e))?;
        let settings = target.kafka.clone();
        if settings.max_batch_bytes == 0 {
            return Err(("kafka_max_batch", "must be at least 1 byte".to_owned()));
        }
        if settings.timeout.is_zero() {
            return Err(("kafka_timeout", "must be longer than zero".to_owned()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ("url", format!("cannot start the Kafka producer: {e}")))?;
        let (queue, records) = tokio::sync::mpsc::channel(capacity.max(1));
        let producer = Producer {
            url,
            settings: settings.clone(),
            connection: None,
            retry_at: None,
        };
        std::thread::Builder::new()
            .name("tower-mirror-kafka".to_owned())
            .spawn(move || runtime.block_on(producer.run(records)))
            .map_err(|e| {
                (
                    "url",
                    format!("cannot start the Kafka producer thread: {e}"),
                )
            })?;
        Ok(Self {
            url: target.url.clone(),
            settings,
            queue,
        })
    }
}

impl Sink for KafkaSink {
    fn record(&self, record: Record) -> Result<(), Record> {
        self.queue.try_send(record).map_err(|e| match e {
            TrySendError::Full(record) | TrySendError::Closed(record) => record,
        })
    }

    fn serves(&self, target: &Target) -> bool {
        target.url == self.url && target.kafka == self.settings
    }

    fn wants_key(&self) -> bool {
        true
    }
}

/// A record ready to produce, and who to tell how it went.
struct Pending {
    record: rskafka::record::Record,
    partition_key: Vec<u8>,
    settle: Box<dyn Settle>,
}

impl Pending {
    fn of(mut record: Record, max_body: Option<usize>) -> Self {
        let mut value = Vec::with_capacity(512);
        // Kafka targets do not record responses (RecordFile::response is for files).
        format::encode(
            &mut value,
            &record,
            max_body,
            crate::target::RecordFile::DEFAULT_MAX_RESPONSE_BODY_BYTES,
        );
        let key = match (record.key.take(), &record.redact) {
            // The sampling key may be a credential or a user id: with any redaction, the key
            // is its placeholder (the same value, the same placeholder: the same partition).
            (Some(key), Some(redact)) => redact.placeholder(&key).into_bytes(),
            (Some(key), None) => key,
            (None, _) => {
                let mut id = Vec::with_capacity(40);
                format::write_id(&mut id, &record);
                id
            }
        };
        let Record { time, settle, .. } = record;
        Self {
            record: rskafka::record::Record {
                key: Some(key.clone()),
                value: Some(value),
                headers: Default::default(),
                timestamp: timestamp(time),
            },
            partition_key: key,
            settle,
        }
    }
}

/// The producer's connection: a partition client for each of the topic's partitions, in
/// partition order.
struct Connection {
    partitions: Vec<Arc<PartitionClient>>,
}

struct Producer {
    url: KafkaUrl,
    settings: KafkaTopic,
    connection: Option<Connection>,
    /// After a failed connection: no new attempt before this.
    retry_at: Option<Instant>,
}

impl Producer {
    async fn run(mut self, mut records: Receiver<Record>) {
        let max_body = self.settings.max_body_bytes;
        // Every sender gone: the sink was dropped (its target removed or the layer let go).
        while let Some(first) = records.recv().await {
            let mut batch = vec![Pending::of(first, max_body)];
            let mut bytes = value_len(&batch[0]);
            let deadline = Instant::now() + self.settings.linger;
            while bytes < self.settings.max_batch_bytes {
                let next = tokio::select! {
                    biased;
                    next = records.recv() => next,
                    () = tokio::time::sleep_until(deadline) => break,
                };
                let Some(record) = next else { break };
                let pending = Pending::of(record, max_body);
                bytes += value_len(&pending);
                batch.push(pending);
            }
            self.produce(batch).await;
        }
    }

    /// Produces `batch`, settling each record: written when its partition's leader
    /// acknowledged it within the timeout.
    async fn produce(&mut self, batch: Vec<Pending>) {
        let Some(partitions) = self.connected().await.map(|c| c.partitions.clone()) else {
            for pending in batch {
                pending.settle.settle(false);
            }
            return;
        };
        let count = partitions.len() as u64;
        let mut by_partition: Vec<Vec<Pending>> = Vec::new();
        by_partition.resize_with(partitions.len(), Vec::new);
        for pending in batch {
            let partition = xxhash_rust::xxh3::xxh3_64(&pending.partition_key) % count;
            by_partition[partition as usize].push(pending);
        }
        let compression = compression(self.settings.compression);
        let timeout = self.settings.timeout;
        let mut sends = JoinSet::new();
        for (partition, pendings) in by_partition.into_iter().enumerate() {
            if pendings.is_empty() {
                continue;
            }
            let client = Arc::clone(&partitions[partition]);
            sends.spawn(async move {
                let (records, settles): (Vec<_>, Vec<_>) =
                    pendings.into_iter().map(|p| (p.record, p.settle)).unzip();
                let produced = tokio::time::timeout(timeout, client.produce(records, compression))
                    .await
                    .map_or_else(
                        |_| Err(format!("no acknowledgement within {timeout:?}")),
                        |result| result.map(drop).map_err(|e| e.to_string()),
                    );
                let written = produced.is_ok();
                for settle in settles {
                    settle.settle(written);
                }
                produced
            });
        }
        let mut failure = None;
        while let Some(done) = sends.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failure = Some(error),
                // A panic in rskafka: its records were dropped unsettled (their places freed,
                // uncounted), and the connection is suspect.
                Err(error) => failure = Some(error.to_string()),
            }
        }
        if let Some(error) = failure {
            tracing::warn!(
                topic = %self.url.topic,
                %error,
                "Kafka produce failed; reconnecting for the next records"
            );
            self.connection = None;
        }
    }

    /// The connection, made now if there is none and the last attempt is long enough ago.
    async fn connected(&mut self) -> Option<&Connection> {
        if self.connection.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match tokio::time::timeout(self.settings.timeout, self.connect()).await {
                Ok(Ok(connection)) => {
                    if self.retry_at.take().is_some() {
                        tracing::info!(topic = %self.url.topic, "Kafka producer connected again");
                    }
                    self.connection = Some(connection);
                }
                failed => {
                    let error = match failed {
                        Ok(Err(error)) => error,
                        _ => format!("no connection within {:?}", self.settings.timeout),
                    };
                    if self.retry_at.is_none() {
                        tracing::warn!(
                            brokers = ?self.url.brokers,
                            topic = %self.url.topic,
                            %error,
                            "cannot connect to Kafka; records fail until it answers"
                        );
                    }
                    self.retry_at = Some(Instant::now() + self.settings.reconnect_after);
                    return None;
                }
            }
        }
        self.connection.as_ref()
    }

    async fn connect(&self) -> Result<Connection, String> {
        let settings = &self.settings;
        let mut builder = ClientBuilder::new(self.url.brokers.clone())
            .client_id("tower-mirror")
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 3.0,
                // rskafka retries a request until this much time has passed.
                deadline: Some(settings.timeout),
            });
        if let Some(tls) = &settings.tls {
            builder = builder.tls_config(Arc::clone(tls));
        }
        if let Some(sasl) = &settings.sasl {
            let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        let client = builder.build().await.map_err(|e| e.to_string())?;
        let topic = client
            .list_topics()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|t| t.name == self.url.topic)
            .ok_or_else(|| format!("the topic {:?} does not exist", self.url.topic))?;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        // Partitions are numbered from 0: a record's partition is its key's hash modulo
        // their count.
        for partition in 0..topic.partitions.len() as i32 {
            let client = client
                .partition_client(topic.name.clone(), partition, UnknownTopicHandling::Error)
                .await
                .map_err(|e| e.to_string())?;
            partitions.push(Arc::new(client));
        }
        if partitions.is_empty() {
            return Err(format!("the topic {:?} has no partitions", self.url.topic));
        }
        Ok(Connection { partitions })
    }
}

fn value_len(pending: &Pending) -> usize {
    pending.record.value.as_ref().map_or(0, Vec::len)
}

fn compression(compression: KafkaCompression) -> Compression {
    match compression {
        KafkaCompression::None => Compression::NoCompression,
        KafkaCompression::Gzip => Compression::Gzip,
        KafkaCompression::Lz4 => Compression::Lz4,
        KafkaCompression::Snappy => Compression::Snappy,
        KafkaCompression::Zstd => Compression::Zstd,
    }
}

/// The record's capture time as Kafka's record timestamp (milliseconds since the epoch).
fn timestamp(time: SystemTime) -> chrono::DateTime<chrono::Utc> {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}
