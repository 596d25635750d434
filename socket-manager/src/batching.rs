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
//!
//! Envelopes are sized by their *encoded* bytes, not by the bodies they carry: a record is
//! JSON, and escaping grows a body up to six times (`U+0001` is `\u0001`; a frame inside a
//! handler record is escaped once more, up to seven). Each record is encoded once, by serde,
//! when it is queued, and an envelope is the envelope's own serde framing around those bytes
//! ([`Framing`]), so its size is known before it is produced: at most
//! [`ENVELOPE_MAX_BYTES`], or one record alone. A log record always fits
//! [`RECORD_MAX_BYTES`](switchboard_kafka::RECORD_MAX_BYTES) (the manager checks before it
//! numbers a send), and so does a handler record by the body limit's startup rule, unless its
//! recipient list is very long. An envelope the client or the broker still
//! refuses as too large (`MSG_SIZE_TOO_LARGE`, e.g. a broker with a lower limit) is produced
//! again record by record, so one record never fails the others that shared its envelope.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchboard_kafka::ENVELOPE_MAX_BYTES;
use switchboard_message_log::{
    log_partition, HandlerEnvelope, HandlerRecord, LogEnvelope, LogRecord,
};
use switchboard_protocol::trace_context::TraceId;
use switchboard_protocol::{ConversationId, MessageId};
use tokio::sync::{mpsc, oneshot, Semaphore};

use switchboard_service_kit::supervise::{TaskTracker, Workers};

use crate::kafka::{Kafka, KafkaFailure};

/// Records waiting for a log flush, at most.
const APPEND_QUEUE: usize = 16_384;
/// Frames waiting for a routing flush, at most.
const ROUTE_QUEUE: usize = 65_536;
/// One envelope carries at most this many messages (and at most [`ENVELOPE_MAX_BYTES`]).
const MAX_ENVELOPE_RECORDS: usize = 1_000;
/// What an envelope's own JSON around its records may take: `{"trace":"<ulid>","records":[`
/// and `]}` are under 50 bytes; the rest is room for fields an envelope may gain.
const FRAMING_ALLOWANCE: usize = 1024;
/// Log flushes in flight at once; while all are in flight, records queue for the next.
const LOG_FLUSHES_IN_FLIGHT: usize = 4;
/// How long the router lets frames gather before a flush.
const ROUTE_LINGER: Duration = Duration::from_millis(1);

/// The JSON of an envelope around records that are encoded already: what serde writes for
/// the same envelope without records, cut where its `records` array is empty. Whatever other
/// fields the envelope has stay as serde wrote them, so the result decodes as the envelope
/// would have (`switchboard_message_log::decode_log_envelope`).
struct Framing {
    /// Up to and including the `[` of `"records":[`.
    head: Vec<u8>,
    /// From the `]` that closes `records` to the end.
    tail: Vec<u8>,
}

impl Framing {
    /// `empty`: the envelope with no records.
    fn of(empty: &impl Serialize) -> Result<Self, String> {
        const EMPTY_RECORDS: &[u8] = b"\"records\":[]";
        let json = serde_json::to_vec(empty).map_err(|e| format!("encoding an envelope: {e}"))?;
        // Serde escapes every `"` inside a string, so the unescaped key can only be the
        // envelope's own field.
        let at = json
            .windows(EMPTY_RECORDS.len())
            .position(|w| w == EMPTY_RECORDS)
            .ok_or("an envelope without a records field")?;
        let cut = at + EMPTY_RECORDS.len() - 1;
        Ok(Framing {
            head: json[..cut].to_vec(),
            tail: json[cut..].to_vec(),
        })
    }

    /// The envelope holding `records` (each one record's JSON), in order.
    fn wrap<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut payload = self.head.clone();
        for (i, record) in records.into_iter().enumerate() {
            if i > 0 {
                payload.push(b',');
            }
            payload.extend_from_slice(record);
        }
        payload.extend_from_slice(&self.tail);
        payload
    }
}

