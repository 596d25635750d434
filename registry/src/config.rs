//! The registry's settings, read from the environment (or any lookup of variables): its table
//! ([`tables::registry`]) names every variable it reads itself (beside [`tables::COMMON`]),
//! `from_lookup` reads them (`from_env` from the process environment).

use std::num::NonZeroUsize;

use switchboard_config::env::EnvTable;
use switchboard_config::lookup::{
    lookup_bool, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_ASSIGN_BURST_PER_IP, SB_ASSIGN_RATE_PER_IP, SB_DEV_TOKEN_TTL_SECS, SB_PUBLIC_SERVER_LIST,
    SB_REGISTRY_BIND, SB_REGISTRY_HTTP_WORKERS, SB_RESERVATIONS_PER_IP, SB_RESERVATION_TTL_MS,
    SB_SERVER_STALE_MS,
};
use switchboard_config::tables;
use switchboard_service_kit::config::CommonConfig;
use switchboard_service_kit::limits::Rate;

/// Everything the registry binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    tables::COMMON[0],
    tables::COMMON[1],
    tables::COMMON[2],
    tables::registry::TABLE,
];

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
