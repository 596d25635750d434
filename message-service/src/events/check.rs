//! The check before numbering (`POST /internal/v1/conversations/{id}/events/check`, socket
//! managers only): one verdict per event, from the conversation's stored state (see the
//! module docs of [`crate::events`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use sqlx::{PgPool, Row};
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::error_code::ErrorDetail;
use switchboard_protocol::frames::RecordKind;
use switchboard_protocol::internal::{EventCheck, EventCheckItem, EventVerdict, EventVerdicts};
use switchboard_protocol::{ConversationId, ErrorCode};
use switchboard_service_kit::http::ApiError;

use super::{EventLimits, IN_FLIGHT, TARGET_WAIT};
use crate::state::AppState;

/// Whether `id` is a ULID minted less than [`IN_FLIGHT`] before `now`.
fn recently_minted(id: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Ok(ulid) = ulid::Ulid::from_string(id) else {
        return false;
    };
    let minted = i64::try_from(ulid.timestamp_ms()).unwrap_or(i64::MAX);
    let age = now.timestamp_millis().saturating_sub(minted);
    (-(IN_FLIGHT.as_millis() as i64)..IN_FLIGHT.as_millis() as i64).contains(&age)
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
    // A manager checks only conversations it numbers, whose ids it has checked.
    let conversation_id = ConversationId::parse(path.into_inner())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let verdicts = verdicts(
        state.internal.pool(),
        &state.events,
        &conversation_id,
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
    conversation_id: &ConversationId,
    ids: &[&str],
) -> Result<HashMap<String, Target>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT message_id, sender_id, kind, deleted_at IS NOT NULL AS deleted, edit_count,
                created_at
           FROM messages WHERE conversation_id = $1 AND message_id = ANY($2)",
    )
    .bind(conversation_id.as_str())
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

/// The verdicts of a check; see the module docs of [`crate::events`].
pub async fn verdicts(
    pool: &PgPool,
    limits: &EventLimits,
    conversation_id: &ConversationId,
    items: &[EventCheckItem],
) -> Result<Vec<EventVerdict>, sqlx::Error> {
    let known = Known::read(pool, conversation_id, items).await?;
    let now = chrono::Utc::now();
    Ok(items
        .iter()
        .map(|item| known.verdict(limits, item, now))
        .collect())
}

/// What a check knows of the conversation's stored state, for its items.
struct Known {
    /// `(sender_id, client_msg_id)` of the items already stored: resends.
    stored: HashSet<(String, String)>,
    /// The role of each sender who is an active member (`member` in a direct conversation).
    roles: HashMap<String, String>,
    /// The targets stored in this conversation.
    found: HashMap<String, Target>,
    /// The targets stored in another conversation.
    elsewhere: HashSet<String>,
    /// The distinct emoji of each message a reaction targets.
    emoji: HashMap<String, HashSet<String>>,
}

impl Known {
    /// Reads what the items need, waiting up to [`TARGET_WAIT`] for targets not stored yet.
    async fn read(
        pool: &PgPool,
        conversation_id: &ConversationId,
        items: &[EventCheckItem],
    ) -> Result<Known, sqlx::Error> {
        let senders: Vec<&str> = items.iter().map(|i| i.sender_id.as_str()).collect();
        let stored = stored_resends(pool, conversation_id, items).await?;
        let roles = sender_roles(pool, conversation_id, &senders).await?;
        let wanted: Vec<&str> = items.iter().map(|i| i.target_id.as_str()).collect();
        let mut found = targets(pool, conversation_id, &wanted).await?;
        let elsewhere = stored_elsewhere(pool, conversation_id, &wanted, &found).await?;
        wait_for_targets(pool, conversation_id, &wanted, &mut found, &elsewhere).await?;
        let emoji = reaction_emoji(pool, items).await?;
        Ok(Known {
            stored,
            roles,
            found,
            elsewhere,
            emoji,
        })
    }

    /// One item's verdict.
    fn verdict(
        &self,
        limits: &EventLimits,
        item: &EventCheckItem,
        now: chrono::DateTime<chrono::Utc>,
    ) -> EventVerdict {
        if self
            .stored
            .contains(&(item.sender_id.clone(), item.client_msg_id.clone()))
        {
            return EventVerdict::default();
        }
        let Some(role) = self.roles.get(&item.sender_id) else {
            return refuse(
                ErrorCode::NotAMember,
                "you are not a member of this conversation",
            );
        };
        let target = match self.target_of(item, now) {
            Ok(target) => target,
            Err(refused) => return refused,
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
            RecordKind::Edit => edit_verdict(limits, target, now),
            RecordKind::Delete if author => EventVerdict::default(),
            RecordKind::Delete if role == "owner" || role == "admin" => EventVerdict {
                refused: None,
                moderated: true,
            },
            RecordKind::Delete => refuse(
                ErrorCode::NotAuthor,
                "only its author, or a group's owner or admins, delete a message",
            ),
            RecordKind::Reaction => self.reaction_verdict(limits, item),
            RecordKind::Message => EventVerdict::default(),
        }
    }

