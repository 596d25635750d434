//! The registry's settings, read from the environment (or any lookup of variables): [`ENV`] names
//! every variable it reads itself (beside [`switchboard_service_kit::config::COMMON`]),
//! `from_lookup` reads them (`from_env` from the process environment).

use std::num::NonZeroUsize;

use switchboard_service_kit::config::{
    lookup_bool, lookup_or, lookup_string, process_env, CommonConfig, ConfigError, Lookup, COMMON,
};
use switchboard_service_kit::env::{EnvTable, EnvVar};
use switchboard_service_kit::limits::Rate;

pub const SB_REGISTRY_BIND: &str = "SB_REGISTRY_BIND";
pub const SB_SERVER_STALE_MS: &str = "SB_SERVER_STALE_MS";
pub const SB_RESERVATION_TTL_MS: &str = "SB_RESERVATION_TTL_MS";
pub const SB_DEV_TOKEN_TTL_SECS: &str = "SB_DEV_TOKEN_TTL_SECS";
pub const SB_ASSIGN_RATE_PER_IP: &str = "SB_ASSIGN_RATE_PER_IP";
pub const SB_ASSIGN_BURST_PER_IP: &str = "SB_ASSIGN_BURST_PER_IP";
pub const SB_RESERVATIONS_PER_IP: &str = "SB_RESERVATIONS_PER_IP";
pub const SB_REGISTRY_HTTP_WORKERS: &str = "SB_REGISTRY_HTTP_WORKERS";
pub const SB_PUBLIC_SERVER_LIST: &str = "SB_PUBLIC_SERVER_LIST";

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

/// Everything the registry binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[COMMON[0], COMMON[1], COMMON[2], TABLE];

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub common: CommonConfig,
    /// `SB_REGISTRY_BIND`, default `127.0.0.1:8101`.
    pub bind: String,
    /// HTTP worker threads, each with its own assigner (`SB_REGISTRY_HTTP_WORKERS`, default 1).
    pub http_workers: usize,
    /// A server whose last heartbeat is older than this is not handed out
    /// (`SB_SERVER_STALE_MS`, default 10000; 0 disables the check).
    pub stale_after_ms: i64,
    /// How long an assignment holds a slot before the client connects
    /// (`SB_RESERVATION_TTL_MS`, default 10000).
    pub reservation_ttl_ms: i64,
    /// Lifetime of dev tokens (`SB_DEV_TOKEN_TTL_SECS`, default 86400).
    pub dev_token_ttl_secs: i64,
    /// Assignments per client address (`SB_ASSIGN_RATE_PER_IP` per second, default 20, and
    /// `SB_ASSIGN_BURST_PER_IP`, default 100; 0 turns it off), per registry replica.
    pub assign_rate_per_ip: Rate,
    /// Unexpired slot reservations one client address may hold (`SB_RESERVATIONS_PER_IP`,
    /// default 100; 0 turns it off), per registry replica: past it, assignments answer 429
    /// instead of reserving, so one address cannot fill every server with reservations.
    pub reservations_per_ip: usize,
    /// Whether the server list answers anyone (`SB_PUBLIC_SERVER_LIST`, default true).
    pub public_server_list: bool,
}

impl RegistryConfig {
    /// Reads the settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings from `lookup` (a variable's value by name): the same parsing and
    /// defaults as `from_env`, from a map of one's own (tests).
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(RegistryConfig {
            common: CommonConfig::from_lookup(lookup)?,
            bind: lookup_string(lookup, SB_REGISTRY_BIND, "127.0.0.1:8101"),
            http_workers: lookup_or(lookup, SB_REGISTRY_HTTP_WORKERS, NonZeroUsize::MIN)?.get(),
            stale_after_ms: lookup_or(lookup, SB_SERVER_STALE_MS, 10_000)?,
            reservation_ttl_ms: lookup_or(lookup, SB_RESERVATION_TTL_MS, 10_000)?,
            dev_token_ttl_secs: lookup_or(lookup, SB_DEV_TOKEN_TTL_SECS, 86_400)?,
            assign_rate_per_ip: Rate {
                per_sec: lookup_or(lookup, SB_ASSIGN_RATE_PER_IP, 20.0)?,
                burst: lookup_or(lookup, SB_ASSIGN_BURST_PER_IP, 100.0)?,
            },
            reservations_per_ip: lookup_or(lookup, SB_RESERVATIONS_PER_IP, 100)?,
            public_server_list: lookup_bool(lookup, SB_PUBLIC_SERVER_LIST, true)?,
        })
    }
}
