//! Errors: configuration errors from building a layer, and the errors a mirrored request can meet.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error, as returned by a [`Sender`](crate::Sender).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a [`MirrorLayer`](crate::MirrorLayer) could not be built from its configuration.
///
/// Every variant that concerns one target names it (by its URL as configured, or by its name
/// for the settings that have one), so the message alone tells which line of a configuration
/// to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No targets were given: a mirror with nowhere to send is a configuration mistake.
    NoTargets,
    /// Two targets have the same [name](crate::Target::name) (by default, the same URL).
    DuplicateName {
        /// The name given twice.
        name: String,
    },
    /// One of a target's settings cannot work: a filter, the key sampler, the rate cap or the
    /// path rewrite.
    InvalidSetting {
        /// The target's [name](crate::Target::name).
        target: String,
        /// The setting, as mirror-proxy's `[[mirror]]` key names it: `methods`, `paths`,
        /// `exclude_paths`, `headers`, `path_regex`, `sample_by`, `rate`, `rewrite_path`,
        /// `redact_headers`, `redact_fields`, `redact`; for a recording target also `url` (a
        /// path that cannot be written, a `kafka://` URL that does not parse, a feature not
        /// built in), `kafka_max_batch`, `kafka_timeout`.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A target's URL cannot be used as a base URL.
    InvalidTarget {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A target's percentage is over 100.
    PercentageOutOfRange {
        /// The URL as configured.
        url: String,
        /// The percentage as configured.
        percentage: u32,
    },
    /// An option outside the targets has a value the layer cannot work with.
    InvalidOption {
        /// The option's field name in [`Options`](crate::Options).
        option: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTargets => f.write_str("no mirror targets configured: give at least one"),
            Self::DuplicateName { name } => write!(
                f,
                "mirror target name {name:?} is used twice: give each target its own name"
            ),
            Self::InvalidSetting {
                target,
                setting,
                reason,
            } => write!(f, "invalid mirror target {target:?}: {setting}: {reason}"),
            Self::InvalidTarget { url, reason } => {
                write!(f, "invalid mirror target {url:?}: {reason}")
            }
            Self::PercentageOutOfRange { url, percentage } => write!(
                f,
                "invalid mirror target {url:?}: percentage {percentage} is over 100"
            ),
            Self::InvalidOption { option, reason } => {
                write!(f, "invalid mirror option `{option}`: {reason}")
            }
        }
    }
}

impl StdError for ConfigError {}

/// Why a mirrored request did not produce a response.
///
/// Passed to [`Options::on_error`](crate::Options::on_error). HTTP error statuses are not
/// errors: a 5xx from a target is a response and reaches `on_success`.
#[derive(Debug)]
pub struct MirrorError {
    kind: ErrorKind,
    source: Option<BoxError>,
    /// From the request going out to the failure; `None` if it never went out.
    latency: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Timeout(Duration),
    Connect,
    ConnectTimeout(Duration),
    Request,
    ResponseBody,
    Uri,
}

impl MirrorError {
    pub(crate) fn timeout(after: Duration) -> Self {
        Self::new(ErrorKind::Timeout(after), None)
    }

    fn new(kind: ErrorKind, source: Option<BoxError>) -> Self {
        Self {
            kind,
            source,
            latency: None,
        }
    }

    /// Opening a connection to the target failed: the request never went out.
    pub(crate) fn connect(error: BoxError) -> Self {
        Self::new(ErrorKind::Connect, Some(error))
    }

    /// Opening a connection took the whole timeout: the request never went out.
    pub(crate) fn connect_timeout(after: Duration) -> Self {
        Self::new(ErrorKind::ConnectTimeout(after), None)
    }

    /// This error, `latency` after its request went out (kept only for errors after it did).
    pub(crate) fn after(mut self, latency: Duration) -> Self {
        if !matches!(
            self.kind,
            ErrorKind::Connect | ErrorKind::ConnectTimeout(_) | ErrorKind::Uri
        ) {
            self.latency = Some(latency);
        }
        self
    }

