//! Message events at ingest: replies and events inserted as rows of `messages`, then applied
//! in the batch's transaction, in `seq` order, once (see the module docs of
//! [`crate::events`]).

use sqlx::Row;
use switchboard_message_log::LogRecord;
use switchboard_protocol::frames::RecordKind;
use switchboard_protocol::{ConversationId, MessageId, UserId};

use crate::store::Sourced;

type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// Whether a batch holds records that are not plain messages (replies included).
pub fn any_rich(records: &[&Sourced<LogRecord>]) -> bool {
    records.iter().any(|r| r.item.event.is_some())
}

/// Inserts replies and events (`ON CONFLICT DO NOTHING`, as plain messages are); the rows
/// that went in. An event row's body is empty: an edit's text and a reaction's emoji go in
/// `payload`.
pub async fn insert_rich(
    tx: &mut Tx<'_>,
    records: &[&Sourced<LogRecord>],
) -> Result<u64, sqlx::Error> {
    if records.is_empty() {
        return Ok(0);
    }
    let mut columns = RichColumns::default();
    for r in records {
        let r = &r.item;
        let event = r.event.as_ref();
        let kind = r.kind();
        columns.conversation_id.push(r.conversation_id.as_str());
        columns.seq.push(i64::try_from(r.seq).unwrap_or(i64::MAX));
        columns.message_id.push(r.message_id.as_str());
        columns.sender_id.push(r.sender_id.as_str());
        columns.client_msg_id.push(r.client_msg_id.as_str());
        columns.created_at.push(r.created_at.datetime());
        columns
            .epoch
            .push(i64::try_from(r.epoch).unwrap_or(i64::MAX));
        columns.kind.push(kind.as_str());
        columns.target_id.push(event.map(|e| e.target_id.as_str()));
        columns.moderated.push(event.is_some_and(|e| e.moderated));
        let (body, payload) = match kind {
            RecordKind::Message => (r.body.as_str(), None),
            RecordKind::Edit => ("", Some(r.body.as_str())),
            RecordKind::Delete => ("", None),
            RecordKind::Reaction => ("", event.and_then(|e| e.emoji.as_deref())),
        };
        columns.body.push(body);
        columns.payload.push(payload);
    }
    let inserted = sqlx::query(
        "INSERT INTO messages (conversation_id, seq, message_id, sender_id, client_msg_id, body,
                               created_at, epoch, kind, target_id, payload, moderated)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::timestamptz[], $8::bigint[], $9::text[],
                              $10::text[], $11::text[], $12::bool[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&columns.conversation_id)
    .bind(&columns.seq)
    .bind(&columns.message_id)
    .bind(&columns.sender_id)
    .bind(&columns.client_msg_id)
    .bind(&columns.body)
    .bind(&columns.created_at)
    .bind(&columns.epoch)
    .bind(&columns.kind)
    .bind(&columns.target_id)
    .bind(&columns.payload)
    .bind(&columns.moderated)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected())
}

#[derive(Default)]
struct RichColumns<'a> {
    conversation_id: Vec<&'a str>,
    seq: Vec<i64>,
    message_id: Vec<&'a str>,
    sender_id: Vec<&'a str>,
    client_msg_id: Vec<&'a str>,
    body: Vec<&'a str>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
    epoch: Vec<i64>,
    kind: Vec<&'a str>,
    target_id: Vec<Option<&'a str>>,
    payload: Vec<Option<&'a str>>,
    moderated: Vec<bool>,
}

