//! Message events (issue 28 part 1): edits, deletes for everyone, reactions and replies.
//!
//! Every one of them is a record of the message log numbered in the conversation's sequence
//! by the same path as a message (the managers' lease, idempotency, epoch, `acks=all`,
//! fan-out), and a row of `messages` (`kind`, `target_id`, `payload`; migration
//! `0010_message_events.sql`). Three parts live here:
//!
//! - **The check before numbering** (`POST /internal/v1/conversations/{id}/events/check`,
//!   socket managers only): whether each event may be done: the sender is an active member;
//!   the target is a message of this conversation (ingest may trail the sender's `sent` by a
//!   fetch wait, so a target not stored yet is waited for, up to [`TARGET_WAIT`]; one whose
//!   id was minted less than [`IN_FLIGHT`] ago is then answered `unavailable`, to be
//!   retried, rather than `message_not_found`) and not deleted; an edit is the author's, within `SB_EDIT_WINDOW_SECS` of the message and under
//!   `SB_MAX_EDITS`; a delete is the author's or a group owner's or admin's (then marked
//!   `moderated` in the record); a reaction's emoji keeps the message within
//!   `SB_MAX_REACTIONS_PER_MESSAGE` distinct emoji. A refusal reaches the sender as an `error`
//!   frame with a stable code; nothing is numbered. A resend of an event already stored is
//!   admitted whatever the limits say now, so it gets its original `sent`. These limits are
//!   admission limits: events in flight together (two devices editing at once) are checked
//!   against the same stored state, so they may overshoot by what was in flight.
//! - **Applying them at ingest** ([`apply`]), in the batch's transaction, in `seq` order, once
//!   (an event row is applied while `applied IS NULL`, then marked; a redelivered record's row
//!   is already there and is skipped by the insert). The rules follow from the log alone, so
//!   every device that replays the same sequence ends in the same state as history: the
//!   target must be a message of the conversation and not deleted; an edit must be its
//!   author's; a delete its author's or `moderated`. An event that fails them (a delete
//!   numbered before an edit of the same message) is kept with `applied = false`: its `seq`
//!   stays taken, and it changes nothing. A delete erases the message's body, its edits'
//!   texts and its reactions from PostgreSQL, and marks its attachments for the sweeper. A
//!   batch without events runs none of this.
//! - **History** ([`page`]): messages in their current state (`edited_at`, `deleted`,
//!   `reply_to`, `reactions` with the caller's own marked) and, with `?events=true`, the raw
//!   events of the same `seq` range.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use sqlx::{PgPool, Row};
use switchboard_message_log::LogRecord;
use switchboard_protocol::conversations::{MessageEvent, ReactionCount, StoredMessage};
use switchboard_protocol::error_code::ErrorDetail;
use switchboard_protocol::frames::RecordKind;
use switchboard_protocol::internal::{EventCheck, EventCheckItem, EventVerdict, EventVerdicts};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::config::{lookup_or, process_env, ConfigError, Lookup};
use switchboard_service_kit::env::{EnvTable, EnvVar};
use switchboard_service_kit::http::ApiError;

use crate::store::{rfc3339, Sourced};
use crate::AppState;

pub const SB_EDIT_WINDOW_SECS: &str = "SB_EDIT_WINDOW_SECS";
pub const SB_MAX_EDITS: &str = "SB_MAX_EDITS";
pub const SB_MAX_REACTIONS_PER_MESSAGE: &str = "SB_MAX_REACTIONS_PER_MESSAGE";

/// The message-event variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_EDIT_WINDOW_SECS,
        default: Some("900"),
        doc: "How long after a message was sent its author may edit it, in seconds; later \
              edits are refused `edit_window_closed`. 0: no limit.",
    },
    EnvVar {
        name: SB_MAX_EDITS,
        default: Some("20"),
        doc: "How many times one message may be edited; further edits are refused \
              `too_many_edits`.",
    },
    EnvVar {
        name: SB_MAX_REACTIONS_PER_MESSAGE,
        default: Some("20"),
        doc: "Distinct emoji one message may carry as reactions (each user has one reaction \
              per message); a reaction with a new emoji past it is refused \
              `too_many_reactions`.",
    },
];