    /// How long after the request went out the exchange failed or timed out; `None` when it
    /// never went out (a connect error, an invalid URI). mirror-proxy records it in
    /// `mirror_proxy_mirror_latency_seconds{outcome="failed"|"timed_out"}`, so that a hanging target shows
    /// in the latency quantiles.
    pub fn latency(&self) -> Option<Duration> {
        self.latency
    }

    /// Classifies an error returned by a [`Sender`](crate::Sender).
    pub(crate) fn from_send(error: BoxError) -> Self {
        let kind = if is_connect_error(&*error) {
            ErrorKind::Connect
        } else {
            ErrorKind::Request
        };
        Self::new(kind, Some(error))
    }

    /// The target's base joined with the original path and query is not a valid URI (in
    /// practice: longer than a URI may be).
    pub(crate) fn uri() -> Self {
        Self::new(ErrorKind::Uri, None)
    }

    pub(crate) fn response_body(error: BoxError) -> Self {
        Self::new(ErrorKind::ResponseBody, Some(error))
    }

    /// True when the target did not complete the exchange within the configured timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout(_))
    }

    /// True when no connection to the target could be made (refused, unreachable, DNS, TLS,
    /// or not within the timeout): the request never went out.
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, ErrorKind::Connect | ErrorKind::ConnectTimeout(_))
    }
}

/// A connect error is one the sender says happened before the request could be written.
fn is_connect_error(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(client_err) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && client_err.is_connect()
        {
            return true;
        }
        // The pool's connection closed before the request was written, and none other could
        // take it: it never went out.
        if err.is::<crate::client::pool::NotSent>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            if matches!(
                io.kind(),
                Io::ConnectionRefused | Io::HostUnreachable | Io::NetworkUnreachable
            ) {
                return true;
            }
        }
        current = err.source();
    }
    false
}

impl fmt::Display for MirrorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Timeout(after) => {
                return write!(f, "mirror request timed out after {after:?}");
            }
            ErrorKind::Connect => f.write_str("could not connect to the mirror target")?,
            ErrorKind::ConnectTimeout(after) => {
                return write!(f, "could not connect to the mirror target within {after:?}");
            }
            ErrorKind::Request => f.write_str("mirror request failed")?,
            ErrorKind::ResponseBody => f.write_str("reading the mirror response body failed")?,
            ErrorKind::Uri => f.write_str(
                "the mirror URI would be invalid: the target's base path and the original \
                 path and query together are too long",
            )?,
        }
        // The root cause is what a log reader needs ("Connection refused"), and callbacks
        // usually print only `{}`; `source()` still exposes the whole chain.
        if let Some(source) = &self.source {
            let mut root: &(dyn StdError + 'static) = &**source;
            while let Some(next) = root.source() {
                root = next;
            }
            write!(f, ": {root}")?;
        }
        Ok(())
    }
}

impl StdError for MirrorError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_io_error_is_a_connect_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = MirrorError::from_send(Box::new(io));
        assert!(err.is_connect());
        assert!(!err.is_timeout());
        assert_eq!(
            err.to_string(),
            "could not connect to the mirror target: refused"
        );
        assert!(err.source().is_some());
    }

    #[test]
    fn other_errors_are_request_errors() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let err = MirrorError::from_send(Box::new(io));
        assert!(!err.is_connect());
        assert!(!err.is_timeout());
        assert_eq!(err.to_string(), "mirror request failed: reset");
    }

    #[test]
    fn timeout_names_its_duration() {
        let err = MirrorError::timeout(Duration::from_millis(250));
        assert!(err.is_timeout());
        assert!(!err.is_connect());
        assert_eq!(err.to_string(), "mirror request timed out after 250ms");
        assert!(err.source().is_none());
    }

    #[test]
    fn config_errors_name_the_target() {
        let err = ConfigError::PercentageOutOfRange {
            url: "http://a".into(),
            percentage: 150,
        };
        assert_eq!(
            err.to_string(),
            "invalid mirror target \"http://a\": percentage 150 is over 100"
        );
    }
}
