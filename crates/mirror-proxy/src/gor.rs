//! GoReplay's file format (`gor --output-file requests.gor`), read for `mirror-proxy replay`
//! so that captures made with GoReplay can be replayed and compared.
//!
//! A file is a sequence of messages, each a header line, the raw HTTP/1.x message as captured,
//! and the separator `\n🐵🙈🙉\n`. The header line is `TYPE ID TIMESTAMP [LATENCY]`: TYPE `1`
//! for a request, `2` for the original response to it (with
//! `--input-raw-track-response`), `3` for a response GoReplay's own replay got; ID pairs a
//! response with its request; TIMESTAMP and LATENCY are nanoseconds.
//!
//! Read: requests (method, request target, HTTP version, headers in order, body; a chunked
//! body is decoded, and its `Transfer-Encoding` dropped, so that the replay frames it anew)
//! and their original responses, which `--compare` compares with. Not read: type 3 messages
//! (skipped), and messages that are not HTTP/1.x (counted as lines that are not records).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{Method, StatusCode, Uri, Version};
use tower_mirror::record::{Recorded, RecordedResponse};

/// The separator GoReplay writes after each message.
const SEPARATOR: &[u8] = "\n🐵🙈🙉\n".as_bytes();

/// The most header fields a message may have.
const MAX_HEADERS: usize = 256;

/// The requests of a `.gor` file in file order, each with its original response when the
/// file has it, and how many messages could not be read.
pub fn parse(data: &[u8]) -> (Vec<Recorded>, u64) {
    let mut records: Vec<Recorded> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    // A response may come before its request is seen (GoReplay writes them as they end).
    let mut early: HashMap<String, RecordedResponse> = HashMap::new();
    let mut skipped = 0;
    for message in split(data) {
        let Some(newline) = message.iter().position(|&b| b == b'\n') else {
            skipped += 1;
            continue;
        };
        let Some(meta) = Meta::parse(&message[..newline]) else {
            skipped += 1;
            continue;
        };
        let payload = &message[newline + 1..];
        match meta.kind {
            b'1' => match request(payload, &meta) {
                Some(mut record) => {
                    if let Some(response) = early.remove(&meta.id) {
                        record = record.with_response(response);
                    }
                    by_id.insert(meta.id, records.len());
                    records.push(record);
                }
                None => skipped += 1,
            },
            b'2' => match response(payload, meta.latency) {
                Some(response) => match by_id.get(&meta.id) {
                    Some(&i) => records[i].response = Some(response),
                    None => {
                        early.insert(meta.id, response);
                    }
                },
                None => skipped += 1,
            },
            // GoReplay's own replayed responses: nothing to replay.
            b'3' => {}
            _ => skipped += 1,
        }
    }
    (records, skipped)
}

/// The messages of `data`, without their separators; empty ones left out.
fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (message, next) = match find(rest, SEPARATOR) {
                Some(at) => (&rest[..at], &rest[at + SEPARATOR.len()..]),
                None => (rest, &[][..]),
            };
            rest = next;
            let message = message.strip_prefix(b"\n").unwrap_or(message);
            if !message.is_empty() {
                return Some(message);
            }
        }
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A message's header line.
struct Meta {
    kind: u8,
    id: String,
    time: SystemTime,
    latency: Duration,
}

