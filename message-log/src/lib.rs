//! The Kafka side of Switchboard, in one place so producers and consumers never disagree.
//!
//! Topics:
//! - the message log ([`KafkaConfig::message_topic`], default `sb.messages`), keyed by
//!   conversation id, so one conversation's records stay in one partition in `seq` order. The
//!   message service consumes it into SQL.
//! - one topic per socket handler (`sb.handler.<handler id>`), created when the handler
//!   registers with a manager and deleted when it is evicted. A record carries one frame and
//!   every local recipient of it on that handler ([`HandlerRecord`]): one record per target
//!   handler, not one per device.
//! - the events topic (default `sb.events`): receipts, presence, connects and disconnects, for
//!   other consumers.
//!
//! Producers run with `acks=all`: a record the broker acknowledged is durable. Producer
//! idempotence is off by default (`SB_KAFKA_IDEMPOTENCE`, see [`KafkaConfig::idempotence`]):
//! tansu, the local broker, wedges for good when an idempotent producer's requests time out
//! (docs/broker.md), and Switchboard does not need it, because every consumer already
//! deduplicates by the project's own keys. A producer retry may then write a record twice;
//! readers drop the repeat.

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};
use switchboard_service_kit::config::{env_bool, env_string, ConfigError};

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers (`SB_KAFKA_BROKERS`, default `127.0.0.1:9092`).
    pub brokers: String,
    /// The message log topic (`SB_MESSAGE_TOPIC`, default `sb.messages`).
    pub message_topic: String,
    /// The events topic (`SB_EVENTS_TOPIC`, default `sb.events`).
    pub events_topic: String,
    /// Prefix of per-handler topics (`SB_HANDLER_TOPIC_PREFIX`, default `sb.handler.`).
    pub handler_topic_prefix: String,
    /// How long the producer waits to fill a batch (`SB_KAFKA_LINGER_MS`, default 2): a few
    /// milliseconds of latency buy far fewer, larger produce requests under load.
    pub linger_ms: u64,
    /// Whether producers run with `enable.idempotence=true` (`SB_KAFKA_IDEMPOTENCE`, default
    /// off).
    ///
    /// Off is safe: idempotence only stops a producer *retry* from writing a record twice (or
    /// out of order), and every reader already copes with both by the project's own keys. The
    /// message service stores by the primary key `(conversation_id, seq)` and the unique
    /// `message_id` (`ON CONFLICT DO NOTHING`), so a repeated log record is a no-op; a socket
    /// handler's reorder buffer restores `seq` order and drops a late or repeated message
    /// (devices fill gaps from history); receipts are cumulative positions that only move
    /// forward. `acks=all` stays on either way, so an acknowledged record is never lost.
    ///
    /// Off is the default because tansu 0.6 (the local broker, SQLite engine) wedges when an
    /// idempotent producer's requests time out, e.g. during a stall of the broker: its storage
    /// task panics (`idempotent_message_check`, "more or less than one row") and from then on
    /// it answers every produce with an error until it is restarted (docs/broker.md). With
    /// Apache Kafka (docker-compose) it may be turned on.
    pub idempotence: bool,
    /// Replicas of each topic the managers create (`SB_KAFKA_REPLICATION_FACTOR`, default 1
    /// for the single local broker; 3 on a managed cluster, see docs/deploy.md). Topics that
    /// already exist keep theirs.
    pub replication_factor: i32,
}

impl KafkaConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(KafkaConfig {
            brokers: env_string("SB_KAFKA_BROKERS", "127.0.0.1:9092"),
            message_topic: env_string("SB_MESSAGE_TOPIC", "sb.messages"),
            events_topic: env_string("SB_EVENTS_TOPIC", "sb.events"),
            handler_topic_prefix: env_string("SB_HANDLER_TOPIC_PREFIX", "sb.handler."),
            linger_ms: switchboard_service_kit::config::env_or("SB_KAFKA_LINGER_MS", 2)?,
            idempotence: env_bool("SB_KAFKA_IDEMPOTENCE", false)?,
            replication_factor: switchboard_service_kit::config::env_or(
                "SB_KAFKA_REPLICATION_FACTOR",
                1,
            )?,
        })
    }

    pub fn handler_topic(&self, handler_id: &str) -> String {
        format!("{}{}", self.handler_topic_prefix, handler_id)
    }

    /// An `acks=all` producer that batches briefly (`linger_ms`) and gives up on a record
    /// after `timeout_ms`, so a broker outage surfaces as an error, not a hang. Idempotent only
    /// if [`Self::idempotence`] says so.
    pub fn producer_config(&self, timeout_ms: u64) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", self.idempotence.to_string())
            .set("acks", "all")
            // What idempotence implies anyway; without it librdkafka allows a million requests
            // in flight, and tansu, which stores them one at a time, drowns in tiny requests.
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", "none")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("request.timeout.ms", timeout_ms.min(30_000).to_string())
            .set("socket.keepalive.enable", "true")
            .set("reconnect.backoff.max.ms", "500");
        config
    }

    /// A consumer in `group`; offsets are stored by the application after it has handled a
    /// record (at-least-once) and committed in the background. `fetch_wait_ms` is how long a
    /// fetch may wait for data: short for live delivery, longer where latency matters less
    /// (tansu, the local broker, holds every fetch for the full wait and queries its storage
    /// once per partition per fetch, so short waits cost broker CPU).
    pub fn consumer_config(&self, group: &str, fetch_wait_ms: u64) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("reconnect.backoff.max.ms", "500");
        config
    }
}

