//! RegistryConfig: this service's settings, read from the environment.

use switchboard_service_kit::config::{env_or, env_string, CommonConfig, ConfigError};
use switchboard_service_kit::limits::Rate;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub common: CommonConfig,
    /// `SB_REGISTRY_BIND`, default `127.0.0.1:8101`.
    pub bind: String,
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
}

impl RegistryConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(RegistryConfig {
            common: CommonConfig::from_env()?,
            bind: env_string("SB_REGISTRY_BIND", "127.0.0.1:8101"),
            stale_after_ms: env_or("SB_SERVER_STALE_MS", 10_000)?,
            reservation_ttl_ms: env_or("SB_RESERVATION_TTL_MS", 10_000)?,
            dev_token_ttl_secs: env_or("SB_DEV_TOKEN_TTL_SECS", 86_400)?,
            assign_rate_per_ip: Rate {
                per_sec: env_or("SB_ASSIGN_RATE_PER_IP", 20.0)?,
                burst: env_or("SB_ASSIGN_BURST_PER_IP", 100.0)?,
            },
            reservations_per_ip: env_or("SB_RESERVATIONS_PER_IP", 100)?,
        })
    }
}
