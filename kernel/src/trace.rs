//! Traces across the path of a change: the HTTP request, the rotation, the effects after
//! its commit, the outbox dispatch, and, through the job's `traceparent` (W3C Trace
//! Context; never anything secret), the worker's job and its SMTP send, as one trace.
//!
//! Exported over OTLP/HTTP (protobuf) only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; the other `OTEL_*` variables (service
//! name, headers, timeout, batch sizes) are read by the SDK. Unset: no exporter, and no
//! span of this path is even created (`enabled` is false and the sites make
//! `Span::none()`), so it costs nothing.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::Registry;

static ENABLED: AtomicBool = AtomicBool::new(false);

const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported: the sites that make this module's spans ask first.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes the spans not yet exported and stops the exporter when dropped: hold it until
/// the process ends.
pub struct TraceGuard {
    provider: SdkTracerProvider,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing the last spans failed: {e}");
        }
    }
}

/// The layer that exports spans, and its guard; `None` when no OTLP endpoint is set.
pub fn layer(
    service_name: &str,
) -> anyhow::Result<Option<(OpenTelemetryLayer<Registry, Tracer>, TraceGuard)>> {
    let configured = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP span exporter: {e}"))?;
    // OTEL_SERVICE_NAME, where set, names the service; else the binary does.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer(service_name.to_owned());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        TraceGuard { provider },
    )))
}

/// Which spans are exported, whatever `RUST_LOG` says of the log: this service's crates'
/// at `info` (the traced path), every other crate's at `warn`.
pub fn exported() -> tracing_subscriber::filter::Targets {
    use tracing::Level;
    tracing_subscriber::filter::Targets::new()
        .with_default(Level::WARN)
        .with_target("mithril", Level::INFO)
        .with_target("mithril_workers", Level::INFO)
        .with_target("kernel", Level::INFO)
        .with_target("workers", Level::INFO)
}

/// The current span's context as a `traceparent` value, for a job's payload; `None`
/// when traces are not exported.
pub fn traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span `traceparent` names (an incoming request's
/// header, a job's field), before it is first entered. Nothing when traces are not
/// exported; a value that is not a valid `traceparent` leaves `span` a root.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let (true, Some(traceparent)) = (enabled(), traceparent) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}
