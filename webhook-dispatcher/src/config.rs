//! The dispatcher's settings, read from the environment (or any lookup of variables): [`ENV`]
//! names every variable it reads itself (beside the Kafka and logging ones), `from_lookup`
//! reads them (`from_env` from the process environment).

use std::time::Duration;

use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::api_keys::ApiKeys;
use switchboard_service_kit::config::{
    lookup_or, lookup_string, process_env, ConfigError, Lookup, COMMON,
};
use switchboard_service_kit::env::{EnvTable, EnvVar};

pub use crate::retry::RetryPolicy;
use crate::ssrf::AllowNets;

pub const SB_WEBHOOK_BIND: &str = "SB_WEBHOOK_BIND";
pub const SB_WEBHOOK_DATABASE_URL: &str = "SB_WEBHOOK_DATABASE_URL";
pub const SB_WEBHOOK_DB_SCHEMA: &str = "SB_WEBHOOK_DB_SCHEMA";
pub const SB_WEBHOOK_DB_MAX_CONNECTIONS: &str = "SB_WEBHOOK_DB_MAX_CONNECTIONS";
pub const SB_WEBHOOK_ALLOW_NETS: &str = "SB_WEBHOOK_ALLOW_NETS";
pub const SB_WEBHOOK_TIMEOUT_MS: &str = "SB_WEBHOOK_TIMEOUT_MS";
pub const SB_WEBHOOK_CONNECT_TIMEOUT_MS: &str = "SB_WEBHOOK_CONNECT_TIMEOUT_MS";
pub const SB_WEBHOOK_RETRY_BASE_MS: &str = "SB_WEBHOOK_RETRY_BASE_MS";
pub const SB_WEBHOOK_RETRY_MAX_DELAY_MS: &str = "SB_WEBHOOK_RETRY_MAX_DELAY_MS";
pub const SB_WEBHOOK_RETRY_FOR_SECS: &str = "SB_WEBHOOK_RETRY_FOR_SECS";
pub const SB_WEBHOOK_DISABLE_AFTER_FAILURES: &str = "SB_WEBHOOK_DISABLE_AFTER_FAILURES";
pub const SB_WEBHOOK_DISABLE_AFTER_SECS: &str = "SB_WEBHOOK_DISABLE_AFTER_SECS";
pub const SB_WEBHOOK_MAX_PENDING: &str = "SB_WEBHOOK_MAX_PENDING";
pub const SB_WEBHOOK_IN_FLIGHT: &str = "SB_WEBHOOK_IN_FLIGHT";
pub const SB_WEBHOOK_SECRET_OVERLAP_SECS: &str = "SB_WEBHOOK_SECRET_OVERLAP_SECS";
pub const SB_WEBHOOK_RETENTION_SECS: &str = "SB_WEBHOOK_RETENTION_SECS";
pub const SB_WEBHOOK_MAX_ENDPOINTS: &str = "SB_WEBHOOK_MAX_ENDPOINTS";