    /// The item's target when it is a message of this conversation, else the refusal.
    fn target_of(
        &self,
        item: &EventCheckItem,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<&Target, EventVerdict> {
        if let Some(target) = self.found.get(&item.target_id).filter(|t| t.is_message) {
            return Ok(target);
        }
        if !self.found.contains_key(&item.target_id)
            && !self.elsewhere.contains(&item.target_id)
            && recently_minted(&item.target_id, now)
        {
            // Message ids are ULIDs the managers mint when they number: one this recent may
            // be in the log and not stored yet (ingest behind, or restarting). Retrying is
            // right; an id that stays unknown past IN_FLIGHT becomes `message_not_found`.
            return Err(refuse(
                ErrorCode::Unavailable,
                "that message is not stored yet: retry with the same client_msg_id",
            ));
        }
        Err(refuse(
            ErrorCode::MessageNotFound,
            format!(
                "message {} is not a message of this conversation",
                item.target_id
            ),
        ))
    }

    /// A reaction keeps its message within the distinct emoji allowed.
    fn reaction_verdict(&self, limits: &EventLimits, item: &EventCheckItem) -> EventVerdict {
        let set = item
            .emoji
            .as_ref()
            .and_then(|e| self.emoji.get(&item.target_id).map(|set| (e, set)));
        match set {
            Some((e, set))
                if !set.contains(e) && set.len() >= limits.max_reactions_per_message as usize =>
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
}

/// An edit by its author: within the edit window, and under the most edits.
fn edit_verdict(
    limits: &EventLimits,
    target: &Target,
    now: chrono::DateTime<chrono::Utc>,
) -> EventVerdict {
    let age = (now - target.created_at).to_std().unwrap_or_default();
    if limits.edit_window.is_some_and(|window| age > window) {
        refuse(
            ErrorCode::EditWindowClosed,
            format!(
                "messages are edited within {} s of being sent",
                limits.edit_window.unwrap_or_default().as_secs()
            ),
        )
    } else if target.edit_count >= i32::try_from(limits.max_edits).unwrap_or(i32::MAX) {
        refuse(
            ErrorCode::TooManyEdits,
            format!("a message is edited at most {} times", limits.max_edits),
        )
    } else {
        EventVerdict::default()
    }
}

/// The items already stored: a resend of an event gets its original answer from the
/// numbering.
async fn stored_resends(
    pool: &PgPool,
    conversation_id: &ConversationId,
    items: &[EventCheckItem],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let senders: Vec<&str> = items.iter().map(|i| i.sender_id.as_str()).collect();
    let client_ids: Vec<&str> = items.iter().map(|i| i.client_msg_id.as_str()).collect();
    Ok(sqlx::query(
        "SELECT sender_id, client_msg_id FROM messages
          WHERE conversation_id = $1
            AND (sender_id, client_msg_id) IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
    )
    .bind(conversation_id.as_str())
    .bind(&senders)
    .bind(&client_ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.get("sender_id"), row.get("client_msg_id")))
    .collect())
}

/// The roles of the senders who are active members.
async fn sender_roles(
    pool: &PgPool,
    conversation_id: &ConversationId,
    senders: &[&str],
) -> Result<HashMap<String, String>, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT m.user_id, CASE WHEN c.kind = 'group' THEN m.role ELSE 'member' END AS role
           FROM members m JOIN conversations c ON c.id = m.conversation_id
          WHERE m.conversation_id = $1 AND m.user_id = ANY($2) AND m.state = 'active'",
    )
    .bind(conversation_id.as_str())
    .bind(senders)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.get("user_id"), row.get("role")))
    .collect())
}

/// The targets not found here that are stored in another conversation: not on their way
/// here, so no wait and no retry.
async fn stored_elsewhere(
    pool: &PgPool,
    conversation_id: &ConversationId,
    wanted: &[&str],
    found: &HashMap<String, Target>,
) -> Result<HashSet<String>, sqlx::Error> {
    let unknown: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|id| !found.contains_key(*id))
        .collect();
    if unknown.is_empty() {
        return Ok(HashSet::new());
    }
    // Other conversations only: one stored here meanwhile (ingest caught up) is found by the
    // wait.
    Ok(sqlx::query_scalar(
        "SELECT message_id FROM messages WHERE message_id = ANY($1) AND conversation_id <> $2",
    )
    .bind(&unknown)
    .bind(conversation_id.as_str())
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect())
}

/// Waits up to [`TARGET_WAIT`] for the targets not stored yet (ingest trails the log by
/// about a fetch wait), adding those that arrive to `found`.
async fn wait_for_targets(
    pool: &PgPool,
    conversation_id: &ConversationId,
    wanted: &[&str],
    found: &mut HashMap<String, Target>,
    elsewhere: &HashSet<String>,
) -> Result<(), sqlx::Error> {
    let waited = Instant::now();
    loop {
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|id| !found.contains_key(*id) && !elsewhere.contains(*id))
            .collect();
        if missing.is_empty() || waited.elapsed() >= TARGET_WAIT {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        found.extend(targets(pool, conversation_id, &missing).await?);
    }
}

/// The distinct emoji of each message a reaction of the items targets.
async fn reaction_emoji(
    pool: &PgPool,
    items: &[EventCheckItem],
) -> Result<HashMap<String, HashSet<String>>, sqlx::Error> {
    let reacted: Vec<&str> = items
        .iter()
        .filter(|i| i.kind == RecordKind::Reaction && i.emoji.is_some())
        .map(|i| i.target_id.as_str())
        .collect();
    let mut emoji: HashMap<String, HashSet<String>> = HashMap::new();
    if reacted.is_empty() {
        return Ok(emoji);
    }
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
    Ok(emoji)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_message_id_may_still_be_in_flight() {
        let now = chrono::Utc::now();
        assert!(recently_minted(&ulid::Ulid::new().to_string(), now));
        assert!(!recently_minted("01ARZ3NDEKTSV4RRFFQ69G5FAV", now), "2016");
        assert!(!recently_minted("m3", now));
        let future = ulid::Ulid::from_parts(now.timestamp_millis() as u64 + 3_600_000, 1);
        assert!(!recently_minted(&future.to_string(), now));
    }
}
