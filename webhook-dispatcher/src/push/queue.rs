//! The notifier's queries: its queue (`push_queue`, in the dispatcher's schema) and what it
//! reads from the message service's database (`members`, `receipts`, `push_devices`), the
//! only write there being the removal of pushkeys the gateway rejected.
//!
//! Every time in `push_queue` is the dispatcher's clock (passed in), so "due" compares like
//! with like whatever the database server's clock says.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{QueryBuilder, Row};
use switchboard_protocol::{ConversationId, MessageId, UserId};

/// One (user, conversation) to queue: the conversation's newest message of a batch.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    /// `offline` (due after the coalescing window) or `online` (after the grace period).
    pub mode: &'static str,
    pub seq: i64,
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub preview: Option<String>,
    pub message_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// A queued push whose time has come.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    pub mode: String,
    pub seq: i64,
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub preview: Option<String>,
    pub message_at: DateTime<Utc>,
    pub attempts: i32,
    pub version: i64,
}

/// A push device, as the gateway gets it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    pub device_id: String,
    pub app_id: String,
    pub platform: String,
    pub pushkey: String,
    pub data: serde_json::Value,
}

#[derive(Clone)]
pub struct Queue {
    /// The dispatcher's schema.
    pub own: PgPool,
    /// The message service's database.
    pub messages: PgPool,
}

