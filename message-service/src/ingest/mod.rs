//! Consumes the message log (and the receipts of the events topic) into PostgreSQL.
//!
//! Records are gathered into batches (up to 500, or whatever arrived within 5 ms of the first),
//! inserted in one statement, and only then are their offsets stored for the background
//! commit. A crash between insert and commit redelivers the batch; the inserts skip rows that
//! exist, so the table ends the same. While the database is down the batch is retried and no
//! offset moves, so nothing is skipped; stopped then, the batch is left undone with its
//! offsets unstored.
//!
//! A record the database refuses for its data (or that cannot be read, or that conflicts with
//! a different stored message at its seq) cannot be retried into the table: it goes to
//! `dead_letters`, is counted and logged, and ingest goes on past it.
//!
//! **Fences** ([`crate::log_fences`]): a fence record is applied in log order (the records
//! before it are stored first), and a record an epoch's fence refuses goes to `dead_letters`
//! too, counted in `switchboard_ingest_fenced_total`.
//!
//! **Durability.** Sessions commit synchronously ([`Store::connect`]), and on start ingest
//! rewinds each message-log partition `SB_INGEST_REWIND_RECORDS` records before its committed
//! offset: rows a restored database lost (a point-in-time restore, an asynchronous standby
//! promoted) are written again; the rest are skipped as redeliveries.
//!
//! **Storage alarms.** An error that says the database cannot store anything now (SQLSTATE
//! class 53, insufficient resources such as a full disk; 58, system error; 57, operator
//! intervention) is retried with backoff like an outage, and raises
//! `switchboard_ingest_storage_alarm` and fails `/ready` (check `ingest`) until a write succeeds.
//!
//! The steps, a submodule each: `partitions` (assigning and rewinding), `gather` (one
//! batch from the consumer), `write` (fences, dead letters, records and receipts into the
//! database, retried), `batch` (a batch's one transaction, [`Store::insert_batch`]) and
//! `alarm` (the storage alarm).

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::log_fences::FenceBook;
use crate::store::Store;

mod alarm;
mod batch;
mod gather;
mod partitions;
mod write;

pub use alarm::StorageAlarm;

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
    dead_letters: prometheus::IntCounter,
    conflicts: prometheus::IntCounter,
    fenced: prometheus::IntCounter,
    progress: crate::settled::IngestProgress,
    fences: Mutex<FenceBook>,
    alarm: StorageAlarm,
    rewind_records: i64,
}

impl Ingest {
    pub fn new(
        kafka: &KafkaConfig,
        store: Store,
        ops: &Ops,
        fetch_wait_ms: u64,
        rewind_records: u64,
        progress: crate::settled::IngestProgress,
    ) -> anyhow::Result<Self> {
        // History may trail live delivery by a fetch wait; records accumulate for it, which
        // spares the broker a read per produce.
        let consumer: StreamConsumer = kafka
            .accumulating_consumer_config("message-service", fetch_wait_ms)
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
        let dead_letters = prometheus::IntCounter::new(
            "ingest_dead_letters_total",
            "log records put in the dead_letters table (refused by the database, unreadable, or conflicting) instead of being stored",
        )?;
        let conflicts = prometheus::IntCounter::new(
            "ingest_conflicts_total",
            "log records whose seq, message id or client message id was already stored for a different message (two messages given one seq)",
        )?;
        let fenced = prometheus::IntCounter::new(
            "ingest_fenced_total",
            "log records refused by a later epoch's fence (a deposed lease holder's late append, never acknowledged), put in dead_letters",
        )?;
        ops.register(&stored);
        ops.register(&dead_letters);
        ops.register(&conflicts);
        ops.register(&fenced);
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
            dead_letters,
            conflicts,
            fenced,
            progress,
            fences: Mutex::default(),
            alarm: StorageAlarm::new(ops)?,
            rewind_records: i64::try_from(rewind_records).unwrap_or(i64::MAX),
        })
    }

    /// The storage alarm, for `/ready`.
    pub fn alarm(&self) -> StorageAlarm {
        self.alarm.clone()
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
            let batch = self.gather(first).await;
            // An offset is stored only once everything before it is in the database (or in
            // `dead_letters`). Stopped while the database is down, the batch stays undone and
            // its offsets unstored, so neither the background commit nor the final commit on
            // close can move past rows that were never written; the next start redelivers it.
            if !self
                .ingest_until_done(&batch.log, &batch.receipts, batch.unreadable, &shutdown)
                .await
            {
                tracing::warn!(
                    records = batch.log.records.len(),
                    receipts = batch.receipts.len(),
                    "stopping with a batch not stored; its offsets stay uncommitted"
                );
                return;
            }
            self.alarm.clear();
            if tracing::enabled!(tracing::Level::DEBUG) {
                for record in &batch.log.records {
                    tracing::debug!(
                        trace_id = record
                            .item
                            .traceparent
                            .map(|t| tracing::field::display(t.trace_id)),
                        message_id = %record.item.message_id,
                        conversation_id = %record.item.conversation_id,
                        seq = record.item.seq,
                        "stored"
                    );
                }
            }
            self.store_offsets(batch.offsets);
        }
    }

    /// A written batch's offsets: stored for the background commit, and the message log's
    /// as ingest progress.
    fn store_offsets(&self, offsets: std::collections::HashMap<(String, i32), i64>) {
        for ((topic, partition), offset) in offsets {
            if topic == self.message_topic {
                self.progress.advance(partition, offset + 1);
            }
            if let Err(e) = self.consumer.store_offset(&topic, partition, offset) {
                tracing::warn!(error = %e, "storing the consumer offset failed");
            }
        }
    }
}
