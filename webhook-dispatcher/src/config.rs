//! The dispatcher's settings, read from the environment (or any lookup of variables): its table
//! ([`tables::webhook_dispatcher`]) names every variable it reads itself (beside the Kafka and
//! logging ones), `from_lookup` reads them (`from_env` from the process environment).

use std::time::Duration;

use switchboard_config::env::EnvTable;
use switchboard_config::lookup::{lookup_or, lookup_string, process_env, ConfigError, Lookup};
use switchboard_config::names::{
    SB_WEBHOOK_ALLOW_NETS, SB_WEBHOOK_BIND, SB_WEBHOOK_CONNECT_TIMEOUT_MS, SB_WEBHOOK_DATABASE_URL,
    SB_WEBHOOK_DB_MAX_CONNECTIONS, SB_WEBHOOK_DB_SCHEMA, SB_WEBHOOK_DISABLE_AFTER_FAILURES,
    SB_WEBHOOK_DISABLE_AFTER_SECS, SB_WEBHOOK_IN_FLIGHT, SB_WEBHOOK_MAX_ENDPOINTS,
    SB_WEBHOOK_MAX_PENDING, SB_WEBHOOK_RETENTION_SECS, SB_WEBHOOK_RETRY_BASE_MS,
    SB_WEBHOOK_RETRY_FOR_SECS, SB_WEBHOOK_RETRY_MAX_DELAY_MS, SB_WEBHOOK_SECRET_OVERLAP_SECS,
    SB_WEBHOOK_TIMEOUT_MS,
};
use switchboard_config::tables;
use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::api_keys::ApiKeys;

pub use crate::retry::RetryPolicy;
use crate::ssrf::AllowNets;

/// Everything the webhook-dispatcher binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    tables::COMMON[2],
    tables::kafka::TABLE,
    tables::webhook_dispatcher::TABLE,
    tables::webhook_dispatcher::API_KEYS_TABLE,
    tables::postgres::TABLE,
    // The push notifier: its own settings, and Redis for presence.
    tables::push::TABLE,
    tables::COMMON[1],
];

#[derive(Clone)]
pub struct DispatcherConfig {
    pub kafka: KafkaConfig,
    /// The keys the endpoint API accepts (`SB_API_KEYS_FILE` / `SB_API_KEYS`).
    pub api_keys: ApiKeys,
    pub bind: String,
    pub database_url: String,
    pub db_schema: String,
    pub db_max_connections: u32,
    pub allow_nets: AllowNets,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_pending: i64,
    pub in_flight: usize,
    pub secret_overlap: Duration,
    pub retention: Duration,
    pub max_endpoints: i64,
    /// Push notifications (`None`: `SB_PUSH_GATEWAY_URL` unset, the notifier is off).
    pub push: Option<crate::push::PushConfig>,
    /// Redis, where the notifier reads presence.
    pub redis: switchboard_redis::RedisConfig,
}

impl std::fmt::Debug for DispatcherConfig {
    /// Every setting but the keys themselves (their count).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherConfig")
            .field("kafka", &self.kafka)
            .field("api_keys", &self.api_keys.len())
            .field("bind", &self.bind)
            .field("database_url", &self.database_url)
            .field("db_schema", &self.db_schema)
            .field("db_max_connections", &self.db_max_connections)
            .field("allow_nets", &self.allow_nets)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("max_pending", &self.max_pending)
            .field("in_flight", &self.in_flight)
            .field("secret_overlap", &self.secret_overlap)
            .field("retention", &self.retention)
            .field("max_endpoints", &self.max_endpoints)
            .field("push", &self.push)
            .field("redis", &self.redis)
            .finish()
    }
}

impl DispatcherConfig {
    /// Reads the settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings from `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let allow_raw = lookup_string(lookup, SB_WEBHOOK_ALLOW_NETS, "");
        let allow_nets = AllowNets::parse(&allow_raw).map_err(|reason| ConfigError {
            name: SB_WEBHOOK_ALLOW_NETS.into(),
            value: allow_raw.clone(),
            reason,
        })?;
        let schema = lookup_string(lookup, SB_WEBHOOK_DB_SCHEMA, "webhooks");
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ConfigError {
                name: SB_WEBHOOK_DB_SCHEMA.into(),
                value: schema,
                reason: "a schema name of lowercase letters, digits and _".into(),
            });
        }
        let secs = |name, default| lookup_or(lookup, name, default).map(Duration::from_secs);
        let millis = |name, default| lookup_or(lookup, name, default).map(Duration::from_millis);
        Ok(DispatcherConfig {
            kafka: KafkaConfig::from_lookup(lookup)?,
            api_keys: ApiKeys::from_lookup(lookup)?,
            bind: lookup_string(lookup, SB_WEBHOOK_BIND, "127.0.0.1:8501"),
            database_url: lookup_string(
                lookup,
                SB_WEBHOOK_DATABASE_URL,
                "postgres://switchboard@127.0.0.1:5432/switchboard",
            ),
            db_schema: schema,
            db_max_connections: lookup_or(lookup, SB_WEBHOOK_DB_MAX_CONNECTIONS, 10)?,
            allow_nets,
            timeout: millis(SB_WEBHOOK_TIMEOUT_MS, 10_000)?,
            connect_timeout: millis(SB_WEBHOOK_CONNECT_TIMEOUT_MS, 3_000)?,
            retry: RetryPolicy {
                base: millis(SB_WEBHOOK_RETRY_BASE_MS, 2_000)?,
                max_delay: millis(SB_WEBHOOK_RETRY_MAX_DELAY_MS, 3_600_000)?,
                retry_for: secs(SB_WEBHOOK_RETRY_FOR_SECS, 86_400)?,
                disable_after_failures: lookup_or(lookup, SB_WEBHOOK_DISABLE_AFTER_FAILURES, 100)?,
                disable_after: secs(SB_WEBHOOK_DISABLE_AFTER_SECS, 259_200)?,
            },
            max_pending: lookup_or(lookup, SB_WEBHOOK_MAX_PENDING, 100_000)?,
            in_flight: lookup_or::<usize>(lookup, SB_WEBHOOK_IN_FLIGHT, 8)?.max(1),
            secret_overlap: secs(SB_WEBHOOK_SECRET_OVERLAP_SECS, 86_400)?,
            retention: secs(SB_WEBHOOK_RETENTION_SECS, 604_800)?,
            max_endpoints: lookup_or(lookup, SB_WEBHOOK_MAX_ENDPOINTS, 100)?,
            push: crate::push::PushConfig::from_lookup(lookup)?,
            redis: switchboard_redis::RedisConfig::from_lookup(lookup)?,
        })
    }
}
