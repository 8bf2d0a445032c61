//! Inputs the fuzz targets in `/fuzz` found, minimised, kept as regression tests.
//!
//! Run with `cargo test -p tower-mirror --features fuzzing --test fuzz_regressions`.
#![cfg(feature = "fuzzing")]

use http::{Request, Uri, Version};
use tower_mirror::Target;
use tower_mirror::fuzzing::mirror_request;
use tower_mirror::outbound::BaseUrl;

/// The public join, as the fuzz target calls it.
fn join(base: &str, original: &http::Uri) -> Option<http::Uri> {
    BaseUrl::parse(base).ok()?.join(original)
}

/// `header_sanitising`, crash-8a37e899 minimised (fuzz/seeds/header_sanitising/
/// connection-value-with-obs-text): `Connection: authorization, connection\xE4` and an empty
/// `Authorization`. `connection_options` reads `Connection` with `HeaderValue::to_str`, which
/// fails on any obs-text byte, so the whole value is ignored and `Authorization`, which it
/// names as hop-by-hop, is forwarded to the target.
#[test]
fn headers_named_by_a_connection_value_with_obs_text_are_not_forwarded() {
    let cases: [(&[u8], &str); 3] = [
        (b"authorization, connection\xe4", "authorization"),
        (b"x-hop, caf\xe9", "x-hop"),
        (b"\x80 ,X-Hop", "x-hop"),
    ];
    for (connection, named) in cases {
        let original = Request::get("/")
            .header("connection", connection)
            .header(named, "secret")
            .body(())
            .unwrap();
        let mirror = mirror_request(&original, &Target::new("http://shadow"), 0).unwrap();
        assert!(
            !mirror.headers().contains_key(named),
            "Connection: {:?} names {named}, yet it was forwarded",
            String::from_utf8_lossy(connection)
        );
        assert!(!mirror.headers().contains_key("connection"));
    }
}

/// The same cause in `asks_for_trailers`: an HTTP/2 target is not told `TE: trailers` when the
/// original's `TE` value holds an obs-text byte beside `trailers`.
#[test]
fn te_trailers_beside_obs_text_reaches_an_http2_target() {
    let original = Request::post("/grpc.Service/Call")
        .version(Version::HTTP_2)
        .header("te", &b"trailers, \xe4"[..])
        .body(())
        .unwrap();
    let target = Target::new("http://grpc-shadow").with_http2();
    let mirror = mirror_request(&original, &target, 0).unwrap();
    assert_eq!(mirror.headers().get("te").unwrap(), "trailers");
}

/// The ASCII control for the two above: these pass today.
#[test]
fn headers_named_by_an_ascii_connection_value_are_not_forwarded() {
    let original = Request::get("/")
        .header("connection", "Authorization ,\tx-hop")
        .header("authorization", "secret")
        .header("x-hop", "1")
        .header("x-kept", "2")
        .body(())
        .unwrap();
    let mirror = mirror_request(&original, &Target::new("http://shadow"), 0).unwrap();
    let h = mirror.headers();
    assert!(!h.contains_key("authorization") && !h.contains_key("x-hop"));
    assert_eq!(h["x-kept"], "2");
}

/// Review of `url_join`: `http::Uri` takes at most 65,534 bytes of path and query, and so does
/// hyper's request line. A request target at that limit, under a base with a path, cannot be
/// joined: `join` returns `None` (no panic), although the base is valid and the path is in
/// origin form — the two reasons `join`'s documentation gives for `None`. Through the layer the
/// mirror is counted as `failed` without `on_error` (see `tests/hostile.rs`).
#[test]
fn a_join_longer_than_a_uri_can_be_is_none_not_a_panic() {
    let original: Uri = format!("/x?{}", "q".repeat(65_534 - 3)).parse().unwrap();
    assert!(
        join("http://shadow", &original).is_some(),
        "no prefix: fits"
    );
    assert!(
        join("http://shadow/", &original).is_some(),
        "slash only: fits"
    );
    assert!(join("http://shadow/p", &original).is_none());
    let request = Request::get(original).body(()).unwrap();
    assert!(mirror_request(&request, &Target::new("http://shadow/p"), 0).is_none());
}