/// The message-event table (docs/configuration.md, "Message events (message service)").
pub const TABLE: EnvTable = EnvTable {
    title: "Message events (message service)",
    vars: ENV,
};

/// How long the check waits for a target message that ingest has not stored yet (the sender
/// had its `sent`, so it is in the log): history trails the log by about a fetch wait.
pub const TARGET_WAIT: Duration = Duration::from_secs(2);

/// How long after its id was minted a target the store does not hold may still be on its
/// way through the log (answered `unavailable`, not `message_not_found`).
pub const IN_FLIGHT: Duration = Duration::from_secs(30);

/// Whether `id` is a ULID minted less than [`IN_FLIGHT`] before `now`.
fn recently_minted(id: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Ok(ulid) = ulid::Ulid::from_string(id) else {
        return false;
    };
    let minted = i64::try_from(ulid.timestamp_ms()).unwrap_or(i64::MAX);
    let age = now.timestamp_millis().saturating_sub(minted);
    (-(IN_FLIGHT.as_millis() as i64)..IN_FLIGHT.as_millis() as i64).contains(&age)
}

/// The limits the check applies before an event is numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// `None`: edits at any age.
    pub edit_window: Option<Duration>,
    pub max_edits: u32,
    pub max_reactions_per_message: u32,
}

impl EventLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let window: u64 = lookup_or(lookup, SB_EDIT_WINDOW_SECS, 900)?;
        Ok(EventLimits {
            edit_window: (window > 0).then(|| Duration::from_secs(window)),
            max_edits: lookup_or(lookup, SB_MAX_EDITS, 20)?,
            max_reactions_per_message: lookup_or(lookup, SB_MAX_REACTIONS_PER_MESSAGE, 20)?,
        })
    }
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            edit_window: Some(Duration::from_secs(900)),
            max_edits: 20,
            max_reactions_per_message: 20,
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/internal/v1/conversations/{id}/events/check",
        web::post().to(check),
    );
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database error (message events)");
    ApiError::unavailable("the database is unavailable, retry shortly")
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> EventVerdict {
    EventVerdict {
        refused: Some(ErrorDetail {
            code,
            message: message.into(),
        }),
        moderated: false,
    }
}

/// The most items one check may carry (a batch holds at most 256 frames).
const MAX_CHECK_ITEMS: usize = 1024;

/// `POST /internal/v1/conversations/{id}/events/check` (socket managers): one verdict per
/// item; 503 when the database cannot answer (the frames are answered `unavailable`).
async fn check(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<EventCheck>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketManager])?;
    if body.items.len() > MAX_CHECK_ITEMS {
        return Err(ApiError::bad_request("too many items"));
    }
    let verdicts = verdicts(
        state.internal.pool(),
        &state.events,
        &path.into_inner(),
        &body.items,
    )
    .await
    .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(EventVerdicts { verdicts }))
}

/// What the check needs of a target message.
struct Target {
    sender_id: String,
    is_message: bool,
    deleted: bool,
    edit_count: i32,
    created_at: chrono::DateTime<chrono::Utc>,
}

async fn targets(
    pool: &PgPool,
    conversation_id: &str,
    ids: &[&str],
) -> Result<HashMap<String, Target>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT message_id, sender_id, kind, deleted_at IS NOT NULL AS deleted, edit_count,
                created_at
           FROM messages WHERE conversation_id = $1 AND message_id = ANY($2)",
    )
    .bind(conversation_id)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.get("message_id"),
                Target {
                    sender_id: row.get("sender_id"),
                    is_message: row.get::<String, _>("kind") == "message",
                    deleted: row.get("deleted"),
                    edit_count: row.get("edit_count"),
                    created_at: row.get("created_at"),
                },
            )
        })
        .collect())
}

