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

/// The provider behind the exporting layer, kept to flush and stop it at exit.
pub(super) struct Exporter(SdkTracerProvider);

/// How long the last export may take at exit before the process goes anyway.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Exporter {
    /// Exports what the batch processor still holds and stops it (bounded by
    /// [`SHUTDOWN_TIMEOUT`]); a failure is said on stderr, the subscriber being on its way out.
    pub(super) fn shutdown(self) {
        if let Err(e) = self.0.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("flushing the OTLP span exporter at exit: {e}");
        }
    }
}

/// The exporting layer and its provider, or `None` when no endpoint is configured (or the
/// exporter cannot be built: said on stderr, the service runs on without export).
pub(super) fn layer<S>(service: &str) -> Option<(OpenTelemetryLayer<S, SdkTracer>, Exporter)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    if !ENDPOINTS
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        return None;
    }
    exporting_layer(service, None)
}

/// The layer exporting to `endpoint` (the whole URL spans are POSTed to), or where the
/// standard variables say when `None`.
fn exporting_layer<S>(
    service: &str,
    endpoint: Option<&str>,
) -> Option<(OpenTelemetryLayer<S, SdkTracer>, Exporter)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = match builder.build() {
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
    Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Exporter(provider),
    ))
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The batch processor holds finished spans for seconds before it exports them; a process
    /// that exits meanwhile would lose its last spans. Shutting the exporter down (what
    /// dropping `Telemetry` does at the end of `main`) exports them before it returns.
    #[test]
    fn shutting_down_exports_the_spans_still_queued() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let (got, posts) = mpsc::channel::<String>();
        // A real HTTP receiver on loopback: answers every request 200 and reports its head.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                stream
                    .set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                let head = String::from_utf8_lossy(&request);
                let _ = got.send(head.lines().next().unwrap_or_default().to_owned());
            }
        });
        let (layer, exporter) =
            exporting_layer::<tracing_subscriber::Registry>("otlp-test", Some(&endpoint))
                .expect("an exporter");
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("last words", trace_id = tracing::field::Empty);
            span.in_scope(|| tracing::info!("shutting down"));
        });
        assert!(
            posts.recv_timeout(Duration::from_millis(500)).is_err(),
            "exported before the shutdown: the test proves nothing"
        );
        exporter.shutdown();
        let post = posts
            .recv_timeout(Duration::from_secs(1))
            .expect("the queued span was exported by the shutdown");
        assert_eq!(post, "POST /v1/traces HTTP/1.1");
    }
}
