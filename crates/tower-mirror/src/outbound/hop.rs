//! Hop-by-hop headers (RFC 9110 §7.6.1): the headers that describe one connection, not the
//! message, and must not be forwarded by an intermediary.
//!
//! The rule is read from bytes, not text: a `Connection` value with one non-ASCII
//! (obs-text) byte still names its other tokens, and each named header is removed.

use http::header::{self, HeaderMap, HeaderName};

/// The hop-by-hop headers every intermediary removes, whatever `Connection` says:
/// `Connection`, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization` (addressed to the
/// proxy itself), `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade` (RFC 9110 §7.6.1,
/// RFC 9112 §9.6 for `Proxy-Connection`).
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True for the names in [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The comma-separated tokens of every `name` header, trimmed of spaces and tabs.
///
/// Bytes, not text: a value with one non-ASCII byte must still yield its other tokens.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// The header names listed in `Connection` (its "connection options"), which are hop-by-hop
/// too. Tokens that are not valid header names are ignored; the others still count.
pub fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    tokens(headers, &header::CONNECTION)
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect()
}

/// True when the message asks for a protocol upgrade: an `Upgrade` header together with the
/// `upgrade` connection option (RFC 9110 §7.8). A bare `Upgrade` header is a hop-by-hop header
/// like any other and asks for nothing.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// True when `TE` lists `trailers`: the client accepts trailer fields (gRPC requires it on
/// HTTP/2, the one hop where `TE: trailers` may be forwarded, RFC 9113 §8.2.2).
pub fn asks_for_trailers(headers: &HeaderMap) -> bool {
    tokens(headers, &header::TE).any(|t| t.eq_ignore_ascii_case(b"trailers"))
}

/// Removes every hop-by-hop header: those in [`HOP_BY_HOP`] and those `Connection` names.
///
/// One pass over the names present finds the standard ones, so a request with none costs
/// no lookup per name.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut remove: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    if remove.contains(&header::CONNECTION) {
        remove.extend(connection_options(headers));
    }
    for name in &remove {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_options_with_obs_text_still_count() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap(),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-secret"));
        assert!(!headers.contains_key(header::CONNECTION));
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn all_standard_hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        for name in HOP_BY_HOP {
            headers.insert(name, HeaderValue::from_static("x"));
        }
        headers.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn an_upgrade_needs_its_connection_option() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            !is_upgrade(&headers),
            "a bare Upgrade header asks for nothing"
        );
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&headers));
    }
}