/// One record of the message log: a message with its assigned `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub conversation_id: String,
    pub seq: u64,
    pub message_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// One Kafka record of the message log: every message a manager appended to one partition in
/// one flush. Batching many messages into one broker record is what keeps the broker's cost
/// per message low (tansu stores each record with its own `INSERT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEnvelope {
    pub records: Vec<LogRecord>,
}

/// The messages of one message-log Kafka record: an envelope, or (as written before
/// envelopes) a single record.
pub fn decode_log_records(payload: &[u8]) -> Result<Vec<LogRecord>, serde_json::Error> {
    decode_records(payload)
}

/// An envelope of `T`s (`{"records":[...]}`, the shape of [`LogEnvelope`] and
/// [`HandlerEnvelope`]), or one `T` on its own.
fn decode_records<T: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<Vec<T>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Records<T> {
        records: Vec<T>,
    }
    match serde_json::from_slice::<Records<T>>(payload) {
        Ok(envelope) => Ok(envelope.records),
        Err(envelope_error) => serde_json::from_slice::<T>(payload)
            .map(|record| vec![record])
            .map_err(|_| envelope_error),
    }
}

/// The message-log partition of a conversation. The log is partitioned explicitly (not by
/// the client library's key hash) so that one envelope holds one partition's messages; FNV-1a
/// is stable across processes, versions and client libraries.
pub fn log_partition(conversation_id: &str, partitions: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in conversation_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % partitions.max(1).unsigned_abs()) as i32
}

/// One Kafka record of a handler's topic: every frame a manager routed to that handler in one
/// flush, in the order it routed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerEnvelope {
    pub records: Vec<HandlerRecord>,
}

/// The frames of one handler-topic Kafka record: an envelope, or a single record.
pub fn decode_handler_records(payload: &[u8]) -> Result<Vec<HandlerRecord>, serde_json::Error> {
    decode_records(payload)
}

/// One record on a handler's topic: a server frame and who on that handler gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRecord {
    /// Users whose every local device gets the frame.
    pub recipients: Vec<String>,
    /// A connection on this handler that must not get it (the sending device, which gets
    /// `sent` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_connection: Option<u64>,
    /// The serialized server frame, forwarded verbatim.
    pub frame: String,
    /// For `message` frames: when the message was accepted (ms since the epoch), so the
    /// handler can measure end-to-end delivery latency without parsing the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at_ms: Option<i64>,
    /// For `message` frames: the conversation and `seq`, so the handler can restore `seq`
    /// order when two managers' records for one conversation land out of order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_record_round_trips_and_omits_empty_skip() {
        let record = HandlerRecord {
            recipients: vec!["bob".into()],
            skip_connection: None,
            frame: r#"{"type":"pong"}"#.into(),
            accepted_at_ms: None,
            order: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("skip_connection"));
        assert_eq!(
            serde_json::from_str::<HandlerRecord>(&json).unwrap(),
            record
        );
    }

    #[test]
    fn envelopes_and_single_records_both_decode() {
        let record = LogRecord {
            conversation_id: "c".into(),
            seq: 1,
            message_id: "m".into(),
            sender_id: "u".into(),
            client_msg_id: "x".into(),
            body: "hi".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
        };
        let single = serde_json::to_vec(&record).unwrap();
        assert_eq!(decode_log_records(&single).unwrap(), vec![record.clone()]);
        let envelope = serde_json::to_vec(&LogEnvelope {
            records: vec![record.clone(), record.clone()],
        })
        .unwrap();
        assert_eq!(decode_log_records(&envelope).unwrap().len(), 2);
        assert!(decode_log_records(b"{}").is_err());
        assert!(decode_handler_records(b"[").is_err());
    }

    #[test]
    fn log_partitions_are_stable_and_in_range() {
        assert_eq!(
            log_partition("01ARZ3NDEKTSV4RRFFQ69G5FAV", 8),
            log_partition("01ARZ3NDEKTSV4RRFFQ69G5FAV", 8)
        );
        for i in 0..100 {
            let p = log_partition(&format!("conv-{i}"), 8);
            assert!((0..8).contains(&p));
        }
        assert_eq!(log_partition("x", 1), 0);
        assert_eq!(log_partition("x", 0), 0);
    }

    #[test]
    fn handler_topics_are_prefixed() {
        let config = KafkaConfig {
            brokers: "b".into(),
            message_topic: "m".into(),
            events_topic: "e".into(),
            handler_topic_prefix: "sb.handler.".into(),
            linger_ms: 5,
            idempotence: false,
            replication_factor: 1,
        };
        assert_eq!(config.handler_topic("h1"), "sb.handler.h1");
    }
}

/// A record of the events topic: things other consumers (the message service, analytics)
/// want to know that are not messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A member's cumulative delivered/read position in a conversation.
    Receipt {
        conversation_id: String,
        user_id: String,
        /// `delivered` or `read`.
        kind: String,
        seq: u64,
    },
    /// A user's first device came online or last device went away.
    Presence {
        user_id: String,
        online: bool,
        /// RFC 3339 UTC.
        at: String,
    },
}
