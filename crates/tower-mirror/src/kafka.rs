//! [`KafkaTopic`]: how a Kafka recording target produces its records (a leaf of the
//! configuration, plain data; the producer itself is `sink::kafka`, feature `kafka`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How a Kafka recording target produces its records (feature `kafka`).
///
/// A target whose URL is `kafka://host:port/topic` produces each mirror it takes to `topic`
/// as one Kafka record whose value is the same v1 record a `file://` target writes as a line
/// (without the newline; [the record format](https://github.com/tower-mirror/tower-mirror/blob/main/docs/record-format.md)).
/// Several bootstrap brokers are separated by commas (`kafka://k1:9092,k2:9092/traffic`); a
/// broker without a port is on 9092. Filters, sampling, rate caps, the byte budget, counters
/// and live control apply as to any target.
///
/// **Keys and partitions.** A record's key is the target's sticky-sampling key value when
/// the target samples by key ([`Target::sample_by`](crate::Target::sample_by)) and the
/// request has one, else the record's id. The partition is `xxh3_64(key) % partitions`
/// (the topic's partition count, read when the producer connects), so one key stays on one
/// partition while the topic keeps its partitions.
///
/// **Never blocking.** Records go to a producer (a thread of its own running one Tokio
/// task) through a queue bounded by [`Options::max_in_flight`](crate::Options::max_in_flight);
/// a record counts as in flight until the broker acknowledged it or it failed. A full queue
/// drops and counts (`dropped_overload`); a record the broker did not acknowledge within
/// [`timeout`](Self::timeout), or that could not be sent because no broker answers, counts as
/// `failed`; an acknowledged one as `responded`.
///
/// **Connecting.** Lazily: the layer starts even when no broker is up, and the producer
/// connects when the first records come. While it cannot connect, it tries again at most
/// every [`reconnect_after`](Self::reconnect_after), failing the records that come in
/// between at once; after a produce error it drops its connections and reconnects, so a
/// restarted broker is used again (a topic that does not exist fails its records the same
/// way until it is created: the producer does not create topics).
///
/// **Acknowledgements.** The producer asks for `acks = all` (-1): a record counts as written
/// once every in-sync replica has it. The client (rskafka) does not offer the other levels,
/// so there is no setting for it.
///
/// ```
/// use std::time::Duration;
/// use tower_mirror::{KafkaCompression, KafkaSasl, KafkaTopic, Target};
///
/// let recording = Target::percentage("kafka://127.0.0.1:9092/traffic", 10)
///     .with_name("kafka")
///     .kafka(
///         KafkaTopic::default()
///             .linger(Duration::from_millis(20))
///             .max_batch_bytes(512 << 10)
///             .compression(KafkaCompression::Zstd)
///             .sasl(KafkaSasl::scram_sha512("mirror", "secret")),
///     );
/// # let _ = recording;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaTopic {
    /// How long the producer waits for more records after the first of a batch before it
    /// sends the batch. Default [`DEFAULT_LINGER`](Self::DEFAULT_LINGER), 5 ms.
    pub linger: Duration,
    /// A batch is sent once its records' values add up to this many bytes (or more), without
    /// waiting for the linger to end. Default
    /// [`DEFAULT_MAX_BATCH_BYTES`](Self::DEFAULT_MAX_BATCH_BYTES), 1 MiB. A broker refuses a
    /// batch over its `message.max.bytes`: keep this below it.
    pub max_batch_bytes: usize,
    /// How batches are compressed. Default [`KafkaCompression::None`].
    pub compression: KafkaCompression,
    /// How long connecting, or having one batch acknowledged, may take before its records
    /// count as failed. Default [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT), 10 s.
    pub timeout: Duration,
    /// After a failed connection, how long the producer waits before it tries again (the
    /// records that come meanwhile fail at once). Default
    /// [`DEFAULT_RECONNECT_AFTER`](Self::DEFAULT_RECONNECT_AFTER), 1 s.
    pub reconnect_after: Duration,
    /// Keep at most this many bytes of each request body; a longer one is cut and marked
    /// with its length, as in a file. Default `None`: the whole body.
    pub max_body_bytes: Option<usize>,
    /// Speak TLS to the brokers with this client configuration. Default `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Authenticate with SASL. Default `None`.
    pub sasl: Option<KafkaSasl>,
}

