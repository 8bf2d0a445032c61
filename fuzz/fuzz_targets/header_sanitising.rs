//! `header_sanitising`: the request a mirror sends, built from an arbitrary original request
//! (method, request target, version, header names and values) and arbitrary target rules
//! (base URL, HTTP/2, strip and set headers).
//!
//! Checks: never panics; a request is built exactly when the target is valid and the request
//! target joins; the mirror never carries hop-by-hop headers, headers the original's
//! `Connection` names, `Proxy-Authorization`, `Expect` or `Host`; it carries exactly one
//! `X-Mirrored-From` (the original's host); `Content-Length` is the body length, present exactly
//! when the original framed a body or there is one; stripped headers are gone, set headers
//! carry exactly the set values, and every other end-to-end header is forwarded as it was.
//!
//! The same original headers also go through the public
//! `tower_mirror::outbound::hop::remove_hop_by_hop` (the rule mirror-proxy forwards its
//! upstream requests by): afterwards no standard hop-by-hop header and no header a
//! `Connection` token names (tokens read as bytes, split on commas, trimmed) is left, and
//! every other header is kept with its values in order.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use tower_mirror::fuzzing::mirror_request;
use tower_mirror::outbound::hop::remove_hop_by_hop;
use tower_mirror::{MirrorLayer, Options, SendFuture, Target};

/// Header names worth trying: the mirror's reserved ones, in both cases, and a few others.
const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
    "x-mirrored-from",
    "authorization",
    "cookie",
    "x-secret",
    "X-Secret",
    "Connection",
    "TE",
    "accept",
];

const BASES: &[&str] = &[
    "http://shadow",
    "http://shadow:8080/",
    "https://shadow.example/api",
    "http://[::1]:9/deep/er//",
    "http://127.0.0.1:1/p%20q",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

impl Name {
    fn text(&self) -> &str {
        match self {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()],
            Name::Raw(text) => text,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    Raw(Vec<u8>),
    /// Header names separated by `separator`, then `junk`: what a `Connection` header lists.
    Names {
        names: Vec<Name>,
        separator: Vec<u8>,
        junk: Vec<u8>,
    },
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Raw(bytes) => bytes.clone(),
            Value::Names {
                names,
                separator,
                junk,
            } => {
                let separator: &[u8] = if separator.is_empty() {
                    b", "
                } else {
                    separator
                };
                let mut out = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(separator);
                    }
                    out.extend_from_slice(name.text().as_bytes());
                }
                out.extend_from_slice(junk);
                out
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum RequestTarget {
    Raw(Vec<u8>),
    /// `/` followed by these bytes.
    Path(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum BaseUrl {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: Option<Vec<u8>>,
    target: RequestTarget,
    http2_original: bool,
    headers: Vec<(Name, Value)>,
    base: BaseUrl,
    http2: bool,
    strip: Vec<Name>,
    set: Vec<(Name, String)>,
    body_len: u16,
}

fuzz_target!(|input: Input| check(&input));

fn check(input: &Input) {
    let method = match &input.method {
        Some(bytes) => match Method::from_bytes(bytes) {
            Ok(method) => method,
            Err(_) => return,
        },
        None => Method::GET,
    };
    let uri_bytes = match &input.target {
        RequestTarget::Raw(bytes) => bytes.clone(),
        RequestTarget::Path(rest) => [b"/".as_slice(), rest].concat(),
    };
    let Ok(uri) = Uri::try_from(uri_bytes) else {
        return;
    };
    let mut original = Request::new(());
    *original.method_mut() = method.clone();
    *original.uri_mut() = uri.clone();
    *original.version_mut() = if input.http2_original {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    for (name, value) in &input.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.text().as_bytes()),
            HeaderValue::from_bytes(&value.bytes()),
        ) else {
            continue;
        };
        original.headers_mut().append(name, value);
    }
    check_remove_hop_by_hop(original.headers());

    let url = match &input.base {
        BaseUrl::Known(i) => BASES[usize::from(*i) % BASES.len()].to_owned(),
        BaseUrl::Raw(text) => text.clone(),
    };
    let mut target = Target::new(url.clone());
    if input.http2 {
        target = target.with_http2();
    }
    for name in &input.strip {
        target = target.strip_header(name.text());
    }
    for (name, value) in &input.set {
        target = target.set_header(name.text(), value.as_str());
    }
    let body_len = usize::from(input.body_len % 1024);

    let mirror = mirror_request(&original, &target, body_len);

    // Built exactly when the layer accepts the target and the request target joins.
    let target_is_valid = MirrorLayer::with_options(Options {
        targets: vec![target.clone()],
        sender: Some(Arc::new(|_| -> SendFuture {
            Box::pin(async { Err("never sent".into()) })
        })),
        ..Options::default()
    })
    .is_ok();
    let joined = tower_mirror::outbound::BaseUrl::parse(&url)
        .ok()
        .and_then(|base| base.join(&uri));
    let Some(mirror) = mirror else {
        assert!(
            !(target_is_valid && joined.is_some()),
            "valid target {target:?} and joinable {uri:?}, but no mirror request"
        );
        return;
    };
    assert!(
        target_is_valid,
        "a mirror built for an invalid target {target:?}"
    );
    assert_eq!(mirror.method(), method);
    assert_eq!(Some(mirror.uri()), joined.as_ref());
    let version = if input.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    assert_eq!(mirror.version(), version);
    assert_eq!(mirror.body().len(), body_len as u64);

    check_headers(
        original.headers(),
        &original,
        &target,
        body_len,
        mirror.headers(),
    );
}

/// The header names the mirror manages or never forwards.
const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
    "x-mirrored-from",
];

/// Comma-separated tokens of every value of `name`, trimmed of spaces and tabs, byte-wise.
fn tokens(headers: &HeaderMap, name: HeaderName) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|token| {
            let start = token.iter().position(|b| !matches!(b, b' ' | b'\t'));
            let end = token.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
            match (start, end) {
                (Some(start), Some(end)) => token[start..=end].to_vec(),
                _ => Vec::new(),
            }
        })
        .collect()
}

