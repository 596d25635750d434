//! Cluster-only routes for the socket managers (`ServiceRole::SocketManager`), on the ingest
//! pool: a conversation's members when their mirror is cold, the settled log (a fence)
//! before a sequence counter is trusted again, and who may see a user's presence.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_protocol::internal::{Contacts, ConversationMembers, SettledLog, SettledMessage};
use switchboard_protocol::{ConversationId, ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;

use crate::config::PresencePolicy;
use crate::http_common::{db_error, managers_only, storable};
use crate::state::AppState;

/// At most this many of the newest messages above `after_seq` in a settled answer: a
/// manager restores their idempotency records, and clients resend recent messages, not old
/// ones. It bounds what one reseed writes to Redis (~150 bytes a record).
const SETTLED_MESSAGES_MAX: i64 = 1_000;

/// How long a settled read waits for ingest to apply the fence (below the manager's 3 s
/// request timeout, so it gets a clear 503 rather than a dropped request).
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_millis(2500);

#[derive(Deserialize)]
pub(super) struct SettledQuery {
    after_seq: Option<i64>,
    /// The managers' `SB_MESSAGE_PARTITIONS`: the fence goes to the conversation's partition.
    partitions: Option<i32>,
}

/// Cluster-only: fences the conversation's log and answers its floor and new epoch once ingest
/// has applied the fence (503 while it cannot: fail closed), for checking a sequence counter;
/// with `after_seq`, also the newest stored messages above it (at most
/// [`SETTLED_MESSAGES_MAX`], newest first) with who sent them, so a manager can restore the
/// idempotency records a Redis failover lost together with those numbers. See
/// `crate::settled` and docs/architecture.md ("Fencing the log").
pub(super) async fn settled_last_seq(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<SettledQuery>,
) -> Result<HttpResponse, ApiError> {
    managers_only(&state, &req)?;
    // A manager fences only conversations it numbers, whose ids it has checked.
    let conversation_id = ConversationId::parse(path.into_inner())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let partitions = query.partitions.unwrap_or(1);
    if !(1..=10_000).contains(&partitions) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "partitions must be 1..=10000",
        ));
    }
    let fenced = state
        .settled
        .fence(&conversation_id, partitions, SETTLE_WITHIN)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let last_seq = i64::try_from(fenced.floor).unwrap_or(i64::MAX);
    let mut numbered = Vec::new();
    if let Some(after) = query.after_seq.filter(|after| *after < last_seq) {
        numbered = settled_messages(&state, &conversation_id, after, last_seq).await?;
    }
    Ok(HttpResponse::Ok().json(SettledLog {
        last_seq: fenced.floor,
        epoch: fenced.epoch,
        messages: numbered,
    }))
}

/// The newest stored messages in `(after, up_to]` (bounded), newest first.
async fn settled_messages(
    state: &AppState,
    conversation_id: &ConversationId,
    after: i64,
    up_to: i64,
) -> Result<Vec<SettledMessage>, ApiError> {
    Ok(state
        .internal
        .newest_above(conversation_id, after.max(0), SETTLED_MESSAGES_MAX)
        .await
        .map_err(db_error)?
        .into_iter()
        .filter(|m| m.seq <= up_to)
        .filter_map(|m| {
            Some(SettledMessage {
                seq: u64::try_from(m.seq).ok()?,
                created_at: switchboard_protocol::Timestamp::parse(&m.created_at).ok()?,
                // The store checked the message id as it read the row; a sender that is no
                // user id cannot be an idempotency record a manager restores.
                message_id: m.message_id,
                sender_id: UserId::parse(m.sender_id).ok()?,
                client_msg_id: m.client_msg_id,
            })
        })
        .collect())
}

/// Cluster-only: the members of a conversation, refilling the Redis cache on the way.
pub(super) async fn members(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    managers_only(&state, &req)?;
    // A manager asks only for conversations it numbers or signals, whose ids it has checked.
    let conversation_id = ConversationId::parse(path.into_inner())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version = state.cache.version(&conversation_id).await?;
    let members = state
        .internal
        .members(&conversation_id)
        .await
        .map_err(db_error)?;
    state
        .cache
        .refill(&conversation_id, &version, &members)
        .await?;
    let last_seq = state
        .internal
        .last_seq(&conversation_id)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(ConversationMembers {
        members,
        // Seqs are numbered from 1 by the managers: never negative.
        last_seq: u64::try_from(last_seq).unwrap_or(0),
    }))
}

#[derive(Deserialize)]
pub(super) struct ContactsQuery {
    #[serde(default = "default_max_group")]
    max_group: i64,
}

fn default_max_group() -> i64 {
    100
}

/// Cluster-only: who may see a user's presence: who shares a conversation (of at most
/// `max_group` members; under `SB_PRESENCE_POLICY=accepted`, one both accepted) with the user
/// and is not blocked by the user.
pub(super) async fn contacts(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ContactsQuery>,
) -> Result<HttpResponse, ApiError> {
    managers_only(&state, &req)?;
    storable("the user id", &path)?;
    let contacts = state
        .internal
        .contacts(
            &path,
            query.max_group,
            state.config.presence_policy == PresencePolicy::Accepted,
        )
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(Contacts { contacts }))
}
