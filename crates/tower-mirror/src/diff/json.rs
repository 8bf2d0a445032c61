//! Structural comparison of two JSON documents: a list of differences by JSON pointer.

use serde_json::Value;

use super::{Change, Difference, Part};
pub(crate) use crate::pointer::{Pattern, pointer};

/// The longest value shown in a difference; longer ones are cut with `…`.
const SHOWN: usize = 120;

/// A value as shown in a report: compact JSON, cut short if long.
pub(crate) fn show(value: &Value) -> String {
    cut(value.to_string())
}

pub(crate) fn cut(mut text: String) -> String {
    if text.len() > SHOWN {
        let mut end = SHOWN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Appends to `out` every difference between `primary` and `shadow` not covered by `ignore`.
pub(crate) fn compare(
    primary: &Value,
    shadow: &Value,
    ignore: &[Pattern],
    out: &mut Vec<Difference>,
) {
    let mut path = Vec::new();
    walk(primary, shadow, ignore, &mut path, out);
}

fn walk(
    primary: &Value,
    shadow: &Value,
    ignore: &[Pattern],
    path: &mut Vec<String>,
    out: &mut Vec<Difference>,
) {
    if ignore.iter().any(|pattern| pattern.covers(path)) {
        return;
    }
    let mut record = |path: &[String], change, primary: Option<&Value>, shadow: Option<&Value>| {
        out.push(Difference {
            part: Part::Body,
            path: pointer(path),
            change,
            primary: primary.map(show),
            shadow: shadow.map(show),
        });
    };
    match (primary, shadow) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, left) in a {
                path.push(key.clone());
                match b.get(key) {
                    Some(right) => walk(left, right, ignore, path, out),
                    None if !ignore.iter().any(|p| p.covers(path)) => {
                        out.push(Difference {
                            part: Part::Body,
                            path: pointer(path),
                            change: Change::Removed,
                            primary: Some(show(left)),
                            shadow: None,
                        });
                    }
                    None => {}
                }
                path.pop();
            }
            for (key, right) in b {
                if a.contains_key(key) {
                    continue;
                }
                path.push(key.clone());
                if !ignore.iter().any(|p| p.covers(path)) {
                    out.push(Difference {
                        part: Part::Body,
                        path: pointer(path),
                        change: Change::Added,
                        primary: None,
                        shadow: Some(show(right)),
                    });
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for index in 0..a.len().max(b.len()) {
                path.push(index.to_string());
                match (a.get(index), b.get(index)) {
                    (Some(left), Some(right)) => walk(left, right, ignore, path, out),
                    (left, right) if !ignore.iter().any(|p| p.covers(path)) => {
                        let change = if left.is_some() {
                            Change::Removed
                        } else {
                            Change::Added
                        };
                        out.push(Difference {
                            part: Part::Body,
                            path: pointer(path),
                            change,
                            primary: left.map(show),
                            shadow: right.map(show),
                        });
                    }
                    _ => {}
                }
                path.pop();
            }
        }
        (left, right) if kind(left) != kind(right) => {
            record(path, Change::TypeChanged, Some(left), Some(right));
        }
        (left, right) if left != right => record(path, Change::Changed, Some(left), Some(right)),
        _ => {}
    }
}

/// `path` with array indexes folded to `*`, so that `/items/0/price` and `/items/7/price`
/// count as one field in a report.
pub(crate) fn fold_indexes(pointer: &str) -> String {
    pointer
        .split('/')
        .map(|segment| {
            if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diff(a: Value, b: Value, ignore: &[&str]) -> Vec<(String, Change)> {
        let patterns: Vec<Pattern> = ignore.iter().map(|p| Pattern::parse(p).unwrap()).collect();
        let mut out = Vec::new();
        compare(&a, &b, &patterns, &mut out);
        out.into_iter().map(|d| (d.path, d.change)).collect()
    }

    #[test]
    fn equal_documents_have_no_differences() {
        let doc = json!({"a": [1, {"b": null}], "c": "x", "d": {"e": true}});
        assert!(diff(doc.clone(), doc, &[]).is_empty());
    }

    #[test]
    fn nested_objects_and_arrays() {
        let primary = json!({
            "user": {"id": 7, "name": "ada", "tags": ["a", "b"]},
            "items": [{"price": 10}, {"price": 20}],
            "gone": 1,
        });
        let shadow = json!({
            "user": {"id": "7", "name": "ada", "tags": ["a"]},
            "items": [{"price": 10}, {"price": 21}, {"price": 30}],
            "new": {"x": 1},
        });
        let mut found = diff(primary, shadow, &[]);
        found.sort();
        assert_eq!(
            found,
            [
                ("/gone".to_owned(), Change::Removed),
                ("/items/1/price".to_owned(), Change::Changed),
                ("/items/2".to_owned(), Change::Added),
                ("/new".to_owned(), Change::Added),
                ("/user/id".to_owned(), Change::TypeChanged),
                ("/user/tags/1".to_owned(), Change::Removed),
            ]
        );
    }

    #[test]
    fn ignore_patterns_with_wildcards_and_prefixes() {
        let primary = json!({"items": [{"updated_at": 1, "n": 1}, {"updated_at": 2, "n": 2}], "meta": {"t": 1, "u": 2}});
        let shadow = json!({"items": [{"updated_at": 9, "n": 1}, {"updated_at": 8, "n": 3}], "meta": {"t": 5}});
        assert_eq!(
            diff(
                primary.clone(),
                shadow.clone(),
                &["/items/*/updated_at", "/meta"]
            ),
            [("/items/1/n".to_owned(), Change::Changed)]
        );
        assert_eq!(
            diff(primary, shadow, &[""]),
            [],
            "the empty pattern ignores everything"
        );
    }

    #[test]
    fn pointers_escape_slash_and_tilde() {
        let found = diff(
            json!({"a/b": 1, "c~d": 1}),
            json!({"a/b": 2, "c~d": 2}),
            &[],
        );
        let paths: Vec<_> = found.into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/a~1b", "/c~0d"]);
        assert!(diff(json!({"a/b": 1}), json!({"a/b": 2}), &["/a~1b"]).is_empty());
    }

    #[test]
    fn a_scalar_root_changes() {
        assert_eq!(
            diff(json!(1), json!(2), &[]),
            [(String::new(), Change::Changed)]
        );
        assert_eq!(
            diff(json!(1), json!("1"), &[]),
            [(String::new(), Change::TypeChanged)]
        );
    }

    #[test]
    fn values_are_shown_short() {
        let long = "x".repeat(500);
        let shown = show(&json!(long));
        assert!(shown.chars().count() <= SHOWN + 1 && shown.ends_with('…'));
    }

    #[test]
    fn indexes_fold() {
        assert_eq!(fold_indexes("/items/12/price"), "/items/*/price");
        assert_eq!(fold_indexes(""), "");
        assert_eq!(fold_indexes("/a1/b"), "/a1/b");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Pattern::parse("items/*").is_none());
        assert!(Pattern::parse("/items/*").is_some());
    }
}
