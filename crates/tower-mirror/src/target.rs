//! Targets: where mirrored requests go, and how a request's URI is joined onto a target's base.

use http::Uri;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};

use crate::error::ConfigError;

/// A shadow target: a base URL and the share of requests mirrored to it.
///
/// Build one with [`Target::new`] (100 %), [`Target::percentage`] or the free function
/// [`percentage`]. The mirrored URL is the base URL (scheme, authority and path prefix)
/// followed by the original request's path and query, so with the base
/// `http://staging:8080/shadow` a request for `/api/users?page=2` is mirrored to
/// `http://staging:8080/shadow/api/users?page=2`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The base URL, exactly as configured. Callbacks receive this string.
    pub url: String,
    /// The percentage of eligible requests mirrored to this target, from 0 to 100.
    ///
    /// Sampling is deterministic: of any 100 consecutive eligible requests, exactly this many
    /// are mirrored, evenly spread (50 % is every other request).
    pub percentage: u32,
    /// Speak HTTP/2 to this target: with prior knowledge (h2c) on `http`, and over TLS on
    /// `https` whatever ALPN offers. gRPC servers need it. Default `false`: HTTP/1.1 on
    /// `http`, and on `https` whichever of HTTP/2 and HTTP/1.1 the target chooses.
    pub http2: bool,
    /// Request headers not sent to this target, such as `Authorization` or `Cookie` when the
    /// target must not see production credentials. Names are case-insensitive.
    pub strip_headers: Vec<String>,
    /// Request headers set on every mirror to this target, replacing any the original had:
    /// `X-Shadow: 1`, or the staging environment's own credentials.
    pub set_headers: Vec<(String, String)>,
    /// Compare this target's responses with the primary's (feature `diff`; see
    /// [`diff`](crate::diff)).
    #[cfg(feature = "diff")]
    pub compare: bool,
    /// This target runs the primary's own build: what differs between it and the primary is
    /// noise, not regression (feature `diff`).
    #[cfg(feature = "diff")]
    pub baseline: bool,
}

impl Target {
    /// A target that receives every eligible request.
    pub fn new(url: impl Into<String>) -> Self {
        Self::percentage(url, 100)
    }

    /// A target that receives `percentage` % of eligible requests (0 to 100).
    ///
    /// A value over 100 is reported by [`MirrorLayer::with_options`](crate::MirrorLayer::with_options)
    /// as [`ConfigError::PercentageOutOfRange`].
    pub fn percentage(url: impl Into<String>, percentage: u32) -> Self {
        Self {
            url: url.into(),
            percentage,
            http2: false,
            strip_headers: Vec::new(),
            set_headers: Vec::new(),
            #[cfg(feature = "diff")]
            compare: false,
            #[cfg(feature = "diff")]
            baseline: false,
        }
    }

    /// This target, spoken to over HTTP/2 only (see [`Target::http2`](Self::http2)).
    ///
    /// ```
    /// // A gRPC shadow: HTTP/2 with prior knowledge over plain TCP.
    /// let target = tower_mirror::Target::new("http://127.0.0.1:50051").with_http2();
    /// assert!(target.http2);
    /// ```
    pub fn with_http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// This target, with `name` removed from its mirrored requests.
    ///
    /// ```
    /// use tower_mirror::Target;
    ///
    /// // Staging gets no production credentials, and knows it is being shadowed.
    /// let staging = Target::new("https://staging.example.com")
    ///     .strip_header("authorization")
    ///     .strip_header("cookie")
    ///     .set_header("x-shadow", "1");
    /// # let _ = staging;
    /// ```
    ///
    /// Connection-level headers, `Host`, `Content-Length` and `X-Mirrored-From` are the layer's
    /// own and cannot be named; [`MirrorLayer::with_options`](crate::MirrorLayer::with_options)
    /// reports that, or an invalid name, as a [`ConfigError`].
    pub fn strip_header(mut self, name: impl Into<String>) -> Self {
        self.strip_headers.push(name.into());
        self
    }

    /// This target, with its responses compared with the primary's (feature `diff`).
    #[cfg(feature = "diff")]
    pub fn with_comparison(mut self) -> Self {
        self.compare = true;
        self
    }

    /// This target as the noise baseline: it runs the primary's own build, so whatever
    /// differs between its responses and the primary's is noise (feature `diff`).
    #[cfg(feature = "diff")]
    pub fn as_baseline(mut self) -> Self {
        self.baseline = true;
        self
    }

    /// This target, with `name: value` set on its mirrored requests (replacing the original's
    /// values of `name`; setting one name twice sends both values).
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_headers.push((name.into(), value.into()));
        self
    }
}

/// A target that receives `pct` % of eligible requests: the reference API's `Percentage`.
///
/// The same as [`Target::percentage`].
pub fn percentage(url: impl Into<String>, pct: u32) -> Target {
    Target::percentage(url, pct)
}