impl Queue {
    /// Up to `limit` active members of the conversation other than `sender` that have a push
    /// device, in user id order: one indexed query however large the group.
    pub async fn recipients(
        &self,
        conversation_id: &ConversationId,
        sender_id: &UserId,
        limit: i64,
    ) -> Result<Vec<UserId>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT m.user_id FROM members m
              WHERE m.conversation_id = $1 AND m.state = 'active' AND m.user_id <> $2
                AND EXISTS (SELECT 1 FROM push_devices d WHERE d.user_id = m.user_id)
              ORDER BY m.user_id LIMIT $3",
        )
        .bind(conversation_id)
        .bind(sender_id)
        .bind(limit)
        .fetch_all(&self.messages)
        .await
    }

    /// Queues the candidates (one per (user, conversation)) in one transaction: a new row is
    /// due at its `due_at`; a waiting row takes the newer message and keeps the earlier due
    /// time (the push collapses); an idle row opens a new window. A message no newer than the
    /// row's (read again from the log) changes nothing. Answers how many rows changed.
    pub async fn enqueue(
        &self,
        candidates: &[Candidate],
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let mut changed = 0;
        let mut tx = self.own.begin().await?;
        for chunk in candidates.chunks(1000) {
            let mut builder = QueryBuilder::new(
                "INSERT INTO push_queue AS q (user_id, conversation_id, state, mode, seq,
                    message_id, sender_id, preview, message_at, due_at, updated_at) ",
            );
            builder.push_values(chunk, |mut b, c| {
                b.push_bind(&c.user_id)
                    .push_bind(&c.conversation_id)
                    .push_bind("waiting")
                    .push_bind(c.mode)
                    .push_bind(c.seq)
                    .push_bind(&c.message_id)
                    .push_bind(&c.sender_id)
                    .push_bind(&c.preview)
                    .push_bind(c.message_at)
                    .push_bind(c.due_at)
                    .push_bind(now);
            });
            builder.push(
                " ON CONFLICT (user_id, conversation_id) DO UPDATE SET
                    seq = EXCLUDED.seq, message_id = EXCLUDED.message_id,
                    sender_id = EXCLUDED.sender_id, preview = EXCLUDED.preview,
                    message_at = EXCLUDED.message_at, version = q.version + 1,
                    mode = CASE WHEN q.state = 'idle' THEN EXCLUDED.mode ELSE q.mode END,
                    due_at = CASE WHEN q.state = 'idle' THEN EXCLUDED.due_at
                                  ELSE LEAST(q.due_at, EXCLUDED.due_at) END,
                    attempts = CASE WHEN q.state = 'idle' THEN 0 ELSE q.attempts END,
                    last_error = CASE WHEN q.state = 'idle' THEN NULL ELSE q.last_error END,
                    state = 'waiting', updated_at = EXCLUDED.updated_at
                  WHERE q.seq < EXCLUDED.seq",
            );
            changed += builder.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Up to `limit` waiting pushes due at `now`, the longest due first.
    pub async fn due(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Waiting>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT user_id, conversation_id, mode, seq, message_id, sender_id, preview,
                    message_at, attempts, version
               FROM push_queue WHERE state = 'waiting' AND due_at <= $1
              ORDER BY due_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.own)
        .await?;
        // A row that breaks an id's rule is an error, not a panic (`try_get` decodes it).
        rows.iter()
            .map(|r| {
                Ok(Waiting {
                    user_id: r.try_get("user_id")?,
                    conversation_id: r.try_get("conversation_id")?,
                    mode: r.try_get("mode")?,
                    seq: r.try_get("seq")?,
                    message_id: r.try_get("message_id")?,
                    sender_id: r.try_get("sender_id")?,
                    preview: r.try_get("preview")?,
                    message_at: r.try_get("message_at")?,
                    attempts: r.try_get("attempts")?,
                    version: r.try_get("version")?,
                })
            })
            .collect()
    }

    /// How long until the next waiting push is due (`None`: none waits).
    pub async fn next_due_in(&self, now: DateTime<Utc>) -> Result<Option<Duration>, sqlx::Error> {
        let next: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(due_at) FROM push_queue WHERE state = 'waiting'")
                .fetch_one(&self.own)
                .await?;
        Ok(next.map(|at| (at - now).to_std().unwrap_or_default()))
    }

    /// Whether the user is still an active member, and their read cursor (0: none).
    pub async fn cursor(
        &self,
        conversation_id: &ConversationId,
        user_id: &UserId,
    ) -> Result<(bool, i64), sqlx::Error> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2
                              AND state = 'active') AS member,
                    COALESCE((SELECT read_seq FROM receipts
                               WHERE conversation_id = $1 AND user_id = $2), 0) AS read_seq",
        )
        .bind(conversation_id)
        .bind(user_id)
        .fetch_one(&self.messages)
        .await?;
        Ok((row.get("member"), row.get("read_seq")))
    }

    /// The user's push devices (at most the message service's per-user bound).
    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<Device>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT device_id, app_id, platform, pushkey, data::text AS data
               FROM push_devices WHERE user_id = $1 ORDER BY device_id LIMIT 100",
        )
        .bind(user_id)
        .fetch_all(&self.messages)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Device {
                device_id: r.get("device_id"),
                app_id: r.get("app_id"),
                platform: r.get("platform"),
                pushkey: r.get("pushkey"),
                data: serde_json::from_str(r.get::<&str, _>("data")).unwrap_or_default(),
            })
            .collect())
    }

    /// Removes the user's devices with these pushkeys (the gateway rejected them).
    pub async fn remove_pushkeys(
        &self,
        user_id: &UserId,
        pushkeys: &[String],
    ) -> Result<u64, sqlx::Error> {
        if pushkeys.is_empty() {
            return Ok(0);
        }
        Ok(
            sqlx::query("DELETE FROM push_devices WHERE user_id = $1 AND pushkey = ANY($2)")
                .bind(user_id)
                .bind(pushkeys)
                .execute(&self.messages)
                .await?
                .rows_affected(),
        )
    }

    /// The push is settled (sent, suppressed, dropped): the row goes idle, unless a newer
    /// message arrived meanwhile; then it stays waiting, due no sooner than a new window.
    /// Answers whether this version was the row's newest.
    pub async fn finish(
        &self,
        push: &Waiting,
        now: DateTime<Utc>,
        next_window: Duration,
    ) -> Result<bool, sqlx::Error> {
        let idle = sqlx::query(
            "UPDATE push_queue SET state = 'idle', attempts = 0, last_error = NULL,
                    updated_at = $4
              WHERE user_id = $1 AND conversation_id = $2 AND version = $3",
        )
        .bind(&push.user_id)
        .bind(&push.conversation_id)
        .bind(push.version)
        .bind(now)
        .execute(&self.own)
        .await?
        .rows_affected();
        if idle == 1 {
            return Ok(true);
        }
        let next = now + chrono::Duration::from_std(next_window).unwrap_or_default();
        sqlx::query(
            "UPDATE push_queue SET due_at = GREATEST(due_at, $3), attempts = 0, updated_at = $4
              WHERE user_id = $1 AND conversation_id = $2 AND state = 'waiting'",
        )
        .bind(&push.user_id)
        .bind(&push.conversation_id)
        .bind(next)
        .bind(now)
        .execute(&self.own)
        .await?;
        Ok(false)
    }

    /// A failed attempt: tried again at `retry_at`.
    pub async fn retry(
        &self,
        push: &Waiting,
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE push_queue SET attempts = attempts + 1, due_at = $3, last_error = $4,
                    updated_at = $3
              WHERE user_id = $1 AND conversation_id = $2 AND state = 'waiting'",
        )
        .bind(&push.user_id)
        .bind(&push.conversation_id)
        .bind(retry_at)
        .bind(error)
        .execute(&self.own)
        .await?;
        Ok(())
    }

    /// Forgets idle rows not touched since `before` (a message that old is past the TTL when
    /// read again, and never queued).
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM push_queue WHERE state = 'idle' AND updated_at < $1")
                .bind(before)
                .execute(&self.own)
                .await?
                .rows_affected(),
        )
    }

    /// Pushes waiting now (a gauge).
    pub async fn waiting(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM push_queue WHERE state = 'waiting'")
            .fetch_one(&self.own)
            .await
    }
}