impl KafkaTopic {
    /// The default [`linger`](Self::linger): 5 ms.
    pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);
    /// The default [`max_batch_bytes`](Self::max_batch_bytes): 1 MiB.
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 1 << 20;
    /// The default [`timeout`](Self::timeout): 10 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`reconnect_after`](Self::reconnect_after): 1 s.
    pub const DEFAULT_RECONNECT_AFTER: Duration = Duration::from_secs(1);

    /// Waits this long for more records before sending a batch: see [`linger`](Self::linger).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sends a batch once it has this many bytes: see
    /// [`max_batch_bytes`](Self::max_batch_bytes). 0 is a
    /// [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Compresses batches: see [`compression`](Self::compression).
    pub fn compression(mut self, compression: KafkaCompression) -> Self {
        self.compression = compression;
        self
    }

    /// Gives up on a connection or a batch after this long: see [`timeout`](Self::timeout).
    /// Zero is a [`ConfigError::InvalidSetting`](crate::ConfigError::InvalidSetting).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits this long between connection attempts: see
    /// [`reconnect_after`](Self::reconnect_after).
    pub fn reconnect_after(mut self, wait: Duration) -> Self {
        self.reconnect_after = wait;
        self
    }

    /// Cuts long bodies: see [`max_body_bytes`](Self::max_body_bytes).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// Speaks TLS with `config`: see [`tls`](Self::tls). [`client::tls::client_config`](crate::client::tls::client_config)
    /// makes one that verifies the brokers' certificates against given roots.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Authenticates with SASL: see [`sasl`](Self::sasl).
    pub fn sasl(mut self, sasl: KafkaSasl) -> Self {
        self.sasl = Some(sasl);
        self
    }
}

impl Default for KafkaTopic {
    fn default() -> Self {
        Self {
            linger: Self::DEFAULT_LINGER,
            max_batch_bytes: Self::DEFAULT_MAX_BATCH_BYTES,
            compression: KafkaCompression::None,
            timeout: Self::DEFAULT_TIMEOUT,
            reconnect_after: Self::DEFAULT_RECONNECT_AFTER,
            max_body_bytes: None,
            tls: None,
            sasl: None,
        }
    }
}

/// Equal when every setting is, the TLS configurations being the same one (the same `Arc`).
impl PartialEq for KafkaTopic {
    fn eq(&self, other: &Self) -> bool {
        let tls = match (&self.tls, &other.tls) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        tls && self.linger == other.linger
            && self.max_batch_bytes == other.max_batch_bytes
            && self.compression == other.compression
            && self.timeout == other.timeout
            && self.reconnect_after == other.reconnect_after
            && self.max_body_bytes == other.max_body_bytes
            && self.sasl == other.sasl
    }
}

impl Eq for KafkaTopic {}

impl fmt::Debug for KafkaTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTopic")
            .field("linger", &self.linger)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("reconnect_after", &self.reconnect_after)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

/// How a Kafka target compresses its batches (the broker stores them so, and consumers
/// decompress them). All five are built in with the `kafka` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KafkaCompression {
    /// Not compressed (the default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// LZ4.
    Lz4,
    /// Snappy.
    Snappy,
    /// Zstandard.
    Zstd,
}

/// Parses `none`, `gzip`, `lz4`, `snappy` or `zstd` (mirror-proxy's `kafka_compression`).
impl std::str::FromStr for KafkaCompression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "lz4" => Ok(Self::Lz4),
            "snappy" => Ok(Self::Snappy),
            "zstd" => Ok(Self::Zstd),
            _ => Err(format!(
                "{text:?} is not a compression: use none, gzip, lz4, snappy or zstd"
            )),
        }
    }
}