/// Items in the order they came, cut into envelopes of at most [`MAX_ENVELOPE_RECORDS`]
/// records and [`ENVELOPE_MAX_BYTES`] encoded bytes (framing included); a record that would
/// take an envelope past them starts the next one, so an oversized record goes alone.
struct Packer<T> {
    envelopes: Vec<Vec<T>>,
    /// Encoded bytes of the last envelope, its framing allowance included.
    last_bytes: usize,
}

impl<T> Default for Packer<T> {
    fn default() -> Self {
        Packer {
            envelopes: Vec::new(),
            last_bytes: 0,
        }
    }
}

impl<T> Packer<T> {
    /// Adds `item`, whose record encodes to `len` bytes.
    fn push(&mut self, item: T, len: usize) {
        let added = len + 1; // its comma
        match self.envelopes.last_mut() {
            Some(last)
                if last.len() < MAX_ENVELOPE_RECORDS
                    && self.last_bytes + added <= ENVELOPE_MAX_BYTES =>
            {
                last.push(item);
                self.last_bytes += added;
            }
            _ => {
                self.envelopes.push(vec![item]);
                self.last_bytes = FRAMING_ALLOWANCE + added;
            }
        }
    }

    fn into_envelopes(self) -> Vec<Vec<T>> {
        self.envelopes
    }
}

/// A log record queued for the appender: its JSON, and what its debug line names.
struct AppendJob {
    partition: i32,
    encoded: Vec<u8>,
    conversation_id: ConversationId,
    message_id: MessageId,
    seq: u64,
    /// The send's trace, for the debug line (`Copy`: no allocation per job).
    trace_id: Option<TraceId>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Appends log records in envelopes; see the module docs.
#[derive(Clone)]
pub struct LogAppender {
    tx: mpsc::Sender<AppendJob>,
    partitions: i32,
}

impl LogAppender {
    /// Starts the appending task (supervised: the manager stops if it ever exits).
    pub fn start(kafka: Kafka, partitions: i32, workers: &mut Workers) -> Self {
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        workers.spawn("log appender", run_appender(kafka, rx));
        LogAppender { tx, partitions }
    }

    /// Appends every record and answers, in order, whether the broker acknowledged each (its
    /// envelope). A failed one is *in doubt*: it may still have landed.
    pub async fn append_all<'a>(
        &self,
        records: impl IntoIterator<Item = &'a LogRecord>,
    ) -> Vec<Result<(), String>> {
        let mut waits = Vec::new();
        for record in records {
            // Encoded here, on the caller's task, once: the appender sizes envelopes by it
            // and produces these very bytes.
            let encoded = match serde_json::to_vec(record) {
                Ok(encoded) => encoded,
                Err(e) => {
                    waits.push(Err(format!("encoding a log record: {e}")));
                    continue;
                }
            };
            let (done, wait) = oneshot::channel();
            let job = AppendJob {
                partition: log_partition(&record.conversation_id, self.partitions),
                encoded,
                conversation_id: record.conversation_id.clone(),
                message_id: record.message_id.clone(),
                seq: record.seq,
                trace_id: record.traceparent.map(|t| t.trace_id),
                done,
            };
            waits.push(match self.tx.send(job).await {
                Ok(()) => Ok(wait),
                Err(_) => Err("the log appender is not running".into()),
            });
        }
        let mut outcomes = Vec::with_capacity(waits.len());
        for wait in waits {
            outcomes.push(match wait {
                Ok(wait) => wait
                    .await
                    .unwrap_or_else(|_| Err("the log appender went away".into())),
                Err(e) => Err(e),
            });
        }
        outcomes
    }
}

