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
        Ok(rows
            .into_iter()
            .map(|row| StoredMessage {
                conversation_id: row.get("conversation_id"),
                message_id: row.get("message_id"),
                seq: row.get("seq"),
                sender_id: row.get("sender_id"),
                client_msg_id: row.get("client_msg_id"),
                body: row.get("body"),
                created_at: rfc3339(row.get("created_at")),
                reply_to: row.get("target_id"),
                edited_at: row
                    .get::<Option<DateTime<Utc>>, _>("edited_at")
                    .map(rfc3339),
                deleted: row.get::<Option<DateTime<Utc>>, _>("deleted_at").is_some(),
                reactions: Vec::new(),
            })
            .collect())
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
        Ok(rows
            .into_iter()
            .map(|row| StoredMessage {
                conversation_id: row.get("conversation_id"),
                message_id: row.get("message_id"),
                seq: row.get("seq"),
                sender_id: row.get("sender_id"),
                client_msg_id: row.get("client_msg_id"),
                body: String::new(),
                created_at: rfc3339(row.get("created_at")),
                reply_to: None,
                edited_at: None,
                deleted: false,
                reactions: Vec::new(),
            })
            .collect())
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
