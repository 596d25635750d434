//! What the service's HTTP handlers share (the public routes, the server API, attachments,
//! push devices): the database-error answer, the cluster-only check, checks of path and
//! query input, the membership check, presence reads, and bringing the members mirror up to
//! date after a change. One copy each, so the client API and the server API cannot drift
//! apart.

use actix_web::{HttpRequest, HttpResponse};
use switchboard_chat_state::membership::Version;
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::conversations::Presence;
use switchboard_protocol::frames::{is_storable_text, PresenceStatus};
use switchboard_protocol::{ConversationId, ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;

use crate::state::AppState;
use crate::store::{Conversation, Store};

/// Most user ids one presence read may name.
const PRESENCE_USERS_MAX: usize = 500;

/// The longest group name, in bytes.
const GROUP_NAME_MAX: usize = 200;

/// 503 for a database failure (logged here, once): the client retries shortly.
pub(crate) fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable("the database is unavailable, retry shortly")
}

/// Refuses a string PostgreSQL `TEXT` cannot hold (one with U+0000) with 400, before it
/// reaches a query, where it would fail as a database error (503).
pub(crate) fn storable(what: &str, value: &str) -> Result<(), ApiError> {
    if is_storable_text(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} contains U+0000 (NUL), which cannot be stored"
        )))
    }
}

/// Refuses any caller but a socket manager (the cluster-only routes).
pub(crate) fn managers_only(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    state
        .config
        .common
        .cluster
        .require(req, &[ServiceRole::SocketManager])?;
    Ok(())
}

/// 403 `not_a_member`.
pub(crate) fn not_a_member() -> ApiError {
    ApiError::new(
        ErrorCode::NotAMember,
        "you are not a member of this conversation",
    )
}

/// The conversation id from a path, checked, when `user` is an active member of it; else 403
/// `not_a_member` (an id that is no ULID names no conversation anyone is in).
pub(crate) async fn require_member(
    store: &Store,
    path_id: &str,
    user: &str,
) -> Result<ConversationId, ApiError> {
    let conversation_id = ConversationId::parse(path_id).map_err(|_| not_a_member())?;
    if store
        .is_member(&conversation_id, user)
        .await
        .map_err(db_error)?
    {
        Ok(conversation_id)
    } else {
        Err(not_a_member())
    }
}

/// Whether `name` (already trimmed or not) can name a group: 1-200 bytes once trimmed.
pub(crate) fn group_name_fits(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= GROUP_NAME_MAX
}

/// 413 `too_large` when a group of `members` would exceed the configured size.
pub(crate) fn group_size_fits(state: &AppState, members: usize) -> Result<(), ApiError> {
    let max = state.config.max_group_members;
    if members > max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("a group has at most {max} members"),
        ));
    }
    Ok(())
}

/// 413 `too_large` when a group already has as many rows (members and invites) as it may.
pub(crate) async fn room_in_group(
    state: &AppState,
    conversation_id: &ConversationId,
) -> Result<(), ApiError> {
    let rows = state
        .store
        .member_rows(conversation_id)
        .await
        .map_err(db_error)?;
    if rows >= state.config.max_group_members as i64 {
        return Err(ApiError::new(ErrorCode::TooLarge, "the group is full"));
    }
    Ok(())
}

/// The id of a conversation the store answered: the store made it (a ULID), so a failure is
/// an internal error.
pub(crate) fn stored_id(conversation: &Conversation) -> Result<ConversationId, ApiError> {
    ConversationId::parse(conversation.id.as_str())
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// Fills the members mirror of a conversation just created (its first version).
pub(crate) async fn mirror_new(
    state: &AppState,
    conversation: &Conversation,
) -> Result<(), ApiError> {
    let conversation_id = stored_id(conversation)?;
    state
        .cache
        .refill(
            &conversation_id,
            &Version::new_conversation(),
            &conversation.members,
        )
        .await
        .map_err(ApiError::from)
}

/// 201 with a conversation just created, 200 with one that existed (a direct pair's).
pub(crate) fn created_or_found(conversation: Conversation, created: bool) -> HttpResponse {
    if created {
        HttpResponse::Created().json(conversation)
    } else {
        HttpResponse::Ok().json(conversation)
    }
}

/// Applies the conversation's current membership version to the mirror (a no-op when the
/// mirror already reflects it). Fails the request when Redis cannot be reached, so a client
/// retrying a removal learns it is not in force yet.
pub(crate) async fn reapply_mirror(
    state: &AppState,
    conversation_id: &ConversationId,
) -> Result<(), ApiError> {
    let version = state
        .store
        .members_version(conversation_id)
        .await
        .map_err(db_error)?;
    if version > 0 {
        state.cache.invalidate_at(conversation_id, version).await?;
    }
    Ok(())
}

/// The `user_id` parameters of a presence query: 1-500 valid user ids, or 400.
pub(crate) fn presence_users(query: Vec<(String, String)>) -> Result<Vec<UserId>, ApiError> {
    let users: Vec<String> = query
        .into_iter()
        .filter(|(k, _)| k == "user_id")
        .map(|(_, v)| v)
        .collect();
    if users.is_empty() || users.len() > PRESENCE_USERS_MAX {
        return Err(ApiError::bad_request("give 1-500 user_id parameters"));
    }
    users
        .into_iter()
        .map(|u| {
            UserId::parse_owned(u)
                .map_err(|bad| ApiError::bad_request(format!("{bad:?} is not a valid user id")))
        })
        .collect()
}

/// Each user's presence: online while a device is connected (last seen now), else offline
/// with the time the last device left.
pub(crate) async fn presence_of(
    state: &AppState,
    users: &[UserId],
) -> Result<Vec<Presence>, ApiError> {
    let now = chrono::Utc::now();
    // The presence reader keys by plain strings.
    let names: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    let states =
        switchboard_chat_state::presence::read(state.cache.redis(), &names, now.timestamp_millis())
            .await?;
    Ok(users
        .iter()
        .zip(states)
        .map(|(user, (online, last_seen_ms))| Presence {
            user_id: user.clone(),
            status: if online {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            },
            last_seen: if online {
                Some(crate::store::rfc3339(now))
            } else {
                last_seen_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(crate::store::rfc3339)
            },
        })
        .collect())
}
