//! The socket manager's settings, read from the environment (or any lookup of variables): [`ENV`]
//! names every variable it reads itself (beside the common and Kafka ones), `from_lookup` reads
//! them (`from_env` from the process environment).

use std::num::NonZeroUsize;
use std::time::Duration;

use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::config::{
    lookup_bool, lookup_millis, lookup_or, lookup_string, process_env, CommonConfig, ConfigError,
    Lookup, COMMON,
};
use switchboard_service_kit::env::{EnvTable, EnvVar};

pub const SB_MANAGER_BIND: &str = "SB_MANAGER_BIND";
pub const SB_MESSAGE_SERVICE_URL: &str = "SB_MESSAGE_SERVICE_URL";
pub const SB_LOCK_TTL_MS: &str = "SB_LOCK_TTL_MS";
pub const SB_LOCK_WAIT_MS: &str = "SB_LOCK_WAIT_MS";
pub const SB_PRODUCE_TIMEOUT_MS: &str = "SB_PRODUCE_TIMEOUT_MS";
pub const SB_IDEMPOTENCY_TTL_SECS: &str = "SB_IDEMPOTENCY_TTL_SECS";
pub const SB_USER_MAPPING_TTL_MS: &str = "SB_USER_MAPPING_TTL_MS";
pub const SB_HANDLER_TTL_MS: &str = "SB_HANDLER_TTL_MS";
pub const SB_MESSAGE_PARTITIONS: &str = "SB_MESSAGE_PARTITIONS";
pub const SB_PRESENCE_MAX_GROUP: &str = "SB_PRESENCE_MAX_GROUP";
pub const SB_DELETE_HANDLER_TOPICS: &str = "SB_DELETE_HANDLER_TOPICS";
pub const SB_SEQ_REPLICA_ACKS: &str = "SB_SEQ_REPLICA_ACKS";
pub const SB_SEQ_REPLICA_ACK_TIMEOUT_MS: &str = "SB_SEQ_REPLICA_ACK_TIMEOUT_MS";
pub const SB_MANAGER_ID: &str = "SB_MANAGER_ID";
pub const SB_SEQ_FLUSHES_IN_FLIGHT: &str = "SB_SEQ_FLUSHES_IN_FLIGHT";
pub const SB_ROUTE_BROADCAST_FROM: &str = "SB_ROUTE_BROADCAST_FROM";
pub const SB_MAX_BODY_BYTES: &str = "SB_MAX_BODY_BYTES";
pub const SB_USER_FRAMES_PER_MIN: &str = "SB_USER_FRAMES_PER_MIN";
pub const SB_USER_FRAMES_BURST: &str = "SB_USER_FRAMES_BURST";
pub const SB_USER_BYTES_PER_MIN: &str = "SB_USER_BYTES_PER_MIN";
pub const SB_USER_BYTES_BURST: &str = "SB_USER_BYTES_BURST";
pub const SB_TYPING_INTERVAL_MS: &str = "SB_TYPING_INTERVAL_MS";
pub const SB_USER_SENDS_PER_DAY: &str = "SB_USER_SENDS_PER_DAY";
pub const SB_TOKEN_MAX_LIFETIME_SECS: &str = "SB_TOKEN_MAX_LIFETIME_SECS";

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

