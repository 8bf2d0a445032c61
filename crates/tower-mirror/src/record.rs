//! Reading recordings back (feature `record`): one line of the NDJSON format that recording
//! targets write ([`RecordFile`](crate::RecordFile); reference: `docs/record-format.md`),
//! parsed into the request it recorded. mirror-proxy's `replay` reads recordings with it.
//!
//! ```
//! use tower_mirror::record::Recorded;
//!
//! let line = r#"{"v":1,"time":"2026-11-30T01:05:55.964627085Z","id":"d4a76dbd961d2513-1","method":"POST","uri":"/api/users?page=2","version":"HTTP/1.1","headers":[["host","shop.example"],["content-type","application/json"]],"body":{"base64":"eyJuYW1lIjoiQWRhIn0=","length":14}}"#;
//! let recorded = Recorded::parse(line).unwrap();
//! assert_eq!(recorded.method, http::Method::POST);
//! assert_eq!(recorded.uri.path(), "/api/users");
//! assert_eq!(&recorded.body[..], br#"{"name":"Ada"}"#);
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use serde_json::Value;

/// The format version this crate writes and reads (`"v"` in every record).
pub const FORMAT_VERSION: u64 = crate::sink::FORMAT_VERSION;

/// One recorded request.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Recorded {
    /// When it was captured.
    pub time: SystemTime,
    /// Its id in the recording (unique within the recording process's life).
    pub id: String,
    /// The request method.
    pub method: Method,
    /// The request target as received: origin form, or absolute form.
    pub uri: Uri,
    /// The HTTP version it was received with.
    pub version: Version,
    /// The headers in recorded order; `host` first.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body bytes kept (all of them unless `truncated`).
    pub body: Bytes,
    /// The whole body's length, in bytes.
    pub body_length: u64,
    /// Only the first bytes of the body were recorded.
    pub truncated: bool,
    /// The primary's response, when the target recorded it
    /// ([`RecordFile::response`](crate::RecordFile::response)) and it came.
    pub response: Option<RecordedResponse>,
}

/// The primary's response to a recorded request.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body bytes kept (all of them unless `truncated`).
    pub body: Bytes,
    /// The whole body's length, in bytes.
    pub body_length: u64,
    /// Only the first bytes of the body were recorded.
    pub truncated: bool,
    /// Time from the request reaching the layer to the response head.
    pub latency: Duration,
}

impl RecordedResponse {
    /// A whole response read from elsewhere, answered after `latency`.
    pub fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        latency: Duration,
    ) -> Self {
        Self {
            status,
            headers,
            body_length: body.len() as u64,
            truncated: false,
            body,
            latency,
        }
    }
}

/// Why a line is not a record this crate can read: it names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError(String);

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

impl Recorded {
    /// A record of a request read from elsewhere (another tool's capture, say): its body
    /// whole, no response. `headers` in the order they were sent.
    pub fn new(
        time: SystemTime,
        id: impl Into<String>,
        method: Method,
        uri: Uri,
        version: Version,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Self {
        Self {
            time,
            id: id.into(),
            method,
            uri,
            version,
            headers,
            body_length: body.len() as u64,
            truncated: false,
            body,
            response: None,
        }
    }

    /// This record with the primary's `response`: see [`response`](Self::response).
    pub fn with_response(mut self, response: RecordedResponse) -> Self {
        self.response = Some(response);
        self
    }

    /// Parses one line (without or with its `\n`).
    ///
    /// # Errors
    ///
    /// The line is not JSON, its `v` is not [`FORMAT_VERSION`], or a field is missing or
    /// malformed (the error names it).
    pub fn parse(line: &str) -> Result<Self, RecordError> {
        let bad =
            |field: &str| RecordError(format!("record field `{field}` is missing or malformed"));
        let value: Value = serde_json::from_str(line.trim_end())
            .map_err(|e| RecordError(format!("not a JSON record: {e}")))?;
        let version = value["v"].as_u64().ok_or_else(|| bad("v"))?;
        if version != FORMAT_VERSION {
            return Err(RecordError(format!(
                "record format version {version}: this build reads version {FORMAT_VERSION}"
            )));
        }
        let text = |field: &str| value[field].as_str().ok_or_else(|| bad(field));
        let time = humantime::parse_rfc3339(text("time")?).map_err(|_| bad("time"))?;
        let method = Method::from_bytes(text("method")?.as_bytes()).map_err(|_| bad("method"))?;
        let uri: Uri = text("uri")?.parse().map_err(|_| bad("uri"))?;
        let version = match text("version")? {
            "HTTP/0.9" => Version::HTTP_09,
            "HTTP/1.0" => Version::HTTP_10,
            "HTTP/1.1" => Version::HTTP_11,
            "HTTP/2" => Version::HTTP_2,
            "HTTP/3" => Version::HTTP_3,
            _ => return Err(bad("version")),
        };
        let headers = parse_headers(&value["headers"]).ok_or_else(|| bad("headers"))?;
        let (body, body_length, truncated) =
            parse_body(&value["body"]).ok_or_else(|| bad("body"))?;
        let response = match &value["response"] {
            Value::Null => None,
            response => {
                let status = response["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| bad("response.status"))?;
                let latency = response["latency_ns"]
                    .as_u64()
                    .ok_or_else(|| bad("response.latency_ns"))?;
                let (body, body_length, truncated) =
                    parse_body(&response["body"]).ok_or_else(|| bad("response.body"))?;
                Some(RecordedResponse {
                    status,
                    headers: parse_headers(&response["headers"])
                        .ok_or_else(|| bad("response.headers"))?,
                    body,
                    body_length,
                    truncated,
                    latency: Duration::from_nanos(latency),
                })
            }
        };
        Ok(Self {
            time,
            id: text("id")?.to_owned(),
            method,
            uri,
            version,
            headers,
            body_length,
            truncated,
            body,
            response,
        })
    }
}

/// `[["name","value"],…]`, a value that is not UTF-8 as `{"base64":"…"}`.
fn parse_headers(value: &Value) -> Option<Vec<(HeaderName, HeaderValue)>> {
    value
        .as_array()?
        .iter()
        .map(|pair| {
            let name = HeaderName::from_bytes(pair[0].as_str()?.as_bytes()).ok()?;
            let bytes = match &pair[1] {
                Value::String(text) => text.as_bytes().to_vec(),
                encoded => STANDARD.decode(encoded["base64"].as_str()?).ok()?,
            };
            Some((name, HeaderValue::from_bytes(&bytes).ok()?))
        })
        .collect()
}

/// `{"base64":"…","length":N,"truncated":true}`: the bytes kept, the whole length, and
/// whether they are fewer.
fn parse_body(value: &Value) -> Option<(Bytes, u64, bool)> {
    let bytes = STANDARD.decode(value["base64"].as_str()?).ok()?;
    Some((
        Bytes::from(bytes),
        value["length"].as_u64()?,
        value["truncated"].as_bool().unwrap_or(false),
    ))
}
