//! A target's filter: which requests it takes at all, by method, path and headers.

use http::Method;
use http::header::{HeaderName, HeaderValue};
use regex::Regex;

use crate::head::{RequestHead, has_value};
use crate::target::FilterSpec;

/// A compiled filter. An empty one takes every request at the cost of one branch.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    methods: Vec<Method>,
    /// Prefixes without their trailing slash; `""` is `/`, which matches every path.
    paths: Vec<String>,
    exclude_paths: Vec<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    path_regex: Option<Regex>,
    /// True when there is nothing to check.
    empty: bool,
}

impl Filter {
    /// Checks and compiles `spec`; the error names the setting and says why.
    pub(crate) fn compile(spec: &FilterSpec) -> Result<Self, (&'static str, String)> {
        let prefix = |setting: &'static str, p: &String| {
            if p.starts_with('/') {
                Ok(p.trim_end_matches('/').to_owned())
            } else {
                Err((setting, format!("{p:?} is not a path: start it with /")))
            }
        };
        let paths = spec
            .paths
            .iter()
            .map(|p| prefix("paths", p))
            .collect::<Result<Vec<_>, _>>()?;
        let exclude_paths = spec
            .exclude_paths
            .iter()
            .map(|p| prefix("exclude_paths", p))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = spec
            .headers
            .iter()
            .map(|(name, value)| {
                let parsed = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| ("headers", format!("{name:?} is not a valid header name")))?;
                let value = HeaderValue::from_str(value).map_err(|_| {
                    (
                        "headers",
                        format!("{name}: {value:?} is not a valid header value"),
                    )
                })?;
                Ok((parsed, value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path_regex = spec
            .path_regex
            .as_deref()
            .map(|pattern| {
                Regex::new(pattern).map_err(|e| {
                    let first = e.to_string();
                    let first = first.lines().last().unwrap_or("invalid").trim().to_owned();
                    (
                        "path_regex",
                        format!("{pattern:?} is not a valid regular expression: {first}"),
                    )
                })
            })
            .transpose()?;
        let empty = spec.methods.is_empty()
            && paths.is_empty()
            && exclude_paths.is_empty()
            && headers.is_empty()
            && path_regex.is_none();
        Ok(Self {
            methods: spec.methods.to_vec(),
            paths,
            exclude_paths,
            headers,
            path_regex,
            empty,
        })
    }

    /// True when the target takes `request`: not under an excluded prefix, and every
    /// condition given holds.
    #[inline]
    pub(crate) fn matches(&self, request: &RequestHead<'_>) -> bool {
        self.empty || self.check(request)
    }

    /// Every condition must hold, so they are checked cheapest first; an exclusion refuses
    /// whatever else matches.
    fn check(&self, request: &RequestHead<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(request.method()) {
            return false;
        }
        let path = request.uri().path();
        if !self.paths.is_empty() && !self.paths.iter().any(|p| under(path, p)) {
            return false;
        }
        if self.exclude_paths.iter().any(|p| under(path, p)) {
            return false;
        }
        let headers = request.headers();
        let headers_match = self
            .headers
            .iter()
            .all(|(name, value)| has_value(headers, name, value));
        headers_match && self.path_regex.as_ref().is_none_or(|re| re.is_match(path))
    }
}

/// `path` is `prefix` or below it, on a segment boundary (`prefix` has no trailing slash).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;
    use http::Request;

    fn filter(target: &Target) -> Filter {
        Filter::compile(&target.filter).unwrap()
    }

    fn takes(filter: &Filter, method: &str, uri: &str, headers: &[(&str, &str)]) -> bool {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        filter.matches(&RequestHead::of(&request))
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let f = filter(
            &Target::new("http://h")
                .path_prefix("/api")
                .exclude_path_prefix("/api/health/"),
        );
        for (path, expected) in [
            ("/api", true),
            ("/api/", true),
            ("/api/users?x=1", true),
            ("/apix", false),
            ("/ap", false),
            ("/", false),
            ("/other/api", false),
            ("/api/health", false),
            ("/api/health/live", false),
            ("/api/healthz", true),
        ] {
            assert_eq!(takes(&f, "GET", path, &[]), expected, "{path}");
        }
        let root = filter(&Target::new("http://h").path_prefix("/"));
        assert!(takes(&root, "GET", "/anything", &[]));
    }

    #[test]
    fn methods_headers_and_regex_all_must_hold() {
        let f = filter(
            &Target::new("http://h")
                .methods([Method::GET, Method::HEAD])
                .header_equals("X-Beta", "1")
                .path_regex("^/api/v[0-9]+/"),
        );
        let beta = [("x-beta", "1")];
        assert!(takes(&f, "GET", "/api/v2/users", &beta));
        assert!(takes(&f, "HEAD", "/api/v2/users", &beta));
        assert!(!takes(&f, "POST", "/api/v2/users", &beta), "method");
        assert!(!takes(&f, "GET", "/api/v2/users", &[]), "header missing");
        assert!(
            !takes(&f, "GET", "/api/v2/users", &[("x-beta", "10")]),
            "not exact"
        );
        assert!(takes(
            &f,
            "GET",
            "/api/v2/users",
            &[("x-beta", "0"), ("x-beta", "1")]
        ));
        assert!(!takes(&f, "GET", "/api/vx/users", &beta), "regex");
        assert!(
            takes(&filter(&Target::new("http://h")), "DELETE", "/", &[]),
            "empty takes all"
        );
    }

    #[test]
    fn bad_settings_name_themselves() {
        let err = |t: Target| Filter::compile(&t.filter).unwrap_err();
        assert_eq!(err(Target::new("h").path_prefix("api")).0, "paths");
        assert_eq!(
            err(Target::new("h").exclude_path_prefix("x")).0,
            "exclude_paths"
        );
        assert_eq!(
            err(Target::new("h").header_equals("bad name", "1")).0,
            "headers"
        );
        let (setting, reason) = err(Target::new("h").path_regex("(unclosed"));
        assert_eq!(setting, "path_regex");
        assert!(
            reason.contains("(unclosed") && !reason.contains('\n'),
            "{reason}"
        );
    }
}
