//! OpenTelemetry export (feature `otlp`): the real binary exports its upstream spans and
//! tower-mirror's mirror spans as OTLP over HTTP to a receiver on loopback, which decodes
//! them as a collector would.
#![cfg(feature = "otlp")]

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use support::{Proxy, Server, client, eventually, send};

/// A span as the receiver got it: its name, its attributes as text, and its service.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    attributes: Vec<(String, String)>,
    service: String,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP receiver on loopback: decodes each `POST /v1/traces` (protobuf) and keeps
/// the spans; anything else is a 404.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&spans);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let kept = Arc::clone(&kept);
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let kept = Arc::clone(&kept);
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request.headers().get("content-type").cloned();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        if path != "/v1/traces"
                            || content_type
                                .as_ref()
                                .is_none_or(|c| c != "application/x-protobuf")
                        {
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = StatusCode::NOT_FOUND;
                            return Ok::<_, std::convert::Infallible>(response);
                        }
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        let mut kept = kept.lock().unwrap();
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .map(|a| text(a.value.as_ref()))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    kept.push(Received {
                                        name: span.name,
                                        attributes: span
                                            .attributes
                                            .iter()
                                            .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                            .collect(),
                                        service: service.clone(),
                                    });
                                }
                            }
                        }
                        Ok(Response::new(Full::new(Bytes::new())))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_upstream_and_mirror_exchanges_reach_an_otlp_receiver() {
    let (collector, spans) = receiver().await;
    let upstream = Server::upstream().await;
    let shadow = Server::shadow().await;
    let proxy = Proxy::spawn_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.url,
            "--mirror",
            &shadow.url,
            "--otlp-endpoint",
            &collector,
            "--otlp-service-name",
            "edge-proxy",
        ],
        // The SDK's batch delay (default 5 s), shortened so the test waits less.
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
        false,
    )
    .await;
    let client = client();
    for n in 0..3 {
        let request = Request::get(proxy.url(&format!("/traced/{n}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client, request).await.status(), StatusCode::OK);
    }
    shadow.wait_for(3).await;
    eventually("3 upstream and 3 mirror spans exported", || {
        let spans = spans.lock().unwrap();
        let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
        count("upstream") >= 3 && count("mirror") >= 3
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    for span in &spans {
        assert_eq!(span.service, "edge-proxy", "{span:?}");
    }
    let upstream_span = spans.iter().find(|s| s.name == "upstream").unwrap();
    let attribute = |span: &Received, key: &str| span.attribute(key).map(str::to_owned);
    assert_eq!(
        attribute(upstream_span, "http.request.method").as_deref(),
        Some("GET"),
        "{upstream_span:?}"
    );
    assert!(
        attribute(upstream_span, "url.path")
            .unwrap()
            .starts_with("/traced/")
    );
    assert_eq!(
        attribute(upstream_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    let mirror = spans.iter().find(|s| s.name == "mirror").unwrap();
    let expected = [
        ("mirror.target", shadow.url.as_str()),
        ("mirror.outcome", "responded"),
        ("http.request.method", "GET"),
        ("http.route", "/traced/{id}"),
        ("http.response.status_code", "202"),
    ];
    for (key, value) in expected {
        assert_eq!(
            attribute(mirror, key).as_deref(),
            Some(value),
            "{key}: {mirror:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_otlp_endpoint_exits_2_naming_the_flag() {
    let (status, _, stderr) = support::run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--otlp-endpoint",
        "not a url",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--otlp-endpoint"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
