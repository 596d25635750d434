//! The socket manager's settings, read from the environment (or any lookup of variables): its table
//! ([`tables::socket_manager`]) names every variable it reads itself (beside the common and Kafka
//! ones), `from_lookup` reads them (`from_env` from the process environment).

use std::num::NonZeroUsize;
use std::time::Duration;

use switchboard_config::env::EnvTable;
use switchboard_config::lookup::{
    lookup_bool, lookup_millis, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_DELETE_HANDLER_TOPICS, SB_HANDLER_TTL_MS, SB_IDEMPOTENCY_TTL_SECS, SB_LOCK_TTL_MS,
    SB_LOCK_WAIT_MS, SB_MANAGER_BIND, SB_MANAGER_ID, SB_MAX_BODY_BYTES, SB_MESSAGE_PARTITIONS,
    SB_MESSAGE_SERVICE_URL, SB_PRESENCE_MAX_GROUP, SB_PRODUCE_TIMEOUT_MS, SB_ROUTE_BROADCAST_FROM,
    SB_SEQ_FLUSHES_IN_FLIGHT, SB_SEQ_REPLICA_ACKS, SB_SEQ_REPLICA_ACK_TIMEOUT_MS,
    SB_TOKEN_MAX_LIFETIME_SECS, SB_TYPING_INTERVAL_MS, SB_USER_BYTES_BURST, SB_USER_BYTES_PER_MIN,
    SB_USER_FRAMES_BURST, SB_USER_FRAMES_PER_MIN, SB_USER_MAPPING_TTL_MS, SB_USER_SENDS_PER_DAY,
};
use switchboard_config::tables;
use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::config::CommonConfig;

/// What one message's record carries besides its body, at most, in encoded bytes: the field
/// names, the conversation and message ids, `seq`, the timestamp, a `client_msg_id` of 128
/// bytes escaped up to six times and a sender id of 128; rounded up to leave room for fields
/// a record may gain.
pub const RECORD_OVERHEAD_BYTES: usize = 4 * 1024;

/// How many times its size a body may take once encoded: a log record escapes it once
/// (`U+0001` is the six bytes `\u0001`), and a handler-topic record carries the `message`
/// frame, escaped JSON, as a string, so it is escaped again (`\\u0001`, seven).
pub const BODY_ESCAPE_FACTOR: usize = 7;

/// The largest `SB_MAX_BODY_BYTES` the manager accepts: a body of that size, however it
/// escapes, still makes a record that fits one produce
/// ([`switchboard_kafka::RECORD_MAX_BYTES`], from the producer's `message.max.bytes`).
pub const MAX_BODY_BYTES_LIMIT: usize =
    (switchboard_kafka::RECORD_MAX_BYTES - RECORD_OVERHEAD_BYTES) / BODY_ESCAPE_FACTOR;

/// Everything the socket-manager binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    tables::COMMON[0],
    tables::COMMON[1],
    tables::COMMON[2],
    tables::kafka::TABLE,
    tables::socket_manager::TABLE,
];

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
    /// User-to-socket-server mapping lifetime (`SB_USER_MAPPING_TTL_MS`, default 900000).
    pub user_mapping_ttl_ms: i64,
    /// How long a socket server may be missing from the directory before the janitor reaps it
    /// (`SB_HANDLER_TTL_MS`, default 6000).
    pub server_ttl_ms: i64,
    /// Partitions of the message log (`SB_MESSAGE_PARTITIONS`, default 1).
    pub message_partitions: i32,
    /// Presence frames go to members of conversations up to this size
    /// (`SB_PRESENCE_MAX_GROUP`, default 100).
    pub presence_max_group: usize,
    /// Delete a dead socket server's topic (`SB_DELETE_HANDLER_TOPICS`, default true). The local
    /// stack turns it off: tansu 0.6's SQLite engine corrupts its state on topic deletion.
    pub delete_server_topics: bool,
    /// Replicas that must hold a sequence number before it is used (`SB_SEQ_REPLICA_ACKS`,
    /// default 1; 0 for a Redis without replicas): a failover then cannot roll a counter back
    /// under an acknowledged message.
    pub seq_replica_acks: u32,
    /// How long numbering waits for those replicas (`SB_SEQ_REPLICA_ACK_TIMEOUT_MS`, default
    /// 500, below `SB_REDIS_TIMEOUT_MS`); past it the sends are answered `unavailable`.
    pub seq_replica_ack_timeout: Duration,
    /// Numbering flushes in flight at once, each on its own Redis connection
    /// (`SB_SEQ_FLUSHES_IN_FLIGHT`, default 2, at least 1).
    pub seq_flushes_in_flight: usize,
    /// Recipients from which a frame goes to every registered socket server
    /// (`SB_ROUTE_BROADCAST_FROM`, default 16).
    pub route_broadcast_from: usize,
    /// This manager's name in sequence lease tokens (`SB_MANAGER_ID`, default the bind
    /// address).
    pub manager_id: String,
    /// Largest message body in bytes (`SB_MAX_BODY_BYTES`, default 65536, at most
    /// [`MAX_BODY_BYTES_LIMIT`]): the edge's limit, checked again before numbering, because a
    /// send over it could make a record no produce accepts.
    pub max_body_bytes: usize,
    /// The per-user quotas and typing coalescing (`SB_USER_*`, `SB_TYPING_INTERVAL_MS`).
    pub quotas: crate::quota::QuotaSettings,
    /// The lifetime of a sessions-ended mark (`SB_TOKEN_MAX_LIFETIME_SECS`, default 7 days).
    pub token_max_lifetime_secs: u64,
}

