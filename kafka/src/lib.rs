//! Kafka client settings for every Switchboard service, in one place so producers and
//! consumers never disagree (the records themselves are `switchboard-message-log`).
//!
//! Producers run with `acks=all`: a record the broker acknowledged is durable. Producer
//! idempotence is off by default (`SB_KAFKA_IDEMPOTENCE`, see [`KafkaConfig::idempotence`]):
//! tansu, the local broker, wedges for good when an idempotent producer's requests time out
//! (docs/broker.md), and Switchboard does not need it, because every consumer already
//! deduplicates by the project's own keys.
//!
//! Every client reaches the broker as [`KafkaSecurity`] says: plaintext by default, or TLS
//! (`ssl`), SASL (`sasl_plaintext`), or both (`sasl_ssl`, what managed Kafka services ask
//! for), with SASL `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`. With TLS the broker's
//! certificate and host name are always verified, against the system's CA bundle or
//! `SB_KAFKA_CA_FILE`.

use rdkafka::config::ClientConfig;
use switchboard_config::lookup::{
    lookup_bool, lookup_optional, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_EVENTS_TOPIC, SB_HANDLER_TOPIC_PREFIX, SB_KAFKA_BROKERS, SB_KAFKA_CA_FILE,
    SB_KAFKA_IDEMPOTENCE, SB_KAFKA_LINGER_MS, SB_KAFKA_REPLICATION_FACTOR, SB_KAFKA_SASL_MECHANISM,
    SB_KAFKA_SASL_PASSWORD, SB_KAFKA_SASL_USERNAME, SB_KAFKA_SECURITY_PROTOCOL, SB_MESSAGE_TOPIC,
};
use switchboard_config::secret::Secret;
use switchboard_config::tls::{self, CaFile};

mod check {
    //! A client context that keeps librdkafka's last error, so a failed connection check can
    //! say why (the handshake or authentication failure, not only "timed out").

    use std::sync::Mutex;

    use rdkafka::client::ClientContext;
    use rdkafka::error::KafkaError;
    use rdkafka::producer::ProducerContext;

    /// At most this many errors are kept (the first ones: the cause comes before the
    /// "all brokers down" that follows it).
    const KEPT: usize = 16;

    #[derive(Default)]
    pub struct RecordErrors(Mutex<Vec<String>>);

    impl RecordErrors {
        /// The most telling error: the first about TLS or SASL, else the first.
        pub fn cause(&self) -> Option<String> {
            let errors = self.0.lock().expect("error record lock");
            errors
                .iter()
                .find(|e| {
                    let lower = e.to_ascii_lowercase();
                    ["ssl", "sasl", "certificate", "handshake", "authenticat"]
                        .iter()
                        .any(|needle| lower.contains(needle))
                })
                .or(errors.first())
                .cloned()
        }
    }

    impl ClientContext for RecordErrors {
        fn error(&self, error: KafkaError, reason: &str) {
            let mut errors = self.0.lock().expect("error record lock");
            if errors.len() < KEPT {
                errors.push(format!("{error}: {reason}"));
            }
        }
    }

    impl ProducerContext for RecordErrors {
        type DeliveryOpaque = ();

        fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
    }
}

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
    /// TLS and SASL to the brokers (`SB_KAFKA_SECURITY_PROTOCOL` and the rest; plaintext by
    /// default).
    pub security: KafkaSecurity,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// SASL credentials; the password never appears in `Debug` output.
#[derive(Debug, Clone)]
pub struct SaslCredentials {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: Secret,
}

/// How clients reach the brokers.
#[derive(Debug, Clone, Default)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// Verifies the brokers' certificates (with [`SecurityProtocol::tls`]).
    pub ca_file: Option<CaFile>,
    /// With [`SecurityProtocol::sasl`].
    pub sasl: Option<SaslCredentials>,
}

