//! Recovery inside a lease: numbers a predecessor left pending are appended again, and a
//! counter that cannot be trusted is checked against the (fenced) log.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_message_log::LogRecord;
use switchboard_protocol::{ClientMsgId, ConversationId, MessageId, Timestamp, UserId};
use switchboard_redis::StoreError;

use super::lease::Lease;
use super::scripts::{split_pending, NumberingError, RESEED_LUA};
use super::Sequencer;

/// A numbered message not yet known to be in the log: the value of a `pending:{c}` field
/// (the field is its `seq`; the value is `"{epoch}|{this as JSON}"`, see
/// [`split_pending`]). It carries the body only until the append is acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PendingMessage {
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    pub created_at: Timestamp,
    /// Additive: pending entries written before attachments existed have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
    /// An edit, delete, reaction or reply, so a replayed record keeps its kind. Additive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<switchboard_message_log::RecordEvent>,
}

/// A pending number older than this is an alarm (`switchboard_manager_pending_stale_total`):
/// its append has been in doubt for longer than any outage the cluster rides out by itself.
const PENDING_STALE_AFTER: Duration = Duration::from_secs(60);

impl Sequencer {
    /// Appends again every number a holder took but never saw acknowledged, then clears them.
    ///
    /// An entry that cannot be read (a format this manager does not know) is not appended, so
    /// its number stays a hole; its idempotency record is deleted with it, or a resend would be
    /// answered `sent` for a message that was never logged (the resend gets a new number).
    pub(super) async fn finish_pending(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
        members: &[String],
    ) -> Result<(), NumberingError> {
        let entries: HashMap<u64, String> = self
            .redis
            .query(redis::cmd("HGETALL").arg(self.keys.pending(conversation_id)))
            .await?;
        let mut records: Vec<LogRecord> = Vec::with_capacity(entries.len());
        let mut unreadable = Vec::new();
        for (seq, value) in entries {
            let (epoch, json) = split_pending(&value);
            match serde_json::from_str::<PendingMessage>(json) {
                Ok(p) => records.push(LogRecord {
                    conversation_id: conversation_id.clone(),
                    seq,
                    message_id: p.message_id,
                    sender_id: p.sender_id,
                    client_msg_id: p.client_msg_id.into_string(),
                    body: p.body,
                    created_at: p.created_at,
                    epoch,
                    attachments: p.attachments,
                    event: p.event,
                    traceparent: None,
                }),
                Err(e) => {
                    tracing::error!(error = %e, seq, %conversation_id, "unreadable pending message dropped with its idempotency record");
                    unreadable.push(seq);
                }
            }
        }
        if !unreadable.is_empty() {
            self.forget_idempotency_of(conversation_id, &unreadable)
                .await?;
        }
        self.count_stale(conversation_id, &records);
        records.sort_by_key(|r| r.seq);
        let outcomes = self.appender.append_all(&records).await;
        let mut acked: Vec<u64> = unreadable;
        let mut failed = None;
        for (record, outcome) in records.iter().zip(outcomes) {
            match outcome {
                Ok(()) => acked.push(record.seq),
                Err(e) => failed = Some(e),
            }
        }
        let targets = self.route_targets(members).await;
        for record in records.iter().filter(|r| acked.contains(&r.seq)) {
            self.route(&targets, record, None).await;
        }
        if !self
            .finish(lease, conversation_id, &acked, false)
            .await?
            .held
        {
            return Err(NumberingError::LeaseLost);
        }
        self.metrics.pending_replayed.inc_by(records.len() as u64);
        tracing::info!(
            %conversation_id,
            replayed = records.len(),
            "appended the numbers a previous lease left pending"
        );
        match failed {
            Some(e) => Err(NumberingError::Store(StoreError::Unavailable(
                e.to_string(),
            ))),
            None => Ok(()),
        }
    }

    /// Counts (and raises the alarm for) pending numbers older than [`PENDING_STALE_AFTER`].
    fn count_stale(&self, conversation_id: &ConversationId, records: &[LogRecord]) {
        let stale = records
            .iter()
            .filter(|r| {
                Timestamp::now().millis() - r.created_at.millis()
                    > PENDING_STALE_AFTER.as_millis() as i64
            })
            .count();
        if stale > 0 {
            self.metrics.pending_stale.inc_by(stale as u64);
            tracing::error!(
                %conversation_id,
                stale,
                "ALARM: numbers have waited for their append longer than {PENDING_STALE_AFTER:?}"
            );
        }
    }

