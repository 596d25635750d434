//! Batching toward the broker: many chat messages per Kafka record.
//!
//! tansu (the local broker) stores every Kafka record with its own `INSERT`, and even Apache
//! Kafka pays per record in headers and index entries. So the manager never produces one record
//! per message:
//!
//! - [`LogAppender`]: every log record queued while earlier flushes are in flight goes out as
//!   one [`LogEnvelope`] per partition of the message log (partitioned explicitly by
//!   conversation, [`log_partition`]); each caller waits for its own record's envelope.
//! - [`Router`]: every frame routed since the last flush goes out as one [`HandlerEnvelope`] per
//!   target handler topic, in the order it was routed (one task, FIFO), so one manager's frames
//!   reach each handler in `seq` order. Routing is not awaited: a lost frame costs only live
//!   delivery (the message is in the log; devices fill gaps from history).
//!
//! Both queues are bounded; a full queue makes callers wait (backpressure), never drops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_message_log::{
    log_partition, HandlerEnvelope, HandlerRecord, LogEnvelope, LogRecord,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use switchboard_service_kit::supervise::Workers;

use crate::kafka::Kafka;

/// Records waiting for a log flush, at most.
const APPEND_QUEUE: usize = 16_384;
/// Frames waiting for a routing flush, at most.
const ROUTE_QUEUE: usize = 65_536;
/// One envelope carries at most this many messages...
const MAX_ENVELOPE_RECORDS: usize = 1_000;
/// ...and roughly at most this many bytes of bodies/frames (well under the broker's limit).
const MAX_ENVELOPE_BYTES: usize = 512 * 1024;
/// Log flushes in flight at once; while all are in flight, records queue for the next.
const LOG_FLUSHES_IN_FLIGHT: usize = 4;
/// How long the router lets frames gather before a flush.
const ROUTE_LINGER: Duration = Duration::from_millis(1);

struct AppendJob {
    record: LogRecord,
    done: oneshot::Sender<Result<(), String>>,
}

/// Appends log records in envelopes; see the module docs.
#[derive(Clone)]
pub struct LogAppender {
    tx: mpsc::Sender<AppendJob>,
}

impl LogAppender {
    /// Starts the appending task (supervised: the manager stops if it ever exits).
    pub fn start(kafka: Kafka, partitions: i32, workers: &mut Workers) -> Self {
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        workers.spawn("log appender", run_appender(kafka, partitions, rx));
        LogAppender { tx }
    }

    /// Appends every record and answers, in order, whether the broker acknowledged each (its
    /// envelope). A failed one is *in doubt*: it may still have landed.
    pub async fn append_all<'a>(
        &self,
        records: impl IntoIterator<Item = &'a LogRecord>,
    ) -> Vec<Result<(), String>> {
        let mut waits = Vec::new();
        for record in records {
            let (done, wait) = oneshot::channel();
            let job = AppendJob {
                record: record.clone(),
                done,
            };
            waits.push(self.tx.send(job).await.ok().map(|()| wait));
        }
        let mut outcomes = Vec::with_capacity(waits.len());
        for wait in waits {
            outcomes.push(match wait {
                Some(wait) => wait
                    .await
                    .unwrap_or_else(|_| Err("the log appender went away".into())),
                None => Err("the log appender is not running".into()),
            });
        }
        outcomes
    }
}

async fn run_appender(kafka: Kafka, partitions: i32, mut rx: mpsc::Receiver<AppendJob>) {
    let slots = Arc::new(Semaphore::new(LOG_FLUSHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets records gather while the broker works.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut by_partition: HashMap<i32, Vec<AppendJob>> = HashMap::new();
        let mut size = 0;
        let mut next = Some(first);
        let mut count = 0;
        while let Some(job) = next.take() {
            size += job.record.body.len() + 200;
            count += 1;
            by_partition
                .entry(log_partition(&job.record.conversation_id, partitions))
                .or_default()
                .push(job);
            if count < MAX_ENVELOPE_RECORDS && size < MAX_ENVELOPE_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let kafka = kafka.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let flushes = by_partition
                .into_iter()
                .map(|(partition, jobs)| flush_log(&kafka, partition, jobs));
            futures_util::future::join_all(flushes).await;
        });
    }
}