impl ManagerConfig {
    /// Reads the settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings from `lookup` (a variable's value by name): the same parsing and
    /// defaults as `from_env`, from a map of one's own (tests).
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let bind = lookup_string(lookup, SB_MANAGER_BIND, "127.0.0.1:8201");
        let max_body_bytes = lookup_or(lookup, SB_MAX_BODY_BYTES, 64 * 1024)?;
        check_body_limit(max_body_bytes)?;
        let lock_ttl = lookup_millis(lookup, SB_LOCK_TTL_MS, 5_000)?;
        let produce_timeout_ms = lookup_or(lookup, SB_PRODUCE_TIMEOUT_MS, 3_000)?;
        check_lease(lock_ttl, produce_timeout_ms)?;
        let quotas = crate::quota::QuotaSettings {
            frames_per_min: lookup_or(lookup, SB_USER_FRAMES_PER_MIN, 12_000)?,
            frames_burst: lookup_or(lookup, SB_USER_FRAMES_BURST, 2_000)?,
            bytes_per_min: lookup_or(lookup, SB_USER_BYTES_PER_MIN, 64 * 1024 * 1024)?,
            bytes_burst: lookup_or(lookup, SB_USER_BYTES_BURST, 96 * 1024 * 1024)?,
            typing_interval_ms: lookup_or(lookup, SB_TYPING_INTERVAL_MS, 1_000)?,
            sends_per_day: lookup_or(lookup, SB_USER_SENDS_PER_DAY, 20_000)?,
        };
        check_quotas(&quotas, max_body_bytes)?;
        Ok(ManagerConfig {
            quotas,
            token_max_lifetime_secs: lookup_or(lookup, SB_TOKEN_MAX_LIFETIME_SECS, 604_800)?,
            common: CommonConfig::from_lookup(lookup)?,
            kafka: KafkaConfig::from_lookup(lookup)?,
            message_service_url: lookup_string(
                lookup,
                SB_MESSAGE_SERVICE_URL,
                "http://127.0.0.1:8401",
            ),
            lock_ttl,
            lock_wait: lookup_millis(lookup, SB_LOCK_WAIT_MS, 3_000)?,
            produce_timeout_ms,
            idempotency_ttl_secs: lookup_or(lookup, SB_IDEMPOTENCY_TTL_SECS, 86_400)?,
            user_mapping_ttl_ms: lookup_or(lookup, SB_USER_MAPPING_TTL_MS, 900_000)?,
            server_ttl_ms: lookup_or(lookup, SB_HANDLER_TTL_MS, 6_000)?,
            message_partitions: lookup_or(lookup, SB_MESSAGE_PARTITIONS, 1)?,
            presence_max_group: lookup_or(lookup, SB_PRESENCE_MAX_GROUP, 100)?,
            seq_replica_acks: lookup_or(lookup, SB_SEQ_REPLICA_ACKS, 1)?,
            seq_replica_ack_timeout: lookup_millis(lookup, SB_SEQ_REPLICA_ACK_TIMEOUT_MS, 500)?,
            seq_flushes_in_flight: lookup_or(
                lookup,
                SB_SEQ_FLUSHES_IN_FLIGHT,
                NonZeroUsize::new(2).expect("2 is not zero"),
            )?
            .get(),
            route_broadcast_from: lookup_or(lookup, SB_ROUTE_BROADCAST_FROM, 16)?,
            manager_id: lookup_string(lookup, SB_MANAGER_ID, &bind),
            delete_server_topics: lookup_bool(lookup, SB_DELETE_HANDLER_TOPICS, true)?,
            max_body_bytes,
            bind,
        })
    }
}

/// Refuses a body limit whose records could not be produced.
fn check_body_limit(max_body_bytes: usize) -> Result<(), ConfigError> {
    if max_body_bytes > MAX_BODY_BYTES_LIMIT {
        // Such a body could make a record every produce refuses: appended again and again,
        // it would stall its conversation and fail every record sharing its envelope.
        return Err(ConfigError {
            name: SB_MAX_BODY_BYTES.to_owned(),
            value: max_body_bytes.to_string(),
            reason: format!(
                "{BODY_ESCAPE_FACTOR} x the body + {RECORD_OVERHEAD_BYTES} must fit one Kafka \
                 record ({} bytes, message.max.bytes less room for the envelope): at most \
                 {MAX_BODY_BYTES_LIMIT}",
                switchboard_kafka::RECORD_MAX_BYTES
            ),
        });
    }
    Ok(())
}