/// SASL authentication for a Kafka target: a mechanism, a user name and a password. The
/// password never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSasl {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// A SASL mechanism a Kafka target can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN` (RFC 4616): the password in clear, so only over TLS.
    Plain,
    /// `SCRAM-SHA-256` (RFC 7677).
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl KafkaSasl {
    /// SASL `PLAIN`.
    pub fn plain(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::new(SaslMechanism::Plain, username, password)
    }

    /// SASL `SCRAM-SHA-256`.
    pub fn scram_sha256(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::new(SaslMechanism::ScramSha256, username, password)
    }

    /// SASL `SCRAM-SHA-512`.
    pub fn scram_sha512(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::new(SaslMechanism::ScramSha512, username, password)
    }

    /// SASL by `mechanism`.
    pub fn new(
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            mechanism,
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

/// Parses `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, in any case (mirror-proxy's
/// `kafka_sasl_mechanism`).
impl std::str::FromStr for SaslMechanism {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err(format!(
                "{text:?} is not a SASL mechanism: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )),
        }
    }
}

/// Where a `kafka://` URL points: its bootstrap brokers and its topic. Kafka targets and
/// mirror-proxy's `replay kafka://…` read their URLs with it.
///
/// ```
/// let url = tower_mirror::KafkaUrl::parse("kafka://k1:9093,k2/traffic").unwrap();
/// assert_eq!(url.brokers, ["k1:9093", "k2:9092"]);
/// assert_eq!(url.topic, "traffic");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaUrl {
    /// The bootstrap brokers, `host:port` each (port 9092 when the URL gives none).
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
}

impl KafkaUrl {
    /// Parses `kafka://host[:port][,host[:port]…]/topic` (the scheme in any case).
    ///
    /// # Errors
    ///
    /// Not a `kafka://` URL, no topic, a topic name Kafka refuses (at most 249 of `a-z`,
    /// `A-Z`, `0-9`, `.`, `_`, `-`; a query is not allowed), or a broker that is not
    /// `host[:port]` with a port from 1 to 65535. The message says which.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .get(..8)
            .filter(|scheme| scheme.eq_ignore_ascii_case("kafka://"))
            .map(|_| &url[8..])
            .ok_or_else(|| format!("{url:?} is not a kafka:// URL"))?;
        let form = "use kafka://host:port/topic";
        let (authority, topic) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url:?} names no topic: {form}"))?;
        if topic.is_empty() {
            return Err(format!("{url:?} names no topic: {form}"));
        }
        if topic.len() > 249
            || topic == "."
            || topic == ".."
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{url:?}: {topic:?} is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, `.`, `_`, `-`; no query)"
            ));
        }
        let mut brokers = Vec::new();
        for broker in authority.split(',') {
            if broker.is_empty() || broker.contains('@') {
                return Err(format!("{url:?}: {broker:?} is not a broker: {form}"));
            }
            let with_port = match broker.rsplit_once(':') {
                // `[::1]` without a port has its last colon inside the brackets.
                Some((host, port)) if !port.contains(']') => {
                    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                        return Err(format!("{url:?}: {broker:?} is not a broker: {form}"));
                    }
                    broker.to_owned()
                }
                _ => format!("{broker}:9092"),
            };
            brokers.push(with_port);
        }
        Ok(Self {
            brokers,
            topic: topic.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_brokers_and_a_topic() {
        let url = KafkaUrl::parse("kafka://127.0.0.1:9093/traffic").unwrap();
        assert_eq!(url.brokers, ["127.0.0.1:9093"]);
        assert_eq!(url.topic, "traffic");
        let url = KafkaUrl::parse("KAFKA://k1,k2:9000,[::1]/t.x_y-1").unwrap();
        assert_eq!(url.brokers, ["k1:9092", "k2:9000", "[::1]:9092"]);
        assert_eq!(url.topic, "t.x_y-1");
        for bad in [
            "kafka://h:9092",
            "kafka://h:9092/",
            "kafka:///topic",
            "kafka://h:0/t",
            "kafka://h:x/t",
            "kafka://h:9092/a/b",
            "kafka://h:9092/t?acks=1",
            "kafka://user@h/t",
            "kafka://h,,k/t",
            "http://h/t",
        ] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_parse_and_passwords_stay_hidden() {
        assert_eq!("ZSTD".parse(), Ok(KafkaCompression::Zstd));
        assert!("brotli".parse::<KafkaCompression>().is_err());
        assert_eq!("scram-sha-256".parse(), Ok(SaslMechanism::ScramSha256));
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
        let shown = format!(
            "{:?}",
            KafkaTopic::default().sasl(KafkaSasl::plain("u", "hunter2"))
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
