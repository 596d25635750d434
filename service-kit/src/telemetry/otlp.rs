//! Span export over OTLP/HTTP (protobuf, sent with a blocking `reqwest` client on the batch
//! processor's own thread; no gRPC stack), behind the cargo feature `otlp`. On when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the
//! exporter reads the other standard `OTEL_*` variables itself. The service name is the
//! binary's.
//!
//! A span joined to a W3C trace ([`super::trace::join`]) is exported in that trace: its
//! parent is the remote step the `traceparent` names, and the ids it passes on are its own.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use switchboard_protocol::trace_context::{self, TraceParent};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// The endpoint variables that turn export on (the exporter's own names).
const ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// The exporting layer, or `None` when no endpoint is configured (or the exporter cannot be
/// built: said on stderr, the service runs on without export).
pub(super) fn layer<S>(service: &str) -> Option<OpenTelemetryLayer<S, SdkTracer>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    if !ENDPOINTS
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            // The subscriber is not installed yet: stderr is the only place to say it.
            eprintln!("OTLP span export is off: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("switchboard");
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Joins `span` to the trace `incoming` names (as its remote parent) and answers the span's
/// own ids; `None` when the span is not exported (disabled, or no exporting layer).
pub(super) fn join(span: &Span, incoming: Option<TraceParent>) -> Option<TraceParent> {
    if let Some(parent) = incoming {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.0),
            SpanId::from_bytes(parent.parent_id.0),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        // Fails only for a span that is disabled or has no exporting layer: then it is
        // not exported, and the step's ids come from the caller's fallback.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    TraceParent::new(
        trace_context::TraceId(own.trace_id().to_bytes()),
        trace_context::SpanId(own.span_id().to_bytes()),
        own.trace_flags().to_u8(),
    )
}