impl KafkaSecurity {
    /// Reads the security settings of [`ENV`](switchboard_config::tables::kafka::ENV); a
    /// combination that cannot work (SASL without credentials, credentials or a CA the protocol
    /// would not use) is refused, naming the setting to fix.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let text = lookup_string(lookup, SB_KAFKA_SECURITY_PROTOCOL, "plaintext");
        let protocol = SecurityProtocol::parse(&text)?;
        let ca_file = CaFile::from_lookup(lookup, SB_KAFKA_CA_FILE)?;
        if let Some(ca) = &ca_file {
            if !protocol.tls() {
                return Err(invalid(
                    SB_KAFKA_CA_FILE,
                    &ca.path,
                    format!(
                        "only used with TLS: set {SB_KAFKA_SECURITY_PROTOCOL} to ssl or \
                         sasl_ssl, or unset it"
                    ),
                ));
            }
        }
        let settings = SaslSettings {
            mechanism: lookup_optional(lookup, SB_KAFKA_SASL_MECHANISM),
            username: lookup_optional(lookup, SB_KAFKA_SASL_USERNAME),
            password: lookup_optional(lookup, SB_KAFKA_SASL_PASSWORD),
        };
        let sasl = if protocol.sasl() {
            Some(settings.credentials(&text)?)
        } else {
            settings.refuse_unused()?;
            None
        };
        Ok(KafkaSecurity {
            protocol,
            ca_file,
            sasl,
        })
    }

    /// Sets `security.protocol` and the TLS and SASL properties on `config`.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.as_str());
        if self.protocol.tls() {
            // librdkafka's defaults, set explicitly: verification stays on even if a future
            // default changed.
            config
                .set("enable.ssl.certificate.verification", "true")
                .set("ssl.endpoint.identification.algorithm", "https");
            if let Some(ca) = &self.ca_file {
                config.set("ssl.ca.location", &ca.path);
            }
        }
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanisms", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
    }

    /// `error` (a broker connection failure as librdkafka reports it), naming the settings to
    /// check when it is about TLS or SASL.
    pub fn explain(&self, error: &str) -> String {
        let lower = error.to_ascii_lowercase();
        if self.sasl.is_some() && (lower.contains("sasl") || lower.contains("authentication")) {
            format!(
                "{error} (SASL: check {SB_KAFKA_SASL_MECHANISM}, {SB_KAFKA_SASL_USERNAME} and \
                 {SB_KAFKA_SASL_PASSWORD})"
            )
        } else if self.protocol.tls() {
            tls::explain(error, &[SB_KAFKA_CA_FILE, SB_KAFKA_SECURITY_PROTOCOL])
        } else {
            error.to_owned()
        }
    }
}

