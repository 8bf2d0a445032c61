//! Applying a [`Redact`]: the keyed hash, and where it goes in headers, queries and JSON.

use std::fmt::Write as _;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use serde_json::Value;
use sha2::Sha256;

use super::Redact;

impl Redact {
    /// `redacted:` and the first 64 bits of HMAC-SHA-256 of `value` under the key, in hex.
    pub(crate) fn placeholder(&self, value: &[u8]) -> String {
        // HMAC takes a key of any length (RFC 2104 §2), so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut text = String::with_capacity(9 + 16);
        text.push_str("redacted:");
        for byte in &digest[..8] {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    /// Whether header `name`'s values are redacted.
    pub(crate) fn redacts_header(&self, name: &HeaderName) -> bool {
        self.0.headers.contains(name)
    }

    /// Whether the body field at `path` (its segments) is redacted: a pattern names it or
    /// a field it is in.
    pub(crate) fn redacts_field(&self, path: &[String]) -> bool {
        self.0.json_pointers.iter().any(|(_, p)| p.covers(path))
    }

    /// `value`, redacted if header `name` is.
    pub(crate) fn header_value(
        &self,
        name: &HeaderName,
        value: &HeaderValue,
    ) -> Option<HeaderValue> {
        self.redacts_header(name).then(|| {
            HeaderValue::try_from(self.placeholder(value.as_bytes()))
                .unwrap_or_else(|_| unreachable!("a placeholder is visible ASCII"))
        })
    }

    /// Redacts the values of the redacted headers in `headers`, in place.
    pub(crate) fn headers(&self, headers: &mut HeaderMap) {
        for name in &self.0.headers {
            if let header::Entry::Occupied(mut entry) = headers.entry(name) {
                for value in entry.iter_mut() {
                    if let Some(redacted) = self.header_value(name, value) {
                        *value = redacted;
                    }
                }
            }
        }
    }

    /// `uri` with the values of the redacted query parameters replaced, or `None` when it
    /// has none of them. Other parameters stay byte for byte as they were.
    pub(crate) fn uri(&self, uri: &Uri) -> Option<Uri> {
        let query = uri.query().filter(|_| !self.0.query_params.is_empty())?;
        let mut changed = false;
        let mut out = String::with_capacity(query.len());
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let redacted = form_urlencoded::parse(pair.as_bytes())
                .next()
                .filter(|(name, _)| self.0.query_params.iter().any(|p| p == name));
            match redacted {
                Some((_, value)) => {
                    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                    out.push_str(name);
                    out.push('=');
                    out.push_str(&self.placeholder(value.as_bytes()));
                    changed = true;
                }
                None => out.push_str(pair),
            }
        }
        if !changed {
            return None;
        }
        let path_and_query: PathAndQuery = format!("{}?{out}", uri.path()).parse().ok()?;
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).ok()
    }

    /// A path and query (`/a?b=c`, as a record or a report holds it), redacted.
    pub(crate) fn path_and_query(&self, text: &str) -> Option<String> {
        let uri: Uri = text.parse().ok()?;
        self.uri(&uri).map(|uri| uri.to_string())
    }

    /// Whether a body with `headers` is searched for fields to redact: JSON, and fields are
    /// named.
    pub(crate) fn redacts_json(&self, headers: &HeaderMap) -> bool {
        !self.0.json_pointers.is_empty() && is_json(headers)
    }

    /// The body whose bytes are `chunks`, with its redacted fields replaced, when `headers`
    /// say it is JSON and one is there; `None` otherwise (then it goes unchanged).
    pub(crate) fn json_body(&self, headers: &HeaderMap, chunks: &[Bytes]) -> Option<Bytes> {
        if !self.redacts_json(headers) {
            return None;
        }
        let joined;
        let body: &[u8] = match chunks {
            [] => &[],
            [one] => one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        let mut value: Value = serde_json::from_slice(body).ok()?;
        let mut path = Vec::new();
        if !self.redact_value(&mut value, &mut path) {
            return None;
        }
        serde_json::to_vec(&value).ok().map(Bytes::from)
    }

    /// Replaces the redacted fields at or under `path`; true if any was.
    fn redact_value(&self, value: &mut Value, path: &mut Vec<String>) -> bool {
        if self.redacts_field(path) {
            let text = value.to_string();
            *value = Value::String(self.placeholder(text.as_bytes()));
            return true;
        }
        if !self
            .0
            .json_pointers
            .iter()
            .any(|(_, p)| p.may_match_below(path))
        {
            return false;
        }
        let mut changed = false;
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    path.push(key.clone());
                    changed |= self.redact_value(child, path);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    changed |= self.redact_value(child, path);
                    path.pop();
                }
            }
            _ => {}
        }
        changed
    }
}

