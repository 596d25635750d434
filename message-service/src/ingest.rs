//! Consumes the message log (and the receipts of the events topic) into PostgreSQL.
//!
//! Records are gathered into batches (up to 500, or whatever arrived within 5 ms of the first),
//! inserted in one statement, and only then are their offsets stored for the background
//! commit. A crash between insert and commit redelivers the batch; the inserts skip rows that
//! exist, so the table ends the same. While the database is down the batch is retried and no
//! offset moves, so nothing is skipped.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use switchboard_message_log::{Event, KafkaConfig, LogRecord};
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::store::{ReceiptUpdate, Store};

const MAX_BATCH: usize = 500;
const GATHER_WINDOW: Duration = Duration::from_millis(5);

pub struct Ingest {
    consumer: StreamConsumer,
    message_topic: String,
    events_topic: String,
    store: Store,
    stored: prometheus::IntCounter,
    batches: prometheus::Histogram,
    lag_seconds: prometheus::Gauge,
}

impl Ingest {
    pub fn new(
        kafka: &KafkaConfig,
        store: Store,
        ops: &Ops,
        fetch_wait_ms: u64,
    ) -> anyhow::Result<Self> {
        // History may trail live delivery by a fetch wait; a longer one spares the broker.
        let consumer: StreamConsumer = kafka
            .consumer_config("message-service", fetch_wait_ms)
            .create()?;
        let stored = prometheus::IntCounter::new(
            "messages_stored_total",
            "messages inserted into the database",
        )?;
        let batches = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("ingest_batch_size", "records per insert batch")
                .buckets(vec![1.0, 5.0, 20.0, 50.0, 100.0, 250.0, 500.0]),
        )?;
        let lag_seconds = prometheus::Gauge::new(
            "ingest_lag_seconds",
            "age of the newest message stored by the last batch (consumer lag, in time)",
        )?;
        ops.register(&stored);
        ops.register(&batches);
        ops.register(&lag_seconds);
        Ok(Ingest {
            consumer,
            message_topic: kafka.message_topic.clone(),
            events_topic: kafka.events_topic.clone(),
            store,
            stored,
            batches,
            lag_seconds,
        })
    }

    /// Takes every partition of both topics directly, resuming from the committed offsets
    /// (earliest when none). No group membership is involved: a restarted instance resumes at
    /// once instead of waiting for the broker to expire its dead predecessor's membership
    /// (which the local broker never does). Several instances would each ingest everything;
    /// the inserts are idempotent, so that is safe, only redundant.
    async fn assign_all(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let consumer = &self.consumer;
            let topics = [self.message_topic.clone(), self.events_topic.clone()];
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
            match found.map(|list| consumer.assign(&list)) {
                Some(Ok(())) => {
                    tracing::info!("ingesting every partition of the message log and events");
                    return true;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "assigning partitions failed"),
                None => tracing::info!("waiting for the message log topics to exist"),
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
            let mut records = Vec::new();
            let mut receipts = Vec::new();
            let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
            let mut next = Some(first);
            while let Some(result) = next.take() {
                match result {
                    Ok(message) => {
                        let key = (message.topic().to_owned(), message.partition());
                        offsets.insert(key, message.offset());
                        let payload = message.payload().unwrap_or_default();
                        if message.topic() == self.message_topic {
                            match serde_json::from_slice::<LogRecord>(payload) {
                                Ok(record) => records.push(record),
                                Err(e) => tracing::error!(
                                    offset = message.offset(),
                                    error = %e,
                                    "skipping an unreadable log record"
                                ),
                            }
                        } else {
                            match serde_json::from_slice::<Event>(payload) {
                                Ok(Event::Receipt {
                                    conversation_id,
                                    user_id,
                                    kind,
                                    seq,
                                }) => {
                                    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                                    let (delivered_seq, read_seq) =
                                        if kind == "read" { (seq, seq) } else { (seq, 0) };
                                    receipts.push(ReceiptUpdate {
                                        conversation_id,
                                        user_id,
                                        delivered_seq,
                                        read_seq,
                                    });
                                }
                                Ok(Event::Presence { .. }) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "skipping an unreadable event")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "message log consumer error"),
                }
                if records.len() + receipts.len() >= MAX_BATCH {
                    break;
                }
                next = tokio::time::timeout(GATHER_WINDOW, self.consumer.recv())
                    .await
                    .ok();
            }
            self.insert_until_done(&records, &shutdown).await;
            if let Some(newest) = records
                .iter()
                .filter_map(|r| chrono::DateTime::parse_from_rfc3339(&r.created_at).ok())
                .max()
            {
                let age = chrono::Utc::now().signed_duration_since(newest);
                self.lag_seconds
                    .set(age.num_milliseconds().max(0) as f64 / 1000.0);
            }
            self.receipts_until_done(&receipts, &shutdown).await;
            for ((topic, partition), offset) in offsets {
                if let Err(e) = self.consumer.store_offset(&topic, partition, offset) {
                    tracing::warn!(error = %e, "storing the consumer offset failed");
                }
            }
        }
    }

    async fn receipts_until_done(&self, receipts: &[ReceiptUpdate], shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = self.store.upsert_receipts(receipts).await {
            tracing::error!(error = %e, "storing receipts failed; retrying");
            if shutdown.is_cancelled() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn insert_until_done(&self, records: &[LogRecord], shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.store.insert_batch(records).await {
                Ok(inserted) => {
                    self.stored.inc_by(inserted);
                    self.batches.observe(records.len() as f64);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "inserting a batch failed; retrying");
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
