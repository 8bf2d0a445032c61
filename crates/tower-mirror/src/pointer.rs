//! JSON pointer patterns (RFC 6901 pointers in which `*` stands for any one segment): the
//! syntax of the diff's ignored fields and of redacted fields, one implementation for both.
// Each feature uses its part of it.
#![cfg_attr(not(all(feature = "diff", feature = "redact")), allow(dead_code))]

/// A JSON pointer pattern: `/items/*/updated_at`, where `*` stands for any one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern(Vec<Option<String>>);

impl Pattern {
    /// Parses a pattern; `None` unless it is empty (the whole document) or starts with `/`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self(Vec::new()));
        }
        let rest = text.strip_prefix('/')?;
        Some(Self(
            rest.split('/')
                .map(|segment| (segment != "*").then(|| unescape(segment)))
                .collect(),
        ))
    }

    /// The pattern that covers the whole document.
    pub(crate) fn whole() -> Self {
        Self(Vec::new())
    }

    /// True when the pattern covers `path` or a prefix of it: ignoring `/a` ignores `/a/b`.
    pub(crate) fn covers(&self, path: &[String]) -> bool {
        self.0.len() <= path.len()
            && self
                .0
                .iter()
                .zip(path)
                .all(|(want, have)| want.as_deref().is_none_or(|w| w == have))
    }
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The JSON pointer of `path`.
pub(crate) fn pointer(path: &[String]) -> String {
    let mut text = String::new();
    for segment in path {
        text.push('/');
        text.push_str(&escape(segment));
    }
    text
}

impl Pattern {
    /// True when a longer path starting with `path` could match.
    pub(crate) fn may_match_below(&self, path: &[String]) -> bool {
        self.0.len() > path.len()
            && self
                .0
                .iter()
                .zip(path)
                .all(|(want, have)| want.as_deref().is_none_or(|w| w == have))
    }
}

/// The segments of JSON pointer `text` (`/a/b~1c` is `a`, `b/c`); `None` unless it starts
/// with `/` or is empty.
pub(crate) fn segments(text: &str) -> Option<Vec<String>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    Some(text.strip_prefix('/')?.split('/').map(unescape).collect())
}
