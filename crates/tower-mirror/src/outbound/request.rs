//! The mirrored request: what is kept of the original, and how a target's copy is built from it.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::hop;
use super::uri::BaseUrl;
use crate::body::MirrorBody;

/// The header every mirrored request carries: the original request's host, as received.
pub const X_MIRRORED_FROM: HeaderName = HeaderName::from_static("x-mirrored-from");

/// What a mirror needs of the original request, taken before the request moves on: its
/// method and URI (reference-counted clones) and the headers every target's copy shares,
/// filtered once.
#[derive(Debug)]
pub(crate) struct RequestSnapshot {
    method: Method,
    uri: Uri,
    // Read by the recording sink only (feature `record`).
    #[allow(dead_code)]
    version: Version,
    /// The end-to-end headers, in order: hop-by-hop ones and those the mirror sets itself
    /// already left out.
    headers: HeaderMap,
    mirrored_from: HeaderValue,
    had_body_framing: bool,
    asks_for_trailers: bool,
}

impl RequestSnapshot {
    pub(crate) fn capture<B>(request: &Request<B>) -> Self {
        let original = request.headers();
        let named_by_connection = if original.contains_key(header::CONNECTION) {
            hop::connection_options(original)
        } else {
            Vec::new()
        };
        let mut headers = HeaderMap::with_capacity(original.len() + 2);
        for (name, value) in original {
            if !(is_reserved(name) || named_by_connection.contains(name)) {
                headers.append(name.clone(), value.clone());
            }
        }
        Self {
            method: request.method().clone(),
            mirrored_from: original_host(request.uri(), original),
            had_body_framing: original.contains_key(header::CONTENT_LENGTH)
                || original.contains_key(header::TRANSFER_ENCODING),
            asks_for_trailers: hop::asks_for_trailers(original),
            uri: request.uri().clone(),
            version: request.version(),
            headers,
        }
    }

    #[allow(dead_code)] // Used by the recording sink (feature `record`).
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// The request target as received.
    #[allow(dead_code)] // Used by the recording sink (feature `record`).
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    #[allow(dead_code)] // Used by the recording sink (feature `record`).
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The end-to-end headers, in order.
    #[allow(dead_code)] // Used by the recording sink (feature `record`).
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The host the original request was sent to.
    #[allow(dead_code)] // Used by the recording sink (feature `record`).
    pub(crate) fn original_host(&self) -> &HeaderValue {
        &self.mirrored_from
    }
}

/// Headers a mirror never copies from the original: the hop-by-hop ones
/// ([`hop::HOP_BY_HOP`]), those the mirror replaces with its own (`Host`, `Content-Length`,
/// `X-Mirrored-From`), and `Expect`, whose `100-continue` handshake belongs to the original
/// client. A target's header rules may not name them either; mirror-proxy's `replay` leaves
/// them out of what it sends for the same reasons.
pub fn is_reserved(name: &HeaderName) -> bool {
    hop::is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "expect" | "host" | "content-length" | "x-mirrored-from"
        )
}

