//! The logging variables every binary reads. Read by service-kit's `telemetry::init`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{RUST_LOG, SB_LOG_FORMAT};

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,actix_server=warn,rdkafka=warn";

/// What service-kit's `telemetry::init` reads.
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

/// The logging table.
pub const TABLE: EnvTable = EnvTable {
    title: "Logging (every binary)",
    vars: ENV,
};
