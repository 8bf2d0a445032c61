//! Comparing one shadow response with the primary's: status, headers, body.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName};

use super::json::{self, Pattern};
use super::{Change, Difference, Part};

/// A response as kept for comparison.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// The body, or its first bytes when it was longer than the cap.
    pub(crate) body: Bytes,
    /// False when the body was longer than the cap (then it is not compared).
    pub(crate) complete: bool,
}

/// What a comparison looks at.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) ignore_headers: Vec<HeaderName>,
    pub(crate) ignore_fields: Vec<Pattern>,
}

/// The differences between `primary` and `shadow`, and whether their bodies were compared.
pub(crate) fn compare(
    primary: &Captured,
    shadow: &Captured,
    rules: &Rules,
) -> (Vec<Difference>, bool) {
    let mut out = Vec::new();
    if primary.status != shadow.status {
        out.push(Difference {
            part: Part::Status,
            path: String::new(),
            change: Change::Changed,
            primary: Some(primary.status.as_u16().to_string()),
            shadow: Some(shadow.status.as_u16().to_string()),
        });
    }
    compare_headers(&primary.headers, &shadow.headers, rules, &mut out);
    let body_compared = primary.complete && shadow.complete;
    if body_compared {
        compare_bodies(primary, shadow, rules, &mut out);
    }
    (out, body_compared)
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| json::cut(values.join(", ")))
}

fn compare_headers(
    primary: &HeaderMap,
    shadow: &HeaderMap,
    rules: &Rules,
    out: &mut Vec<Difference>,
) {
    let names: BTreeSet<&str> = primary
        .keys()
        .chain(shadow.keys())
        .filter(|name| !rules.ignore_headers.contains(name))
        .map(HeaderName::as_str)
        .collect();
    for name in names {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a name taken from a map");
        let (left, right) = (header_text(primary, &name), header_text(shadow, &name));
        let change = match (&left, &right) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), Some(_)) => Change::Changed,
            (Some(_), None) => Change::Removed,
            (None, Some(_)) => Change::Added,
            (None, None) => continue,
        };
        out.push(Difference {
            part: Part::Header,
            path: name.as_str().to_owned(),
            change,
            primary: left,
            shadow: right,
        });
    }
}

