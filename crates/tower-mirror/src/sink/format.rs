//! The record, version 1: one JSON object, written as one line of a file (NDJSON) or as one
//! Kafka record's value. `docs/record-format.md` is its reference; the field names and
//! shapes here must stay in step with it.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::write::EncoderWriter;
use http::{HeaderValue, Version};

use super::{Record, process_nonce};

/// The format version written in every record's `v`: the one `record` reads.
const VERSION: u64 = super::FORMAT_VERSION;

/// Appends `record` to `out` as one JSON object (no newline: a file adds it), keeping at most
/// `max_body` bytes of its body. Every sink serialises records with this one function.
pub(super) fn encode(out: &mut Vec<u8>, record: &Record, max_body: Option<usize>) {
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
    out.extend_from_slice(b"\",\"method\":");
    string(out, snapshot.method().as_str());
    out.extend_from_slice(b",\"uri\":");
    string(out, &snapshot.uri().to_string());
    out.extend_from_slice(b",\"version\":");
    string(out, version(snapshot.version()));
    out.extend_from_slice(b",\"headers\":[");
    // Host first: the mirror keeps it apart from the other headers (it sets its own).
    header(out, "host", snapshot.original_host());
    for (name, value) in snapshot.headers() {
        out.push(b',');
        header(out, name.as_str(), value);
    }
    out.extend_from_slice(b"],\"body\":");
    body(out, record, max_body);
    out.push(b'}');
}

/// Appends the record's id as written in its `id` field: `{nonce:016x}-{counter}`.
pub(super) fn write_id(out: &mut Vec<u8>, record: &Record) {
    let _ = write!(out, "{:016x}-{}", process_nonce(), record.id);
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

/// `{"base64":"…","length":N}`, with `"truncated":true` when only the first `max_body`
/// bytes are kept (`length` is then the whole body's).
fn body(out: &mut Vec<u8>, record: &Record, max_body: Option<usize>) {
    let (chunks, length) = match &record.body {
        Some(payload) => (&payload.chunks[..], payload.len),
        None => (&[][..], 0),
    };
    let keep = max_body.map_or(length, |max| length.min(max as u64));
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
