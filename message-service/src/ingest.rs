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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use switchboard_kafka::KafkaConfig;
use switchboard_message_log::{decode_log_item, Event, LogFence, LogItem, LogRecord};
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::log_fences::{self, FenceBook};
use crate::store::{DeadLetter, LogPosition, ReceiptUpdate, Sourced, Store};

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

/// Raised while the database refuses writes for want of resources (see the module docs):
/// a gauge to alert on and a readiness check, cleared by the next write that succeeds.
#[derive(Clone)]
pub struct StorageAlarm {
    raised: Arc<AtomicBool>,
    gauge: prometheus::IntGauge,
}

impl StorageAlarm {
    fn new(ops: &Ops) -> anyhow::Result<Self> {
        let gauge = prometheus::IntGauge::new(
            "ingest_storage_alarm",
            "1 while the database refuses ingest's writes for want of resources (SQLSTATE class 53, 57 or 58: a full disk, out of memory, shutting down)",
        )?;
        ops.register(&gauge);
        Ok(StorageAlarm {
            raised: Arc::default(),
            gauge,
        })
    }

    /// Whether `e` says the database cannot store anything now (not a record's fault, and not
    /// a mere lost connection).
    pub fn is_storage_error(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("53") || code.starts_with("57") || code.starts_with("58")
            }),
            _ => false,
        }
    }

    fn note(&self, e: &sqlx::Error) {
        if Self::is_storage_error(e) && !self.raised.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::error!(error = %e, "ALARM: the database refuses ingest's writes for want of resources; history stops growing and new conversations cannot be numbered until it is fixed");
        }
    }

    fn clear(&self) {
        if self.raised.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::warn!("the database takes ingest's writes again; storage alarm cleared");
        }
    }

    /// `/ready`'s check: failing while the alarm is raised.
    pub fn readiness_check(&self) -> switchboard_service_kit::ops::ReadinessCheck {
        let raised = self.raised.clone();
        Arc::new(move || {
            let raised = raised.load(Ordering::Relaxed);
            Box::pin(async move {
                if raised {
                    Err("the database refuses ingest's writes (storage alarm)".to_owned())
                } else {
                    Ok(())
                }
            })
        })
    }
}

/// What one gathered batch of the message log holds, in log order: its records, with the
/// fences among them (each at the number of records read before it).
#[derive(Default)]
struct LogBatch {
    records: Vec<Sourced<LogRecord>>,
    fences: Vec<(usize, Sourced<LogFence>)>,
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