/// The verdicts of a check; see the module docs.
pub async fn verdicts(
    pool: &PgPool,
    limits: &EventLimits,
    conversation_id: &str,
    items: &[EventCheckItem],
) -> Result<Vec<EventVerdict>, sqlx::Error> {
    // A resend of an event already stored gets its original answer from the numbering.
    let senders: Vec<&str> = items.iter().map(|i| i.sender_id.as_str()).collect();
    let client_ids: Vec<&str> = items.iter().map(|i| i.client_msg_id.as_str()).collect();
    let stored: HashSet<(String, String)> = sqlx::query(
        "SELECT sender_id, client_msg_id FROM messages
          WHERE conversation_id = $1
            AND (sender_id, client_msg_id) IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
    )
    .bind(conversation_id)
    .bind(&senders)
    .bind(&client_ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.get("sender_id"), row.get("client_msg_id")))
    .collect();
    let roles: HashMap<String, String> = sqlx::query(
        "SELECT m.user_id, CASE WHEN c.kind = 'group' THEN m.role ELSE 'member' END AS role
           FROM members m JOIN conversations c ON c.id = m.conversation_id
          WHERE m.conversation_id = $1 AND m.user_id = ANY($2) AND m.state = 'active'",
    )
    .bind(conversation_id)
    .bind(&senders)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.get("user_id"), row.get("role")))
    .collect();
    let wanted: Vec<&str> = items.iter().map(|i| i.target_id.as_str()).collect();
    let mut found = targets(pool, conversation_id, &wanted).await?;
    // A target stored in another conversation is not on its way here: no wait, no retry.
    let unknown: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|id| !found.contains_key(*id))
        .collect();
    let elsewhere: HashSet<String> = if unknown.is_empty() {
        HashSet::new()
    } else {
        // Other conversations only: one stored here meanwhile (ingest caught up) is found by
        // the wait below.
        sqlx::query_scalar(
            "SELECT message_id FROM messages WHERE message_id = ANY($1) AND conversation_id <> $2",
        )
        .bind(&unknown)
        .bind(conversation_id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect()
    };
    let waited = Instant::now();
    loop {
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|id| !found.contains_key(*id) && !elsewhere.contains(*id))
            .collect();
        if missing.is_empty() || waited.elapsed() >= TARGET_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        found.extend(targets(pool, conversation_id, &missing).await?);
    }
    let reacted: Vec<&str> = items
        .iter()
        .filter(|i| i.kind == RecordKind::Reaction && i.emoji.is_some())
        .map(|i| i.target_id.as_str())
        .collect();
    let mut emoji: HashMap<String, HashSet<String>> = HashMap::new();
    if !reacted.is_empty() {
        let rows = sqlx::query(
            "SELECT DISTINCT message_id, emoji FROM message_reactions WHERE message_id = ANY($1)",
        )
        .bind(&reacted)
        .fetch_all(pool)
        .await?;
        for row in rows {
            emoji
                .entry(row.get("message_id"))
                .or_default()
                .insert(row.get("emoji"));
        }
    }
    let now = chrono::Utc::now();
    Ok(items
        .iter()
        .map(|item| {
            if stored.contains(&(item.sender_id.clone(), item.client_msg_id.clone())) {
                return EventVerdict::default();
            }
            let Some(role) = roles.get(&item.sender_id) else {
                return refuse(
                    ErrorCode::NotAMember,
                    "you are not a member of this conversation",
                );
            };
            let Some(target) = found.get(&item.target_id).filter(|t| t.is_message) else {
                if !found.contains_key(&item.target_id)
                    && !elsewhere.contains(&item.target_id)
                    && recently_minted(&item.target_id, now)
                {
                    // Message ids are ULIDs the managers mint when they number: one this
                    // recent may be in the log and not stored yet (ingest behind, or
                    // restarting). Retrying is right; an id that stays unknown past
                    // IN_FLIGHT becomes `message_not_found`.
                    return refuse(
                        ErrorCode::Unavailable,
                        "that message is not stored yet: retry with the same client_msg_id",
                    );
                }
                return refuse(
                    ErrorCode::MessageNotFound,
                    format!(
                        "message {} is not a message of this conversation",
                        item.target_id
                    ),
                );
            };
            if item.kind == RecordKind::Message {
                // A reply: any message of the conversation, a deleted one included.
                return EventVerdict::default();
            }
            if target.deleted {
                return refuse(
                    ErrorCode::MessageDeleted,
                    format!("message {} was deleted", item.target_id),
                );
            }
            let author = target.sender_id == item.sender_id;
            match item.kind {
                RecordKind::Edit if !author => {
                    refuse(ErrorCode::NotAuthor, "only its author edits a message")
                }
                RecordKind::Edit => {
                    let age = (now - target.created_at).to_std().unwrap_or_default();
                    if limits.edit_window.is_some_and(|window| age > window) {
                        refuse(
                            ErrorCode::EditWindowClosed,
                            format!(
                                "messages are edited within {} s of being sent",
                                limits.edit_window.unwrap_or_default().as_secs()
                            ),
                        )
                    } else if target.edit_count
                        >= i32::try_from(limits.max_edits).unwrap_or(i32::MAX)
                    {
                        refuse(
                            ErrorCode::TooManyEdits,
                            format!("a message is edited at most {} times", limits.max_edits),
                        )
                    } else {
                        EventVerdict::default()
                    }
                }
                RecordKind::Delete if author => EventVerdict::default(),
                RecordKind::Delete if role == "owner" || role == "admin" => EventVerdict {
                    refused: None,
                    moderated: true,
                },
                RecordKind::Delete => refuse(
                    ErrorCode::NotAuthor,
                    "only its author, or a group's owner or admins, delete a message",
                ),
                RecordKind::Reaction => {
                    let set = item
                        .emoji
                        .as_ref()
                        .and_then(|e| emoji.get(&item.target_id).map(|set| (e, set)));
                    match set {
                        Some((e, set))
                            if !set.contains(e)
                                && set.len() >= limits.max_reactions_per_message as usize =>
                        {
                            refuse(
                                ErrorCode::TooManyReactions,
                                format!(
                                    "a message carries at most {} distinct reactions",
                                    limits.max_reactions_per_message
                                ),
                            )
                        }
                        _ => EventVerdict::default(),
                    }
                }
                RecordKind::Message => EventVerdict::default(),
            }
        })
        .collect())
}

