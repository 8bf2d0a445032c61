//! The one normalisation step: the inbound request turned into the request the proxy
//! forwards. It runs before the mirror layer, so the upstream and every shadow receive the
//! same request (less each target's own header rules and the hop-by-hop headers, which
//! tower-mirror's outbound rules remove on both legs).

use std::net::SocketAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Version};
use tower_mirror::ClientAddr;

/// `X-Forwarded-For`: the client addresses, nearest last.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used, `http` or `https`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How a request reached the proxy.
#[derive(Clone, Copy, Debug)]
pub struct Inbound {
    /// The client's address.
    pub client: SocketAddr,
    /// True on a TLS listener.
    pub https: bool,
}

/// Normalises `request` in place:
/// - `Host` is the request target's authority when it has one (an absolute-form target,
///   RFC 9112 §3.2.2, or HTTP/2's `:authority`, RFC 9113 §8.3.1), without user information;
///   otherwise the client's `Host`;
/// - HTTP/2's separate `cookie` fields are joined with `"; "` into one (RFC 9113 §8.2.3), as
///   an HTTP/1.1 hop needs;
/// - `X-Forwarded-For` is every earlier value, in order, joined with `", "`, then the
///   client's IP; `X-Forwarded-Proto` is `http` or `https`; `X-Forwarded-Host` is `Host`;
/// - the [`ClientAddr`] extension is set, for targets that sample by `client_ip`.
pub fn normalize<B>(request: &mut Request<B>, inbound: Inbound) {
    let authority = request.uri().authority().map(|a| {
        let text = a.as_str();
        text.rsplit_once('@')
            .map_or(text, |(_, host)| host)
            .to_owned()
    });
    let http2 = request.version() == Version::HTTP_2;
    let headers = request.headers_mut();
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert(header::HOST, value);
    }
    if http2 && headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined = join(headers.get_all(header::COOKIE).iter(), b"; ");
        headers.insert(header::COOKIE, joined);
    }
    let client_ip = inbound.client.ip().to_string();
    let earlier = headers.get_all(&X_FORWARDED_FOR);
    let forwarded_for = if earlier.iter().next().is_some() {
        let mut value = join(earlier.iter(), b", ").as_bytes().to_vec();
        value.extend_from_slice(b", ");
        value.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&value).ok()
    } else {
        HeaderValue::from_str(&client_ip).ok()
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto = if inbound.https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    request.extensions_mut().insert(ClientAddr(inbound.client));
}

/// The values joined by `separator` (bytes: one non-UTF-8 value must not drop the rest).
fn join<'a>(values: impl Iterator<Item = &'a HeaderValue>, separator: &[u8]) -> HeaderValue {
    let mut joined = Vec::new();
    for value in values {
        if !joined.is_empty() {
            joined.extend_from_slice(separator);
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Joining valid field values with visible characters and spaces keeps them valid.
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound() -> Inbound {
        Inbound {
            client: "192.0.2.7:5555".parse().unwrap(),
            https: false,
        }
    }

    #[test]
    fn forwarding_headers_keep_every_earlier_hop() {
        let mut request = Request::get("/x")
            .header("host", "shop.example")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-for", "10.0.0.1, 10.0.0.2")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed.example")
            .body(())
            .unwrap();
        normalize(&mut request, inbound());
        let h = request.headers();
        assert_eq!(
            h["x-forwarded-for"],
            "6.6.6.6, 10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(
            request.extensions().get::<ClientAddr>(),
            Some(&ClientAddr("192.0.2.7:5555".parse().unwrap()))
        );
    }

    #[test]
    fn the_target_authority_wins_over_host() {
        let mut request = Request::get("http://user:pw@a.example:4444/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        normalize(&mut request, inbound());
        assert_eq!(request.headers()["host"], "a.example:4444");
        assert_eq!(request.headers()["x-forwarded-host"], "a.example:4444");
    }

    #[test]
    fn http2_cookies_become_one_field() {
        let mut request = Request::get("https://a.example/x")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        normalize(
            &mut request,
            Inbound {
                https: true,
                ..inbound()
            },
        );
        let cookies: Vec<_> = request.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        assert_eq!(request.headers()["host"], "a.example");
        assert_eq!(request.headers()["x-forwarded-proto"], "https");
    }
}
