//! Typed configuration from the environment. Every variable has a default that works for the
//! local stack, so `cargo run -p registry` needs no setup; the README lists them all.

use std::str::FromStr;
use std::time::Duration;

use crate::redis_sentinel::RedisConfig;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Reads `name`, or `default` when unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|e: T::Err| ConfigError {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

/// Reads a string variable with a default.
pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Reads a duration given in milliseconds.
pub fn env_millis(name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
    env_or(name, default_ms).map(Duration::from_millis)
}

/// Reads a boolean: `1`, `true`, `yes`, `on` are true; `0`, `false`, `no`, `off` are false.
pub fn env_bool(name: &str, default: bool) -> Result<bool, ConfigError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError {
                name: name.to_owned(),
                value,
                reason: "expected true or false".into(),
            }),
        },
        _ => Ok(default),
    }
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub redis: RedisConfig,
    /// HS256 secret for client JWTs (`SB_JWT_SECRET`).
    pub jwt_secret: String,
    /// Shared secret for cluster-only routes, sent as `x-cluster-secret` (`SB_CLUSTER_SECRET`).
    pub cluster_secret: String,
    /// Whether `POST /api/v1/dev/token` mints tokens (`SB_DEV_MODE`, off by default).
    pub dev_mode: bool,
}

impl CommonConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(CommonConfig {
            redis: RedisConfig::from_env()?,
            jwt_secret: env_string("SB_JWT_SECRET", "switchboard-dev-jwt-secret"),
            cluster_secret: env_string("SB_CLUSTER_SECRET", "switchboard-dev-cluster-secret"),
            dev_mode: env_bool("SB_DEV_MODE", false)?,
        })
    }
}