// ---- Ingest ----

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
    conversation_id: String,
    seq: i64,
    message_id: String,
    sender_id: String,
    kind: String,
    target_id: Option<String>,
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
    .map(|row| Pending {
        conversation_id: row.get("conversation_id"),
        seq: row.get("seq"),
        message_id: row.get("message_id"),
        sender_id: row.get("sender_id"),
        kind: row.get("kind"),
        target_id: row.get("target_id"),
        payload: row.get("payload"),
        moderated: row.get("moderated"),
        created_at: row.get("created_at"),
    })
    .collect();
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

/// One event's effect; `Err` says why it has none.
async fn apply_one(
    tx: &mut Tx<'_>,
    event: &Pending,
) -> Result<Result<(), &'static str>, sqlx::Error> {
    let Some(target_id) = event.target_id.as_deref() else {
        return Ok(Err("no target"));
    };
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
    let author = target.get::<String, _>("sender_id") == event.sender_id;
    match RecordKind::parse(&event.kind) {
        Some(RecordKind::Edit) => {
            if !author {
                return Ok(Err("an edit by someone other than the author"));
            }
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
        }
        Some(RecordKind::Delete) => {
            if !author && !event.moderated {
                return Ok(Err(
                    "a delete by someone other than the author, not moderated",
                ));
            }
            // The body goes, and with it (the generated column) its search entry; its edits'
            // texts and its reactions go too.
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
        }
        Some(RecordKind::Reaction) => match event.payload.as_deref() {
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
        },
        Some(RecordKind::Message) | None => return Ok(Err("not an event kind")),
    }
    Ok(Ok(()))
}

