//! MessageServiceConfig: this service's settings, read from the environment.

use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::config::{env_or, env_string, CommonConfig, ConfigError};

#[derive(Debug, Clone)]
pub struct MessageServiceConfig {
    pub common: CommonConfig,
    pub kafka: KafkaConfig,
    /// `SB_MESSAGE_BIND`, default `127.0.0.1:8401`.
    pub bind: String,
    /// `SB_DATABASE_URL`, default `postgres://switchboard@127.0.0.1:5432/switchboard`.
    pub database_url: String,
    /// `SB_DB_MAX_CONNECTIONS`, default 10.
    pub db_max_connections: u32,
    /// Largest group (`SB_MAX_GROUP_MEMBERS`, default 1000).
    pub max_group_members: usize,
    /// How long a log fetch may wait for data (`SB_INGEST_FETCH_WAIT_MS`, default 100).
    pub ingest_fetch_wait_ms: u64,
}

impl MessageServiceConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(MessageServiceConfig {
            common: CommonConfig::from_env()?,
            kafka: KafkaConfig::from_env()?,
            bind: env_string("SB_MESSAGE_BIND", "127.0.0.1:8401"),
            database_url: env_string(
                "SB_DATABASE_URL",
                "postgres://switchboard@127.0.0.1:5432/switchboard",
            ),
            db_max_connections: env_or("SB_DB_MAX_CONNECTIONS", 10)?,
            max_group_members: env_or("SB_MAX_GROUP_MEMBERS", 1000)?,
            ingest_fetch_wait_ms: env_or("SB_INGEST_FETCH_WAIT_MS", 100)?,
        })
    }
}
