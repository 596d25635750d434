//! The registry's own variables. Parsed by `registry::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_ASSIGN_BURST_PER_IP, SB_ASSIGN_RATE_PER_IP, SB_DEV_TOKEN_TTL_SECS, SB_PUBLIC_SERVER_LIST,
    SB_REGISTRY_BIND, SB_REGISTRY_HTTP_WORKERS, SB_RESERVATIONS_PER_IP, SB_RESERVATION_TTL_MS,
    SB_SERVER_STALE_MS,
};

/// The registry's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_REGISTRY_BIND,
        default: Some("127.0.0.1:8101"),
        doc: "Address the REST API listens on.",
    },
    EnvVar {
        name: SB_REGISTRY_HTTP_WORKERS,
        default: Some("1"),
        doc: "HTTP worker threads. Each has its own Redis connection and batches the \
              assignments asked of it into one script; one worker serves tens of thousands of \
              assignments a second, so scale out with replicas behind the balancer first.",
    },
    EnvVar {
        name: SB_SERVER_STALE_MS,
        default: Some("10000"),
        doc: "A socket server whose last heartbeat is older than this (milliseconds) is not \
              handed out; 0 disables the check.",
    },
    EnvVar {
        name: SB_RESERVATION_TTL_MS,
        default: Some("10000"),
        doc: "How long an assignment holds a slot on the chosen server before the client \
              connects, in milliseconds.",
    },
    EnvVar {
        name: SB_DEV_TOKEN_TTL_SECS,
        default: Some("86400"),
        doc: "Lifetime of the tokens POST /api/v1/dev/token mints (dev mode only), in seconds.",
    },
    EnvVar {
        name: SB_ASSIGN_RATE_PER_IP,
        default: Some("20"),
        doc: "Assignments per second per client address, per registry replica; 0 turns the \
              limit off. Past it: 429 rate_limited.",
    },
    EnvVar {
        name: SB_ASSIGN_BURST_PER_IP,
        default: Some("100"),
        doc: "Burst of assignments one client address may make at once.",
    },
    EnvVar {
        name: SB_RESERVATIONS_PER_IP,
        default: Some("100"),
        doc: "Unexpired slot reservations one client address may hold, per registry replica; \
              past it assignments answer 429 instead of reserving, so one address cannot fill \
              every server with reservations. 0 turns it off.",
    },
    EnvVar {
        name: SB_PUBLIC_SERVER_LIST,
        default: Some("true"),
        doc: "Whether GET /api/v1/socket-servers (every server's URL, load and capacity) \
              answers anyone, as the original contract has it. false: only callers with a \
              cluster credential (operators' tools, any service role); others get 403, and \
              clients still get a server through GET /api/v1/socket-server.",
    },
];

/// The registry's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Registry",
    vars: ENV,
};
