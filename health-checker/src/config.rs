//! The health checker's settings, read from the environment (or any lookup of variables): its table
//! ([`tables::health_checker`]) names every variable it reads itself (beside the common ones),
//! `from_lookup` reads them (`from_env` from the process environment).

use std::time::Duration;

use switchboard_config::env::EnvTable;
use switchboard_config::lookup::{
    lookup_millis, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_FAILURE_THRESHOLD, SB_HEALTH_BIND, SB_PROBE_INTERVAL_MS, SB_PROBE_TIMEOUT_MS,
};
use switchboard_config::tables;
use switchboard_service_kit::config::CommonConfig;

/// Everything the health-checker binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    tables::COMMON[0],
    tables::COMMON[1],
    tables::COMMON[2],
    tables::health_checker::TABLE,
];

#[derive(Debug, Clone)]
pub struct HealthCheckerConfig {
    pub common: CommonConfig,
    /// Metrics and health endpoints (`SB_HEALTH_BIND`, default `127.0.0.1:8301`).
    pub bind: String,
    /// Time between probe rounds (`SB_PROBE_INTERVAL_MS`, default 500).
    pub probe_interval: Duration,
    /// One probe's timeout (`SB_PROBE_TIMEOUT_MS`, default 400).
    pub probe_timeout: Duration,
    /// Consecutive failed probes before eviction (`SB_FAILURE_THRESHOLD`, default 3).
    pub failure_threshold: u32,
}

impl HealthCheckerConfig {
    /// Reads the settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings from `lookup` (a variable's value by name): the same parsing and
    /// defaults as `from_env`, from a map of one's own (tests).
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(HealthCheckerConfig {
            common: CommonConfig::from_lookup(lookup)?,
            bind: lookup_string(lookup, SB_HEALTH_BIND, "127.0.0.1:8301"),
            probe_interval: lookup_millis(lookup, SB_PROBE_INTERVAL_MS, 500)?,
            probe_timeout: lookup_millis(lookup, SB_PROBE_TIMEOUT_MS, 400)?,
            failure_threshold: lookup_or(lookup, SB_FAILURE_THRESHOLD, 3)?,
        })
    }
}