/// The socket manager's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_MANAGER_BIND,
        default: Some("127.0.0.1:8201"),
        doc: "Address the cluster-internal API listens on.",
    },
    EnvVar {
        name: SB_MESSAGE_SERVICE_URL,
        default: Some("http://127.0.0.1:8401"),
        doc: "Where the message service answers; asked for a conversation's members when the \
              Redis mirror of them is cold.",
    },
    EnvVar {
        name: SB_LOCK_TTL_MS,
        default: Some("5000"),
        doc: "Lease of a conversation's sequence lock, in milliseconds; at least \
              SB_PRODUCE_TIMEOUT_MS + 1000 (the manager refuses to start otherwise).",
    },
    EnvVar {
        name: SB_LOCK_WAIT_MS,
        default: Some("3000"),
        doc: "Longest wait for a sequence lock, in milliseconds.",
    },
    EnvVar {
        name: SB_PRODUCE_TIMEOUT_MS,
        default: Some("3000"),
        doc: "How long an append to the log may take before the send fails, in milliseconds.",
    },
    EnvVar {
        name: SB_IDEMPOTENCY_TTL_SECS,
        default: Some("86400"),
        doc: "How long a client_msg_id is remembered to deduplicate retried sends, in seconds.",
    },
    EnvVar {
        name: SB_USER_MAPPING_TTL_MS,
        default: Some("900000"),
        doc: "Lifetime of a user-to-socket-server mapping, in milliseconds; servers renew \
              theirs (SB_MAPPING_RENEW_MS).",
    },
    EnvVar {
        name: SB_HANDLER_TTL_MS,
        default: Some("6000"),
        doc: "How long a socket server may be missing from the directory, in milliseconds, \
              before the janitor removes its topic and mappings (a server lost in a Redis \
              failover registers again well within it).",
    },
    EnvVar {
        name: SB_MESSAGE_PARTITIONS,
        default: Some("1"),
        doc: "Partitions of the message and events topics when a manager creates them; an \
              existing topic keeps its own count, which every manager then uses. One suits \
              the local broker (tansu pays per partition for every produce and fetch); with \
              Apache Kafka and several ingesting message services, raise it.",
    },
    EnvVar {
        name: SB_PRESENCE_MAX_GROUP,
        default: Some("100"),
        doc: "Presence frames go to the members of a user's conversations up to this size.",
    },
    EnvVar {
        name: SB_DELETE_HANDLER_TOPICS,
        default: Some("true"),
        doc: "Whether the janitor deletes a dead socket server's topic. The local stack turns \
              it off: tansu 0.6's SQLite engine corrupts its state on topic deletion.",
    },
    EnvVar {
        name: SB_SEQ_REPLICA_ACKS,
        default: Some("1"),
        doc: "Redis replicas that must hold a sequence number before it is used (WAIT), so a \
              failover cannot roll a counter back under an acknowledged message; 0 for a \
              Redis without replicas.",
    },
    EnvVar {
        name: SB_SEQ_REPLICA_ACK_TIMEOUT_MS,
        default: Some("500"),
        doc: "How long numbering waits for those replicas, in milliseconds (keep it below \
              SB_REDIS_TIMEOUT_MS); past it the sends are answered `unavailable`.",
    },
    EnvVar {
        name: SB_SEQ_FLUSHES_IN_FLIGHT,
        default: Some("2"),
        doc: "Numbering flushes (one script for every queued conversation batch, then WAIT) in \
              flight at once, each on a Redis connection of its own: while one waits for the \
              replicas, the next takes the batches queued meanwhile. At least 1.",
    },
    EnvVar {
        name: SB_ROUTE_BROADCAST_FROM,
        default: Some("16"),
        doc: "Recipients from which a message (or a typing or presence frame) goes to every \
              registered socket server, each delivering to the recipients it holds, instead \
              of looking up where each recipient is connected (one Redis read per \
              recipient). Keep it above about twice the socket server count; above \
              SB_MAX_GROUP_MEMBERS it never applies.",
    },
    EnvVar {
        name: SB_MAX_BODY_BYTES,
        default: Some("65536"),
        doc: "Largest message body, in bytes: the socket servers' limit, checked again before a \
              send is numbered (keep it the same everywhere). The manager refuses to start when \
              7 x this + 4096 does not fit one Kafka record (message.max.bytes, 1,000,000, less \
              16 KiB), i.e. above 139,931.",
    },
    EnvVar {
        name: SB_USER_FRAMES_PER_MIN,
        default: Some("12000"),
        doc: "Frames (sends, typing, receipts) one user may have handled per minute across the \
              whole cluster, sustained (a token bucket per user in Redis, checked once per \
              batch; every manager shares it, however many connections and servers the user \
              spreads over). Beyond it: `rate_limited`. 0 turns the per-user quotas off.",
    },
    EnvVar {
        name: SB_USER_FRAMES_BURST,
        default: Some("2000"),
        doc: "The most frames one user may send at once when their bucket is full. Below a \
              quarter of it, the user's typing frames are dropped first.",
    },
    EnvVar {
        name: SB_USER_BYTES_PER_MIN,
        default: Some("67108864"),
        doc: "Bytes of message bodies one user may send per minute across the cluster, \
              sustained (64 MiB). Beyond it: `rate_limited`.",
    },
    EnvVar {
        name: SB_USER_BYTES_BURST,
        default: Some("100663296"),
        doc: "The most body bytes one user may send at once when their bucket is full (96 \
              MiB); at least SB_MAX_BODY_BYTES (the manager refuses to start otherwise).",
    },
    EnvVar {
        name: SB_USER_SENDS_PER_DAY,
        default: Some("20000"),
        doc: "Messages one user may send per day across the cluster (a bucket of this many, \
              refilled over a day); beyond it: `rate_limited`. It bounds the idempotency \
              records one user keeps in Redis (each lives SB_IDEMPOTENCY_TTL_SECS) to about \
              twice this. 0: no daily bound.",
    },
    EnvVar {
        name: SB_TYPING_INTERVAL_MS,
        default: Some("1000"),
        doc: "At most one typing frame per conversation and sender is passed on per this many \
              milliseconds, cluster-wide; the others are dropped and counted.",
    },
    EnvVar {
        name: SB_MANAGER_ID,
        default: None,
        doc: "This manager's name in sequence lease tokens. Unset: SB_MANAGER_BIND.",
    },
    EnvVar {
        name: SB_TOKEN_MAX_LIFETIME_SECS,
        default: Some("604800"),
        doc: "How long a user's sessions-ended mark is kept, in seconds: the longest token \
              lifetime (exp - iat) the socket servers accept (set it as theirs).",
    },
];

/// The socket manager's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Socket manager",
    vars: ENV,
};

/// Everything the socket-manager binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    COMMON[0],
    COMMON[1],
    COMMON[2],
    switchboard_kafka::TABLE,
    TABLE,
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

    #[test]
    fn a_lease_that_does_not_outlive_an_append_is_refused() {
        let config = |ttl: &'static str, produce: &'static str| {
            ManagerConfig::from_lookup(&move |name| match name {
                SB_LOCK_TTL_MS => Some(ttl.into()),
                SB_PRODUCE_TIMEOUT_MS => Some(produce.into()),
                "SB_DEV_MODE" => Some("true".into()),
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
            "SB_DEV_MODE" => Some("true".into()),
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
