//! HealthCheckerConfig: this service's settings, read from the environment.

use std::time::Duration;

use switchboard_service_kit::config::{env_millis, env_or, env_string, CommonConfig, ConfigError};

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
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(HealthCheckerConfig {
            common: CommonConfig::from_env()?,
            bind: env_string("SB_HEALTH_BIND", "127.0.0.1:8301"),
            probe_interval: env_millis("SB_PROBE_INTERVAL_MS", 500)?,
            probe_timeout: env_millis("SB_PROBE_TIMEOUT_MS", 400)?,
            failure_threshold: env_or("SB_FAILURE_THRESHOLD", 3)?,
        })
    }
}
