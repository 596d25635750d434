//! Reads the message log and the events topic and records one delivery per (enabled
//! endpoint subscribed to the event's type, event) in PostgreSQL.
//!
//! The offsets of a batch are stored only after its deliveries are committed, so a crash
//! (kill -9 included) loses nothing: the next start reads the batch again, and the unique
//! `(endpoint, webhook-id)` keeps what was recorded before once. The consumer never waits for
//! an endpoint: delivering is the workers' job ([`crate::delivery`]), from the table.
//!
//! Like the message service's ingest, it takes every partition of both topics directly
//! (assign, not a group subscription), resuming at the offsets committed under the group
//! `webhook-dispatcher`, so a restarted instance resumes at once. One instance is meant to run
//! (a second would record the same rows, harmlessly, but deliver them too).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use switchboard_kafka::KafkaConfig;
use switchboard_message_log::{decode_log_item, Event, LogItem};
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::Notify;

use crate::events::{self, WebhookEvent};
use crate::metrics::Metrics;
use crate::store::{Route, Store};

/// One batch read from the topics: its webhook events and, per (topic, partition), the
/// newest offset read (stored once the events are recorded).
#[derive(Default)]
struct Gathered {
    batch: Vec<WebhookEvent>,
    offsets: HashMap<(String, i32), i64>,
}

/// The consumer group whose committed offsets say where reading resumes.
pub const GROUP: &str = "webhook-dispatcher";
/// Most records gathered into one batch.
const MAX_BATCH: usize = 500;
/// How long a batch waits for more records after its first.
const GATHER_WINDOW: Duration = Duration::from_millis(20);

pub struct TopicConsumer {
    consumer: StreamConsumer,
    message_topic: String,
    events_topic: String,
    store: Store,
    metrics: Metrics,
    max_pending: i64,
    /// Woken after each recorded batch: the workers look for new deliveries.
    recorded: Arc<Notify>,
}

impl TopicConsumer {
    pub fn new(
        kafka: &KafkaConfig,
        store: Store,
        metrics: Metrics,
        max_pending: i64,
        recorded: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka.consumer_config(GROUP, 100).create()?;
        Ok(TopicConsumer {
            consumer,
            message_topic: kafka.message_topic.clone(),
            events_topic: kafka.events_topic.clone(),
            store,
            metrics,
            max_pending,
            recorded,
        })
    }