// ---- History ----

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
    conversation_id: &str,
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
        .bind(conversation_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
        let mut messages = Vec::new();
        let mut events = Vec::new();
        for row in rows {
            let kind: String = row.get("kind");
            if kind == "message" {
                messages.push(StoredMessage {
                    conversation_id: conversation_id.to_owned(),
                    message_id: row.get("message_id"),
                    seq: row.get("seq"),
                    sender_id: row.get("sender_id"),
                    client_msg_id: row.get("client_msg_id"),
                    body: row.get("body"),
                    created_at: rfc3339(row.get("created_at")),
                    reply_to: row.get("target_id"),
                    edited_at: row
                        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("edited_at")
                        .map(rfc3339),
                    deleted: row
                        .get::<Option<chrono::DateTime<chrono::Utc>>, _>("deleted_at")
                        .is_some(),
                    reactions: Vec::new(),
                });
            } else {
                let payload: Option<String> = row.get("payload");
                events.push(MessageEvent {
                    seq: row.get("seq"),
                    event_id: row.get("message_id"),
                    sender_id: row.get("sender_id"),
                    client_msg_id: row.get("client_msg_id"),
                    message_id: row
                        .get::<Option<String>, _>("target_id")
                        .unwrap_or_default(),
                    body: payload.clone().filter(|_| kind == "edit"),
                    emoji: payload.filter(|_| kind == "reaction"),
                    applied: row.get::<Option<bool>, _>("applied").unwrap_or(false),
                    kind,
                    created_at: rfc3339(row.get("created_at")),
                });
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
        if let Some(reactions) = by_message.remove(&message.message_id) {
            message.reactions = reactions;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_events_in_history() {
        let doc = serde_json::to_value(crate::routes::public_openapi()).unwrap();
        let history = &doc["paths"]["/api/v1/conversations/{id}/messages"]["get"];
        let params: Vec<&str> = history["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(params.contains(&"events"), "{params:?}");
        let schemas = &doc["components"]["schemas"];
        for field in ["reply_to", "edited_at", "deleted", "reactions"] {
            assert!(
                schemas["StoredMessage"]["properties"].get(field).is_some(),
                "StoredMessage.{field}"
            );
        }
        assert!(schemas["MessagePage"]["properties"].get("events").is_some());
        assert!(schemas["MessageEvent"]["properties"]
            .get("applied")
            .is_some());
        assert!(schemas["ReactionCount"]["properties"]
            .get("users")
            .is_some());
    }

    #[test]
    fn a_recent_message_id_may_still_be_in_flight() {
        let now = chrono::Utc::now();
        assert!(recently_minted(&ulid::Ulid::new().to_string(), now));
        assert!(!recently_minted("01ARZ3NDEKTSV4RRFFQ69G5FAV", now), "2016");
        assert!(!recently_minted("m3", now));
        let future = ulid::Ulid::from_parts(now.timestamp_millis() as u64 + 3_600_000, 1);
        assert!(!recently_minted(&future.to_string(), now));
    }

    #[test]
    fn limits_read_their_variables() {
        let env = |name: &str| match name {
            SB_EDIT_WINDOW_SECS => Some("0".to_owned()),
            SB_MAX_EDITS => Some("3".to_owned()),
            _ => None,
        };
        let limits = EventLimits::from_lookup(&env).unwrap();
        assert_eq!(limits.edit_window, None, "0: no window");
        assert_eq!(limits.max_edits, 3);
        assert_eq!(limits.max_reactions_per_message, 20);
        assert_eq!(
            EventLimits::from_lookup(&|_| None).unwrap(),
            EventLimits::default()
        );
        let bad = |name: &str| (name == SB_MAX_EDITS).then(|| "many".to_owned());
        assert!(EventLimits::from_lookup(&bad).is_err());
    }
}