/// The host the original request was sent to: the request target's authority when it has
/// one (HTTP/2's `:authority`, or an absolute-form target, which wins over `Host` as RFC 9112
/// §3.2.2 says), else its `Host` header.
fn original_host(uri: &Uri, headers: &HeaderMap) -> HeaderValue {
    uri.authority()
        // Host and port only: user information in a request target is nobody else's business.
        .map(|a| {
            a.as_str()
                .rsplit_once('@')
                .map_or(a.as_str(), |(_, host)| host)
        })
        .and_then(|host| HeaderValue::from_str(host).ok())
        .or_else(|| headers.get(header::HOST).cloned())
        // Still mark the request as a mirror, so the loop guard on the target sees it.
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// How one target's copies are made: its base URL, transport and header rules, already
/// checked.
#[derive(Debug)]
pub(crate) struct TargetRules {
    pub(crate) base: BaseUrl,
    pub(crate) http2: bool,
    pub(crate) strip_headers: Vec<HeaderName>,
    pub(crate) set_headers: Vec<(HeaderName, HeaderValue)>,
    /// A regular expression and its replacement, applied to the path before the join.
    pub(crate) rewrite_path: Option<(regex::Regex, String)>,
    pub(crate) trace_context: super::trace::TraceContext,
}

/// Builds the mirrored request for `target`: HTTP/2 when it asks for it, else HTTP/1.1; its
/// path rewritten and its header rules applied.
///
/// `None` when the original request target cannot be joined (see [`BaseUrl::join`]), or the
/// rewritten path is not an absolute path.
pub(crate) fn build(
    snapshot: Arc<RequestSnapshot>,
    target: &TargetRules,
    body: MirrorBody,
) -> Option<Request<MirrorBody>> {
    let http2 = target.http2;
    let path = match &target.rewrite_path {
        Some((from, to)) => from.replace(snapshot.uri.path(), to.as_str()),
        None => Cow::Borrowed(snapshot.uri.path()),
    };
    let uri = target.base.join_path(&path, snapshot.uri.query())?;
    let method = snapshot.method.clone();
    let mirrored_from = snapshot.mirrored_from.clone();
    let had_body_framing = snapshot.had_body_framing;
    let trailers = http2 && snapshot.asks_for_trailers;
    // The last (often the only) target takes the shared headers without copying them.
    let mut headers = match Arc::try_unwrap(snapshot) {
        Ok(owned) => owned.headers,
        Err(shared) => shared.headers.clone(),
    };
    for name in target
        .strip_headers
        .iter()
        .chain(target.set_headers.iter().map(|(n, _)| n))
    {
        headers.remove(name);
    }
    // Before the set headers, so that one setting `traceparent` itself wins.
    super::trace::apply(target.trace_context, &mut headers);
    for (name, value) in &target.set_headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(X_MIRRORED_FROM, mirrored_from);
    // Say how long the body is whenever the original framed one, or there is one to send:
    // a POST whose body is not copied becomes `Content-Length: 0`, a plain GET gets none.
    if had_body_framing || !body.is_empty() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    // On HTTP/2 the one value TE may carry, `trailers`, says the client understands trailers;
    // gRPC servers expect it.
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }

    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::plan::compile_rules;
    use crate::target::Target;

    fn mirror_of(request: Request<()>, base: &str, body: MirrorBody) -> Request<MirrorBody> {
        mirror_to(request, Target::new(base), body)
    }

    fn mirror_to(request: Request<()>, target: Target, body: MirrorBody) -> Request<MirrorBody> {
        let snapshot = Arc::new(RequestSnapshot::capture(&request));
        build(snapshot, &compile_rules(&target).unwrap(), body).unwrap()
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_and_end_to_end_kept_in_order() {
        let request = Request::builder()
            .method("POST")
            .uri("/orders?x=1")
            .header("host", "shop.example:8443")
            .header("connection", "keep-alive, X-Trace-Hop")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("transfer-encoding", "chunked")
            .header("upgrade", "h2c")
            .header("expect", "100-continue")
            .header("x-trace-hop", "1")
            .header("x-mirrored-from", "spoofed.example")
            .header("accept", "text/html")
            .header("accept", "application/json")
            .header("cookie", "a=1")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap();
        let mirror = mirror_of(request, "http://shadow:9000/p", Bytes::from("abc").into());

        assert_eq!(mirror.method(), "POST");
        assert_eq!(mirror.uri(), "http://shadow:9000/p/orders?x=1");
        assert_eq!(mirror.version(), Version::HTTP_11);
        let h = mirror.headers();
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "expect",
            "x-trace-hop",
            "host",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        let accept: Vec<_> = h.get_all("accept").iter().collect();
        assert_eq!(accept, ["text/html", "application/json"]);
        assert_eq!(h["cookie"], "a=1");
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["x-mirrored-from"], "shop.example:8443");
        assert_eq!(h.get_all("x-mirrored-from").iter().count(), 1);
        assert_eq!(h["content-length"], "3");
    }

    #[test]
    fn http2_requests_name_their_authority() {
        let request = Request::builder()
            .uri("https://api.example:8443/v1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let mirror = mirror_of(request, "http://shadow", MirrorBody::empty());
        assert_eq!(mirror.headers()["x-mirrored-from"], "api.example:8443");
        assert_eq!(mirror.version(), Version::HTTP_11);
        assert!(!mirror.headers().contains_key("content-length"));
    }

    #[test]
    fn a_body_not_copied_is_announced_as_empty() {
        let request = Request::builder()
            .method("PUT")
            .uri("/x")
            .header("content-length", "12")
            .body(())
            .unwrap();
        let mirror = mirror_of(request, "http://shadow", MirrorBody::empty());
        assert_eq!(mirror.headers()["content-length"], "0");
    }

    #[test]
    fn http2_mirrors_keep_te_trailers_only() {
        let request = Request::post("/grpc.health.v1.Health/Check")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let h2_target = Target::new("http://grpc-shadow").with_http2();
        let h2 = mirror_to(request, h2_target.clone(), MirrorBody::empty());
        assert_eq!(h2.version(), Version::HTTP_2);
        assert_eq!(h2.headers()["te"], "trailers");
        let request = Request::post("/")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let h1 = mirror_of(request, "http://grpc-shadow", MirrorBody::empty());
        assert!(!h1.headers().contains_key("te"));

        let other = Request::get("/").header("te", "gzip").body(()).unwrap();
        let h2 = mirror_to(other, h2_target, MirrorBody::empty());
        assert!(!h2.headers().contains_key("te"));
    }

    #[test]
    fn header_rules_strip_and_set() {
        let request = Request::get("/")
            .header("authorization", "Bearer production")
            .header("cookie", "session=1")
            .header("x-env", "prod")
            .header("x-keep", "yes")
            .body(())
            .unwrap();
        let target = Target::new("http://staging")
            .strip_header("Authorization")
            .strip_header("cookie")
            .set_header("x-env", "shadow")
            .set_header("authorization", "Bearer staging")
            .set_header("x-shadow", "1")
            .set_header("x-shadow", "2");
        let mirror = mirror_to(request, target, MirrorBody::empty());
        let h = mirror.headers();
        assert!(!h.contains_key("cookie"));
        assert_eq!(h["authorization"], "Bearer staging", "set wins over strip");
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["shadow"]);
        assert_eq!(h.get_all("x-shadow").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn connection_tokens_are_read_as_bytes() {
        let request = Request::get("/")
            .header(
                "connection",
                HeaderValue::from_bytes(b"x-hop, caf\xe9").unwrap(),
            )
            .header("x-hop", "secret")
            .header("te", HeaderValue::from_bytes(b"trailers, \xe4").unwrap())
            .body(())
            .unwrap();
        let mirror = mirror_to(
            request,
            Target::new("http://h").with_http2(),
            MirrorBody::empty(),
        );
        assert!(!mirror.headers().contains_key("x-hop"));
        assert_eq!(mirror.headers()["te"], "trailers");
    }

    #[test]
    fn an_absolute_form_authority_wins_over_host() {
        let request = Request::get("http://target.example/x")
            .header("host", "other.example")
            .body(())
            .unwrap();
        let mirror = mirror_of(request, "http://shadow", MirrorBody::empty());
        assert_eq!(mirror.headers()["x-mirrored-from"], "target.example");

        let with_credentials = Request::get("https://user:pw@target.example:8443/x")
            .body(())
            .unwrap();
        let mirror = mirror_of(with_credentials, "http://shadow", MirrorBody::empty());
        assert_eq!(mirror.headers()["x-mirrored-from"], "target.example:8443");
    }

    #[test]
    fn no_host_still_marks_the_mirror() {
        let request = Request::builder().uri("/x").body(()).unwrap();
        let mirror = mirror_of(request, "http://shadow", MirrorBody::empty());
        assert_eq!(mirror.headers()["x-mirrored-from"], "");
    }
}
