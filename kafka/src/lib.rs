//! Kafka client settings for every Switchboard service, in one place so producers and
//! consumers never disagree (the records themselves are `switchboard-message-log`).
//!
//! Producers run with `acks=all`: a record the broker acknowledged is durable. Producer
//! idempotence is off by default (`SB_KAFKA_IDEMPOTENCE`, see [`KafkaConfig::idempotence`]):
//! tansu, the local broker, wedges for good when an idempotent producer's requests time out
//! (docs/broker.md), and Switchboard does not need it, because every consumer already
//! deduplicates by the project's own keys.

use rdkafka::config::ClientConfig;
use switchboard_service_kit::config::{
    lookup_bool, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_service_kit::env::{EnvTable, EnvVar};

pub const SB_KAFKA_BROKERS: &str = "SB_KAFKA_BROKERS";
pub const SB_MESSAGE_TOPIC: &str = "SB_MESSAGE_TOPIC";
pub const SB_EVENTS_TOPIC: &str = "SB_EVENTS_TOPIC";
pub const SB_HANDLER_TOPIC_PREFIX: &str = "SB_HANDLER_TOPIC_PREFIX";
pub const SB_KAFKA_LINGER_MS: &str = "SB_KAFKA_LINGER_MS";
pub const SB_KAFKA_IDEMPOTENCE: &str = "SB_KAFKA_IDEMPOTENCE";
pub const SB_KAFKA_REPLICATION_FACTOR: &str = "SB_KAFKA_REPLICATION_FACTOR";

/// The producer's `message.max.bytes`: the largest Kafka record (and produce request message
/// set) a producer sends; librdkafka refuses a larger record with `MSG_SIZE_TOO_LARGE`. Set
/// explicitly (it is librdkafka's default too) because the envelope caps below are derived
/// from it: change it here and they follow. Apache Kafka's broker accepts up to 1,048,588
/// bytes per record batch by default, so this fits under the broker's limit as well.
pub const MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The most encoded bytes one envelope (a log or handler-topic record holding many messages)
/// may take: a message that would take it past them starts the next envelope, and one larger
/// on its own goes alone (it fits [`RECORD_MAX_BYTES`]). Half of [`MESSAGE_MAX_BYTES`]: far
/// enough under it that the framing, Kafka's headers or a broker with a slightly lower limit
/// never matter for an envelope of many messages.
pub const ENVELOPE_MAX_BYTES: usize = MESSAGE_MAX_BYTES / 2;

/// The most encoded bytes one record (one message's JSON) may have: an envelope holding it
/// alone must still fit [`MESSAGE_MAX_BYTES`], with room left for the envelope's own framing
/// (`{"trace":"<ulid>","records":[...]}`) and Kafka's record and batch headers.
pub const RECORD_MAX_BYTES: usize = MESSAGE_MAX_BYTES - 16 * 1024;

/// What [`KafkaConfig::from_lookup`] (and so `from_env`) reads (the socket servers, managers and message service).
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_KAFKA_BROKERS,
        default: Some("127.0.0.1:9092"),
        doc: "Bootstrap servers of the broker, comma separated.",
    },
    EnvVar {
        name: SB_MESSAGE_TOPIC,
        default: Some("sb.messages"),
        doc: "The message log topic (partitioned by conversation).",
    },
    EnvVar {
        name: SB_EVENTS_TOPIC,
        default: Some("sb.events"),
        doc: "The events topic (read receipts and presence changes).",
    },
    EnvVar {
        name: SB_HANDLER_TOPIC_PREFIX,
        default: Some("sb.handler."),
        doc: "Prefix of the per-socket-server delivery topics (the prefix plus the server id).",
    },
    EnvVar {
        name: SB_KAFKA_LINGER_MS,
        default: Some("2"),
        doc: "How long a producer waits to fill a batch, in milliseconds: a few milliseconds of \
              latency buy far fewer, larger produce requests under load.",
    },
    EnvVar {
        name: SB_KAFKA_IDEMPOTENCE,
        default: Some("false"),
        doc: "true: producers run with enable.idempotence. Off is safe (every reader \
              deduplicates by the project's own keys, acks=all either way) and is the default \
              because tansu, the local broker, wedges when an idempotent producer's requests \
              time out. May be turned on with Apache Kafka.",
    },
    EnvVar {
        name: SB_KAFKA_REPLICATION_FACTOR,
        default: Some("1"),
        doc: "Replicas of each topic the managers create: 1 for the single local broker, 3 on \
              a managed cluster. Topics that already exist keep theirs.",
    },
];

/// The Kafka table, for `--help` of the binaries that talk to the broker.
pub const TABLE: EnvTable = EnvTable {
    title: "Kafka (socket server, socket manager, message service)",
    vars: ENV,
};

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
    /// Reads [`ENV`] from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads [`ENV`] from `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(KafkaConfig {
            brokers: lookup_string(lookup, SB_KAFKA_BROKERS, "127.0.0.1:9092"),
            message_topic: lookup_string(lookup, SB_MESSAGE_TOPIC, "sb.messages"),
            events_topic: lookup_string(lookup, SB_EVENTS_TOPIC, "sb.events"),
            handler_topic_prefix: lookup_string(lookup, SB_HANDLER_TOPIC_PREFIX, "sb.handler."),
            linger_ms: lookup_or(lookup, SB_KAFKA_LINGER_MS, 2)?,
            idempotence: lookup_bool(lookup, SB_KAFKA_IDEMPOTENCE, false)?,
            replication_factor: lookup_or(lookup, SB_KAFKA_REPLICATION_FACTOR, 1)?,
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
            // Explicit, because the managers size envelopes (and refuse sends) by it.
            .set("message.max.bytes", MESSAGE_MAX_BYTES.to_string())
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("request.timeout.ms", timeout_ms.min(30_000).to_string())
            .set("socket.keepalive.enable", "true")
            .set("reconnect.backoff.max.ms", "500");
        config
    }

    /// A consumer in `group`; offsets are stored by the application after it has handled a
    /// record (at-least-once) and committed in the background. A fetch is answered as soon as
    /// records are there; one that finds none waits up to `fetch_wait_ms` for a produce (the
    /// local broker, tansu with `scripts/tansu/0002-fetch-answers-when-records-arrive.patch`,
    /// reads again when one of the fetch's topics gets records).
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

    /// A [`Self::consumer_config`] whose fetches let records accumulate for `fetch_wait_ms`
    /// (or until a MiB is there): for consumers that copy the log in bulk, where a fetch per
    /// produce would cost the broker a storage read per produce for no one's benefit.
    pub fn accumulating_consumer_config(&self, group: &str, fetch_wait_ms: u64) -> ClientConfig {
        let mut config = self.consumer_config(group, fetch_wait_ms);
        config.set("fetch.min.bytes", ACCUMULATE_BYTES.to_string());
        config
    }
}

/// What an accumulating fetch waits for before its wait is up.
const ACCUMULATE_BYTES: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn producers_carry_the_record_limit_the_caps_derive_from() {
        let config = KafkaConfig::from_lookup(&|_| None).unwrap();
        assert_eq!(
            config.producer_config(1000).get("message.max.bytes"),
            Some(MESSAGE_MAX_BYTES.to_string().as_str())
        );
        const { assert!(ENVELOPE_MAX_BYTES < RECORD_MAX_BYTES) };
        const { assert!(RECORD_MAX_BYTES < MESSAGE_MAX_BYTES) };
    }
}