/// The dispatcher's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_WEBHOOK_BIND,
        default: Some("127.0.0.1:8501"),
        doc: "Address the endpoint API (`/server/v1/webhooks`) and `/live` `/ready` `/metrics` \
              listen on.",
    },
    EnvVar {
        name: SB_WEBHOOK_DATABASE_URL,
        default: Some("postgres://switchboard@127.0.0.1:5432/switchboard"),
        doc: "PostgreSQL connection URL (the message service's database may be shared: the \
              dispatcher keeps its tables and its migration history in a schema of its own, \
              SB_WEBHOOK_DB_SCHEMA).",
    },
    EnvVar {
        name: SB_WEBHOOK_DB_SCHEMA,
        default: Some("webhooks"),
        doc: "The PostgreSQL schema the dispatcher's tables and `_sqlx_migrations` live in: \
              created at startup, and the only schema on its connections' `search_path`, so \
              its migrations never meet another service's.",
    },
    EnvVar {
        name: SB_WEBHOOK_DB_MAX_CONNECTIONS,
        default: Some("10"),
        doc: "Size of the dispatcher's database pool.",
    },
    EnvVar {
        name: SB_WEBHOOK_ALLOW_NETS,
        default: None,
        doc: "Networks (comma separated, e.g. 10.1.0.0/16,127.0.0.1/32) that endpoints may \
              reach although they are loopback, link-local, private, unique-local, \
              unspecified or multicast. Unset: none; such destinations are refused at \
              registration and at every delivery.",
    },
    EnvVar {
        name: SB_WEBHOOK_TIMEOUT_MS,
        default: Some("10000"),
        doc: "Longest one delivery attempt may take, connect to last byte of the answer; a \
              slower endpoint counts as failed and is retried.",
    },
    EnvVar {
        name: SB_WEBHOOK_CONNECT_TIMEOUT_MS,
        default: Some("3000"),
        doc: "Longest the TCP and TLS connect of one attempt may take.",
    },
    EnvVar {
        name: SB_WEBHOOK_RETRY_BASE_MS,
        default: Some("2000"),
        doc: "Retry schedule: the n-th retry waits a random time up to \
              min(SB_WEBHOOK_RETRY_MAX_DELAY_MS, this × 2^(n-1)) (full jitter), or the \
              endpoint's Retry-After if longer (capped the same way).",
    },
    EnvVar {
        name: SB_WEBHOOK_RETRY_MAX_DELAY_MS,
        default: Some("3600000"),
        doc: "The longest wait between two attempts of one delivery (the cap of the backoff \
              and of Retry-After).",
    },
    EnvVar {
        name: SB_WEBHOOK_RETRY_FOR_SECS,
        default: Some("86400"),
        doc: "How long a delivery is retried: one still failing this long after it was \
              recorded is dead-lettered (kept with state `dead`, counted) and the next one of \
              its conversation goes.",
    },
    EnvVar {
        name: SB_WEBHOOK_DISABLE_AFTER_FAILURES,
        default: Some("100"),
        doc: "An endpoint is disabled after this many consecutive failed attempts that also \
              span SB_WEBHOOK_DISABLE_AFTER_SECS (both must hold). 410 Gone disables at once.",
    },
    EnvVar {
        name: SB_WEBHOOK_DISABLE_AFTER_SECS,
        default: Some("259200"),
        doc: "The time the consecutive failures must span before an endpoint is disabled \
              (3 days), so a short outage never disables one.",
    },
    EnvVar {
        name: SB_WEBHOOK_MAX_PENDING,
        default: Some("100000"),
        doc: "Most undelivered deliveries stored per endpoint: past it, new events for that \
              endpoint are dead-lettered at once (counted), so a dead endpoint cannot fill \
              the database while it waits to be disabled.",
    },
    EnvVar {
        name: SB_WEBHOOK_IN_FLIGHT,
        default: Some("8"),
        doc: "Most requests in flight per endpoint (each to a different conversation: one \
              conversation's deliveries go one at a time, in order).",
    },
    EnvVar {
        name: SB_WEBHOOK_SECRET_OVERLAP_SECS,
        default: Some("86400"),
        doc: "After a secret rotation, how long the old secret keeps signing beside the new \
              one (several `v1,` signatures in `webhook-signature`).",
    },
    EnvVar {
        name: SB_WEBHOOK_RETENTION_SECS,
        default: Some("604800"),
        doc: "How long delivered and dead-lettered deliveries are kept (their ids deduplicate \
              a re-read of the topics).",
    },
    EnvVar {
        name: SB_WEBHOOK_MAX_ENDPOINTS,
        default: Some("100"),
        doc: "Most endpoints that may be registered; past it `POST /server/v1/webhooks` is \
              refused.",
    },
];

/// The dispatcher's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Webhook dispatcher",
    vars: ENV,
};

/// The API keys table (service-kit's): the endpoint API takes keys with `webhooks:manage`.
pub const API_KEYS_TABLE: EnvTable = EnvTable {
    title: "API keys (webhook dispatcher)",
    vars: switchboard_service_kit::api_keys::ENV,
};

/// Everything the webhook-dispatcher binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    COMMON[2],
    switchboard_kafka::TABLE,
    TABLE,
    API_KEYS_TABLE,
    switchboard_service_kit::tls::POSTGRES_TABLE,
    // The push notifier: its own settings, and Redis for presence.
    crate::push::TABLE,
    COMMON[1],
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
    pub redis: switchboard_service_kit::redis_sentinel::RedisConfig,
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
            redis: switchboard_service_kit::redis_sentinel::RedisConfig::from_lookup(lookup)?,
        })
    }
}