async fn run_appender(kafka: Kafka, mut rx: mpsc::Receiver<AppendJob>) {
    let slots = Arc::new(Semaphore::new(LOG_FLUSHES_IN_FLIGHT));
    // The flushes in flight: once the queue is closed (the service drained), the appender
    // ends only after they did, so no acknowledged batch is cut off.
    let flushes = TaskTracker::new();
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets records gather while the broker works.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // A flush takes about one envelope's worth of records, whatever their partitions.
        let mut by_partition: HashMap<i32, Packer<AppendJob>> = HashMap::new();
        let mut size = 0;
        let mut count = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let len = job.encoded.len();
            size += len;
            count += 1;
            by_partition
                .entry(job.partition)
                .or_default()
                .push(job, len);
            if count < MAX_ENVELOPE_RECORDS && size < ENVELOPE_MAX_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let kafka = kafka.clone();
        flushes.spawn(async move {
            let _slot = slot;
            let flushes = by_partition.into_iter().flat_map(|(partition, packer)| {
                packer
                    .into_envelopes()
                    .into_iter()
                    .map(move |jobs| (partition, jobs))
            });
            let flushes = flushes.map(|(partition, jobs)| flush_log(&kafka, partition, jobs));
            futures_util::future::join_all(flushes).await;
        });
    }
    flushes.close();
    flushes.wait().await;
}

/// Produces one envelope and answers its records. One the broker refuses as too large is
/// produced again record by record, each answered by its own outcome.
#[tracing::instrument(level = "debug", skip_all, fields(partition = partition, records = jobs.len()))]
async fn flush_log(kafka: &Kafka, partition: i32, jobs: Vec<AppendJob>) {
    let outcome = produce_log(kafka, partition, &jobs).await;
    let outcomes: Vec<Result<(), String>> = match outcome {
        Err(e) if e.is_too_large() && jobs.len() > 1 => {
            tracing::warn!(
                error = %e,
                partition,
                records = jobs.len(),
                "a log envelope was too large; appending its records one by one"
            );
            let singles = jobs
                .iter()
                .map(|job| produce_log(kafka, partition, std::slice::from_ref(job)));
            futures_util::future::join_all(singles)
                .await
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect()
        }
        outcome => vec![outcome.map_err(|e| e.to_string()); jobs.len()],
    };
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let _ = job.done.send(outcome);
    }
}

/// Produces `jobs` as one envelope, under a trace id of its own.
async fn produce_log(
    kafka: &Kafka,
    partition: i32,
    jobs: &[AppendJob],
) -> Result<(), KafkaFailure> {
    let trace = ulid::Ulid::new().to_string();
    let empty = LogEnvelope {
        trace: Some(trace.clone()),
        records: Vec::new(),
    };
    let outcome = match Framing::of(&empty) {
        Ok(framing) => {
            let payload = framing.wrap(jobs.iter().map(|j| j.encoded.as_slice()));
            kafka
                .produce_to_partition(&kafka.config.message_topic, partition, &payload)
                .await
        }
        Err(e) => Err(KafkaFailure {
            message: e,
            code: None,
        }),
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        for job in jobs {
            tracing::debug!(
                trace = %trace,
                trace_id = job.trace_id.map(tracing::field::display),
                partition,
                message_id = %job.message_id,
                conversation_id = %job.conversation_id,
                seq = job.seq,
                acked = outcome.is_ok(),
                "appended"
            );
        }
    }
    outcome
}

/// A handler record queued for the router: its JSON, and what its debug line names.
struct RouteJob {
    topic: String,
    encoded: Vec<u8>,
    message_id: Option<MessageId>,
    recipients: usize,
    /// The send's trace, for the debug line.
    trace_id: Option<TraceId>,
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
        // Encoded on the caller's task, once (see `LogAppender::append_all`).
        let encoded = match serde_json::to_vec(&record) {
            Ok(encoded) => encoded,
            Err(e) => {
                tracing::error!(error = %e, %topic, "encoding a record for a socket server's topic failed");
                return;
            }
        };
        let job = RouteJob {
            topic,
            encoded,
            message_id: record.message_id,
            recipients: record.recipients.len(),
            trace_id: record.traceparent.map(|t| t.trace_id),
        };
        if self.tx.send(job).await.is_err() {
            tracing::warn!("the router is not running; devices will catch up from history");
        }
    }
}

