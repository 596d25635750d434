//! History with message events: messages in their current state (edits, deletes, replies,
//! reactions with the caller's own marked) and, when asked for, the raw events.

use std::collections::HashMap;

use sqlx::{PgPool, Row};
use switchboard_protocol::conversations::{MessageEvent, ReactionCount, StoredMessage};
use switchboard_protocol::ConversationId;

use crate::store::rfc3339;
use crate::store::stored_message;

/// One page of history: messages in their current state and, when asked for, the events of
/// the same `seq` range.
pub struct Page {
    pub messages: Vec<StoredMessage>,
    pub events: Option<Vec<MessageEvent>>,
}

/// A page after `after_seq`: `limit` messages (events skipped) or, `with_events`, `limit`
/// records of either kind split into the two lists; the caller's reactions marked.
pub async fn page(
    store: &crate::store::Store,
    conversation_id: &ConversationId,
    caller: &str,
    after_seq: i64,
    limit: i64,
    with_events: bool,
) -> Result<Page, sqlx::Error> {
    let (mut messages, events) = if with_events {
        let rows = sqlx::query(
            "SELECT message_id, seq, sender_id, client_msg_id, body, created_at, kind, target_id,
                    payload, applied, edited_at, deleted_at
               FROM messages WHERE conversation_id = $1 AND seq > $2
              ORDER BY seq LIMIT $3",
        )
        .bind(conversation_id.as_str())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
        let mut messages = Vec::new();
        let mut events = Vec::new();
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            if kind == "message" {
                messages.push(stored_message(row, conversation_id.clone())?);
            } else {
                events.push(message_event(row, kind)?);
            }
        }
        (messages, Some(events))
    } else {
        (
            store.history(conversation_id, after_seq, limit).await?,
            None,
        )
    };
    add_reactions(store.pool(), caller, &mut messages).await?;
    Ok(Page { messages, events })
}

/// An event row (an edit, delete or reaction) as history shows it; its ids checked as they
/// are read (every event row has a target: a row without one is an error, never a panic).
fn message_event(row: &sqlx::postgres::PgRow, kind: String) -> Result<MessageEvent, sqlx::Error> {
    let payload: Option<String> = row.try_get("payload")?;
    Ok(MessageEvent {
        seq: row.try_get("seq")?,
        event_id: row.try_get("message_id")?,
        sender_id: row.try_get("sender_id")?,
        client_msg_id: row.try_get("client_msg_id")?,
        message_id: row.try_get("target_id")?,
        body: payload.clone().filter(|_| kind == "edit"),
        emoji: payload.filter(|_| kind == "reaction"),
        applied: row.try_get::<Option<bool>, _>("applied")?.unwrap_or(false),
        kind,
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

/// Fills each message's `reactions` (one entry per emoji, most used first), the caller's own
/// marked `me`.
async fn add_reactions(
    pool: &PgPool,
    caller: &str,
    messages: &mut [StoredMessage],
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT message_id, emoji, count(*) AS count, bool_or(user_id = $2) AS me,
                array_agg(user_id ORDER BY user_id) AS users
           FROM message_reactions WHERE message_id = ANY($1)
          GROUP BY message_id, emoji
          ORDER BY message_id, count(*) DESC, emoji",
    )
    .bind(&ids)
    .bind(caller)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut by_message: HashMap<String, Vec<ReactionCount>> = HashMap::new();
    for row in rows {
        by_message
            .entry(row.get("message_id"))
            .or_default()
            .push(ReactionCount {
                emoji: row.get("emoji"),
                count: row.get("count"),
                me: row.get("me"),
                users: row.get("users"),
            });
    }
    for message in messages {
        if let Some(reactions) = by_message.remove(message.message_id.as_str()) {
            message.reactions = reactions;
        }
    }
    Ok(())
}