    async fn assign_all(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let topics = [self.message_topic.clone(), self.events_topic.clone()];
            let consumer = &self.consumer;
            let found = tokio::task::block_in_place(|| {
                let mut list = TopicPartitionList::new();
                for topic in &topics {
                    let metadata = consumer
                        .fetch_metadata(Some(topic), Duration::from_secs(5))
                        .ok()?;
                    let partitions = metadata.topics().first()?.partitions().len();
                    if partitions == 0 {
                        return None;
                    }
                    for p in 0..partitions as i32 {
                        list.add_partition_offset(topic, p, Offset::Stored).ok()?;
                    }
                }
                Some(list)
            });
            match found.map(|list| self.consumer.assign(&list)) {
                Some(Ok(())) => {
                    tracing::info!("reading every partition of the message log and events");
                    return true;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "assigning partitions failed"),
                None => tracing::info!("waiting for the message log and events topics to exist"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        if !self.assign_all(&shutdown).await {
            return;
        }
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = self.consumer.recv() => m,
            };
            let Gathered { batch, offsets } = self.gather(first).await;
            if !self.record_until_done(&batch, &shutdown).await {
                tracing::warn!(
                    events = batch.len(),
                    "stopping with a batch not recorded; its offsets stay uncommitted"
                );
                return;
            }
            if let Some(newest) = batch.iter().map(|e| e.at).max() {
                let age = (Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics.consumer_lag_seconds.set(age);
            }
            self.store_offsets(offsets);
            self.recorded.notify_waiters();
        }
    }

    /// The records that arrive within [`GATHER_WINDOW`] of each other after `first` (at most
    /// [`MAX_BATCH`]), as webhook events and the newest offset of each partition.
    async fn gather(&self, first: Result<BorrowedMessage<'_>, KafkaError>) -> Gathered {
        let mut gathered = Gathered::default();
        let mut records = 0;
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(message) => {
                    records += 1;
                    gathered.offsets.insert(
                        (message.topic().to_owned(), message.partition()),
                        message.offset(),
                    );
                    self.decode(&message, &mut gathered.batch);
                }
                Err(e) => tracing::warn!(error = %e, "topic consumer error"),
            }
            if records >= MAX_BATCH {
                break;
            }
            next = tokio::time::timeout(GATHER_WINDOW, self.consumer.recv())
                .await
                .ok();
        }
        gathered
    }

    /// Appends the webhook events of one record to `batch`; an unreadable record is logged
    /// and skipped.
    fn decode(&self, message: &BorrowedMessage<'_>, batch: &mut Vec<WebhookEvent>) {
        let payload = message.payload().unwrap_or_default();
        if message.topic() != self.message_topic {
            let record_time = message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .unwrap_or_else(Utc::now);
            match serde_json::from_slice::<Event>(payload) {
                Ok(event) => batch.push(events::from_event(&event, record_time)),
                Err(e) => tracing::debug!(error = %e, "skipping an unreadable event"),
            }
            return;
        }
        match decode_log_item(payload) {
            // Edits, deletes and reactions (issue 28) are not new messages:
            // `message.created` stays what it was.
            Ok(LogItem::Messages(decoded)) => batch.extend(
                decoded
                    .records
                    .iter()
                    .filter(|r| r.kind().is_message())
                    .map(events::message_created),
            ),
            Ok(LogItem::Fence(_)) => {}
            Err(e) => tracing::warn!(
                error = %e,
                partition = message.partition(),
                offset = message.offset(),
                "skipping an unreadable log record"
            ),
        }
    }

    /// Stores the offsets of a recorded batch, for the next commit.
    fn store_offsets(&self, offsets: HashMap<(String, i32), i64>) {
        for ((topic, partition), offset) in offsets {
            if let Err(e) = self.consumer.store_offset(&topic, partition, offset) {
                tracing::warn!(error = %e, "storing the consumer offset failed");
            }
        }
    }

    /// Records the batch for every endpoint that wants each event, retrying while the
    /// database is unavailable; `false` when shutdown came first.
    async fn record_until_done(
        &self,
        batch: &[WebhookEvent],
        shutdown: &CancellationToken,
    ) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut wait = Duration::from_millis(100);
        loop {
            let outcome = async {
                let routes = self.store.routes().await?;
                let deliveries = route(&routes, batch);
                self.store.record(&deliveries, self.max_pending).await
            }
            .await;
            match outcome {
                Ok(recorded) => {
                    self.metrics
                        .recorded
                        .with_label_values(&["queued"])
                        .inc_by(recorded.queued);
                    if recorded.overflowed > 0 {
                        tracing::warn!(
                            overflowed = recorded.overflowed,
                            "deliveries dead-lettered: their endpoint's queue is full"
                        );
                        self.metrics
                            .recorded
                            .with_label_values(&["overflowed"])
                            .inc_by(recorded.overflowed);
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recording deliveries failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Every (endpoint, event) pair to record: endpoints subscribed to the event's type that
/// were registered before it happened, in batch order.
pub fn route<'a>(
    routes: &'a [Route],
    batch: &'a [WebhookEvent],
) -> Vec<(&'a str, &'a WebhookEvent)> {
    let mut out = Vec::new();
    for event in batch {
        for r in routes {
            if r.created_at <= event.at && r.event_types.iter().any(|t| t == event.event_type) {
                out.push((r.id.as_str(), event));
            }
        }
    }
    out
}