async fn run_router(kafka: Kafka, mut rx: mpsc::Receiver<RouteJob>) {
    // The broker acks being waited for; the router ends after them.
    let acks = TaskTracker::new();
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(ROUTE_LINGER).await;
        // Topic order of first appearance, and each topic's frames in routing order.
        let mut topics: Vec<String> = Vec::new();
        let mut by_topic: HashMap<String, Packer<RouteJob>> = HashMap::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let topic = job.topic.clone();
            let packer = by_topic.entry(topic.clone()).or_insert_with(|| {
                topics.push(topic.clone());
                Packer::default()
            });
            let len = job.encoded.len();
            packer.push(job, len);
            // A full envelope goes now; the topic's later frames start its next one.
            if packer.envelopes.len() > 1 {
                let full = packer.envelopes.remove(0);
                enqueue_route(&kafka, &acks, &topic, full);
            }
            next = rx.try_recv().ok();
        }
        for topic in topics {
            if let Some(packer) = by_topic.remove(&topic) {
                for jobs in packer.into_envelopes() {
                    enqueue_route(&kafka, &acks, &topic, jobs);
                }
            }
        }
    }
    acks.close();
    acks.wait().await;
}

/// Enqueues one envelope now (so envelopes reach a topic in enqueue order) and logs a failed
/// acknowledgement in the background. One refused as too large is enqueued again record by
/// record (those may then reach the handler after later envelopes; its reorder buffer puts
/// messages back in `seq` order, and devices fill what it gives up on from history).
#[tracing::instrument(level = "debug", skip_all, fields(topic = topic, records = jobs.len()))]
fn enqueue_route(kafka: &Kafka, acks: &TaskTracker, topic: &str, jobs: Vec<RouteJob>) {
    let (payload, trace) = match route_payload(&jobs) {
        Ok(encoded) => encoded,
        Err(e) => {
            tracing::error!(error = %e, %topic, "encoding a socket server topic's envelope failed");
            return;
        }
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        for job in &jobs {
            if let Some(message_id) = &job.message_id {
                tracing::debug!(
                    trace = %trace,
                    trace_id = job.trace_id.map(tracing::field::display),
                    %topic,
                    message_id = %message_id,
                    recipients = job.recipients,
                    "routed"
                );
            }
        }
    }
    let failed = |e: KafkaFailure, topic: &str| {
        tracing::warn!(error = %e, %topic, "routing to a socket server failed");
    };
    match kafka.enqueue(topic, topic, &payload) {
        Ok(ack) => {
            let (kafka, topic, tracker) = (kafka.clone(), topic.to_owned(), acks.clone());
            acks.spawn(async move {
                match ack.await {
                    Ok(()) => {}
                    Err(e) if e.is_too_large() && jobs.len() > 1 => {
                        split_route(&kafka, &tracker, &topic, jobs, e)
                    }
                    Err(e) => failed(e, &topic),
                }
            });
        }
        Err(e) if e.is_too_large() && jobs.len() > 1 => split_route(kafka, acks, topic, jobs, e),
        Err(e) => failed(e, topic),
    }
}

/// Enqueues every record of a refused envelope in an envelope of its own.
fn split_route(
    kafka: &Kafka,
    acks: &TaskTracker,
    topic: &str,
    jobs: Vec<RouteJob>,
    error: KafkaFailure,
) {
    tracing::warn!(
        %error,
        %topic,
        records = jobs.len(),
        "a socket server topic's envelope was too large; routing its records one by one"
    );
    for job in jobs {
        enqueue_route(kafka, acks, topic, vec![job]);
    }
}