/// `application/json` or any `+json` type (RFC 6839 §3.1), parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact() -> Redact {
        Redact::new(b"0123456789abcdef0123456789abcdef")
            .header("authorization")
            .query_param("token")
            .query_param("a b")
            .json_pointer("/user/email")
            .json_pointer("/cards/*/number")
    }

    /// The placeholder is HMAC-SHA-256 as RFC 4231 defines it: test case 2 ("Jefe").
    #[test]
    fn the_placeholder_is_hmac_sha256() {
        let jefe = Redact::new(b"Jefe");
        assert_eq!(
            jefe.placeholder(b"what do ya want for nothing?"),
            "redacted:5bdcc146bf60754e"
        );
    }

    #[test]
    fn the_same_value_gives_the_same_placeholder_and_another_key_another() {
        let a = redact();
        assert_eq!(a.placeholder(b"secret"), a.placeholder(b"secret"));
        assert_ne!(a.placeholder(b"secret"), a.placeholder(b"secret2"));
        assert_ne!(
            a.placeholder(b"secret"),
            Redact::new(b"another key").placeholder(b"secret")
        );
    }

    #[test]
    fn query_parameters_are_redacted_by_their_decoded_name_and_value() {
        let r = redact();
        let uri: Uri = "http://h/p?x=1&token=abc&a+b=c%20d&token=abc&y"
            .parse()
            .unwrap();
        let got = r.uri(&uri).unwrap().to_string();
        let t = r.placeholder(b"abc");
        let ab = r.placeholder(b"c d");
        assert_eq!(
            got,
            format!("http://h/p?x=1&token={t}&a+b={ab}&token={t}&y")
        );
        assert!(r.uri(&"/p?x=1".parse().unwrap()).is_none());
        assert!(r.uri(&"/p".parse().unwrap()).is_none());
    }

    #[test]
    fn json_fields_are_redacted_by_pattern_and_the_rest_kept() {
        let r = redact();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/vnd.api+json; charset=utf-8".parse().unwrap(),
        );
        let body = br#"{"user":{"email":"ada@example.com","name":"Ada"},"cards":[{"number":4111},{"number":"5500"}],"email":"kept"}"#;
        let redacted = r.json_body(&headers, &[Bytes::from_static(body)]).unwrap();
        // Fields keep their order (serde_json's `preserve_order`): user, cards, email.
        let text = std::str::from_utf8(&redacted).unwrap();
        let at = |key: &str| text.find(key).unwrap();
        assert!(
            at("\"user\"") < at("\"cards\"") && at("\"cards\"") < at("\"kept\""),
            "{text}"
        );
        let out: Value = serde_json::from_slice(&redacted).unwrap();
        assert_eq!(out["user"]["email"], r.placeholder(br#""ada@example.com""#));
        assert_eq!(out["user"]["name"], "Ada");
        assert_eq!(out["cards"][0]["number"], r.placeholder(b"4111"));
        assert_eq!(out["cards"][1]["number"], r.placeholder(br#""5500""#));
        assert_eq!(out["email"], "kept");
        // Not JSON by its type, not JSON at all, or nothing to redact: unchanged.
        let whole = [Bytes::from_static(body)];
        assert!(r.json_body(&HeaderMap::new(), &whole).is_none());
        assert!(
            r.json_body(&headers, &[Bytes::from_static(b"{not json")])
                .is_none()
        );
        let nothing = Bytes::from_static(br#"{"user":{"name":"Ada"}}"#);
        assert!(r.json_body(&headers, &[nothing]).is_none());
        // A body in several chunks is one document.
        let (a, b) = body.split_at(20);
        let chunks = [Bytes::from_static(a), Bytes::from_static(b)];
        assert_eq!(
            r.json_body(&headers, &chunks),
            r.json_body(&headers, &whole)
        );
    }

    #[test]
    fn headers_are_redacted_in_place_every_value() {
        let r = redact();
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, "Bearer a".parse().unwrap());
        headers.append(header::AUTHORIZATION, "Bearer b".parse().unwrap());
        headers.append(header::ACCEPT, "*/*".parse().unwrap());
        r.headers(&mut headers);
        let values: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(
            values,
            [
                r.placeholder(b"Bearer a").as_str(),
                r.placeholder(b"Bearer b").as_str()
            ]
        );
        assert_eq!(headers[header::ACCEPT], "*/*");
    }
}
