//! The manager's Kafka side: one shared idempotent producer, and topic admin for handler
//! topics and the message log.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_kafka::KafkaConfig;

#[derive(Clone)]
pub struct Kafka {
    pub config: KafkaConfig,
    producer: FutureProducer,
    /// When a produce last succeeded and last failed: readiness reads it.
    health: std::sync::Arc<std::sync::Mutex<ProduceHealth>>,
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
    pub produce_seconds: prometheus::Histogram,
    pub produce_errors: prometheus::IntCounter,
}

#[derive(Debug, thiserror::Error)]
#[error("kafka: {message}")]
pub struct KafkaFailure {
    pub message: String,
    /// The client's error code, when the failure came with one.
    pub code: Option<RDKafkaErrorCode>,
}

impl KafkaFailure {
    fn new(message: impl Into<String>) -> Self {
        KafkaFailure {
            message: message.into(),
            code: None,
        }
    }

    fn of(error: &rdkafka::error::KafkaError) -> Self {
        KafkaFailure {
            message: error.to_string(),
            code: error.rdkafka_error_code(),
        }
    }

    /// The record was over `message.max.bytes` (the producer's or the broker's): it fails
    /// every time it is sent, so a caller splits it rather than retry it whole.
    pub fn is_too_large(&self) -> bool {
        self.code == Some(RDKafkaErrorCode::MessageSizeTooLarge)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct ProduceHealth {
    last_ok: Option<std::time::Instant>,
    last_failed: Option<std::time::Instant>,
}

/// A readiness answer from recent produces is trusted for this long; past it (or after a
/// failure) the check produces a probe record itself.
const PRODUCE_HEALTH_FRESH: Duration = Duration::from_secs(3);

impl Kafka {
    pub fn new(config: KafkaConfig, produce_timeout_ms: u64) -> anyhow::Result<Self> {
        let producer: FutureProducer = config.producer_config(produce_timeout_ms).create()?;
        let admin: AdminClient<DefaultClientContext> =
            config.producer_config(produce_timeout_ms).create()?;
        Ok(Kafka {
            config,
            producer,
            health: Default::default(),
            admin: std::sync::Arc::new(admin),
            produce_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "manager_kafka_produce_seconds",
                    "time from produce to broker acknowledgement",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
                ]),
            )?,
            produce_errors: prometheus::IntCounter::new(
                "manager_kafka_produce_errors_total",
                "records the broker did not acknowledge",
            )?,
        })
    }

    /// Produces one record and waits for the broker's acknowledgement (`acks=all`).
    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(), KafkaFailure> {
        self.deliver(FutureRecord::to(topic).key(key).payload(payload))
            .await
    }

    /// Produces one record to an explicit partition and waits for the acknowledgement.
    pub async fn produce_to_partition(
        &self,
        topic: &str,
        partition: i32,
        payload: &[u8],
    ) -> Result<(), KafkaFailure> {
        self.deliver(
            FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(payload),
        )
        .await
    }

    /// Sends `record`, waits for its acknowledgement, and counts the outcome.
    async fn deliver<K: rdkafka::message::ToBytes + ?Sized>(
        &self,
        record: FutureRecord<'_, K, [u8]>,
    ) -> Result<(), KafkaFailure> {
        let started = std::time::Instant::now();
        let result = self.producer.send(record, Duration::from_millis(100)).await;
        self.produce_seconds
            .observe(started.elapsed().as_secs_f64());
        let result = result.map(|_| ()).map_err(|(e, _)| {
            self.produce_errors.inc();
            KafkaFailure::of(&e)
        });
        self.note(&result);
        result
    }

    /// Records a produce's outcome for readiness. A record refused as too large says nothing
    /// about the broker (the next one is acknowledged), so it does not count as a failure.
    fn note(&self, outcome: &Result<(), KafkaFailure>) {
        if outcome.as_ref().is_err_and(KafkaFailure::is_too_large) {
            return;
        }
        let mut health = self.health.lock().expect("produce health lock");
        if outcome.is_ok() {
            health.last_ok = Some(std::time::Instant::now());
        } else {
            health.last_failed = Some(std::time::Instant::now());
        }
    }

    /// The topic readiness probes produce to when recent traffic says nothing.
    pub fn probe_topic(&self) -> String {
        format!("{}.probe", self.config.message_topic)
    }

    /// `/ready`'s broker check: ready while the latest produce succeeded recently; otherwise
    /// a probe record must be acknowledged now. A manager that cannot append is not ready.
    pub fn readiness_check(&self) -> switchboard_service_kit::ops::ReadinessCheck {
        let kafka = self.clone();
        std::sync::Arc::new(move || {
            let kafka = kafka.clone();
            Box::pin(async move {
                let health = *kafka.health.lock().expect("produce health lock");
                let recent_ok = health
                    .last_ok
                    .is_some_and(|t| t.elapsed() < PRODUCE_HEALTH_FRESH);
                let failed_since = match (health.last_ok, health.last_failed) {
                    (Some(ok), Some(failed)) => failed > ok,
                    (None, Some(_)) => true,
                    _ => false,
                };
                if recent_ok && !failed_since {
                    return Ok(());
                }
                kafka
                    .produce(&kafka.probe_topic(), "probe", b"{}")
                    .await
                    .map_err(|e| format!("cannot append to the log: {e}"))
            })
        })
    }

    /// How many partitions `topic` has, from the broker's metadata.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, KafkaFailure> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map_err(|e| KafkaFailure::new(e.to_string()))?;
            let count = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or_default();
            i32::try_from(count)
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| KafkaFailure::new(format!("{topic} has no partitions yet")))
        })
        .await
        .map_err(|e| KafkaFailure::new(e.to_string()))?
    }

    /// Enqueues one record now (so records enqueued one after another reach a partition in
    /// that order) and returns the wait for its acknowledgement, for callers that need the
    /// order but not the ack on their critical path.
    pub fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<
        impl std::future::Future<Output = Result<(), KafkaFailure>> + Send + 'static,
        KafkaFailure,
    > {
        let started = std::time::Instant::now();
        let delivery = self
            .producer
            .send_result(FutureRecord::to(topic).key(key).payload(payload))
            .map_err(|(e, _)| {
                self.produce_errors.inc();
                KafkaFailure::of(&e)
            })?;
        let (seconds, errors) = (self.produce_seconds.clone(), self.produce_errors.clone());
        let kafka = self.clone();
        Ok(async move {
            let outcome = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => {
                    errors.inc();
                    Err(KafkaFailure::of(&e))
                }
                Err(_) => {
                    errors.inc();
                    Err(KafkaFailure::new("the producer went away"))
                }
            };
            seconds.observe(started.elapsed().as_secs_f64());
            kafka.note(&outcome);
            outcome
        })
    }

    /// Creates a topic; one that exists already is fine.
    pub async fn ensure_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaFailure> {
        let topic = NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| KafkaFailure::new(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaFailure {
                        message: format!("{topic}: {code}"),
                        code: Some(code),
                    })
                }
            }
        }
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), KafkaFailure> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let results = self
            .admin
            .delete_topics(&[name], &options)
            .await
            .map_err(|e| KafkaFailure::new(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(KafkaFailure {
                        message: format!("{topic}: {code}"),
                        code: Some(code),
                    })
                }
            }
        }
        Ok(())
    }
}
