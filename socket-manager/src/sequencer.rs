//! Sequence numbers and the message log.
//!
//! For each conversation, under a lock in Redis (SET NX PX with a random token, released by a
//! compare-and-delete script: the single-master Redlock), a send is one step:
//!
//! 1. if `client_msg_id` was seen (idempotency record), answer with the recorded
//!    `message_id`/`seq`, re-appending the record first if it may not have reached the log;
//! 2. otherwise take the next `seq` (`INCR`), write a *pending* idempotency record, append the
//!    message to the log and wait for the broker's `acks=all`;
//! 3. on success mark the record done, route the message to every handler holding a member's
//!    device, and answer `sent`; on failure undo the `INCR` (we still hold the lock, so nobody
//!    took a later number) and answer `unavailable`, so no `seq` is ever skipped.
//!
//! Routing is enqueued inside the lock too (without waiting for its ack), so one manager's
//! records reach each handler topic in `seq` order; when several managers take turns on a
//! conversation, the handler's reorder buffer restores `seq` order. A lease can still expire
//! under a long pause (Kleppmann's critique); the message store's primary key
//! `(conversation_id, seq)` is the fence that refuses a second message with a taken number.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Script;
use serde::{Deserialize, Serialize};
use switchboard_message_log::{HandlerRecord, LogRecord};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};

use crate::handlers::HandlerMap;
use crate::kafka::Kafka;
use crate::members::Members;

/// A send as the handler reported it.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub handler_id: String,
    pub connection_id: u64,
    pub sender_id: String,
    pub conversation_id: String,
    pub client_msg_id: String,
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    message_id: String,
    seq: u64,
    created_at: String,
    body: String,
    done: bool,
}

pub struct SequencerMetrics {
    pub lock_wait_seconds: prometheus::Histogram,
    pub messages_sent: prometheus::IntCounter,
    pub send_errors: prometheus::IntCounterVec,
}

pub struct Sequencer {
    pub redis: SentinelRedis,
    pub kafka: Kafka,
    pub members: Members,
    pub handlers: HandlerMap,
    pub lock_ttl: Duration,
    pub lock_wait: Duration,
    pub idempotency_ttl_secs: u64,
    pub metrics: SequencerMetrics,
}

static RELEASE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

/// Takes the next number and records it as pending for this `client_msg_id` in one atomic
/// step, so a manager dying between the two cannot burn a number nobody will replay.
/// KEYS: seq counter, idempotency key. ARGV: record JSON with `"seq":0`, ttl secs.
static NEXT_SEQ: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
        if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
        local seq = redis.call('INCR', KEYS[1])
        local record = string.gsub(ARGV[1], '"seq":0', '"seq":' .. seq, 1)
        redis.call('SET', KEYS[2], record, 'EX', tonumber(ARGV[2]))
        return seq
        "#,
    )
});

static UNDO_SEQ: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if tonumber(redis.call('GET', KEYS[1])) == tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) end return 1",
    )
});

fn error_frame(code: ErrorCode, message: impl Into<String>, client_msg_id: &str) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.into(),
        client_msg_id: Some(client_msg_id.to_owned()),
    }
}

