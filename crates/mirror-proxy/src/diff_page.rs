//! The shadow-diff report for people and programs: `/diff` (JSON) and `/diff.html`.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tower_mirror::diff::{DiffReport, FieldDiff, LatencySummary, RouteDiff};

fn ms(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
}

fn latency_json(latency: &LatencySummary) -> Value {
    json!({ "samples": latency.samples, "p50_ms": ms(latency.p50), "p99_ms": ms(latency.p99) })
}

fn field_json(field: &FieldDiff) -> Value {
    json!({
        "part": field.part.as_str(),
        "path": field.path,
        "differing": field.differing,
        "noise": field.noise,
        "examples": field.examples.iter().map(|e| json!({
            "uri": e.uri,
            "primary": e.primary,
            "shadow": e.shadow,
        })).collect::<Vec<_>>(),
    })
}

fn route_json(route: &RouteDiff) -> Value {
    json!({
        "target": route.target,
        "route": route.route,
        "compared": route.compared,
        "equal": route.equal,
        "divergence": route.divergence(),
        "differing_status": route.differing_status,
        "differing_headers": route.differing_headers,
        "differing_body": route.differing_body,
        "body_not_compared": route.body_not_compared,
        "untracked_fields": route.untracked_fields,
        "primary_latency": latency_json(&route.primary_latency),
        "shadow_latency": latency_json(&route.shadow_latency),
        "fields": route.fields.iter().map(field_json).collect::<Vec<_>>(),
    })
}

/// `/diff`: the report as JSON, routes most divergent first.
pub fn json(report: Option<&DiffReport>) -> Value {
    match report {
        Some(report) => json!({
            "routes": report.routes.iter().map(route_json).collect::<Vec<_>>(),
            "untracked_routes": report.untracked_routes,
        }),
        None => {
            json!({ "routes": [], "untracked_routes": 0, "note": "no target is compared: set compare = true on a [[mirror]]" })
        }
    }
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn show_ms(duration: Option<Duration>) -> String {
    ms(duration).map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn field_name(field: &FieldDiff) -> String {
    if field.path.is_empty() {
        field.part.as_str().to_owned()
    } else {
        format!("{} {}", field.part.as_str(), field.path)
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right}\
tr.noise td{color:#888}code{font:12px ui-monospace,monospace;white-space:pre-wrap;\
word-break:break-all}.bad{color:#b00020;font-weight:600}.ok{color:#2e7d32}";

/// `/diff.html` (and `replay --report`): routes sorted by divergence, each linking to its
/// differing fields with the primary's and the shadow's values side by side. `baseline`
/// says whether a noise baseline is configured: only then does the page claim noise is
/// cancelled.
pub fn html(report: Option<&DiffReport>, baseline: bool) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <title>mirror-proxy · shadow diff</title><style>{STYLE}</style></head><body>\
         <h1>Shadow diff</h1>"
    );
    let Some(report) = report else {
        page.push_str(
            "<p>No target is compared. Set <code>compare = true</code> on a <code>[[mirror]]</code> \
             in the config file.</p></body></html>",
        );
        return page;
    };
    let compared: u64 = report.routes.iter().map(|r| r.compared).sum();
    let equal: u64 = report.routes.iter().map(|r| r.equal).sum();
    let _ = write!(
        page,
        "<p>{compared} responses compared on {} routes; {} differed{}",
        report.routes.len(),
        compared - equal,
        if baseline {
            " (noise learnt from the baseline cancelled)."
        } else {
            ". No baseline target is configured, so nothing is cancelled as noise \
             (<code>baseline = true</code> on a target running the primary's build)."
        }
    );
    if report.untracked_routes > 0 {
        let _ = write!(
            page,
            " {} comparisons on further routes were counted but not tracked.",
            report.untracked_routes
        );
    }
    page.push_str(
        "</p><table><tr><th>route</th><th>target</th><th>compared</th><th>divergence</th>\
         <th>status</th><th>headers</th><th>body</th><th>primary p50 / p99 ms</th>\
         <th>shadow p50 / p99 ms</th></tr>",
    );
    for (i, route) in report.routes.iter().enumerate() {
        let divergence = route.divergence();
        let class = if divergence > 0.0 { "bad" } else { "ok" };
        let _ = write!(
            page,
            "<tr><td><a href=\"#route-{i}\">{}</a></td><td>{}</td><td class=n>{}</td>\
             <td class=\"n {class}\">{:.1} %</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n>{}</td><td class=n>{} / {}</td><td class=n>{} / {}</td></tr>",
            escape(&route.route),
            escape(&route.target),
            route.compared,
            divergence * 100.0,
            route.differing_status,
            route.differing_headers,
            route.differing_body,
            show_ms(route.primary_latency.p50),
            show_ms(route.primary_latency.p99),
            show_ms(route.shadow_latency.p50),
            show_ms(route.shadow_latency.p99),
        );
    }
    page.push_str("</table>");
    for (i, route) in report.routes.iter().enumerate() {
        let _ = write!(
            page,
            "<section id=\"route-{i}\"><h2>{} <small>→ {}</small></h2>",
            escape(&route.route),
            escape(&route.target)
        );
        if route.fields.is_empty() {
            page.push_str("<p class=ok>Every compared response was equal.</p></section>");
            continue;
        }
        page.push_str(
            "<table><tr><th>field</th><th>differing</th><th>noise</th><th>request</th>\
             <th>primary</th><th>shadow</th></tr>",
        );
        for field in &route.fields {
            let rows = field.examples.len().max(1);
            let class = if field.differing == 0 {
                " class=noise"
            } else {
                ""
            };
            let _ = write!(
                page,
                "<tr{class}><td rowspan={rows}><code>{}</code></td><td class=n rowspan={rows}>{}</td>\
                 <td class=n rowspan={rows}>{}</td>",
                escape(&field_name(field)),
                field.differing,
                field.noise,
            );
            if field.examples.is_empty() {
                page.push_str(
                    "<td colspan=3>(noise only: differs against the baseline too)</td></tr>",
                );
            }
            for (n, example) in field.examples.iter().enumerate() {
                if n > 0 {
                    page.push_str("<tr>");
                }
                let value = |v: &Option<String>| {
                    v.as_deref().map_or_else(
                        || "<em>absent</em>".to_owned(),
                        |v| format!("<code>{}</code>", escape(v)),
                    )
                };
                let _ = write!(
                    page,
                    "<td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    escape(&example.uri),
                    value(&example.primary),
                    value(&example.shadow),
                );
            }
        }
        if route.untracked_fields > 0 {
            let _ = write!(
                page,
                "<tr><td colspan=6>{} more differences on untracked fields</td></tr>",
                route.untracked_fields
            );
        }
        page.push_str("</table></section>");
    }
    page.push_str("</body></html>");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn noise_cancellation_is_claimed_only_with_a_baseline() {
        let report = DiffReport::default();
        assert!(html(Some(&report), true).contains("noise learnt from the baseline cancelled"));
        let without = html(Some(&report), false);
        assert!(!without.contains("cancelled)"), "{without}");
        assert!(without.contains("No baseline target is configured"));
    }

    #[test]
    fn without_comparisons_the_page_says_how_to_enable_them() {
        assert!(html(None, false).contains("compare = true"));
        assert_eq!(json(None)["routes"], json!([]));
    }
}
