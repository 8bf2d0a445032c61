//! [`BaseUrl`]: a target's or upstream's base URL, and how a request's path and query are
//! joined onto it.

use std::fmt;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// A base URL: scheme (`http` or `https`), authority, and an optional path prefix. Parsed
/// once, so that joining a request onto it costs one string and one URI parse.
///
/// The joined URI is the base's scheme and authority, the base path without its trailing
/// slash, then the request's path and query as received (no normalisation, no decoding):
/// `http://staging:8080/shadow` + `/api/users?page=2` =
/// `http://staging:8080/shadow/api/users?page=2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: Scheme,
    authority: Authority,
    /// The base path without its trailing slash: `""` for `http://h` and `http://h/`.
    prefix: String,
}

/// Why a text is not a usable [`BaseUrl`]; its `Display` is the reason alone, for the caller
/// to prefix with the flag, key or target it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidUrl(pub(crate) String);

impl fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidUrl {}

impl BaseUrl {
    /// Parses `url` as a base URL.
    ///
    /// # Errors
    /// [`InvalidUrl`] when `url` is not a URL, its scheme is not `http` or `https`, it has no
    /// host, a port over 65535, user information, a query or a fragment.
    pub fn parse(url: &str) -> Result<Self, InvalidUrl> {
        let invalid = |reason: &str| InvalidUrl(reason.to_owned());
        // `http::Uri` drops a fragment silently, so look for one (and for a query) in the text.
        if url.contains('#') {
            return Err(invalid("a base URL cannot have a fragment"));
        }
        if url.contains('?') {
            return Err(invalid("a base URL cannot have a query"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&format!("not a URL ({e})")))?;
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            Some(s) => {
                return Err(invalid(&format!(
                    "scheme {:?} is not supported: use http or https",
                    s.as_str()
                )));
            }
            None => return Err(invalid("missing scheme: use http:// or https://")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "user information in the URL is not supported: set an Authorization header instead",
            ));
        }
        if authority.host().is_empty() {
            return Err(invalid("missing host"));
        }
        // `http::Uri` accepts any digits after the colon; a TCP port is at most 65535.
        let after_host = authority
            .as_str()
            .get(authority.host().len()..)
            .unwrap_or("");
        if let Some(port) = after_host.strip_prefix(':')
            && !port.is_empty()
            && port.parse::<u16>().is_err()
        {
            return Err(invalid(&format!(
                "port {port} is not a TCP port (0 to 65535)"
            )));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            prefix,
        })
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The authority: host and optional port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The path prefix, without its trailing slash (`""` when there is none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The URI to send `original` to: see the [type docs](Self). `None` when the original
    /// has no origin-form path (`OPTIONS *`, authority-form `CONNECT`), so there is nothing
    /// to append; or when the joined path and query are longer than a URI may be.
    pub fn join(&self, original: &Uri) -> Option<Uri> {
        self.join_path(original.path(), original.query())
    }

    /// Like [`join`](Self::join), with the path and query given apart (a rewritten path).
    pub fn join_path(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        if !path.starts_with('/') {
            return None;
        }
        let mut joined = String::with_capacity(
            self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        joined.push_str(&self.prefix);
        joined.push_str(path);
        if let Some(query) = query {
            joined.push('?');
            joined.push_str(query);
        }
        let path_and_query = PathAndQuery::from_maybe_shared(bytes::Bytes::from(joined)).ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str, original: &str) -> String {
        let uri: Uri = original.parse().unwrap();
        BaseUrl::parse(base)
            .unwrap()
            .join(&uri)
            .unwrap()
            .to_string()
    }

    #[test]
    fn url_join_table() {
        let cases = [
            ("http://h", "/test?q=1", "http://h/test?q=1"),
            ("http://h/", "/test?q=1", "http://h/test?q=1"),
            ("http://h:8080", "/", "http://h:8080/"),
            ("http://h/api", "/test", "http://h/api/test"),
            ("http://h/api/", "/test", "http://h/api/test"),
            ("http://h/api//", "/test", "http://h/api/test"),
            ("https://h/a/b", "/c/d?x=1&y=2", "https://h/a/b/c/d?x=1&y=2"),
            ("http://h/api", "/", "http://h/api/"),
            ("http://h", "/a%20b/../c?%41=1", "http://h/a%20b/../c?%41=1"),
            ("http://h", "/empty?", "http://h/empty?"),
            ("http://[::1]:8080", "/x", "http://[::1]:8080/x"),
            // An absolute-form request target keeps only its path and query.
            ("http://h/p", "http://other:9/x?y", "http://h/p/x?y"),
        ];
        for (base, original, expected) in cases {
            assert_eq!(join(base, original), expected, "{base} + {original}");
        }
    }

    #[test]
    fn non_origin_form_targets_are_not_joined() {
        let base = BaseUrl::parse("http://h/api").unwrap();
        assert!(base.join(&"*".parse().unwrap()).is_none());
        assert!(base.join(&"example.com:443".parse().unwrap()).is_none());
    }

    #[test]
    fn bad_base_urls_say_why() {
        let cases = [
            ("ftp://h", "scheme \"ftp\" is not supported"),
            ("staging.example.com", "missing scheme"),
            ("http://h/?a=1", "cannot have a query"),
            ("http://h/#top", "cannot have a fragment"),
            ("http://user:pw@h/", "user information"),
            ("http://h/a b", "not a URL"),
            ("http://h:70000", "port 70000 is not a TCP port"),
            ("http://h:99999999", "not a TCP port"),
            ("", "not a URL"),
        ];
        for (url, expected) in cases {
            let text = BaseUrl::parse(url).unwrap_err().to_string();
            assert!(text.contains(expected), "{url:?}: {text}");
        }
        assert!(BaseUrl::parse("http://h:65535").is_ok());
        assert!(BaseUrl::parse("http://[::1]").is_ok());
    }
}
