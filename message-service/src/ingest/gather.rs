//! Gathering one batch from the consumer: records of the message log (with the fences among
//! them, in log order), receipts of the events topic, the payloads that cannot be read, and
//! the highest offset read of each partition.

use std::collections::HashMap;

use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use switchboard_message_log::{decode_log_item, Event, LogFence, LogItem, LogRecord};
use switchboard_service_kit::telemetry;

use super::{Ingest, GATHER_WINDOW, MAX_BATCH};
use crate::store::{DeadLetter, LogPosition, ReceiptUpdate, Sourced};

/// What one gathered batch of the message log holds, in log order: its records, with the
/// fences among them (each at the number of records read before it).
#[derive(Default)]
pub(super) struct LogBatch {
    pub(super) records: Vec<Sourced<LogRecord>>,
    pub(super) fences: Vec<(usize, Sourced<LogFence>)>,
}

/// One gathered batch of both topics.
#[derive(Default)]
pub(super) struct Gathered {
    pub(super) log: LogBatch,
    pub(super) receipts: Vec<Sourced<ReceiptUpdate>>,
    pub(super) unreadable: Vec<DeadLetter>,
    /// The last offset read of each (topic, partition).
    pub(super) offsets: HashMap<(String, i32), i64>,
}

impl Ingest {
    /// Gathers a batch starting at `first`: up to [`MAX_BATCH`] records and receipts, or
    /// whatever arrived within [`GATHER_WINDOW`] of the one before.
    pub(super) async fn gather(&self, first: KafkaResult<BorrowedMessage<'_>>) -> Gathered {
        let mut batch = Gathered::default();
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(message) => self.read(&mut batch, &message),
                Err(e) => tracing::warn!(error = %e, "message log consumer error"),
            }
            if batch.log.records.len() + batch.receipts.len() >= MAX_BATCH {
                break;
            }
            next = tokio::time::timeout(GATHER_WINDOW, self.consumer.recv())
                .await
                .ok();
        }
        batch
    }

    /// Adds one consumed message to the batch.
    fn read(&self, batch: &mut Gathered, message: &BorrowedMessage<'_>) {
        let at = at_position(message);
        batch
            .offsets
            .insert((at.topic.clone(), at.partition), at.offset);
        let payload = message.payload().unwrap_or_default();
        if message.topic() == self.message_topic {
            read_log_item(batch, at, payload);
        } else {
            read_event(batch, at, payload);
        }
    }
}

/// A message-log payload: a fence, or a manager's envelope of records.
fn read_log_item(batch: &mut Gathered, at: LogPosition, payload: &[u8]) {
    match decode_log_item(payload) {
        Ok(LogItem::Fence(fence)) => {
            let before = batch.log.records.len();
            batch.log.fences.push((before, Sourced { at, item: fence }));
        }
        Ok(LogItem::Messages(decoded)) => {
            let items = decoded.records;
            if tracing::enabled!(tracing::Level::DEBUG) {
                let trace = decoded.trace.as_deref().unwrap_or("-");
                for item in &items {
                    // This process's step of the send's W3C trace (exported with `otlp`).
                    let span = tracing::debug_span!("ingest", trace_id = tracing::field::Empty);
                    if let Some(parent) = item.traceparent {
                        telemetry::trace::join(&span, Some(parent));
                    }
                    span.in_scope(|| {
                        tracing::debug!(
                            trace,
                            trace_id = item.traceparent.map(|t| tracing::field::display(t.trace_id)),
                            message_id = %item.message_id,
                            seq = item.seq,
                            partition = at.partition,
                            offset = at.offset,
                            "read from the log"
                        )
                    });
                }
            }
            for (i, item) in items.into_iter().enumerate() {
                let at = LogPosition {
                    item: i32::try_from(i).unwrap_or(i32::MAX),
                    ..at.clone()
                };
                batch.log.records.push(Sourced { at, item });
            }
        }
        Err(e) => batch.unreadable.push(DeadLetter::unreadable(
            at,
            payload,
            format!("unreadable log record: {e}"),
        )),
    }
}

/// An events-topic payload: receipts are ingest's; the rest is for other consumers.
fn read_event(batch: &mut Gathered, at: LogPosition, payload: &[u8]) {
    match serde_json::from_slice::<Event>(payload) {
        Ok(Event::Receipt {
            conversation_id,
            user_id,
            kind,
            seq,
        }) => {
            let item = ReceiptUpdate::from_event(conversation_id, user_id, kind, seq);
            batch.receipts.push(Sourced { at, item });
        }
        // Presence and membership events are for other consumers (the membership is already
        // in SQL).
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "skipping an unreadable event")
        }
    }
}

fn at_position(message: &BorrowedMessage<'_>) -> LogPosition {
    LogPosition {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        item: 0,
    }
}
