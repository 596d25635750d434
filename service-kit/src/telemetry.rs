//! Structured logs with `tracing`. `SB_LOG_FORMAT=json` emits JSON lines (for the compose
//! stack and log shippers); anything else is human-readable. `RUST_LOG` filters as usual.

use tracing_subscriber::EnvFilter;

use crate::env::EnvVar;

pub const SB_LOG_FORMAT: &str = "SB_LOG_FORMAT";
/// The standard `tracing_subscriber` filter variable, read by [`EnvFilter::try_from_default_env`].
pub const RUST_LOG: &str = EnvFilter::DEFAULT_ENV;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,actix_server=warn,rdkafka=warn";

/// What [`init`] reads.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_LOG_FORMAT,
        default: None,
        doc: "`json`: one JSON object per log line (for log shippers; the compose stack sets \
              it). Anything else or unset: human-readable lines.",
    },
    EnvVar {
        name: RUST_LOG,
        default: Some(DEFAULT_FILTER),
        doc: "The usual tracing filter (e.g. `debug`, or `info,socket_server=debug`).",
    },
];

pub fn init(service: &str) {
    let filter =
        EnvFilter::try_from_env(RUST_LOG).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var(SB_LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
