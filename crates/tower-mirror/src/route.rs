//! Routes: the path with its identifiers folded, so that `/users/42` and `/users/7` are one
//! route, `/users/{id}` — the diff report's grouping (with the method) and the mirror span's
//! `http.route`.

use http::Method;

/// `METHOD /path/{id}`: numbers, UUIDs, long hex strings and long tokens mixing letters and
/// digits become placeholders; the query is left out.
#[cfg_attr(not(feature = "diff"), allow(dead_code))]
pub(crate) fn route(method: &Method, path: &str) -> String {
    let mut route = String::with_capacity(method.as_str().len() + 1 + path.len());
    route.push_str(method.as_str());
    route.push(' ');
    push_template(&mut route, path);
    route
}

/// The path alone with its identifiers folded: `/users/{id}`.
pub(crate) fn template(path: &str) -> String {
    let mut template = String::with_capacity(path.len());
    push_template(&mut template, path);
    template
}

fn push_template(out: &mut String, path: &str) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(placeholder(segment).unwrap_or(segment));
    }
}

fn placeholder(segment: &str) -> Option<&'static str> {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return Some("{id}");
    }
    if is_uuid(segment) {
        return Some("{uuid}");
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if bytes.len() >= 16 && digits > 0 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Some("{hex}");
    }
    let token_chars = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%'));
    if bytes.len() >= 20 && digits >= 2 && token_chars {
        return Some("{token}");
    }
    None
}

fn is_uuid(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_fold() {
        let cases = [
            ("/users/42", "GET /users/{id}"),
            ("/users/42/orders/7", "GET /users/{id}/orders/{id}"),
            (
                "/orders/3f2b8c1e-9d4a-4e2b-8f1a-0c9d8e7f6a5b",
                "GET /orders/{uuid}",
            ),
            (
                "/blobs/9f86d081884c7d659a2feaa0c55ad015",
                "GET /blobs/{hex}",
            ),
            ("/share/aZ3kLm9Qw2Xr7Tp1Vb8Ny", "GET /share/{token}"),
            ("/api/v2/products", "GET /api/v2/products"),
            ("/deadbeefdeadbeef", "GET /deadbeefdeadbeef"),
            ("/", "GET /"),
            ("", "GET /"),
            ("/a//b/", "GET /a//b/"),
        ];
        for (path, expected) in cases {
            assert_eq!(route(&Method::GET, path), expected, "{path}");
        }
        assert_eq!(route(&Method::POST, "/orders"), "POST /orders");
    }
}