impl Meta {
    fn parse(line: &[u8]) -> Option<Self> {
        let line = std::str::from_utf8(line).ok()?;
        let mut fields = line.split_ascii_whitespace();
        let kind = fields.next().filter(|k| k.len() == 1)?.as_bytes()[0];
        let id = fields.next()?.to_owned();
        let nanos: u64 = fields.next()?.parse().ok()?;
        let latency = match fields.next() {
            Some(latency) => Duration::from_nanos(latency.parse().ok()?),
            None => Duration::ZERO,
        };
        Some(Self {
            kind,
            id,
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
            latency,
        })
    }
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// The header fields as read, and whether the body is chunked (its `Transfer-Encoding`
/// left out).
fn fields(headers: &[httparse::Header<'_>]) -> Option<(Vec<(HeaderName, HeaderValue)>, bool)> {
    let mut chunked = false;
    let mut out = Vec::with_capacity(headers.len());
    for header in headers {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        if name == TRANSFER_ENCODING {
            chunked |= value
                .to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"));
            continue;
        }
        out.push((name, value));
    }
    Some((out, chunked))
}

/// The body after the head: as captured, or decoded when chunked.
fn body(rest: &[u8], chunked: bool) -> Option<Bytes> {
    if !chunked {
        return Some(Bytes::copy_from_slice(rest));
    }
    let mut out = Vec::with_capacity(rest.len());
    let mut at: usize = 0;
    // A capture cut anywhere is not a body: every index is checked, nothing panics.
    loop {
        let line_end = at.checked_add(find(rest.get(at..)?, b"\r\n")?)?;
        let size_text = std::str::from_utf8(&rest[at..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, if any, are not replayed.
            return Some(Bytes::from(out));
        }
        let end = at.checked_add(size)?;
        out.extend_from_slice(rest.get(at..end)?);
        at = end.checked_add(2)?;
    }
}

fn request(payload: &[u8], meta: &Meta) -> Option<Recorded> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = parsed.parse(payload).ok()? else {
        return None;
    };
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let uri: Uri = parsed.path?.parse().ok()?;
    let (fields, chunked) = fields(parsed.headers)?;
    Some(Recorded::new(
        meta.time,
        meta.id.clone(),
        method,
        uri,
        version(parsed.version),
        fields,
        body(&payload[head..], chunked)?,
    ))
}

fn response(payload: &[u8], latency: Duration) -> Option<RecordedResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = parsed.parse(payload).ok()? else {
        return None;
    };
    let status = StatusCode::from_u16(parsed.code?).ok()?;
    let (fields, chunked) = fields(parsed.headers)?;
    Some(RecordedResponse::new(
        status,
        fields,
        body(&payload[head..], chunked)?,
        latency,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as GoReplay writes one: a request, its response (4 fields in the header
    /// line), a replayed response, a chunked POST whose response came first, and a message
    /// that is not HTTP.
    fn file() -> Vec<u8> {
        let sep = "\n🐵🙈🙉\n";
        [
            "1 a1 1700000000000000000 0\nGET /users?id=7 HTTP/1.1\r\nHost: shop.example\r\nX-Twice: 1\r\nX-Twice: 2\r\n\r\n",
            "2 a1 1700000000001000000 1500000\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":7}",
            "3 a1 1700000000002000000 900000\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
            "2 b2 1700000000004000000 2000\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            "1 b2 1700000000003000000\nPOST /orders HTTP/1.0\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
            "1 c3 notatime 0\nGET / HTTP/1.1\r\n\r\n",
        ]
        .iter()
        .flat_map(|m| [m.as_bytes(), sep.as_bytes()].concat())
        .collect()
    }

    #[test]
    fn requests_are_read_with_their_original_responses() {
        let (records, skipped) = parse(&file());
        assert_eq!(
            skipped, 1,
            "the message whose header line is not GoReplay's"
        );
        assert_eq!(records.len(), 2);
        let get = &records[0];
        assert_eq!(get.method, Method::GET);
        assert_eq!(get.uri, "/users?id=7");
        assert_eq!(get.id, "a1");
        assert_eq!(
            get.time,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000)
        );
        let twice: Vec<_> = get.headers.iter().filter(|(n, _)| n == "x-twice").collect();
        assert_eq!(twice.len(), 2);
        let response = get.response.as_ref().unwrap();
        assert_eq!(
            response.status, 200,
            "the original, not GoReplay's replayed 500"
        );
        assert_eq!(&response.body[..], b"{\"id\":7}");
        assert_eq!(response.latency, Duration::from_nanos(1_500_000));

        let post = &records[1];
        assert_eq!(post.version, Version::HTTP_10);
        assert_eq!(&post.body[..], b"hello world", "the chunked body decoded");
        assert!(post.headers.iter().all(|(n, _)| n != TRANSFER_ENCODING));
        assert_eq!(
            post.response.as_ref().unwrap().status,
            201,
            "a response read first"
        );
    }

    #[test]
    fn a_chunked_body_cut_anywhere_is_skipped_not_a_panic() {
        let whole = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for end in 0..whole.len() {
            let _ = body(&whole[..end], true);
        }
        assert_eq!(body(whole, true).as_deref(), Some(&b"hello world"[..]));
        assert_eq!(
            body(b"ffffffffffffffff\r\nx", true),
            None,
            "a size past the end"
        );
    }

    #[test]
    fn a_cut_file_keeps_what_is_whole() {
        let data = file();
        let (records, _) = parse(&data[..data.len() / 3]);
        assert_eq!(records.len(), 1);
        assert_eq!(parse(b"").0.len(), 0);
    }
}
