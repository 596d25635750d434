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

/// The published defaults of the secrets: fine for a demo, never for a deployment.
const DEFAULT_JWT_SECRET: &str = "switchboard-dev-jwt-secret";
const DEFAULT_CLUSTER_SECRET: &str = "switchboard-dev-cluster-secret";
/// The shortest secret accepted outside dev mode (bytes).
pub const MIN_SECRET_BYTES: usize = 32;

impl CommonConfig {
    /// Reads the shared settings. Outside dev mode, a default or short secret is refused:
    /// anyone could mint tokens or register a socket server with a published one.
    pub fn from_env() -> Result<Self, ConfigError> {
        let config = CommonConfig {
            redis: RedisConfig::from_env()?,
            jwt_secret: env_string("SB_JWT_SECRET", DEFAULT_JWT_SECRET),
            cluster_secret: env_string("SB_CLUSTER_SECRET", DEFAULT_CLUSTER_SECRET),
            dev_mode: env_bool("SB_DEV_MODE", false)?,
        };
        check_secret("SB_JWT_SECRET", &config.jwt_secret, config.dev_mode)?;
        check_secret("SB_CLUSTER_SECRET", &config.cluster_secret, config.dev_mode)?;
        Ok(config)
    }
}

/// Refuses a published default or a secret under [`MIN_SECRET_BYTES`] unless `dev_mode`.
pub fn check_secret(name: &str, secret: &str, dev_mode: bool) -> Result<(), ConfigError> {
    if dev_mode {
        return Ok(());
    }
    let reason = if secret == DEFAULT_JWT_SECRET || secret == DEFAULT_CLUSTER_SECRET {
        "it is the published default; set a secret of your own (or SB_DEV_MODE=true for a demo)"
    } else if secret.len() < MIN_SECRET_BYTES {
        "it is shorter than 32 bytes; use a long random secret (or SB_DEV_MODE=true for a demo)"
    } else {
        return Ok(());
    };
    Err(ConfigError {
        name: name.to_owned(),
        value: "(hidden)".to_owned(),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn default_or_short_secrets_are_refused_outside_dev_mode() {
        let long = "0123456789abcdef0123456789abcdef";
        assert!(check_secret("SB_JWT_SECRET", long, false).is_ok());
        assert!(check_secret("SB_JWT_SECRET", DEFAULT_JWT_SECRET, false).is_err());
        assert!(check_secret("SB_CLUSTER_SECRET", DEFAULT_CLUSTER_SECRET, false).is_err());
        assert!(check_secret("SB_JWT_SECRET", "short", false).is_err());
        let refused = check_secret("SB_JWT_SECRET", "short", false).unwrap_err();
        assert!(
            !refused.to_string().contains("short\""),
            "the secret is not echoed"
        );
        assert!(check_secret("SB_JWT_SECRET", DEFAULT_JWT_SECRET, true).is_ok());
        assert!(check_secret("SB_JWT_SECRET", "short", true).is_ok());
    }
}