    /// Takes every partition of both topics directly, resuming from the committed offsets
    /// (earliest when none), the message log's rewound by `SB_INGEST_REWIND_RECORDS`. No group membership is involved: a restarted instance resumes at
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
                self.rewind(&mut list);
                Some(list)
            });
            match found.map(|list| consumer.assign(&list)) {
                Some(Ok(())) => {
                    self.note_committed();
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

    /// Moves each message-log partition's start back from its committed offset by the rewind
    /// window (a partition with nothing committed starts at the beginning anyway). Blocking:
    /// called inside `block_in_place`.
    fn rewind(&self, list: &mut TopicPartitionList) {
        if self.rewind_records == 0 {
            return;
        }
        // Not `committed()`: nothing is assigned yet, and it asks about the assignment.
        let committed = match self
            .consumer
            .committed_offsets(list.clone(), Duration::from_secs(5))
        {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(error = %e, "reading the committed offsets to rewind failed; resuming at them");
                return;
            }
        };
        for element in committed.elements_for_topic(&self.message_topic) {
            if let Offset::Offset(next) = element.offset() {
                let from = (next - self.rewind_records).max(0);
                if list
                    .set_partition_offset(
                        &self.message_topic,
                        element.partition(),
                        Offset::Offset(from),
                    )
                    .is_ok()
                {
                    tracing::info!(
                        partition = element.partition(),
                        committed = next,
                        from,
                        "rewinding the message log: rows a restored database lost are written again"
                    );
                }
            }
        }
    }

    /// What an earlier instance committed was written by it: progress starts there.
    fn note_committed(&self) {
        let committed =
            tokio::task::block_in_place(|| self.consumer.committed(Duration::from_secs(5)));
        match committed {
            Ok(list) => {
                for element in list.elements_for_topic(&self.message_topic) {
                    if let Offset::Offset(next) = element.offset() {
                        self.progress.advance(element.partition(), next);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the committed offsets failed"),
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
            let mut log = LogBatch::default();
            let mut receipts = Vec::new();
            let mut unreadable = Vec::new();
            let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
            let mut next = Some(first);
            while let Some(result) = next.take() {
                match result {
                    Ok(message) => {
                        let at = LogPosition {
                            topic: message.topic().to_owned(),
                            partition: message.partition(),
                            offset: message.offset(),
                            item: 0,
                        };
                        offsets.insert((at.topic.clone(), at.partition), at.offset);
                        let payload = message.payload().unwrap_or_default();
                        if message.topic() == self.message_topic {
                            match decode_log_item(payload) {
                                Ok(LogItem::Fence(fence)) => {
                                    let at = log.records.len();
                                    log.fences.push((
                                        at,
                                        Sourced {
                                            at: at_position(&message),
                                            item: fence,
                                        },
                                    ));
                                }
                                Ok(LogItem::Messages(decoded)) => {
                                    let items = decoded.records;
                                    if tracing::enabled!(tracing::Level::DEBUG) {
                                        let trace = decoded.trace.as_deref().unwrap_or("-");
                                        for item in &items {
                                            tracing::debug!(
                                                trace,
                                                message_id = %item.message_id,
                                                seq = item.seq,
                                                partition = at.partition,
                                                offset = at.offset,
                                                "read from the log"
                                            );
                                        }
                                    }
                                    for (i, item) in items.into_iter().enumerate() {
                                        let at = LogPosition {
                                            item: i32::try_from(i).unwrap_or(i32::MAX),
                                            ..at.clone()
                                        };
                                        log.records.push(Sourced { at, item });
                                    }
                                }
                                Err(e) => unreadable.push(DeadLetter::unreadable(
                                    at,
                                    payload,
                                    format!("unreadable log record: {e}"),
                                )),
                            }
                        } else {
                            match serde_json::from_slice::<Event>(payload) {
                                Ok(Event::Receipt {
                                    conversation_id,
                                    user_id,
                                    kind,
                                    seq,
                                }) => {
                                    let item = ReceiptUpdate::from_event(
                                        conversation_id,
                                        user_id,
                                        kind,
                                        seq,
                                    );
                                    receipts.push(Sourced { at, item });
                                }
                                // Presence and membership events are for other
                                // consumers (the membership is already in SQL).
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "skipping an unreadable event")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "message log consumer error"),
                }
                if log.records.len() + receipts.len() >= MAX_BATCH {
                    break;
                }
                next = tokio::time::timeout(GATHER_WINDOW, self.consumer.recv())
                    .await
                    .ok();
            }
            // An offset is stored only once everything before it is in the database (or in
            // `dead_letters`). Stopped while the database is down, the batch stays undone and
            // its offsets unstored, so neither the background commit nor the final commit on
            // close can move past rows that were never written; the next start redelivers it.
            if !self
                .ingest_until_done(&log, &receipts, unreadable, &shutdown)
                .await
            {
                tracing::warn!(
                    records = log.records.len(),
                    receipts = receipts.len(),
                    "stopping with a batch not stored; its offsets stay uncommitted"
                );
                return;
            }
            self.alarm.clear();
            if tracing::enabled!(tracing::Level::DEBUG) {
                for record in &log.records {
                    tracing::debug!(
                        message_id = %record.item.message_id,
                        conversation_id = %record.item.conversation_id,
                        seq = record.item.seq,
                        "stored"
                    );
                }
            }
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

    /// Writes one gathered batch: unreadable records to `dead_letters`, log records to
    /// `messages` (each fence applied where it stands among them, and the records a fence
    /// refuses dead-lettered), receipts to `receipts`, each retried while the database is
    /// unavailable. `false` when shutdown came before all of it was written.
    async fn ingest_until_done(
        &self,
        log: &LogBatch,
        receipts: &[Sourced<ReceiptUpdate>],
        unreadable: Vec<DeadLetter>,
        shutdown: &CancellationToken,
    ) -> bool {
        if !unreadable.is_empty() {
            let Some(new) = self
                .until_done("storing dead letters", shutdown, || {
                    self.store.dead_letter(unreadable.clone())
                })
                .await
            else {
                return false;
            };
            self.dead_lettered(&new);
        }
        let mut from = 0;
        for (at, fence) in &log.fences {
            if !self.store_records(&log.records[from..*at], shutdown).await {
                return false;
            }
            from = *at;
            let Some(floor) = self
                .until_done("applying a log fence", shutdown, || {
                    log_fences::apply(
                        self.store.pool(),
                        &fence.item.conversation_id,
                        fence.item.epoch,
                    )
                })
                .await
            else {
                return false;
            };
            self.fences
                .lock()
                .expect("fence book lock")
                .add(floor, &fence.item.conversation_id);
            tracing::info!(
                conversation_id = %fence.item.conversation_id,
                epoch = fence.item.epoch,
                floor = floor.floor,
                partition = fence.at.partition,
                offset = fence.at.offset,
                "log fence applied"
            );
        }
        if !self.store_records(&log.records[from..], shutdown).await {
            return false;
        }
        if !receipts.is_empty() {
            let Some(refused) = self
                .until_done("storing receipts", shutdown, || {
                    self.store.upsert_receipts(receipts)
                })
                .await
            else {
                return false;
            };
            self.dead_lettered(&refused);
        }
        true
    }

    /// Stores log records: those a fence refuses go to `dead_letters`, the rest to `messages`.
    async fn store_records(
        &self,
        records: &[Sourced<LogRecord>],
        shutdown: &CancellationToken,
    ) -> bool {
        if records.is_empty() {
            return true;
        }
        let unknown = self
            .fences
            .lock()
            .expect("fence book lock")
            .unknown(records.iter().map(|r| r.item.conversation_id.as_str()));
        if !unknown.is_empty() {
            let Some(read) = self
                .until_done("reading log fences", shutdown, || {
                    log_fences::read(self.store.pool(), &unknown)
                })
                .await
            else {
                return false;
            };
            self.fences
                .lock()
                .expect("fence book lock")
                .learn(&unknown, read);
        }
        // The first records of an epoch make its fence active, and move what the older epochs
        // appended after it above its floor to dead_letters (see `log_fences`).
        let activations = self
            .fences
            .lock()
            .expect("fence book lock")
            .activated_by(records.iter().map(|r| &r.item));
        for (conversation_id, epoch, floor) in activations {
            let Some(evicted) = self
                .until_done("activating a log fence", shutdown, || {
                    log_fences::activate(
                        self.store.pool(),
                        &self.message_topic,
                        &conversation_id,
                        epoch,
                        floor,
                    )
                })
                .await
            else {
                return false;
            };
            self.fences
                .lock()
                .expect("fence book lock")
                .activate(&conversation_id, epoch);
            for error in &evicted {
                tracing::warn!(%conversation_id, epoch, error, "a stored record of an older epoch was moved to dead_letters as its fence became active");
            }
            self.fenced.inc_by(evicted.len() as u64);
            self.dead_letters.inc_by(evicted.len() as u64);
        }
        let (fenced, admitted): (Vec<_>, Vec<_>) = {
            let book = self.fences.lock().expect("fence book lock");
            records
                .iter()
                .map(|r| (book.fenced(&r.item), r))
                .partition(|(fence, _)| fence.is_some())
        };
        if !fenced.is_empty() {
            let letters: Vec<DeadLetter> = fenced
                .iter()
                .map(|(fence, r)| {
                    let (epoch, floor) = fence.unwrap_or_default();
                    DeadLetter::new(
                        r.at.clone(),
                        &r.item,
                        format!(
                            "fenced: seq {} of conversation {} was numbered under epoch {}, and epoch {epoch} took the numbers above {floor} (a deposed lease holder's late append, never acknowledged)",
                            r.item.seq, r.item.conversation_id, r.item.epoch
                        ),
                    )
                })
                .collect();
            let Some(new) = self
                .until_done("storing fenced records", shutdown, || {
                    self.store.dead_letter(letters.clone())
                })
                .await
            else {
                return false;
            };
            self.fenced.inc_by(new.len() as u64);
            self.dead_lettered(&new);
        }
        // The common case refuses nothing: the batch goes in as read, without copying its bodies.
        let copied: Vec<Sourced<LogRecord>>;
        let records: &[Sourced<LogRecord>] = if fenced.is_empty() {
            records
        } else {
            copied = admitted.into_iter().map(|(_, r)| r.clone()).collect();
            &copied
        };
        if records.is_empty() {
            return true;
        }
        let Some(outcome) = self
            .until_done("inserting a batch", shutdown, || {
                self.store.insert_batch(records)
            })
            .await
        else {
            return false;
        };
        self.stored.inc_by(outcome.inserted);
        self.batches.observe(records.len() as f64);
        for conflict in &outcome.conflicts {
            let at = &conflict.dead_letter.at;
            tracing::error!(
                message_id = %conflict.message_id,
                stored_message_id = %conflict.stored_message_id,
                topic = %at.topic,
                partition = at.partition,
                offset = at.offset,
                error = %conflict.dead_letter.error,
                "conflict in the log (two messages given one seq, or one message two): the stored message is kept, this record dead-lettered"
            );
        }
        self.conflicts.inc_by(outcome.conflicts.len() as u64);
        self.dead_letters.inc_by(outcome.conflicts.len() as u64);
        self.dead_lettered(&outcome.refused);
        if let Some(newest) = records.iter().map(|r| r.item.created_at.datetime()).max() {
            let age = chrono::Utc::now().signed_duration_since(newest);
            self.lag_seconds
                .set(age.num_milliseconds().max(0) as f64 / 1000.0);
        }
        true
    }

    /// [`until_done`], raising the storage alarm on the errors that call for it.
    async fn until_done<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut attempt: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        until_done(what, shutdown, || {
            let attempt = attempt();
            async {
                let outcome = attempt.await;
                if let Err(e) = &outcome {
                    self.alarm.note(e);
                }
                outcome
            }
        })
        .await
    }

    /// Counts and logs records newly put in `dead_letters` (refused for their data, or
    /// unreadable).
    fn dead_lettered(&self, letters: &[DeadLetter]) {
        for letter in letters {
            tracing::error!(
                topic = %letter.at.topic,
                partition = letter.at.partition,
                offset = letter.at.offset,
                error = %letter.error,
                "a log record was put in dead_letters instead of being stored; ingest goes on"
            );
        }
        self.dead_letters.inc_by(letters.len() as u64);
    }
}

fn at_position(message: &rdkafka::message::BorrowedMessage<'_>) -> LogPosition {
    LogPosition {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        item: 0,
    }
}

/// Runs `attempt` until it succeeds, backing off while it fails (the database unreachable:
/// errors a record causes never come here, they become dead letters). `None` when shutdown
/// came first: the work is not done.
async fn until_done<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(done) => return Some(done),
            Err(e) => tracing::error!(error = %e, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