/// An event row waiting to be applied.
struct Pending {
    conversation_id: ConversationId,
    seq: i64,
    message_id: MessageId,
    sender_id: UserId,
    kind: String,
    target_id: Option<MessageId>,
    payload: Option<String>,
    moderated: bool,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Applies the not yet applied events of the batch's conversations, in `seq` order (see the
/// module docs); the number applied and not applied. Called in the batch's transaction,
/// after its rows went in, only for a batch that holds events.
pub async fn apply(
    tx: &mut Tx<'_>,
    records: &[&Sourced<LogRecord>],
) -> Result<(u64, u64), sqlx::Error> {
    let conversations: Vec<&str> = records
        .iter()
        .filter(|r| !r.item.kind().is_message())
        .map(|r| r.item.conversation_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if conversations.is_empty() {
        return Ok((0, 0));
    }
    let pending: Vec<Pending> = sqlx::query(
        "SELECT conversation_id, seq, message_id, sender_id, kind, target_id, payload, moderated,
                created_at
           FROM messages
          WHERE conversation_id = ANY($1) AND kind <> 'message' AND applied IS NULL
          ORDER BY conversation_id, seq
            FOR UPDATE",
    )
    .bind(&conversations)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|row| pending_of(&row))
    .collect::<Result<_, _>>()?;
    let (mut applied, mut not_applied) = (0, 0);
    for event in &pending {
        let outcome = apply_one(tx, event).await?;
        sqlx::query("UPDATE messages SET applied = $3 WHERE conversation_id = $1 AND seq = $2")
            .bind(&event.conversation_id)
            .bind(event.seq)
            .bind(outcome.is_ok())
            .execute(&mut **tx)
            .await?;
        match outcome {
            Ok(()) => applied += 1,
            Err(why) => {
                not_applied += 1;
                // Not a dead letter: the record is stored (its seq stays taken) and every
                // replaying device reaches the same verdict from the sequence.
                tracing::info!(
                    conversation_id = %event.conversation_id,
                    seq = event.seq,
                    event_id = %event.message_id,
                    kind = %event.kind,
                    why,
                    "a message event changed nothing"
                );
            }
        }
    }
    Ok((applied, not_applied))
}

/// An event row, its ids checked as they are read (a row that breaks a rule is an error,
/// never a panic).
fn pending_of(row: &sqlx::postgres::PgRow) -> Result<Pending, sqlx::Error> {
    Ok(Pending {
        conversation_id: row.try_get("conversation_id")?,
        seq: row.try_get("seq")?,
        message_id: row.try_get("message_id")?,
        sender_id: row.try_get("sender_id")?,
        kind: row.try_get("kind")?,
        target_id: row.try_get("target_id")?,
        payload: row.try_get("payload")?,
        moderated: row.try_get("moderated")?,
        created_at: row.try_get("created_at")?,
    })
}

/// One event's effect; `Err` says why it has none.
async fn apply_one(
    tx: &mut Tx<'_>,
    event: &Pending,
) -> Result<Result<(), &'static str>, sqlx::Error> {
    let Some(target_id) = event.target_id.as_ref() else {
        return Ok(Err("no target"));
    };
    let author = match lock_target(tx, event, target_id).await? {
        Ok(sender_id) => sender_id == event.sender_id,
        Err(why) => return Ok(Err(why)),
    };
    match RecordKind::parse(&event.kind) {
        Some(RecordKind::Edit) => {
            if !author {
                return Ok(Err("an edit by someone other than the author"));
            }
            apply_edit(tx, event, target_id).await?;
        }
        Some(RecordKind::Delete) => {
            if !author && !event.moderated {
                return Ok(Err(
                    "a delete by someone other than the author, not moderated",
                ));
            }
            apply_delete(tx, event, target_id).await?;
        }
        Some(RecordKind::Reaction) => apply_reaction(tx, event, target_id).await?,
        Some(RecordKind::Message) | None => return Ok(Err("not an event kind")),
    }
    Ok(Ok(()))
}

/// Locks the event's target row: its author when it is a message of the conversation, not
/// deleted; else why the event has no effect.
async fn lock_target(
    tx: &mut Tx<'_>,
    event: &Pending,
    target_id: &MessageId,
) -> Result<Result<String, &'static str>, sqlx::Error> {
    let target = sqlx::query(
        "SELECT sender_id, kind, deleted_at IS NOT NULL AS deleted FROM messages
          WHERE conversation_id = $1 AND message_id = $2 FOR UPDATE",
    )
    .bind(&event.conversation_id)
    .bind(target_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(target) = target else {
        return Ok(Err("its message is not in this conversation"));
    };
    if target.get::<String, _>("kind") != "message" {
        return Ok(Err("its target is an event, not a message"));
    }
    if target.get::<bool, _>("deleted") {
        return Ok(Err("its message was deleted before it"));
    }
    Ok(Ok(target.get("sender_id")))
}

/// An edit: the message takes the new text.
async fn apply_edit(
    tx: &mut Tx<'_>,
    event: &Pending,
    target_id: &MessageId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE messages SET body = $3, edited_at = $4, edit_count = edit_count + 1
          WHERE conversation_id = $1 AND message_id = $2",
    )
    .bind(&event.conversation_id)
    .bind(target_id)
    .bind(event.payload.as_deref().unwrap_or_default())
    .bind(event.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A delete: the body goes, and with it (the generated column) its search entry; its edits'
/// texts and its reactions go too, and its attachments are marked for the sweeper.
async fn apply_delete(
    tx: &mut Tx<'_>,
    event: &Pending,
    target_id: &MessageId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE messages SET body = '', deleted_at = $3, deleted_by = $4
          WHERE conversation_id = $1 AND message_id = $2",
    )
    .bind(&event.conversation_id)
    .bind(target_id)
    .bind(event.created_at)
    .bind(&event.sender_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE messages SET payload = NULL
          WHERE target_id = $2 AND conversation_id = $1 AND kind = 'edit'",
    )
    .bind(&event.conversation_id)
    .bind(target_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM message_reactions WHERE message_id = $1")
        .bind(target_id)
        .execute(&mut **tx)
        .await?;
    crate::attachments::mark_message_deleted(&mut **tx, target_id).await?;
    Ok(())
}

/// A reaction: the sender's one reaction to the message set (an emoji) or taken back (none).
async fn apply_reaction(
    tx: &mut Tx<'_>,
    event: &Pending,
    target_id: &MessageId,
) -> Result<(), sqlx::Error> {
    match event.payload.as_deref() {
        Some(emoji) => {
            sqlx::query(
                "INSERT INTO message_reactions (message_id, user_id, conversation_id, emoji, seq)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (message_id, user_id)
                 DO UPDATE SET emoji = EXCLUDED.emoji, seq = EXCLUDED.seq",
            )
            .bind(target_id)
            .bind(&event.sender_id)
            .bind(&event.conversation_id)
            .bind(emoji)
            .bind(event.seq)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM message_reactions WHERE message_id = $1 AND user_id = $2")
                .bind(target_id)
                .bind(&event.sender_id)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}