fn is_json(headers: &HeaderMap, body: &Bytes) -> bool {
    let declared = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    declared
        || body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['))
}

fn compare_bodies(primary: &Captured, shadow: &Captured, rules: &Rules, out: &mut Vec<Difference>) {
    if is_json(&primary.headers, &primary.body)
        && is_json(&shadow.headers, &shadow.body)
        && let (Ok(a), Ok(b)) = (
            serde_json::from_slice::<serde_json::Value>(&primary.body),
            serde_json::from_slice::<serde_json::Value>(&shadow.body),
        )
    {
        json::compare(&a, &b, &rules.ignore_fields, out);
        return;
    }
    if primary.body == shadow.body || rules.ignore_fields.iter().any(|p| *p == Pattern::whole()) {
        return;
    }
    let describe = |body: &Bytes| match std::str::from_utf8(body) {
        Ok(text) => json::cut(text.to_owned()),
        Err(_) => format!("<{} bytes>", body.len()),
    };
    out.push(Difference {
        part: Part::Body,
        path: String::new(),
        change: Change::Changed,
        primary: Some(describe(&primary.body)),
        shadow: Some(describe(&shadow.body)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Captured {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Captured {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::copy_from_slice(body.as_bytes()),
            complete: true,
        }
    }

    fn rules(ignore_headers: &[&str], ignore_fields: &[&str]) -> Rules {
        Rules {
            ignore_headers: ignore_headers.iter().map(|h| h.parse().unwrap()).collect(),
            ignore_fields: ignore_fields
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
        }
    }

    fn summary(found: &[Difference]) -> Vec<String> {
        found
            .iter()
            .map(|d| format!("{:?} {} {:?}", d.part, d.path, d.change))
            .collect()
    }

    #[test]
    fn status_headers_and_json_bodies() {
        let primary = response(
            200,
            &[
                ("content-type", "application/json"),
                ("date", "a"),
                ("x-build", "1"),
                ("x-old", "y"),
            ],
            r#"{"id": 1, "price_cents": 500, "at": 1}"#,
        );
        let shadow = response(
            201,
            &[
                ("content-type", "application/json"),
                ("date", "b"),
                ("x-build", "2"),
                ("x-new", "z"),
            ],
            r#"{"id": 1, "price": 500, "at": 2}"#,
        );
        let (found, compared) = compare(&primary, &shadow, &rules(&["date"], &["/at"]));
        assert!(compared);
        assert_eq!(
            summary(&found),
            [
                "Status  Changed",
                "Header x-build Changed",
                "Header x-new Added",
                "Header x-old Removed",
                "Body /price_cents Removed",
                "Body /price Added",
            ]
        );
        assert_eq!(found[0].primary.as_deref(), Some("200"));
        assert_eq!(found[0].shadow.as_deref(), Some("201"));
    }

    #[test]
    fn text_and_binary_bodies() {
        let (found, _) = compare(
            &response(200, &[], "hello"),
            &response(200, &[], "hullo"),
            &rules(&[], &[]),
        );
        assert_eq!(summary(&found), ["Body  Changed"]);
        assert_eq!(found[0].shadow.as_deref(), Some("hullo"));
        let mut binary = response(200, &[], "");
        binary.body = Bytes::from_static(&[0xff, 0xfe]);
        let (found, _) = compare(&binary, &response(200, &[], "x"), &rules(&[], &[]));
        assert_eq!(found[0].primary.as_deref(), Some("<2 bytes>"));
        let (found, _) = compare(
            &response(200, &[], "same"),
            &response(200, &[], "same"),
            &rules(&[], &[]),
        );
        assert!(found.is_empty());
    }

    #[test]
    fn bodies_over_the_cap_are_not_compared() {
        let mut primary = response(200, &[], "abc");
        primary.complete = false;
        let (found, compared) = compare(&primary, &response(200, &[], "xyz"), &rules(&[], &[]));
        assert!(!compared);
        assert!(found.is_empty());
    }

    #[test]
    fn invalid_json_falls_back_to_text() {
        let (found, _) = compare(
            &response(200, &[("content-type", "application/json")], "{broken"),
            &response(200, &[("content-type", "application/json")], "{broken!"),
            &rules(&[], &[]),
        );
        assert_eq!(summary(&found), ["Body  Changed"]);
    }

    /// A document of a few thousand nested items, just under the default cap: the three
    /// planted differences are found, with their pointers, and nothing else; the ignored
    /// timestamp of every item is not reported.
    #[test]
    fn large_documents_within_the_cap() {
        let document = |variant: bool| {
            let items: Vec<serde_json::Value> = (0..2_000)
                .map(|i| {
                    let mut item = serde_json::json!({
                        "id": i,
                        "name": format!("item {i}"),
                        "price_cents": i * 10,
                        "tags": ["a", "b", {"depth": [i, i + 1]}],
                        "updated_at": if variant { i + 1 } else { i },
                    });
                    if variant && i == 1_234 {
                        item["price_cents"] = serde_json::json!(1);
                    }
                    if variant && i == 77 {
                        item["tags"][2]["depth"][1] = serde_json::json!("78");
                    }
                    item
                })
                .collect();
            let mut root = serde_json::json!({ "items": items, "total": 2_000 });
            if variant {
                root["items"].as_array_mut().unwrap().pop();
            }
            serde_json::to_string(&root).unwrap()
        };
        let (primary, shadow) = (document(false), document(true));
        let cap = super::super::DiffOptions::default().max_body_bytes;
        assert!(
            primary.len() > 100 << 10 && primary.len() < cap,
            "{}",
            primary.len()
        );
        let (found, compared) = compare(
            &response(200, &[], &primary),
            &response(200, &[], &shadow),
            &rules(&[], &["/items/*/updated_at"]),
        );
        assert!(compared);
        assert_eq!(
            summary(&found),
            [
                "Body /items/77/tags/2/depth/1 TypeChanged",
                "Body /items/1234/price_cents Changed",
                "Body /items/1999 Removed",
            ]
        );
        assert_eq!(found[1].primary.as_deref(), Some("12340"));
        assert_eq!(found[1].shadow.as_deref(), Some("1"));
    }
}
