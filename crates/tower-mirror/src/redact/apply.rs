//! Applying a [`Redact`]: the keyed hash, and where it goes in headers, queries and JSON.

use std::fmt::Write as _;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use serde_json::Value;
use sha2::Sha256;

use super::{Redact, Redacted};

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
        self.headers_except(headers, |_| false);
    }

    /// [`headers`](Self::headers), but for the names `keep` says to leave alone.
    pub(crate) fn headers_except(
        &self,
        headers: &mut HeaderMap,
        keep: impl Fn(&HeaderName) -> bool,
    ) {
        for name in self.0.headers.iter().filter(|name| !keep(name)) {
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

    /// Whether a body with `headers` and bytes `chunks` is searched for fields to redact:
    /// fields are named, and it is JSON by its `Content-Type` (any type naming `json`) or, with
    /// none, by its first byte (`{` or `[`), as the diff decides.
    pub(crate) fn redacts_json(&self, headers: &HeaderMap, chunks: &[Bytes]) -> bool {
        !self.0.json_pointers.is_empty() && is_json(headers, chunks)
    }

    /// What becomes of a body with `headers` whose bytes are `chunks`: kept when no field can
    /// be in it; its redacted fields replaced; or withheld when it should be searched but
    /// cannot be (content-encoded, or not parseable JSON): never sent in clear.
    pub(crate) fn body(&self, headers: &HeaderMap, chunks: &[Bytes]) -> Redacted {
        if !self.redacts_json(headers, chunks) {
            return Redacted::Keep;
        }
        let encoded = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Redacted::Withhold;
        }
        let joined;
        let body: &[u8] = match chunks {
            [] => return Redacted::Keep,
            [one] => one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
            return Redacted::Withhold;
        };
        let mut path = Vec::new();
        if !self.redact_value(&mut value, &mut path) {
            return Redacted::Keep;
        }
        match serde_json::to_vec(&value) {
            Ok(bytes) => Redacted::Replace(Bytes::from(bytes)),
            Err(_) => Redacted::Withhold,
        }
    }

    /// A value shown in a report for the body field at `path` (its segments): a
    /// placeholder when a redacted field is there, in it or under it, the value unchanged
    /// otherwise.
    pub(crate) fn shown_field(&self, path: &[String], value: &str) -> Option<String> {
        let hidden = self
            .0
            .json_pointers
            .iter()
            .any(|(_, p)| p.covers(path) || p.may_match_below(path));
        hidden.then(|| self.placeholder(value.as_bytes()))
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

/// JSON by its `Content-Type` (`application/json`, `+json` types (RFC 6839 §3.1),
/// `text/json`: any naming `json`), or, without one, by a first byte of `{` or `[`.
fn is_json(headers: &HeaderMap, chunks: &[Bytes]) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        Some(value) => value
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json")),
        None => chunks
            .iter()
            .flat_map(|c| c.iter())
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'[')),
    }
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
        let Redacted::Replace(redacted) = r.body(&headers, &[Bytes::from_static(body)]) else {
            panic!("a JSON body with redacted fields is replaced");
        };
        let out: Value = serde_json::from_slice(&redacted).unwrap();
        assert_eq!(out["user"]["email"], r.placeholder(br#""ada@example.com""#));
        assert_eq!(out["user"]["name"], "Ada");
        assert_eq!(out["cards"][0]["number"], r.placeholder(b"4111"));
        assert_eq!(out["cards"][1]["number"], r.placeholder(br#""5500""#));
        assert_eq!(out["email"], "kept");
        let whole = [Bytes::from_static(body)];
        // JSON without a Content-Type, by its first byte: searched too.
        assert!(matches!(
            r.body(&HeaderMap::new(), &whole),
            Redacted::Replace(_)
        ));
        // Not JSON, or nothing to redact: unchanged.
        let mut text = HeaderMap::new();
        text.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(matches!(r.body(&text, &whole), Redacted::Keep));
        let nothing = Bytes::from_static(br#"{"user":{"name":"Ada"}}"#);
        assert!(matches!(r.body(&headers, &[nothing]), Redacted::Keep));
        // JSON that cannot be searched is withheld, never sent in clear: it does not parse,
        // or it is content-encoded (gzip).
        let broken = [Bytes::from_static(b"{\"user\":{\"email\":\"ada@x")];
        assert!(matches!(r.body(&headers, &broken), Redacted::Withhold));
        let mut gzip = headers.clone();
        gzip.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(matches!(r.body(&gzip, &whole), Redacted::Withhold));
        // A body in several chunks is one document.
        let (a, b) = body.split_at(20);
        let chunks = [Bytes::from_static(a), Bytes::from_static(b)];
        let (Redacted::Replace(split), Redacted::Replace(one)) =
            (r.body(&headers, &chunks), r.body(&headers, &whole))
        else {
            panic!("both replaced");
        };
        assert_eq!(split, one);
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
