//! W3C Trace Context (`traceparent`, `tracestate`) on mirrors: by default a mirror joins the
//! incoming trace as a new child span, so a shadow's spans do not land inside the production
//! request's own span (Envoy's users have asked for exactly this: envoyproxy/envoy#10257).

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent` (W3C Trace Context §3.2): `00-<trace-id>-<parent-id>-<flags>`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context §3.3): vendor data that travels with `traceparent`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What a target's mirrors carry of the incoming trace context: see
/// [`Target::trace_context`](crate::Target::trace_context).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceContext {
    /// The mirror is a new span in the incoming trace: same trace id, a new parent id, the
    /// same flags; `tracestate` kept. The default.
    #[default]
    Child,
    /// As [`Child`](Self::Child), with the `sampled` flag cleared, so the shadow's spans do
    /// not count against the production trace's sampling.
    Unsampled,
    /// Neither `traceparent` nor `tracestate` is sent: the shadow starts its own traces.
    Strip,
}

/// Applies `policy` to a mirror's headers. A `traceparent` that is not a valid version-00
/// value is left as it is (the receiver will ignore it, as the specification says).
pub(crate) fn apply(policy: TraceContext, headers: &mut HeaderMap) {
    if policy == TraceContext::Strip {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        return;
    }
    let Some(parent) = headers.get(TRACEPARENT).and_then(|v| parse(v.as_bytes())) else {
        return;
    };
    let flags = match policy {
        TraceContext::Unsampled => parent.flags & !SAMPLED,
        _ => parent.flags,
    };
    let value = format!(
        "00-{}-{:016x}-{:02x}",
        std::str::from_utf8(parent.trace_id).unwrap_or_default(),
        new_span_id(parent.trace_id),
        flags
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(TRACEPARENT, value);
    }
}

const SAMPLED: u8 = 0x01;

struct Parent<'a> {
    trace_id: &'a [u8],
    flags: u8,
}

/// A version-00 `traceparent`: 55 bytes, lower-case hex fields, ids not all zero.
fn parse(value: &[u8]) -> Option<Parent<'_>> {
    let hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |b: &[u8]| b.iter().any(|&c| c != b'0');
    if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !(hex(trace_id) && hex(parent_id) && hex(flags) && nonzero(trace_id) && nonzero(parent_id)) {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some(Parent { trace_id, flags })
}

/// A span id unique within the process and unlikely to meet another process's: XXH3 of a
/// counter, the trace id and a per-process nonce; never zero.
fn new_span_id(trace_id: &[u8]) -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let nonce = *NONCE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        now ^ u64::from(std::process::id()).rotate_left(32)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut input = Vec::with_capacity(16 + trace_id.len());
    input.extend_from_slice(&n.to_le_bytes());
    input.extend_from_slice(&nonce.to_le_bytes());
    input.extend_from_slice(trace_id);
    xxhash_rust::xxh3::xxh3_64(&input).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn mirrored(policy: TraceContext, traceparent: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        apply(policy, &mut headers);
        headers
    }

    #[test]
    fn each_policy() {
        let child = mirrored(TraceContext::Child, INCOMING);
        let value = child[TRACEPARENT].to_str().unwrap();
        assert!(
            value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{value}"
        );
        assert!(value.ends_with("-01"));
        assert_ne!(&value[36..52], "00f067aa0ba902b7", "a new span id");
        assert!(parse(value.as_bytes()).is_some(), "still valid: {value}");
        assert_eq!(child[TRACESTATE], "vendor=1");

        let unsampled = mirrored(TraceContext::Unsampled, INCOMING);
        assert!(unsampled[TRACEPARENT].to_str().unwrap().ends_with("-00"));

        let stripped = mirrored(TraceContext::Strip, INCOMING);
        assert!(!stripped.contains_key(TRACEPARENT) && !stripped.contains_key(TRACESTATE));
    }

    #[test]
    fn span_ids_differ_and_invalid_values_are_left_alone() {
        let a = mirrored(TraceContext::Child, INCOMING);
        let b = mirrored(TraceContext::Child, INCOMING);
        assert_ne!(a[TRACEPARENT], b[TRACEPARENT]);
        for invalid in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(mirrored(TraceContext::Child, invalid)[TRACEPARENT], invalid);
        }
    }
}