impl Sequencer {
    /// Handles the sends of one conversation from one batch, in order, under one lock.
    pub async fn send_all(&self, conversation_id: &str, sends: &[SendRequest]) -> Vec<ServerFrame> {
        let members = match self.members.of(conversation_id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "membership lookup failed");
                return sends
                    .iter()
                    .map(|s| {
                        error_frame(
                            ErrorCode::Unavailable,
                            "membership is unavailable, retry",
                            &s.client_msg_id,
                        )
                    })
                    .collect();
            }
        };
        let (allowed, refused): (Vec<_>, Vec<_>) = sends
            .iter()
            .enumerate()
            .partition(|(_, s)| members.contains(&s.sender_id));
        let mut replies: Vec<Option<ServerFrame>> = vec![None; sends.len()];
        for (i, s) in refused {
            self.metrics
                .send_errors
                .with_label_values(&["not_a_member"])
                .inc();
            replies[i] = Some(error_frame(
                ErrorCode::NotAMember,
                "you are not a member of this conversation",
                &s.client_msg_id,
            ));
        }
        if !allowed.is_empty() {
            match self.lock(conversation_id).await {
                Ok(token) => {
                    for (i, s) in allowed {
                        replies[i] = Some(self.send_locked(s, &members).await);
                    }
                    self.unlock(conversation_id, &token).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, conversation_id, "sequence lock not acquired");
                    for (i, s) in allowed {
                        self.metrics.send_errors.with_label_values(&["lock"]).inc();
                        replies[i] = Some(error_frame(
                            ErrorCode::Unavailable,
                            "the conversation is busy or the cluster is degraded, retry",
                            &s.client_msg_id,
                        ));
                    }
                }
            }
        }
        replies
            .into_iter()
            .map(|r| r.expect("every send answered"))
            .collect()
    }

    fn lock_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("lock:conv:{conversation_id}"))
    }

    async fn lock(&self, conversation_id: &str) -> Result<String, StoreError> {
        let token = ulid::Ulid::new().to_string();
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let got: Option<String> = self
                .redis
                .query(
                    redis::cmd("SET")
                        .arg(self.lock_key(conversation_id))
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(self.lock_ttl.as_millis() as u64),
                )
                .await?;
            if got.is_some() {
                self.metrics
                    .lock_wait_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(token);
            }
            if started.elapsed() > self.lock_wait {
                return Err(StoreError::Unavailable("lock wait timed out".into()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn unlock(&self, conversation_id: &str, token: &str) {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(self.lock_key(conversation_id)).arg(token);
        if let Err(e) = self.redis.invoke::<i64>(&inv).await {
            tracing::warn!(error = %e, "releasing the sequence lock failed; it will expire");
        }
    }

    async fn send_locked(&self, s: &SendRequest, members: &[String]) -> ServerFrame {
        match self.try_send_locked(s, members).await {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, conversation_id = %s.conversation_id, "send failed");
                self.metrics
                    .send_errors
                    .with_label_values(&["unavailable"])
                    .inc();
                error_frame(
                    ErrorCode::Unavailable,
                    "the message could not be stored durably, retry with the same client_msg_id",
                    &s.client_msg_id,
                )
            }
        }
    }

    async fn try_send_locked(
        &self,
        s: &SendRequest,
        members: &[String],
    ) -> anyhow::Result<ServerFrame> {
        let idem_key = self.redis.key(&format!(
            "idem:{}:{}:{}",
            s.conversation_id, s.sender_id, s.client_msg_id
        ));
        let seen: Option<String> = self.redis.query(redis::cmd("GET").arg(&idem_key)).await?;
        if let Some(seen) = seen.and_then(|j| serde_json::from_str::<IdempotencyRecord>(&j).ok()) {
            if !seen.done {
                // A manager died between numbering and acknowledging: append again. The
                // store ignores the copy if the first append did land.
                self.append(s, &seen).await?;
                self.mark_done(&idem_key, &seen).await;
                self.route(s, &seen, members).await;
            }
            return Ok(sent_frame(s, &seen));
        }

        let mut record = IdempotencyRecord {
            message_id: ulid::Ulid::new().to_string(),
            seq: 0,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            body: s.body.clone(),
            done: false,
        };
        record.seq = self
            .next_seq(
                &s.conversation_id,
                &idem_key,
                &serde_json::to_string(&record)?,
            )
            .await?;
        let seq = record.seq;
        if let Err(e) = self.append(s, &record).await {
            // Undo so the number is reused by the next send: no gap.
            let mut undo = UNDO_SEQ.prepare_invoke();
            undo.key(self.redis.key(&format!("seq:{}", s.conversation_id)))
                .arg(seq);
            let _ = self.redis.invoke::<i64>(&undo).await;
            let _ = self
                .redis
                .query::<()>(redis::cmd("DEL").arg(&idem_key))
                .await;
            return Err(e);
        }
        self.mark_done(&idem_key, &record).await;
        self.metrics.messages_sent.inc();
        self.route(s, &record, members).await;
        Ok(sent_frame(s, &record))
    }

    async fn next_seq(
        &self,
        conversation_id: &str,
        idem_key: &str,
        pending_record: &str,
    ) -> anyhow::Result<u64> {
        let key = self.redis.key(&format!("seq:{conversation_id}"));
        for _ in 0..2 {
            let mut inv = NEXT_SEQ.prepare_invoke();
            inv.key(&key)
                .key(idem_key)
                .arg(pending_record)
                .arg(self.idempotency_ttl_secs);
            let seq: i64 = self.redis.invoke(&inv).await?;
            if seq > 0 {
                return Ok(seq as u64);
            }
            // No counter: a new conversation, or Redis lost it in a failover. Seed it from
            // what the store holds so numbers continue instead of restarting.
            let stored = self.members.stored_last_seq(conversation_id).await?;
            self.redis
                .query::<Option<String>>(redis::cmd("SET").arg(&key).arg(stored).arg("NX"))
                .await?;
        }
        anyhow::bail!("sequence counter could not be initialised")
    }

    async fn append(&self, s: &SendRequest, record: &IdempotencyRecord) -> anyhow::Result<()> {
        let log = LogRecord {
            conversation_id: s.conversation_id.clone(),
            seq: record.seq,
            message_id: record.message_id.clone(),
            sender_id: s.sender_id.clone(),
            client_msg_id: s.client_msg_id.clone(),
            body: record.body.clone(),
            created_at: record.created_at.clone(),
        };
        let payload = serde_json::to_vec(&log)?;
        self.kafka
            .produce(
                &self.kafka.config.message_topic,
                &s.conversation_id,
                &payload,
            )
            .await?;
        Ok(())
    }

    async fn mark_done(&self, idem_key: &str, record: &IdempotencyRecord) {
        let mut done = record.clone();
        done.done = true;
        let Ok(json) = serde_json::to_string(&done) else {
            return;
        };
        let _ = self
            .redis
            .query::<()>(
                redis::cmd("SET")
                    .arg(idem_key)
                    .arg(json)
                    .arg("EX")
                    .arg(self.idempotency_ttl_secs),
            )
            .await;
    }

    /// One record per handler holding a member's device; the sending device is skipped (it
    /// gets `sent`). A failure here loses no message: it is in the log, and devices fill gaps
    /// from history.
    async fn route(&self, s: &SendRequest, record: &IdempotencyRecord, members: &[String]) {
        let frame = ServerFrame::Message {
            conversation_id: s.conversation_id.clone(),
            message_id: record.message_id.clone(),
            seq: record.seq,
            sender_id: s.sender_id.clone(),
            body: record.body.clone(),
            created_at: record.created_at.clone(),
        }
        .to_json();
        let accepted_at_ms = chrono::DateTime::parse_from_rfc3339(&record.created_at)
            .map(|t| t.timestamp_millis())
            .ok();
        self.fan_out_timed(
            &frame,
            members,
            Some((&s.handler_id, s.connection_id)),
            &s.conversation_id,
            accepted_at_ms,
            Some((s.conversation_id.clone(), record.seq)),
        )
        .await;
    }

    /// Produces `frame` to every handler holding a device of `users`, skipping one connection.
    pub async fn fan_out(
        &self,
        frame: &str,
        users: &[String],
        skip: Option<(&str, u64)>,
        key: &str,
    ) {
        self.fan_out_timed(frame, users, skip, key, None, None)
            .await;
    }

    /// Enqueues one record per target handler without waiting for the broker's ack: within
    /// this manager the producer keeps enqueue order per partition, and handlers restore
    /// `seq` order across managers (`order`), so the lock is not held for a second round trip.
    /// A record that fails only costs live delivery: the message is in the log, and devices
    /// fill gaps from history.
    async fn fan_out_timed(
        &self,
        frame: &str,
        users: &[String],
        skip: Option<(&str, u64)>,
        key: &str,
        accepted_at_ms: Option<i64>,
        order: Option<(String, u64)>,
    ) {
        let by_handler: HashMap<String, Vec<String>> = match self.handlers.handlers_for(users).await
        {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(error = %e, "recipient lookup failed; devices will catch up from history");
                return;
            }
        };
        let mut acks = Vec::with_capacity(by_handler.len());
        for (handler, recipients) in by_handler {
            let record = HandlerRecord {
                recipients,
                skip_connection: skip.filter(|(h, _)| *h == handler).map(|(_, c)| c),
                frame: frame.to_owned(),
                accepted_at_ms,
                order: order.clone(),
            };
            let topic = self.kafka.config.handler_topic(&handler);
            let payload = serde_json::to_vec(&record).unwrap_or_default();
            match self.kafka.enqueue(&topic, key, &payload) {
                Ok(ack) => acks.push((topic, ack)),
                Err(e) => tracing::warn!(error = %e, %topic, "routing to a handler failed"),
            }
        }
        if !acks.is_empty() {
            tokio::spawn(async move {
                for (topic, ack) in acks {
                    if let Err(e) = ack.await {
                        tracing::warn!(error = %e, %topic, "routing to a handler failed");
                    }
                }
            });
        }
    }
}

fn sent_frame(s: &SendRequest, record: &IdempotencyRecord) -> ServerFrame {
    ServerFrame::Sent {
        client_msg_id: s.client_msg_id.clone(),
        conversation_id: s.conversation_id.clone(),
        message_id: record.message_id.clone(),
        seq: record.seq,
        created_at: record.created_at.clone(),
    }
}