fn rule_name(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.trim().as_bytes()).expect("a valid target has valid rules")
}

fn check_headers(
    original: &HeaderMap,
    request: &Request<()>,
    target: &Target,
    body_len: usize,
    mirror: &HeaderMap,
) {
    let set_names: Vec<HeaderName> = target
        .set_headers
        .iter()
        .map(|(n, _)| rule_name(n))
        .collect();
    let strip_names: Vec<HeaderName> = target.strip_headers.iter().map(|n| rule_name(n)).collect();
    let named_by_connection: Vec<HeaderName> = tokens(original, header::CONNECTION)
        .iter()
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect();

    // Never forwarded.
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
    ] {
        assert!(!mirror.contains_key(name), "{name} forwarded: {mirror:?}");
    }
    // `TE: trailers`, and only that, on HTTP/2 when the original asked for trailers.
    let asks_for_trailers = tokens(original, header::TE)
        .iter()
        .any(|token| token.eq_ignore_ascii_case(b"trailers"));
    let te: Vec<_> = mirror.get_all(header::TE).iter().collect();
    if target.http2 && asks_for_trailers {
        assert_eq!(
            te,
            ["trailers"],
            "original TE: {:?}",
            original.get_all("te")
        );
    } else {
        assert!(te.is_empty(), "TE forwarded: {te:?}");
    }
    // Headers the original's Connection names are hop-by-hop too, unless the target sets them.
    for name in &named_by_connection {
        if set_names.contains(name) || RESERVED.contains(&name.as_str()) {
            continue;
        }
        assert!(
            !mirror.contains_key(name),
            "{name}, named by Connection {:?}, was forwarded",
            original
                .get_all(header::CONNECTION)
                .iter()
                .collect::<Vec<_>>()
        );
    }

    // Exactly one X-Mirrored-From: the request target's authority (without user information),
    // else the original's Host, else empty.
    let from: Vec<_> = mirror.get_all("x-mirrored-from").iter().collect();
    let expected_from = match request.uri().authority() {
        Some(authority) => {
            let text = authority.as_str();
            text.rsplit_once('@')
                .map_or(text, |(_, host)| host)
                .as_bytes()
                .to_vec()
        }
        None => original
            .get(header::HOST)
            .map_or_else(Vec::new, |host| host.as_bytes().to_vec()),
    };
    assert_eq!(from.len(), 1, "X-Mirrored-From: {from:?}");
    assert_eq!(from[0].as_bytes(), expected_from.as_slice());

    // Content-Length: the body length, whenever the original framed a body or there is one.
    let lengths: Vec<_> = mirror.get_all(header::CONTENT_LENGTH).iter().collect();
    let framed = original.contains_key(header::CONTENT_LENGTH)
        || original.contains_key(header::TRANSFER_ENCODING);
    if framed || body_len > 0 {
        assert_eq!(lengths, [body_len.to_string().as_str()]);
    } else {
        assert!(lengths.is_empty(), "Content-Length: {lengths:?}");
    }

    // Set headers carry exactly the set values, in order; stripped ones are gone.
    for name in &set_names {
        let expected: Vec<&[u8]> = target
            .set_headers
            .iter()
            .filter(|(n, _)| rule_name(n) == name)
            .map(|(_, v)| v.as_bytes())
            .collect();
        let got: Vec<&[u8]> = mirror.get_all(name).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(got, expected, "set header {name}");
    }
    for name in &strip_names {
        if !set_names.contains(name) {
            assert!(!mirror.contains_key(name), "stripped {name} was forwarded");
        }
    }

    // Every other end-to-end header is forwarded as it was, and nothing else is added.
    let managed = |name: &HeaderName| {
        RESERVED.contains(&name.as_str())
            || set_names.contains(name)
            || strip_names.contains(name)
            || named_by_connection.contains(name)
    };
    for name in original.keys() {
        if managed(name) {
            continue;
        }
        let want: Vec<_> = original.get_all(name).iter().collect();
        let got: Vec<_> = mirror.get_all(name).iter().collect();
        assert_eq!(got, want, "end-to-end header {name}");
    }
    for name in mirror.keys() {
        assert!(
            original.contains_key(name)
                || set_names.contains(name)
                || ["x-mirrored-from", "content-length", "te"].contains(&name.as_str()),
            "{name} appeared from nowhere"
        );
    }
}