/// One handler envelope of `jobs` and its new trace id.
fn route_payload(jobs: &[RouteJob]) -> Result<(Vec<u8>, String), String> {
    let trace = ulid::Ulid::new().to_string();
    let framing = Framing::of(&HandlerEnvelope {
        trace: Some(trace.clone()),
        records: Vec::new(),
    })?;
    Ok((
        framing.wrap(jobs.iter().map(|j| j.encoded.as_slice())),
        trace,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_kafka::{MESSAGE_MAX_BYTES, RECORD_MAX_BYTES};
    use switchboard_message_log::{decode_handler_envelope, decode_log_envelope};

    /// A log record built the way a reader would see it (from JSON), so fields the record
    /// gains later take their defaults here.
    fn log_record(seq: u64, body: &str) -> LogRecord {
        serde_json::from_value(serde_json::json!({
            "conversation_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "seq": seq,
            "message_id": format!("01BX5ZZKBKACTAV9WEVGEMM{seq:03}"),
            "sender_id": "ann",
            "client_msg_id": format!("c\"{seq}\\"),
            "body": body,
            "created_at": "2026-01-01T00:00:00.000Z",
        }))
        .expect("a log record")
    }

    /// The body of the poison send: 43,000 U+0001, each six bytes once escaped.
    fn poison() -> String {
        "\u{1}".repeat(43_000)
    }

    #[test]
    fn a_log_envelope_of_encoded_records_decodes_as_the_records() {
        let records = vec![
            log_record(1, "hi"),
            log_record(2, &poison()),
            log_record(3, "quotes \" and \\ and é and \u{7f}"),
            log_record(4, ""),
        ];
        let encoded: Vec<Vec<u8>> = records
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap())
            .collect();
        let trace = "01J0TRACE0000000000000000".to_owned();
        let framing = Framing::of(&LogEnvelope {
            trace: Some(trace.clone()),
            records: Vec::new(),
        })
        .unwrap();
        let payload = framing.wrap(encoded.iter().map(Vec::as_slice));
        let decoded = decode_log_envelope(&payload).unwrap();
        assert_eq!(decoded.trace, Some(trace.clone()));
        assert_eq!(decoded.records, records);
        // Byte for byte what serde writes for the whole envelope.
        let whole = serde_json::to_vec(&LogEnvelope {
            trace: Some(trace),
            records: records.clone(),
        })
        .unwrap();
        assert_eq!(payload, whole);
        // No records, one record.
        assert!(decode_log_envelope(&framing.wrap([]))
            .unwrap()
            .records
            .is_empty());
        assert_eq!(
            decode_log_envelope(&framing.wrap([encoded[1].as_slice()]))
                .unwrap()
                .records,
            vec![records[1].clone()]
        );
        assert!(framing.head.len() + framing.tail.len() < FRAMING_ALLOWANCE);
    }

    #[test]
    fn a_handler_envelope_of_encoded_records_decodes_as_the_records() {
        let frame = serde_json::json!({"type": "message", "body": poison()}).to_string();
        let records = vec![
            HandlerRecord {
                recipients: vec!["bob".into()],
                skip_connection: Some(7),
                frame,
                accepted_at_ms: Some(1),
                order: Some(("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(), 2)),
                message_id: Some("01BX5ZZKBKACTAV9WEVGEMMVRZ".parse().unwrap()),
                traceparent: None,
            },
            HandlerRecord {
                recipients: vec!["ann".into(), "bob".into()],
                skip_connection: None,
                frame: r#"{"type":"typing"}"#.into(),
                accepted_at_ms: None,
                order: None,
                message_id: None,
                traceparent: None,
            },
        ];
        let encoded: Vec<Vec<u8>> = records
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap())
            .collect();
        // The frame is escaped a second time: U+0001 takes seven bytes.
        assert!(encoded[0].len() > 7 * 43_000);
        let framing = Framing::of(&HandlerEnvelope {
            trace: Some("t".into()),
            records: Vec::new(),
        })
        .unwrap();
        let decoded =
            decode_handler_envelope(&framing.wrap(encoded.iter().map(Vec::as_slice))).unwrap();
        assert_eq!(decoded.trace.as_deref(), Some("t"));
        assert_eq!(decoded.records, records);
    }

    /// Packs `lens` and answers each envelope's indices and its framed size.
    fn pack(lens: &[usize]) -> Vec<(Vec<usize>, usize)> {
        let mut packer = Packer::default();
        for (i, len) in lens.iter().enumerate() {
            packer.push(i, *len);
        }
        packer
            .into_envelopes()
            .into_iter()
            .map(|items| {
                let bytes = FRAMING_ALLOWANCE + items.iter().map(|i| lens[*i] + 1).sum::<usize>();
                (items, bytes)
            })
            .collect()
    }

    #[test]
    fn envelopes_are_cut_by_encoded_bytes_in_order() {
        // The poison record: a 43 KB body, 258 KB encoded. The old sizing (body + 200) put
        // over twenty of them in one envelope, far past message.max.bytes.
        let encoded = serde_json::to_vec(&log_record(1, &poison())).unwrap().len();
        assert!(encoded > 6 * 43_000, "{encoded}");
        let envelopes = pack(&[encoded; 10]);
        assert!(envelopes.len() >= 5, "{envelopes:?}");
        let order: Vec<usize> = envelopes.iter().flat_map(|(e, _)| e.clone()).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>(), "routing order is kept");
        for (items, bytes) in &envelopes {
            assert!(*bytes <= ENVELOPE_MAX_BYTES, "{items:?}: {bytes}");
        }
        // Small records share envelopes up to the count cap.
        let envelopes = pack(&[300; MAX_ENVELOPE_RECORDS + 1]);
        assert_eq!(envelopes.len(), 2);
        assert_eq!(envelopes[0].0.len(), MAX_ENVELOPE_RECORDS);
        // A record over the envelope cap (still under the record cap) goes alone.
        let envelopes = pack(&[10, RECORD_MAX_BYTES, 10]);
        let items: Vec<Vec<usize>> = envelopes.into_iter().map(|(e, _)| e).collect();
        assert_eq!(items, vec![vec![0], vec![1], vec![2]]);
        const { assert!(RECORD_MAX_BYTES + FRAMING_ALLOWANCE < MESSAGE_MAX_BYTES) };
    }

    /// Queued jobs for `records`, and the waits for their answers.
    fn jobs(records: &[LogRecord]) -> (Vec<AppendJob>, Vec<oneshot::Receiver<Result<(), String>>>) {
        records
            .iter()
            .map(|record| {
                let (done, wait) = oneshot::channel();
                let job = AppendJob {
                    partition: 0,
                    encoded: serde_json::to_vec(record).unwrap(),
                    conversation_id: record.conversation_id.clone(),
                    message_id: record.message_id.clone(),
                    seq: record.seq,
                    trace_id: None,
                    done,
                };
                (job, wait)
            })
            .unzip()
    }

    /// Against the test binary's shared broker: an envelope over `message.max.bytes` (built
    /// here directly; the packer never builds one) is refused as too large, and its records
    /// are appended one by one, each acknowledged, each in an envelope of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_envelope_refused_as_too_large_is_appended_record_by_record() {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::{Message, Offset, TopicPartitionList};
        use switchboard_test_support::shared;

        let id = shared::unique("too-large");
        let vars = shared::kafka_vars(&id);
        let config = vars.config(&[switchboard_config::tables::kafka::TABLE], |lookup| {
            switchboard_kafka::KafkaConfig::from_lookup(lookup)
        });
        shared::create_topics(&config.brokers, &[&config.message_topic], 1)
            .await
            .expect("the log topic");
        let kafka = Kafka::new(config.clone(), 10_000).expect("a producer");
        // Together about 1.2 MB, over the limit; each about 400 KB, well under it.
        let records: Vec<LogRecord> = (1..=3)
            .map(|seq| log_record(seq, &"x".repeat(400_000)))
            .collect();
        let (whole, _) = jobs(&records);
        let refused = produce_log(&kafka, 0, &whole).await.unwrap_err();
        assert!(refused.is_too_large(), "{refused}");
        let (jobs, waits) = jobs(&records);
        flush_log(&kafka, 0, jobs).await;
        for wait in waits {
            assert_eq!(wait.await.unwrap(), Ok(()));
        }

        let consumer: StreamConsumer = config
            .consumer_config(&format!("check-{id}"), 50)
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(&config.message_topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&partitions).unwrap();
        let mut envelopes = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while envelopes.len() < 3 && std::time::Instant::now() < deadline {
            if let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            {
                let decoded = decode_log_envelope(message.payload().unwrap_or_default()).unwrap();
                envelopes.push(decoded.records);
            }
        }
        let mut stored: Vec<LogRecord> = envelopes.iter().flatten().cloned().collect();
        stored.sort_by_key(|r| r.seq);
        assert!(envelopes.iter().all(|e| e.len() == 1), "one record each");
        assert_eq!(stored, records);
    }
}
