//! Redaction: values that must not leave the process in clear (credentials, personal data)
//! replaced by a keyed hash before a target receives them.
//!
//! [`Redact`] is the configuration, given to a target with
//! [`Target::redact`](crate::Target::redact); applying it needs the feature `redact`
//! (HMAC-SHA-256 from RustCrypto, and `serde_json` for bodies). Without the feature a
//! target with redaction is a [`ConfigError`](crate::ConfigError), never a silent no-op.

#[cfg(feature = "redact")]
mod apply;

use std::fmt;
use std::sync::Arc;

use http::HeaderName;

use crate::pointer::Pattern;

/// What becomes of a body under redaction.
#[cfg_attr(not(feature = "redact"), allow(dead_code))]
pub(crate) enum Redacted {
    /// No redacted field can be in it: sent or written as it is.
    Keep,
    /// These bytes instead: its redacted fields replaced.
    Replace(bytes::Bytes),
    /// Fields might be in it but it cannot be searched (content-encoded, not parseable):
    /// left out, never sent in clear.
    Withhold,
}

/// Which values of a target's mirrors are replaced by a keyed hash before they leave the
/// process: header values by name, query parameters by name, and JSON body fields by JSON
/// pointer pattern (`/user/email`, `/cards/*/number`: `*` is any one segment, the syntax of
/// the diff's `ignore_fields`).
///
/// It applies to what the target receives: the request of an HTTP target, the record of a
/// recording target (the request, and the primary's response when it is recorded), and the
/// values shown in a [`Diff`](crate::diff::Diff) report's examples for that target
/// (feature `diff`). The primary request and response are never changed.
///
/// **The placeholder** is `redacted:` and 16 hex digits: the first 64 bits of
/// HMAC-SHA-256 (RFC 2104) of the value's bytes under the key. The same value gives the same
/// placeholder under the same key, so diffs, joins and counts still work on redacted data;
/// without the key it cannot be reversed or confirmed by guessing. A JSON field's value is
/// hashed as its compact JSON text (a string with its quotes) and replaced by the
/// placeholder as a JSON string, whatever its type; a matched object or array is replaced
/// whole. A body is searched when its `Content-Type` names `json` (`application/json`,
/// `+json` types, `text/json`) or, without one, when it starts with `{` or `[`. A body that
/// should be searched but cannot be, because it is content-encoded (gzip) or does not parse,
/// is withheld: an HTTP target gets the request with an empty body, a record marks the body
/// `truncated` with no bytes. Nothing is sent in clear for want of a parse.
///
/// **The key** should be at least 32 random bytes kept like a password: anyone with it can
/// confirm a guessed value. Keep it the same across processes and restarts for placeholders
/// that stay comparable (mirror-proxy reads it from a file; without one it makes a random
/// key per process).
///
/// ```
/// use tower_mirror::{Redact, Target};
///
/// let key = [7u8; 32]; // read it from a secret store
/// let target = Target::new("http://127.0.0.1:4000").redact(
///     Redact::new(key)
///         .header("authorization")
///         .header("cookie")
///         .query_param("token")
///         .json_pointer("/user/email")
///         .json_pointer("/cards/*/number"),
/// );
/// ```
///
/// Cloning is cheap: the settings are shared (each record of a recording target carries
/// them to the writer).
#[derive(Clone)]
pub struct Redact(Arc<Settings>);

