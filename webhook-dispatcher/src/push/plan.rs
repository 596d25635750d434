//! Reads the message log and queues the pushes it calls for (the decision rule's first half).
//!
//! Per batch of log records, per conversation, only its newest message counts (older ones
//! collapse into it). For that message: the active members other than its sender that have a
//! push device (one capped query, so a huge group costs at most `SB_PUSH_MAX_RECIPIENTS`
//! rows), their presence (one Redis pipeline), and one upsert per (user, conversation): due
//! after the coalescing window for a user with no live connection, after the grace period for
//! one connected somewhere. The batch's offsets are stored only after the upsert commits, so
//! kill -9 loses nothing; a record read twice changes nothing (a row keeps its newest seq).
//!
//! It takes every partition of the log directly (assign, like the webhook consumer) under a
//! group of its own (`push-notifier`), so pushes and webhooks never wait for each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use switchboard_kafka::KafkaConfig;
use switchboard_message_log::{decode_log_item, LogItem, LogRecord};
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::Notify;

use super::metrics::PushMetrics;
use super::queue::{Candidate, Queue};
use super::PushConfig;

/// The consumer group whose committed offsets say where reading resumes.
pub const GROUP: &str = "push-notifier";
/// Most records gathered into one batch.
const MAX_BATCH: usize = 500;
/// How long a batch waits for more records after its first.
const GATHER_WINDOW: Duration = Duration::from_millis(20);

pub struct Planner {
    consumer: StreamConsumer,
    topic: String,
    queue: Queue,
    redis: SentinelRedis,
    config: PushConfig,
    metrics: PushMetrics,
    /// Woken after each queued batch: the sender looks for due pushes.
    queued: Arc<Notify>,
}

/// The newest message of each conversation in `records`, in first-seen order. Edits, deletes
/// and reactions (issue 28) are records of the log too, but not messages: they notify nobody.
pub fn newest_per_conversation(records: &[LogRecord]) -> Vec<&LogRecord> {
    let mut order: Vec<&str> = Vec::new();
    let mut newest: HashMap<&str, &LogRecord> = HashMap::new();
    for r in records.iter().filter(|r| r.kind().is_message()) {
        match newest.get(r.conversation_id.as_str()) {
            Some(seen) if seen.seq >= r.seq => {}
            Some(_) => {
                newest.insert(&r.conversation_id, r);
            }
            None => {
                order.push(&r.conversation_id);
                newest.insert(&r.conversation_id, r);
            }
        }
    }
    order.into_iter().map(|c| newest[c]).collect()
}

/// The first `chars` characters of `body` (`None` in id-only mode).
pub fn preview(body: &str, chars: usize) -> Option<String> {
    (chars > 0).then(|| body.chars().take(chars).collect())
}

impl Planner {
    pub fn new(
        kafka: &KafkaConfig,
        queue: Queue,
        redis: SentinelRedis,
        config: PushConfig,
        metrics: PushMetrics,
        queued: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        Ok(Planner {
            consumer: kafka.consumer_config(GROUP, 100).create()?,
            topic: kafka.message_topic.clone(),
            queue,
            redis,
            config,
            metrics,
            queued,
        })
    }

