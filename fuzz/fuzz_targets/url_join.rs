//! `url_join`: a target's base URL joined with a request target, as a mirror does it.
//!
//! Input: the base URL text, one `\n`, then the request-target bytes (parsed as an
//! `http::Uri`, as hyper parses a request line). Without a `\n`, the target is `/`. The join
//! is the public one, `tower_mirror::outbound::BaseUrl::parse(base)?.join(original)`, which
//! mirrors and mirror-proxy's upstream leg both use.
//!
//! Checks: never panics; a joined URI keeps the base's scheme and authority, starts with the
//! base path (without its trailing slashes) and ends with the original path and query, and
//! parses back to itself; `join` equals `join_path` with the original's path and query; no
//! join happens only when the base is not a target URL or the request target has no
//! origin-form path.
#![no_main]

use http::Uri;
use libfuzzer_sys::fuzz_target;
use tower_mirror::outbound::BaseUrl;

/// Joins `original` onto the base URL `base`, as a mirror does; `None` when `base` is not a
/// valid target URL or `original` has no origin-form path.
fn join(base: &str, original: &Uri) -> Option<Uri> {
    let base = BaseUrl::parse(base).ok()?;
    let joined = base.join(original);
    assert_eq!(
        joined,
        base.join_path(original.path(), original.query()),
        "join and join_path disagree on {original:?}"
    );
    joined
}

fuzz_target!(|data: &[u8]| {
    let (base, target) = match data.iter().position(|&b| b == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &b"/"[..]),
    };
    let Ok(base) = std::str::from_utf8(base) else {
        return;
    };
    let Ok(original) = Uri::try_from(target) else {
        return;
    };
    check(base, &original, join(base, &original));
});

fn check(base: &str, original: &Uri, joined: Option<Uri>) {
    let base_is_a_target = join(base, &Uri::from_static("/")).is_some();
    let has_origin_path = original.path().starts_with('/');
    let Some(joined) = joined else {
        assert!(
            !(base_is_a_target && has_origin_path),
            "{base:?} is a target URL and {original:?} has a path, yet they were not joined"
        );
        return;
    };
    assert!(base_is_a_target, "{base:?} joined once, but not with `/`");
    assert!(has_origin_path, "{original:?} has no origin-form path");
    assert!(
        !base.contains(['?', '#']),
        "{base:?}: a base with a query or fragment"
    );

    let base_uri: Uri = base.parse().expect("a base that joins is a URI");
    assert!(matches!(base_uri.scheme_str(), Some("http" | "https")));
    let parsed = BaseUrl::parse(base).expect("a base that joins parses");
    assert_eq!(Some(parsed.scheme()), base_uri.scheme());
    assert_eq!(Some(parsed.authority()), base_uri.authority());
    assert_eq!(parsed.prefix(), base_uri.path().trim_end_matches('/'));
    assert_eq!(
        joined.scheme(),
        base_uri.scheme(),
        "{base:?} + {original:?}"
    );
    assert_eq!(
        joined.authority(),
        base_uri.authority(),
        "{base:?} + {original:?}"
    );
    assert!(!joined.authority().unwrap().as_str().contains('@'));

    let prefix = base_uri.path().trim_end_matches('/');
    let mut expected = format!("{prefix}{}", original.path());
    if let Some(query) = original.query() {
        expected.push('?');
        expected.push_str(query);
    }
    let path_and_query = joined.path_and_query().expect("a joined URI has a path");
    assert_eq!(path_and_query.as_str(), expected, "{base:?} + {original:?}");
    assert!(joined.path().starts_with(prefix));
    assert!(joined.path().ends_with(original.path()));
    assert_eq!(joined.query(), original.query());

    // What the target parses: the origin-form request line, and the whole URI.
    let on_the_wire: Uri = path_and_query.as_str().parse().expect("origin form parses");
    assert_eq!(
        (on_the_wire.path(), on_the_wire.query()),
        (joined.path(), joined.query())
    );
    let text = joined.to_string();
    // `http::Uri` parses at most 65,534 bytes; longer is the target's problem (414).
    if text.len() < usize::from(u16::MAX) {
        let reparsed: Uri = text.parse().expect("the joined URI parses");
        assert_eq!(reparsed, joined);
    }
}