    /// Deletes the idempotency records that answer with one of `seqs` (a rare path: found by
    /// scanning the conversation's records).
    pub(super) async fn forget_idempotency_of(
        &self,
        conversation_id: &ConversationId,
        seqs: &[u64],
    ) -> Result<(), NumberingError> {
        let pattern = self.keys.idempotency_pattern(conversation_id);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            for key in keys {
                let value: Option<String> = self
                    .redis
                    .query(redis::cmd("GET").arg(&key))
                    .await
                    .unwrap_or(None);
                let seq = value
                    .as_deref()
                    .and_then(|v| v.split(' ').next())
                    .and_then(|s| s.parse::<u64>().ok());
                if seq.is_some_and(|seq| seqs.contains(&seq)) {
                    let _: i64 = self.redis.query(redis::cmd("DEL").arg(&key)).await?;
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Checks the counter against the log on this master: a new conversation, a master that
    /// took over (asynchronous replication may have lost its last numbers), or a counter Redis
    /// lost. The message service fences the conversation's log under a new epoch and answers
    /// the fence's floor, the highest `seq` the log held before it (every acknowledged number
    /// was in the log before its `sent`; a deposed holder's record landing after the fence is
    /// refused by the store). The counter is raised to the floor and marked checked on this
    /// master under the new epoch. The idempotency records of the numbers above the counter
    /// were lost with them (they were written in the same script as the `INCR`, and
    /// replication keeps order), so the newest of them are restored from the log too, each
    /// with the lifetime it had left: a resend of a recent message gets its original answer,
    /// not a second number.
    pub(super) async fn reseed(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
    ) -> Result<(), NumberingError> {
        let counter: Option<u64> = self
            .redis
            .query(redis::cmd("GET").arg(self.keys.counter(conversation_id)))
            .await?;
        let counter = counter.unwrap_or(0);
        let settled = self
            .members
            .settled_log(conversation_id, counter, self.log_partitions)
            .await
            .map_err(|e| StoreError::Unavailable(format!("the settled log: {e}")))?;
        let floor = settled.last_seq;
        let now_ms = Timestamp::now().millis();
        let ttl_ms =
            i64::try_from(self.idempotency_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        // Each with the lifetime it had left; a record whose lifetime is over stays gone.
        let restored: Vec<(&crate::members::SettledMessage, i64)> = settled
            .messages
            .iter()
            .filter_map(|m| {
                let left_secs = (ttl_ms - (now_ms - m.created_at.millis())) / 1000;
                (left_secs > 0).then_some((m, left_secs))
            })
            .collect();
        let build = |replid: &str| {
            let mut eval = redis::cmd("EVAL");
            eval.arg(RESEED_LUA)
                .arg(3 + restored.len())
                .arg(&lease.key)
                .arg(self.keys.counter(conversation_id))
                .arg(self.keys.epoch(conversation_id));
            for (m, _) in &restored {
                eval.arg(
                    self.keys
                        .idempotency(conversation_id, &m.sender_id, &m.client_msg_id),
                );
            }
            eval.arg(&lease.token)
                .arg(format!("{replid} {}", settled.epoch))
                .arg(floor)
                .arg(counter);
            for (m, left_secs) in &restored {
                eval.arg(m.seq)
                    .arg(m.message_id.as_str())
                    .arg(m.created_at.to_string())
                    .arg(*left_secs);
            }
            let mut pipe = redis::pipe();
            pipe.add_command(eval);
            pipe
        };
        let (was,): (u64,) = self.redis.query_pipe_on_master(build).await?;
        if floor > was && was > 0 {
            self.metrics.counters_raised.inc();
            tracing::warn!(
                %conversation_id,
                counter = was,
                log = floor,
                epoch = settled.epoch,
                restored_idempotency_records = restored.len(),
                "the sequence counter was behind the log (lost in a Redis failover); raised it"
            );
        }
        Ok(())
    }
}