async fn flush_log(kafka: &Kafka, partition: i32, jobs: Vec<AppendJob>) {
    let trace = ulid::Ulid::new().to_string();
    let envelope = LogEnvelope {
        trace: Some(trace.clone()),
        records: jobs.iter().map(|j| j.record.clone()).collect(),
    };
    let outcome = match serde_json::to_vec(&envelope) {
        Ok(payload) => kafka
            .produce_to_partition(&kafka.config.message_topic, partition, &payload)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("encoding an envelope: {e}")),
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        for record in &envelope.records {
            tracing::debug!(
                trace = %trace,
                partition,
                message_id = %record.message_id,
                conversation_id = %record.conversation_id,
                seq = record.seq,
                acked = outcome.is_ok(),
                "appended"
            );
        }
    }
    for job in jobs {
        let _ = job.done.send(outcome.clone());
    }
}

struct RouteJob {
    topic: String,
    record: HandlerRecord,
}

/// Routes frames to handler topics in envelopes; see the module docs.
#[derive(Clone)]
pub struct Router {
    tx: mpsc::Sender<RouteJob>,
}

impl Router {
    /// Starts the routing task (supervised: the manager stops if it ever exits).
    pub fn start(kafka: Kafka, workers: &mut Workers) -> Self {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        workers.spawn("router", run_router(kafka, rx));
        Router { tx }
    }

    /// Queues `record` for `topic`, after everything this manager queued before it.
    pub async fn route(&self, topic: String, record: HandlerRecord) {
        if self.tx.send(RouteJob { topic, record }).await.is_err() {
            tracing::warn!("the router is not running; devices will catch up from history");
        }
    }
}

async fn run_router(kafka: Kafka, mut rx: mpsc::Receiver<RouteJob>) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(ROUTE_LINGER).await;
        // Topic order of first appearance, and each topic's frames in routing order.
        let mut topics: Vec<String> = Vec::new();
        let mut by_topic: HashMap<String, (Vec<HandlerRecord>, usize)> = HashMap::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let entry = by_topic.entry(job.topic.clone()).or_insert_with(|| {
                topics.push(job.topic.clone());
                (Vec::new(), 0)
            });
            entry.1 += job.record.frame.len() + 100;
            entry.0.push(job.record);
            if entry.0.len() >= MAX_ENVELOPE_RECORDS || entry.1 >= MAX_ENVELOPE_BYTES {
                let (records, _) = by_topic.remove(&job.topic).unwrap_or_default();
                topics.retain(|t| *t != job.topic);
                enqueue_handler(&kafka, &job.topic, records);
            }
            next = rx.try_recv().ok();
        }
        for topic in topics {
            if let Some((records, _)) = by_topic.remove(&topic) {
                enqueue_handler(&kafka, &topic, records);
            }
        }
    }
}

/// Enqueues one envelope now (so envelopes reach a topic in enqueue order) and logs a failed
/// acknowledgement in the background.
fn enqueue_handler(kafka: &Kafka, topic: &str, records: Vec<HandlerRecord>) {
    let trace = ulid::Ulid::new().to_string();
    if tracing::enabled!(tracing::Level::DEBUG) {
        for record in records.iter().filter(|r| r.message_id.is_some()) {
            tracing::debug!(
                trace = %trace,
                %topic,
                message_id = record.message_id.as_deref().unwrap_or_default(),
                recipients = record.recipients.len(),
                "routed"
            );
        }
    }
    let envelope = HandlerEnvelope {
        trace: Some(trace),
        records,
    };
    let payload = match serde_json::to_vec(&envelope) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!(error = %e, %topic, "encoding a handler envelope failed");
            return;
        }
    };
    match kafka.enqueue(topic, topic, &payload) {
        Ok(ack) => {
            let topic = topic.to_owned();
            tokio::spawn(async move {
                if let Err(e) = ack.await {
                    tracing::warn!(error = %e, %topic, "routing to a handler failed");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, %topic, "routing to a handler failed"),
    }
}
