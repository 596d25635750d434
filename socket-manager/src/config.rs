//! ManagerConfig: this service's settings, read from the environment.

use std::time::Duration;

use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::config::{
    env_bool, env_millis, env_or, env_string, CommonConfig, ConfigError,
};

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub common: CommonConfig,
    pub kafka: KafkaConfig,
    /// `SB_MANAGER_BIND`, default `127.0.0.1:8201`.
    pub bind: String,
    /// Where the message service answers (`SB_MESSAGE_SERVICE_URL`, default
    /// `http://127.0.0.1:8401`).
    pub message_service_url: String,
    /// Sequence lock lease (`SB_LOCK_TTL_MS`, default 5000).
    pub lock_ttl: Duration,
    /// Longest wait for a sequence lock (`SB_LOCK_WAIT_MS`, default 3000).
    pub lock_wait: Duration,
    /// How long a produce may take before the send fails (`SB_PRODUCE_TIMEOUT_MS`, default 3000).
    pub produce_timeout_ms: u64,
    /// How long `client_msg_id`s are remembered (`SB_IDEMPOTENCY_TTL_SECS`, default 86400).
    pub idempotency_ttl_secs: u64,
    /// User-to-handler mapping lifetime (`SB_USER_MAPPING_TTL_MS`, default 900000).
    pub user_mapping_ttl_ms: i64,
    /// Handler liveness lifetime (`SB_HANDLER_TTL_MS`, default 6000).
    pub handler_ttl_ms: i64,
    /// Partitions of the message log (`SB_MESSAGE_PARTITIONS`, default 8).
    pub message_partitions: i32,
    /// Presence frames go to members of conversations up to this size
    /// (`SB_PRESENCE_MAX_GROUP`, default 100).
    pub presence_max_group: usize,
    /// Delete a dead handler's topic (`SB_DELETE_HANDLER_TOPICS`, default true). The local
    /// stack turns it off: tansu 0.6's SQLite engine corrupts its state on topic deletion.
    pub delete_handler_topics: bool,
    /// Replicas that must hold a sequence number before it is used (`SB_SEQ_REPLICA_ACKS`,
    /// default 1; 0 for a Redis without replicas): a failover then cannot roll a counter back
    /// under an acknowledged message.
    pub seq_replica_acks: u32,
    /// How long numbering waits for those replicas (`SB_SEQ_REPLICA_ACK_TIMEOUT_MS`, default
    /// 500, below `SB_REDIS_TIMEOUT_MS`); past it the sends are answered `unavailable`.
    pub seq_replica_ack_timeout: Duration,
    /// This manager's name in sequence lease tokens (`SB_MANAGER_ID`, default the bind
    /// address).
    pub manager_id: String,
}

impl ManagerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(ManagerConfig {
            common: CommonConfig::from_env()?,
            kafka: KafkaConfig::from_env()?,
            bind: env_string("SB_MANAGER_BIND", "127.0.0.1:8201"),
            message_service_url: env_string("SB_MESSAGE_SERVICE_URL", "http://127.0.0.1:8401"),
            lock_ttl: env_millis("SB_LOCK_TTL_MS", 5_000)?,
            lock_wait: env_millis("SB_LOCK_WAIT_MS", 3_000)?,
            produce_timeout_ms: env_or("SB_PRODUCE_TIMEOUT_MS", 3_000)?,
            idempotency_ttl_secs: env_or("SB_IDEMPOTENCY_TTL_SECS", 86_400)?,
            user_mapping_ttl_ms: env_or("SB_USER_MAPPING_TTL_MS", 900_000)?,
            handler_ttl_ms: env_or("SB_HANDLER_TTL_MS", 6_000)?,
            message_partitions: env_or("SB_MESSAGE_PARTITIONS", 8)?,
            presence_max_group: env_or("SB_PRESENCE_MAX_GROUP", 100)?,
            seq_replica_acks: env_or("SB_SEQ_REPLICA_ACKS", 1)?,
            seq_replica_ack_timeout: env_millis("SB_SEQ_REPLICA_ACK_TIMEOUT_MS", 500)?,
            manager_id: env_string(
                "SB_MANAGER_ID",
                &env_string("SB_MANAGER_BIND", "127.0.0.1:8201"),
            ),
            delete_handler_topics: env_bool("SB_DELETE_HANDLER_TOPICS", true)?,
        })
    }
}
