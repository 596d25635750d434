//! The Kafka clients' variables (socket servers, managers, message service, webhook
//! dispatcher). Parsed by `switchboard-kafka`'s `KafkaConfig`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_EVENTS_TOPIC, SB_HANDLER_TOPIC_PREFIX, SB_KAFKA_BROKERS, SB_KAFKA_CA_FILE,
    SB_KAFKA_IDEMPOTENCE, SB_KAFKA_LINGER_MS, SB_KAFKA_REPLICATION_FACTOR, SB_KAFKA_SASL_MECHANISM,
    SB_KAFKA_SASL_PASSWORD, SB_KAFKA_SASL_USERNAME, SB_KAFKA_SECURITY_PROTOCOL, SB_MESSAGE_TOPIC,
};

/// What `KafkaConfig::from_lookup` (and so `from_env`) reads (the socket servers, managers and
/// message service).
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
    EnvVar {
        name: SB_KAFKA_SECURITY_PROTOCOL,
        default: Some("plaintext"),
        doc: "How clients reach the brokers: plaintext, ssl (TLS), sasl_plaintext (SASL \
              without TLS) or sasl_ssl (SASL over TLS, what managed Kafka asks for). With TLS \
              the broker's certificate and host name are always verified.",
    },
    EnvVar {
        name: SB_KAFKA_CA_FILE,
        default: None,
        doc: "A PEM file of CA certificates that verify the brokers (ssl, sasl_ssl; \
              librdkafka's ssl.ca.location). Unset: the system's CA bundle.",
    },
    EnvVar {
        name: SB_KAFKA_SASL_MECHANISM,
        default: None,
        doc: "SASL mechanism for sasl_plaintext and sasl_ssl: PLAIN, SCRAM-SHA-256 or \
              SCRAM-SHA-512 (required with those protocols).",
    },
    EnvVar {
        name: SB_KAFKA_SASL_USERNAME,
        default: None,
        doc: "SASL user name (required with sasl_plaintext and sasl_ssl).",
    },
    EnvVar {
        name: SB_KAFKA_SASL_PASSWORD,
        default: None,
        doc: "SASL password (required with sasl_plaintext and sasl_ssl).",
    },
];

/// The Kafka table, for `--help` of the binaries that talk to the broker.
pub const TABLE: EnvTable = EnvTable {
    title: "Kafka (socket server, socket manager, message service)",
    vars: ENV,
};
