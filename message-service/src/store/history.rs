//! Stored messages of a conversation: the history page, the newest (for a manager's
//! idempotency restore), the highest seq.

use chrono::{DateTime, Utc};
use sqlx::Row;
use switchboard_protocol::ConversationId;

use super::{rfc3339, Store, StoredMessage};

impl Store {
    pub async fn history(
        &self,
        conversation_id: &ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        // Messages only, each in its current state: edits, deletes and reactions are rows
        // too (`crate::events`), read with `?events=true`.
        let rows = sqlx::query(
            "SELECT conversation_id, message_id, seq, sender_id, client_msg_id, body, created_at,
                    target_id, edited_at, deleted_at
               FROM messages WHERE conversation_id = $1 AND seq > $2 AND kind = 'message'
              ORDER BY seq LIMIT $3",
        )
        .bind(conversation_id.as_str())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| stored_message(row, conversation_id.clone()))
            .collect()
    }

    /// The newest `limit` stored messages above `after_seq`, newest first: what a manager
    /// restores idempotency records from after Redis lost them (the newest are the ones
    /// clients may still resend).
    pub async fn newest_above(
        &self,
        conversation_id: &ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT conversation_id, message_id, seq, sender_id, client_msg_id, created_at
               FROM messages WHERE conversation_id = $1 AND seq > $2
              ORDER BY seq DESC LIMIT $3",
        )
        .bind(conversation_id.as_str())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredMessage {
                    conversation_id: conversation_id.clone(),
                    message_id: row.try_get("message_id")?,
                    seq: row.try_get("seq")?,
                    sender_id: row.try_get("sender_id")?,
                    client_msg_id: row.try_get("client_msg_id")?,
                    body: String::new(),
                    created_at: rfc3339(row.try_get("created_at")?),
                    reply_to: None,
                    edited_at: None,
                    deleted: false,
                    reactions: Vec::new(),
                })
            })
            .collect()
    }

    /// Highest stored seq of a conversation (0 when none).
    pub async fn last_seq(&self, conversation_id: &ConversationId) -> Result<i64, sqlx::Error> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM messages WHERE conversation_id = $1")
                .bind(conversation_id.as_str())
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }
}

/// A `messages` row of kind `message` (every column of history) in its current state, of
/// `conversation_id` (the query's own); ids checked as they are read, so a row that breaks a
/// rule is an error, never a panic.
pub(crate) fn stored_message(
    row: &sqlx::postgres::PgRow,
    conversation_id: ConversationId,
) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        conversation_id,
        message_id: row.try_get("message_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        client_msg_id: row.try_get("client_msg_id")?,
        body: row.try_get("body")?,
        created_at: rfc3339(row.try_get("created_at")?),
        reply_to: row.try_get("target_id")?,
        edited_at: row
            .try_get::<Option<DateTime<Utc>>, _>("edited_at")?
            .map(rfc3339),
        deleted: row
            .try_get::<Option<DateTime<Utc>>, _>("deleted_at")?
            .is_some(),
        reactions: Vec::new(),
    })
}