/// The standard hop-by-hop headers (RFC 9110 §7.6.1, and `Proxy-Connection`), written out
/// here rather than taken from the library.
const STANDARD_HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `remove_hop_by_hop` on a copy of `original`: no standard hop-by-hop header and no header a
/// `Connection` token names is left; every other header is kept, values in order.
fn check_remove_hop_by_hop(original: &HeaderMap) {
    let mut headers = original.clone();
    remove_hop_by_hop(&mut headers);
    let named_by_connection: Vec<HeaderName> = tokens(original, header::CONNECTION)
        .iter()
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect();
    for name in STANDARD_HOP_BY_HOP {
        assert!(!headers.contains_key(*name), "{name} left: {headers:?}");
    }
    for name in &named_by_connection {
        assert!(
            !headers.contains_key(name),
            "{name}, named by Connection {:?}, left",
            original
                .get_all(header::CONNECTION)
                .iter()
                .collect::<Vec<_>>()
        );
    }
    for name in original.keys() {
        if STANDARD_HOP_BY_HOP.contains(&name.as_str()) || named_by_connection.contains(name) {
            continue;
        }
        let want: Vec<_> = original.get_all(name).iter().collect();
        let got: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(got, want, "end-to-end header {name} changed");
    }
    for name in headers.keys() {
        assert!(original.contains_key(name), "{name} appeared from nowhere");
    }
}
