//! Logs and traces for a node's `main`: [`init`] installs the process's `tracing` subscriber,
//! logs to stderr filtered by `RUST_LOG`, and, when `FORGE_OTLP_ENDPOINT` (or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector, exports spans to it over OTLP/HTTP
//! (protobuf), batched. Off by default: without an endpoint no span is exported and no trace
//! context is stored with jobs.
//!
//! What is traced (see `forge_runtime::trace`): each request under `/_api/` (continuing the
//! client's `traceparent` header), each RPC call, and on whichever node runs them the jobs and
//! workflows the call started: claim, run, each workflow step, and the final write.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid setting `FORGE_OTLP_ENDPOINT`: {0}")]
    Exporter(String),
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// The installed exporter: call [`Telemetry::shutdown`] before the process exits, so the last
/// batch of spans is sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (at most a few seconds' wait) and stops exporting.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("forge: exporting the last spans failed: {e}");
            }
        }
    }
}

/// The OpenTelemetry endpoint from the environment, if any.
fn endpoint() -> Option<String> {
    ["FORGE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// A layer that turns `tracing` spans into OpenTelemetry spans of `provider`, named after
/// `service` (the `service.name` resource is set on the provider). Add it to a subscriber of
/// your own if [`init`] does not fit.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("forge"))
}

/// An OTLP/HTTP exporter to `endpoint` (`http://collector:4318`), batched, for `service`.
pub fn otlp_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}

/// Installs logging (stderr, `RUST_LOG`, else `default_filter`) and, when an OTLP endpoint is
/// configured, trace export for service `FORGE_SERVICE_NAME` (default `forge`).
pub fn init(default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = match endpoint() {
        Some(endpoint) => {
            let service = std::env::var("FORGE_SERVICE_NAME").unwrap_or_else(|_| "forge".into());
            Some(otlp_provider(&endpoint, &service)?)
        }
        None => None,
    };
    // Forge's spans are `info`; the exporter takes them whatever `RUST_LOG` says of logs.
    let traces = provider.as_ref().map(|p| {
        layer(p).with_filter(
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO),
        )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Built, fed and shut down inside a Tokio runtime, as a node's `main` does: an exporter
    // whose HTTP client cannot live there would panic here. The collector is unreachable:
    // export fails, and the node goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exporter_lives_in_the_nodes_runtime_and_survives_an_absent_collector() {
        let provider = otlp_provider("http://127.0.0.1:9", "forge-test").unwrap();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("forge.test");
            let _in = span.enter();
        });
        // As `Telemetry::shutdown` at the end of `main`: on a runtime thread.
        Telemetry {
            provider: Some(provider),
        }
        .shutdown();
    }
}
