//! Structured logs with `tracing`, and traces. `SB_LOG_FORMAT=json` emits JSON lines (for the
//! compose stack and log shippers); anything else is human-readable. `RUST_LOG` filters as
//! usual.
//!
//! - [`trace`]: one send's W3C trace across the processes: a step joins the trace a
//!   `traceparent` names (or starts one) and records its `trace_id` on its span.
//! - `otlp` (cargo feature `otlp`, off by default): spans exported over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, their trace ids the W3C ones.

#[cfg(feature = "otlp")]
mod otlp;
pub mod trace;

use switchboard_config::names::{RUST_LOG, SB_LOG_FORMAT};
use switchboard_config::tables::logging::DEFAULT_FILTER;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What [`init`] installed that must be stopped in order: held by `main` until it returns.
/// Dropping it flushes and stops the span exporter (with the `otlp` feature), so the spans of
/// a process's last seconds (its drain, its shutdown) are exported instead of lost in the
/// batch processor's queue.
#[must_use = "hold it until main returns: dropping it flushes the spans not yet exported"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    exporter: Option<otlp::Exporter>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown();
        }
    }
}

/// Installs the process's subscriber: the filter, the log lines and (with the `otlp` feature
/// and `OTEL_EXPORTER_OTLP_ENDPOINT` set) the span exporter. Hold the answer until `main`
/// returns.
pub fn init(service: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_env(RUST_LOG).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var(SB_LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let lines = tracing_subscriber::fmt::layer().with_target(false);
    let lines = if json {
        lines.json().flatten_event(true).boxed()
    } else {
        lines.boxed()
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(lines);
    #[cfg(feature = "otlp")]
    let (layer, exporter) = match otlp::layer(service) {
        Some((layer, exporter)) => (Some(layer), Some(exporter)),
        None => (None, None),
    };
    #[cfg(feature = "otlp")]
    let subscriber = subscriber.with(layer);
    if subscriber.try_init().is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
    Telemetry {
        #[cfg(feature = "otlp")]
        exporter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config crate spells the filter variable itself (it has no tracing dependency): it
    /// must be the one `EnvFilter` reads.
    #[test]
    fn rust_log_is_the_filter_variable() {
        assert_eq!(RUST_LOG, EnvFilter::DEFAULT_ENV);
    }
}