    async fn assign_all(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let topic = self.topic.clone();
            let consumer = &self.consumer;
            let found = tokio::task::block_in_place(|| {
                let metadata = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .ok()?;
                let partitions = metadata.topics().first()?.partitions().len();
                if partitions == 0 {
                    return None;
                }
                let mut list = TopicPartitionList::new();
                for p in 0..partitions as i32 {
                    list.add_partition_offset(&topic, p, Offset::Stored).ok()?;
                }
                Some(list)
            });
            match found.map(|list| self.consumer.assign(&list)) {
                Some(Ok(())) => return true,
                Some(Err(e)) => tracing::warn!(error = %e, "push: assigning partitions failed"),
                None => tracing::info!("push: waiting for the message log topic to exist"),
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
        tracing::info!("push notifier reading every partition of the message log");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = self.consumer.recv() => m,
            };
            let mut records: Vec<LogRecord> = Vec::new();
            let mut offsets: HashMap<i32, i64> = HashMap::new();
            let mut read = 0;
            let mut next = Some(first);
            while let Some(result) = next.take() {
                match result {
                    Ok(message) => {
                        read += 1;
                        offsets.insert(message.partition(), message.offset());
                        match decode_log_item(message.payload().unwrap_or_default()) {
                            Ok(LogItem::Messages(decoded)) => records.extend(decoded.records),
                            Ok(LogItem::Fence(_)) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "push: skipping an unreadable log record")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "push: log consumer error"),
                }
                if read >= MAX_BATCH {
                    break;
                }
                next = tokio::time::timeout(GATHER_WINDOW, self.consumer.recv())
                    .await
                    .ok();
            }
            if !self.queue_until_done(&records, &shutdown).await {
                tracing::warn!(
                    "push: stopping with a batch not queued; its offsets stay uncommitted"
                );
                return;
            }
            for (partition, offset) in offsets {
                if let Err(e) = self.consumer.store_offset(&self.topic, partition, offset) {
                    tracing::warn!(error = %e, "push: storing the consumer offset failed");
                }
            }
            self.queued.notify_waiters();
        }
    }

    /// Queues the batch's pushes, retrying while PostgreSQL or Redis is unavailable; `false`
    /// when shutdown came first.
    async fn queue_until_done(&self, records: &[LogRecord], shutdown: &CancellationToken) -> bool {
        let newest = newest_per_conversation(records);
        if newest.is_empty() {
            return true;
        }
        let mut wait = Duration::from_millis(100);
        loop {
            match self.queue_batch(&newest).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "push: queueing a batch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn queue_batch(&self, newest: &[&LogRecord]) -> anyhow::Result<()> {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.config.ttl).unwrap_or(chrono::Duration::MAX);
        let coalesce = chrono::Duration::from_std(self.config.coalesce).unwrap_or_default();
        let grace = chrono::Duration::from_std(self.config.grace).unwrap_or_default();
        let mut candidates = Vec::new();
        for record in newest {
            let message_at = record.created_at.datetime();
            // Already too old to push (a first start reading the log's history, or a long
            // outage): never queued.
            if now - message_at > ttl {
                continue;
            }
            let mut users = self
                .queue
                .recipients(
                    &record.conversation_id,
                    &record.sender_id,
                    self.config.max_recipients + 1,
                )
                .await?;
            if users.len() as i64 > self.config.max_recipients {
                users.truncate(self.config.max_recipients as usize);
                self.metrics.recipients_skipped.inc();
                tracing::warn!(
                    conversation = %record.conversation_id,
                    max = self.config.max_recipients,
                    "push: more recipients with a device than SB_PUSH_MAX_RECIPIENTS; the rest are skipped"
                );
            }
            if users.is_empty() {
                continue;
            }
            // The presence reader keys by plain strings.
            let names: Vec<String> = users.iter().map(|u| u.to_string()).collect();
            let presence =
                switchboard_chat_state::presence::read(&self.redis, &names, now.timestamp_millis())
                    .await
                    .map_err(|e| anyhow::anyhow!("reading presence: {e}"))?;
            let preview = preview(&record.body, self.config.preview_chars);
            for (user, (online, _)) in users.into_iter().zip(presence) {
                let (mode, wait) = if online {
                    ("online", grace)
                } else {
                    ("offline", coalesce)
                };
                candidates.push(Candidate {
                    user_id: user,
                    conversation_id: record.conversation_id.clone(),
                    mode,
                    seq: i64::try_from(record.seq).unwrap_or(i64::MAX),
                    message_id: record.message_id.clone(),
                    sender_id: record.sender_id.clone(),
                    preview: preview.clone(),
                    message_at,
                    due_at: now + wait,
                });
            }
        }
        if !candidates.is_empty() {
            self.queue.enqueue(&candidates, now).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conversation `name`'s id (`a`, `b`: a ULID ending in that letter).
    fn conv(name: &str) -> String {
        format!("01ARZ3NDEKTSV4RRFFQ69G5FA{}", name.to_uppercase())
    }

    /// Message `seq`'s id.
    fn message(seq: u64) -> String {
        format!("01BX5ZZKBKACTAV9WEVGEMMV{seq:02}")
    }

    /// From JSON, so the test holds whatever optional fields records gain.
    fn record(conversation: &str, seq: u64) -> LogRecord {
        serde_json::from_value(serde_json::json!({
            "conversation_id": conv(conversation), "seq": seq, "message_id": message(seq),
            "sender_id": "alice", "client_msg_id": format!("c{seq}"), "body": "hi",
            "created_at": "2026-01-01T00:00:00.000Z", "epoch": 1
        }))
        .unwrap()
    }

    #[test]
    fn a_batch_collapses_to_each_conversations_newest_message() {
        let records = vec![
            record("a", 1),
            record("b", 7),
            record("a", 3),
            record("a", 2),
        ];
        let newest: Vec<(String, u64)> = newest_per_conversation(&records)
            .into_iter()
            .map(|r| (r.conversation_id.to_string(), r.seq))
            .collect();
        assert_eq!(newest, vec![(conv("a"), 3), (conv("b"), 7)]);
    }

    #[test]
    fn edits_deletes_and_reactions_notify_nobody() {
        let mut reaction = record("a", 4);
        reaction.event = Some(switchboard_message_log::RecordEvent {
            kind: switchboard_message_log::RecordKind::Reaction,
            target_id: message(3).parse().unwrap(),
            emoji: Some("x".into()),
            moderated: false,
        });
        let records = vec![record("a", 3), reaction.clone(), {
            let mut reply = record("b", 2);
            reply.event = Some(switchboard_message_log::RecordEvent {
                kind: switchboard_message_log::RecordKind::Message,
                ..reaction.event.clone().unwrap()
            });
            reply
        }];
        let newest: Vec<(String, u64)> = newest_per_conversation(&records)
            .into_iter()
            .map(|r| (r.conversation_id.to_string(), r.seq))
            .collect();
        assert_eq!(
            newest,
            vec![(conv("a"), 3), (conv("b"), 2)],
            "a reply is a message"
        );
        assert!(newest_per_conversation(&[reaction]).is_empty());
    }

    #[test]
    fn previews_count_characters_and_zero_is_id_only() {
        assert_eq!(preview("héllo world", 0), None);
        assert_eq!(preview("héllo world", 2).as_deref(), Some("hé"));
        assert_eq!(preview("hi", 100).as_deref(), Some("hi"));
    }
}