/// A [`ConfigError`] for `name=value`.
fn invalid(name: &str, value: &str, reason: String) -> ConfigError {
    ConfigError {
        name: name.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

impl SecurityProtocol {
    /// `SB_KAFKA_SECURITY_PROTOCOL`'s value `text`, in any case.
    fn parse(text: &str) -> Result<Self, ConfigError> {
        match text.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(invalid(
                SB_KAFKA_SECURITY_PROTOCOL,
                text,
                "expected plaintext, ssl, sasl_plaintext or sasl_ssl".into(),
            )),
        }
    }
}

/// The SASL settings as read, each `None` when unset.
struct SaslSettings {
    mechanism: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl SaslSettings {
    /// The credentials a SASL `protocol` (its setting's text) needs: all three settings, with
    /// a mechanism librdkafka knows.
    fn credentials(self, protocol: &str) -> Result<SaslCredentials, ConfigError> {
        let required = |name: &str, value: Option<String>| {
            value.ok_or_else(|| {
                invalid(
                    name,
                    "",
                    format!("required with {SB_KAFKA_SECURITY_PROTOCOL}={protocol}"),
                )
            })
        };
        let mechanism = required(SB_KAFKA_SASL_MECHANISM, self.mechanism)?;
        let mechanism = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => mechanism.to_ascii_uppercase(),
            _ => {
                return Err(invalid(
                    SB_KAFKA_SASL_MECHANISM,
                    &mechanism,
                    "expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".into(),
                ))
            }
        };
        Ok(SaslCredentials {
            mechanism,
            username: required(SB_KAFKA_SASL_USERNAME, self.username)?,
            password: Secret::new(required(SB_KAFKA_SASL_PASSWORD, self.password)?),
        })
    }

    /// Without SASL, any SASL setting is a mistake: named rather than silently ignored.
    fn refuse_unused(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            (SB_KAFKA_SASL_MECHANISM, &self.mechanism),
            (SB_KAFKA_SASL_USERNAME, &self.username),
            (SB_KAFKA_SASL_PASSWORD, &self.password),
        ] {
            if value.is_some() {
                return Err(invalid(
                    name,
                    "(set)",
                    format!(
                        "only used with SASL: set {SB_KAFKA_SECURITY_PROTOCOL} to \
                         sasl_ssl or sasl_plaintext, or unset it"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// Reads [`ENV`](switchboard_config::tables::kafka::ENV) from the process environment
    /// ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads [`ENV`](switchboard_config::tables::kafka::ENV) from `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(KafkaConfig {
            brokers: lookup_string(lookup, SB_KAFKA_BROKERS, "127.0.0.1:9092"),
            message_topic: lookup_string(lookup, SB_MESSAGE_TOPIC, "sb.messages"),
            events_topic: lookup_string(lookup, SB_EVENTS_TOPIC, "sb.events"),
            handler_topic_prefix: lookup_string(lookup, SB_HANDLER_TOPIC_PREFIX, "sb.handler."),
            linger_ms: lookup_or(lookup, SB_KAFKA_LINGER_MS, 2)?,
            idempotence: lookup_bool(lookup, SB_KAFKA_IDEMPOTENCE, false)?,
            replication_factor: lookup_or(lookup, SB_KAFKA_REPLICATION_FACTOR, 1)?,
            security: KafkaSecurity::from_lookup(lookup)?,
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
        self.security.apply(&mut config);
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
        self.security.apply(&mut config);
        config
    }

    /// Connects once as the services' clients do (the producer settings) and fetches the
    /// cluster's metadata within `timeout`: `Ok` when the brokers answered, else the reason
    /// librdkafka gave (a failed TLS handshake, refused SASL credentials, no broker), naming
    /// the setting to check ([`KafkaSecurity::explain`]). Blocks: call it off the runtime.
    pub fn check_connection(&self, timeout: std::time::Duration) -> Result<(), String> {
        use rdkafka::producer::{BaseProducer, Producer};
        let context = check::RecordErrors::default();
        let producer: BaseProducer<check::RecordErrors> = self
            .producer_config(timeout.as_millis().max(1000) as u64)
            .create_with_context(context)
            .map_err(|e| self.security.explain(&e.to_string()))?;
        match producer.client().fetch_metadata(None, timeout) {
            Ok(_) => Ok(()),
            Err(e) => {
                // librdkafka hands its error events (the handshake's reason) to the context
                // only when the client is polled.
                for _ in 0..10 {
                    producer.poll(std::time::Duration::from_millis(100));
                    if producer.context().cause().is_some() {
                        break;
                    }
                }
                let reason = match producer.context().cause() {
                    Some(reason) => format!("{e}: {reason}"),
                    None => e.to_string(),
                };
                Err(self.security.explain(&reason))
            }
        }
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
    use switchboard_config::lookup::from_pairs;

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
            security: KafkaSecurity::default(),
        };
        assert_eq!(config.handler_topic("h1"), "sb.handler.h1");
    }

    #[test]
    fn sasl_ssl_sets_the_librdkafka_properties_on_every_client() {
        let vars = [
            (SB_KAFKA_SECURITY_PROTOCOL, "SASL_SSL"),
            (SB_KAFKA_SASL_MECHANISM, "scram-sha-512"),
            (SB_KAFKA_SASL_USERNAME, "switchboard"),
            (SB_KAFKA_SASL_PASSWORD, "pw-never-logged"),
        ];
        let config = KafkaConfig::from_lookup(&from_pairs(&vars)).unwrap();
        assert!(!format!("{config:?}").contains("pw-never-logged"));
        for client in [
            config.producer_config(1000),
            config.consumer_config("g", 100),
        ] {
            assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
            assert_eq!(client.get("sasl.username"), Some("switchboard"));
            assert_eq!(client.get("sasl.password"), Some("pw-never-logged"));
            assert_eq!(
                client.get("enable.ssl.certificate.verification"),
                Some("true")
            );
        }
        let plain = KafkaConfig::from_lookup(&|_| None).unwrap();
        let producer = plain.producer_config(1000);
        assert_eq!(producer.get("security.protocol"), Some("plaintext"));
        assert_eq!(producer.get("sasl.username"), None);
    }

    #[test]
    fn combinations_that_cannot_work_name_the_setting() {
        let refused = |vars: &[(&str, &str)]| {
            KafkaConfig::from_lookup(&from_pairs(vars))
                .unwrap_err()
                .name
        };
        assert_eq!(
            refused(&[(SB_KAFKA_SECURITY_PROTOCOL, "tls")]),
            SB_KAFKA_SECURITY_PROTOCOL
        );
        assert_eq!(
            refused(&[(SB_KAFKA_SECURITY_PROTOCOL, "sasl_ssl")]),
            SB_KAFKA_SASL_MECHANISM
        );
        assert_eq!(
            refused(&[
                (SB_KAFKA_SECURITY_PROTOCOL, "sasl_ssl"),
                (SB_KAFKA_SASL_MECHANISM, "GSSAPI"),
            ]),
            SB_KAFKA_SASL_MECHANISM
        );
        assert_eq!(
            refused(&[
                (SB_KAFKA_SECURITY_PROTOCOL, "sasl_plaintext"),
                (SB_KAFKA_SASL_MECHANISM, "PLAIN"),
                (SB_KAFKA_SASL_USERNAME, "u"),
            ]),
            SB_KAFKA_SASL_PASSWORD
        );
        assert_eq!(
            refused(&[(SB_KAFKA_SASL_USERNAME, "u")]),
            SB_KAFKA_SASL_USERNAME,
            "credentials without SASL would be silently unused"
        );
        assert_eq!(
            refused(&[(SB_KAFKA_CA_FILE, "/nonexistent/ca.pem")]),
            SB_KAFKA_CA_FILE
        );
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