/// Refuses a sequence lease that does not outlive an append.
fn check_lease(lock_ttl: Duration, produce_timeout_ms: u64) -> Result<(), ConfigError> {
    if lock_ttl.as_millis() < u128::from(produce_timeout_ms) + LEASE_MARGIN_MS {
        // A holder whose renewals stall (a pause, a partition from Redis) must still hold
        // the lease when its last append is decided, with time left to finish; otherwise
        // a second holder numbers while that append may still land (fenced by the store,
        // but the first holder's clients then wait out a resend).
        return Err(ConfigError {
            name: SB_LOCK_TTL_MS.to_owned(),
            value: lock_ttl.as_millis().to_string(),
            reason: format!(
                "the sequence lease must outlive an append: at least {SB_PRODUCE_TIMEOUT_MS} \
                 ({produce_timeout_ms}) + {LEASE_MARGIN_MS} ms"
            ),
        });
    }
    Ok(())
}

/// Refuses quotas that would refuse everything, or a body the byte burst could never pass.
fn check_quotas(
    quotas: &crate::quota::QuotaSettings,
    max_body_bytes: usize,
) -> Result<(), ConfigError> {
    if quotas.frames_per_min == 0 {
        return Ok(());
    }
    // A send larger than the byte burst could never pass, and a zero rate or burst would
    // refuse everything: both are mistakes, not limits.
    let refuse = |name: &str, value: u64, reason: &str| ConfigError {
        name: name.to_owned(),
        value: value.to_string(),
        reason: reason.to_owned(),
    };
    if quotas.frames_burst == 0 {
        return Err(refuse(
            SB_USER_FRAMES_BURST,
            0,
            "at least 1 while the quotas are on",
        ));
    }
    if quotas.bytes_per_min == 0 {
        return Err(refuse(
            SB_USER_BYTES_PER_MIN,
            0,
            "at least 1 while the quotas are on",
        ));
    }
    if quotas.bytes_burst < max_body_bytes as u64 {
        return Err(refuse(
            SB_USER_BYTES_BURST,
            quotas.bytes_burst,
            &format!("at least {SB_MAX_BODY_BYTES} ({max_body_bytes}): a larger body could never be sent"),
        ));
    }
    if quotas.typing_interval_ms == 0 {
        return Err(refuse(SB_TYPING_INTERVAL_MS, 0, "at least 1 ms"));
    }
    Ok(())
}

/// `SB_LOCK_TTL_MS` must be at least `SB_PRODUCE_TIMEOUT_MS` plus this (see `from_lookup`).
pub const LEASE_MARGIN_MS: u128 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_config::names::SB_DEV_MODE;

    #[test]
    fn a_lease_that_does_not_outlive_an_append_is_refused() {
        let config = |ttl: &'static str, produce: &'static str| {
            ManagerConfig::from_lookup(&move |name| match name {
                SB_LOCK_TTL_MS => Some(ttl.into()),
                SB_PRODUCE_TIMEOUT_MS => Some(produce.into()),
                SB_DEV_MODE => Some("true".into()),
                _ => None,
            })
        };
        assert_eq!(config("2000", "2000").unwrap_err().name, SB_LOCK_TTL_MS);
        assert!(config("2999", "2000").is_err());
        assert!(config("3000", "2000").is_ok());
        assert!(config("5000", "3000").is_ok(), "the defaults");
    }

    fn with_body_limit(value: &str) -> Result<ManagerConfig, ConfigError> {
        let value = value.to_owned();
        ManagerConfig::from_lookup(&move |name| match name {
            SB_MAX_BODY_BYTES => Some(value.clone()),
            SB_DEV_MODE => Some("true".into()),
            _ => None,
        })
    }

    #[test]
    fn a_body_limit_whose_records_cannot_be_produced_is_refused() {
        assert_eq!(with_body_limit("").unwrap().max_body_bytes, 65_536);
        let limit = MAX_BODY_BYTES_LIMIT.to_string();
        assert_eq!(
            with_body_limit(&limit).unwrap().max_body_bytes,
            MAX_BODY_BYTES_LIMIT
        );
        let over = (MAX_BODY_BYTES_LIMIT + 1).to_string();
        let refused = with_body_limit(&over).unwrap_err();
        assert_eq!(refused.name, SB_MAX_BODY_BYTES);
        assert!(with_body_limit("400000").is_err());
        // The number the docs give.
        assert_eq!(MAX_BODY_BYTES_LIMIT, 139_931);
        const {
            assert!(
                BODY_ESCAPE_FACTOR * 65_536 + RECORD_OVERHEAD_BYTES
                    <= switchboard_kafka::RECORD_MAX_BYTES
            )
        };
    }
}
