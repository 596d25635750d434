//! The health checker's own variables. Parsed by `health_checker::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_FAILURE_THRESHOLD, SB_HEALTH_BIND, SB_PROBE_INTERVAL_MS, SB_PROBE_TIMEOUT_MS,
};

/// The health checker's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_HEALTH_BIND,
        default: Some("127.0.0.1:8301"),
        doc: "Address of its own /live, /ready and /metrics.",
    },
    EnvVar {
        name: SB_PROBE_INTERVAL_MS,
        default: Some("500"),
        doc: "Time between probe rounds, in milliseconds.",
    },
    EnvVar {
        name: SB_PROBE_TIMEOUT_MS,
        default: Some("400"),
        doc: "One probe's timeout, in milliseconds.",
    },
    EnvVar {
        name: SB_FAILURE_THRESHOLD,
        default: Some("3"),
        doc: "Consecutive failed probes before a socket server is evicted (with the defaults a \
              dead server is gone in about 1.5-2 s).",
    },
];

/// The health checker's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Health checker",
    vars: ENV,
};