#[derive(Clone, PartialEq, Eq)]
struct Settings {
    key: Vec<u8>,
    headers: Vec<HeaderName>,
    query_params: Vec<String>,
    json_pointers: Vec<(String, Pattern)>,
    /// The first setting that was not valid, reported when the layer is built.
    invalid: Option<(&'static str, String)>,
}

impl Redact {
    /// Redaction under `key`, with nothing selected yet.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self(Arc::new(Settings {
            key: key.as_ref().to_vec(),
            headers: Vec::new(),
            query_params: Vec::new(),
            json_pointers: Vec::new(),
            invalid: None,
        }))
    }

    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.0)
    }

    /// Also redacts the values of header `name` (any letter case). An invalid name is a
    /// [`ConfigError`](crate::ConfigError) when the layer is built.
    pub fn header(mut self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(header) => self.settings().headers.push(header),
            Err(_) => self.refuse("redact_headers", format!("{name:?} is not a header name")),
        }
        self
    }

    /// Also redacts the values of query parameter `name` (compared after form-decoding, as
    /// `application/x-www-form-urlencoded` reads it), wherever it appears in the query.
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.settings().query_params.push(name.into());
        self
    }

    /// Also redacts the JSON body fields `pattern` names: a JSON pointer (RFC 6901) in
    /// which `*` stands for any one segment. A pattern that does not start with `/` is a
    /// [`ConfigError`](crate::ConfigError) when the layer is built.
    pub fn json_pointer(mut self, pattern: impl Into<String>) -> Self {
        let pattern = pattern.into();
        match Pattern::parse(&pattern).filter(|_| !pattern.is_empty()) {
            Some(parsed) => self.settings().json_pointers.push((pattern, parsed)),
            None => self.refuse(
                "redact_fields",
                format!("{pattern:?}: a JSON pointer pattern starts with `/`, such as /user/email"),
            ),
        }
        self
    }

    fn refuse(&mut self, setting: &'static str, reason: String) {
        self.settings().invalid.get_or_insert((setting, reason));
    }

    /// Whether the settings are valid and this build can apply them: the setting at fault
    /// and why, if not.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(invalid) = &self.0.invalid {
            return Err(invalid.clone());
        }
        if self.0.key.is_empty() {
            return Err(("redact", "the key is empty".to_owned()));
        }
        if cfg!(not(feature = "redact")) {
            return Err((
                "redact",
                "redaction needs tower-mirror's `redact` feature".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Equal when they redact the same values the same way (the same key).
impl PartialEq for Redact {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Redact {}

/// The key is never shown.
impl fmt::Debug for Redact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redact")
            .field("key", &"<redacted>")
            .field("headers", &self.0.headers)
            .field("query_params", &self.0.query_params)
            .field(
                "json_pointers",
                &self
                    .0
                    .json_pointers
                    .iter()
                    .map(|(text, _)| text)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Without the feature a target with redaction is refused when the layer is built
/// ([`Redact::check`]), so these are never reached; they keep the callers free of `cfg`.
#[cfg(not(feature = "redact"))]
#[allow(dead_code, clippy::unused_self)]
impl Redact {
    pub(crate) fn placeholder(&self, _value: &[u8]) -> String {
        String::new()
    }

    pub(crate) fn redacts_header(&self, _name: &HeaderName) -> bool {
        false
    }

    pub(crate) fn header_value(
        &self,
        _name: &HeaderName,
        _value: &http::HeaderValue,
    ) -> Option<http::HeaderValue> {
        None
    }

    pub(crate) fn headers(&self, _headers: &mut http::HeaderMap) {}

    pub(crate) fn headers_except(
        &self,
        _headers: &mut http::HeaderMap,
        _keep: impl Fn(&HeaderName) -> bool,
    ) {
    }

    pub(crate) fn redacts_json(
        &self,
        _headers: &http::HeaderMap,
        _chunks: &[bytes::Bytes],
    ) -> bool {
        false
    }

    pub(crate) fn body(&self, _headers: &http::HeaderMap, _chunks: &[bytes::Bytes]) -> Redacted {
        Redacted::Keep
    }

    pub(crate) fn shown_field(&self, _path: &[String], _value: &str) -> Option<String> {
        None
    }

    pub(crate) fn uri(&self, _uri: &http::Uri) -> Option<http::Uri> {
        None
    }

    pub(crate) fn path_and_query(&self, _text: &str) -> Option<String> {
        None
    }
}
