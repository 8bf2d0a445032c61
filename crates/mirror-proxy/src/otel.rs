//! OpenTelemetry export (feature `otlp`, on by default): the proxy's spans, and tower-mirror's
//! span per mirror exchange, sent as OTLP over HTTP (protobuf) to a collector.
//!
//! Spans go through the SDK's batch processor, which runs on a thread of its own; its HTTP
//! requests run on a small runtime of their own, so that exporting never takes a worker's
//! time nor waits on one. A collector that is down or slow loses spans (the SDK counts and
//! drops them once its queue of 2,048 is full), never requests.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::ConfigError;

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running exporter: flushes what it holds when dropped (at shutdown).
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// A `tracing` layer exporting spans to the OTLP/HTTP collector at `endpoint` (its base URL,
/// such as `http://127.0.0.1:4318`: spans go to `/v1/traces` under it, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` means), as service `service_name`; and the exporter to keep
/// until shutdown. `https` endpoints are checked against `roots`.
///
/// # Errors
/// The endpoint is not an http(s) URL, or the exporter cannot be set up: one line naming
/// `--otlp-endpoint`.
pub fn layer<S>(
    endpoint: &str,
    service_name: &str,
    roots: rustls::RootCertStore,
) -> Result<(impl Layer<S>, Exporter), ConfigError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let invalid = |reason: String| ConfigError(format!("--otlp-endpoint {endpoint:?}: {reason}"));
    let base =
        tower_mirror::outbound::BaseUrl::parse(endpoint).map_err(|e| invalid(e.to_string()))?;
    let traces = base
        .join(&"/v1/traces".parse().expect("a static path"))
        .ok_or_else(|| invalid("cannot append /v1/traces".to_owned()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpClient::new(roots).map_err(invalid)?)
        .with_endpoint(traces.to_string())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("mirror-proxy");
    // Code locations are OpenTelemetry attributes (`code.*`); tracing's own target and
    // thread names are not.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_target(false)
        .with_threads(false);
    Ok((layer, Exporter { provider }))
}

/// The exporter's HTTP client: hyper, with tower-mirror's TLS set-up, on a runtime of its own
/// (the SDK's export thread has none).
#[derive(Debug, Clone)]
struct OtlpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl OtlpClient {
    fn new(roots: rustls::RootCertStore) -> Result<Self, String> {
        // Kept for the life of the process: a runtime may not be dropped where the SDK
        // might drop its exporter (inside another runtime at shutdown).
        static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("mirror-proxy-otlp")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the exporter's runtime: {e}"))
        });
        let runtime = runtime.as_ref().map_err(Clone::clone)?.handle().clone();
        let connector =
            tower_mirror::client::tls::connector(tower_mirror::client::tls::client_config(roots));
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // Awaiting the task's handle works from any executor, the SDK's included.
        self.runtime
            // The timer is made inside the task: it needs the runtime's context.
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await })
            .await?
            .map_err(|_| HttpError::from("the collector did not answer in time"))?
    }
}
