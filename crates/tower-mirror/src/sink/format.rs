//! The record, version 1: one JSON object, written as one line of a file (NDJSON) or as one
//! Kafka record's value. `docs/record-format.md` is its reference; the field names and
//! shapes here must stay in step with it.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::write::EncoderWriter;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Version};

use super::{Record, process_nonce};
use crate::redact::Redacted;

/// The format version written in every record's `v`: the one `record` reads.
const VERSION: u64 = super::FORMAT_VERSION;

/// Appends `record` to `out` as one JSON object (no newline: a file adds it), keeping at most
/// `max_body` bytes of its request body and `max_response_body` of its response's. Every
/// sink serialises records with this one function.
pub(super) fn encode(
    out: &mut Vec<u8>,
    record: &Record,
    max_body: Option<usize>,
    max_response_body: usize,
) {
    let snapshot = &record.snapshot;
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"time\":");
    string(
        out,
        &humantime::format_rfc3339_nanos(record.time).to_string(),
    );
    out.extend_from_slice(b",\"id\":\"");
    write_id(out, record);
    let redact = record.redact.as_ref();
    out.extend_from_slice(b"\",\"method\":");
    string(out, snapshot.method().as_str());
    out.extend_from_slice(b",\"uri\":");
    let uri = snapshot.uri();
    match redact.and_then(|r| r.uri(uri)) {
        Some(redacted) => string(out, &redacted.to_string()),
        None => string(out, &uri.to_string()),
    }
    out.extend_from_slice(b",\"version\":");
    string(out, version(snapshot.version()));
    out.extend_from_slice(b",\"headers\":[");
    // Host first: the mirror keeps it apart from the other headers (it sets its own).
    header(out, "host", snapshot.original_host());
    for (name, value) in snapshot.headers() {
        out.push(b',');
        let redacted = redact.and_then(|r| r.header_value(name, value));
        header(out, name.as_str(), redacted.as_ref().unwrap_or(value));
    }
    out.extend_from_slice(b"],\"body\":");
    let (chunks, length) = match &record.body {
        Some(payload) => (&payload.chunks[..], payload.len),
        None => (&[][..], 0),
    };
    match redact.map(|r| r.body(snapshot.headers(), chunks)) {
        None | Some(Redacted::Keep) => body(out, chunks, length, max_body),
        Some(Redacted::Replace(redacted)) => {
            let length = redacted.len() as u64;
            body(out, &[redacted], length, max_body);
        }
        Some(Redacted::Withhold) => body(out, &[], length, Some(0)),
    }
    if let Some(response) = &record.response {
        let _ = write!(
            out,
            ",\"response\":{{\"status\":{},\"latency_ns\":{},\"headers\":",
            response.status.as_u16(),
            response.latency.as_nanos()
        );
        let mut response_headers = std::borrow::Cow::Borrowed(&response.headers);
        if let Some(redact) = redact {
            redact.headers(response_headers.to_mut());
        }
        headers(out, &response_headers);
        out.extend_from_slice(b",\"body\":");
        // The tap kept at most the largest limit of the request's observers: cut to ours.
        let max = Some(max_response_body);
        let redacted = redact.map(|r| {
            // Only a whole document can be searched: a body cut short is withheld.
            if !response.complete && r.redacts_json(&response.headers, &response.body) {
                Redacted::Withhold
            } else {
                r.body(&response.headers, &response.body)
            }
        });
        match redacted {
            None | Some(Redacted::Keep) => body(out, &response.body, response.length, max),
            Some(Redacted::Replace(redacted)) => {
                let length = redacted.len() as u64;
                body(out, &[redacted], length, max);
            }
            Some(Redacted::Withhold) => body(out, &[], response.length, Some(0)),
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// Appends the record's id as written in its `id` field: `{nonce:016x}-{counter}`.
pub(super) fn write_id(out: &mut Vec<u8>, record: &Record) {
    let _ = write!(out, "{:016x}-{}", process_nonce(), record.id);
}

/// `[["name","value"],…]`, in the map's order.
fn headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.push(b'[');
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        header(out, name.as_str(), value);
    }
    out.push(b']');
}

fn version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A JSON string, escaped.
fn string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// `["name","value"]`, or `["name",{"base64":"…"}]` for a value that is not UTF-8.
fn header(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.push(b'[');
    string(out, name);
    out.push(b',');
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => string(out, text),
        Err(_) => {
            out.extend_from_slice(b"{\"base64\":\"");
            out.extend_from_slice(STANDARD.encode(value.as_bytes()).as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
    out.push(b']');
}

/// `{"base64":"…","length":N}` of a body of `length` bytes whose first bytes are `chunks`,
/// with `"truncated":true` when fewer than `length` bytes are kept: those in `chunks`, at
/// most `max_body`.
fn body(out: &mut Vec<u8>, chunks: &[Bytes], length: u64, max_body: Option<usize>) {
    let held: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let keep = max_body.map_or(held, |max| held.min(max as u64));
    out.extend_from_slice(b"{\"base64\":\"");
    {
        let mut encoder = EncoderWriter::new(&mut *out, &STANDARD);
        let mut left = keep;
        for chunk in chunks {
            if left == 0 {
                break;
            }
            let take = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
            let _ = encoder.write_all(&chunk[..take]);
            left -= take as u64;
        }
        let _ = encoder.finish();
    }
    let _ = write!(out, "\",\"length\":{length}");
    if keep < length {
        out.extend_from_slice(b",\"truncated\":true");
    }
    out.push(b'}');
}