/// A target as the mirror task uses it: its base URL parsed, its header rules checked.
#[derive(Clone, Debug)]
pub(crate) struct CompiledTarget {
    pub(crate) base: Base,
    pub(crate) http2: bool,
    pub(crate) strip_headers: Vec<HeaderName>,
    pub(crate) set_headers: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledTarget {
    pub(crate) fn compile(target: &Target) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidTarget {
            url: target.url.clone(),
            reason,
        };
        let header_name = |name: &str, rule: &str| {
            let parsed = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(format!("{rule} {name:?} is not a valid header name")))?;
            if crate::request::is_reserved(&parsed) {
                return Err(invalid(format!(
                    "{rule} {name:?}: the mirror manages this header itself"
                )));
            }
            Ok(parsed)
        };
        let strip_headers = target
            .strip_headers
            .iter()
            .map(|name| header_name(name, "strip_headers"))
            .collect::<Result<_, _>>()?;
        let set_headers = target
            .set_headers
            .iter()
            .map(|(name, value)| {
                let name = header_name(name, "set_headers")?;
                let value = HeaderValue::from_str(value).map_err(|_| {
                    invalid(format!(
                        "set_headers {name}: {value:?} is not a valid header value"
                    ))
                })?;
                Ok((name, value))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            base: Base::parse(&target.url)?,
            http2: target.http2,
            strip_headers,
            set_headers,
        })
    }
}

/// A target's base URL, parsed once so that joining costs one string and one URI parse.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    scheme: Scheme,
    authority: Authority,
    /// The base path without its trailing slash: `""` for `http://h` and `http://h/`.
    prefix: String,
}

impl Base {
    pub(crate) fn parse(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidTarget {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
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
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            prefix,
        })
    }

    /// The URI to mirror `original` to: base scheme and authority, base path prefix, then the
    /// original path and query. `None` when the original has no origin-form path (`OPTIONS *`,
    /// authority-form `CONNECT`): there is nothing to append it to; or when the joined path
    /// and query are longer than a URI may be.
    pub(crate) fn join(&self, original: &Uri) -> Option<Uri> {
        let path = original.path();
        if !path.starts_with('/') {
            return None;
        }
        let query = original.query();
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
        Base::parse(base).unwrap().join(&uri).unwrap().to_string()
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
            // An absolute-form request target keeps only its path and query.
            ("http://h/p", "http://other:9/x?y", "http://h/p/x?y"),
        ];
        for (base, original, expected) in cases {
            assert_eq!(join(base, original), expected, "{base} + {original}");
        }
    }

    #[test]
    fn non_origin_form_targets_are_not_joined() {
        let base = Base::parse("http://h/api").unwrap();
        assert!(base.join(&"*".parse().unwrap()).is_none());
        assert!(base.join(&"example.com:443".parse().unwrap()).is_none());
    }

    #[test]
    fn bad_base_urls_are_named_errors() {
        let cases = [
            ("ftp://h", "scheme \"ftp\" is not supported"),
            ("staging.example.com", "missing scheme"),
            ("http://h/?a=1", "cannot have a query"),
            ("http://h/#top", "cannot have a fragment"),
            ("http://user:pw@h/", "user information"),
            ("http://h/a b", "not a URL"),
            ("", "not a URL"),
        ];
        for (url, expected) in cases {
            let err = Base::parse(url).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expected), "{url:?}: {text}");
            assert!(
                text.contains(&format!("{url:?}")),
                "{url:?} not named: {text}"
            );
        }
    }

    #[test]
    fn header_rules_are_checked() {
        let ok = Target::new("http://h")
            .strip_header("Authorization")
            .set_header("x-shadow", "1");
        let compiled = CompiledTarget::compile(&ok).unwrap();
        assert_eq!(compiled.strip_headers, ["authorization"]);
        assert_eq!(compiled.set_headers[0].0, "x-shadow");
        let cases = [
            (
                Target::new("http://h").strip_header("bad name"),
                "not a valid header name",
            ),
            (
                Target::new("http://h").set_header("x-ok", "bad\nvalue"),
                "not a valid header value",
            ),
            (
                Target::new("http://h").set_header("Host", "evil"),
                "manages this header",
            ),
            (
                Target::new("http://h").strip_header("x-mirrored-from"),
                "manages this header",
            ),
            (
                Target::new("http://h").set_header("proxy-authorization", "x"),
                "manages this header",
            ),
            (
                Target::new("http://h").set_header("content-length", "1"),
                "manages this header",
            ),
        ];
        for (target, expected) in cases {
            let text = CompiledTarget::compile(&target).unwrap_err().to_string();
            assert!(
                text.contains(expected) && text.contains("\"http://h\""),
                "{text}"
            );
        }
    }

    #[test]
    fn constructors_set_percentage() {
        assert_eq!(Target::new("http://a").percentage, 100);
        assert_eq!(Target::percentage("http://a", 7).percentage, 7);
        let t = percentage("http://b", 50);
        assert_eq!((t.url.as_str(), t.percentage), ("http://b", 50));
    }
}
