//! Conversations as their members see them: create a direct conversation or a group, list
//! the caller's by pages, read one, accept an invite (or a conversation, for presence under
//! `SB_PRESENCE_POLICY=accepted`), and the open invites.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use switchboard_protocol::conversations::{ConversationList, CreateConversation, InvitationList};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::{ConversationId, ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;

use super::consent::{added_state, into_answer, refuse_if_blocked, take_quota, Answer, Quota};
use crate::auth::AuthUser;
use crate::http_common::{
    created_or_found, db_error, group_name_fits, group_size_fits, mirror_new, not_a_member,
    require_member, storable,
};
use crate::state::AppState;
use crate::store::{Accepted, Conversation, ListCursor};

/// Conversations per page of `GET /api/v1/conversations` when `limit` is not given, and the
/// most a `limit` may ask: a client of the original contract (no `limit`) gets every
/// conversation in one answer unless it has more than this.
pub const LIST_LIMIT_MAX: i64 = 1000;

/// Members listed per conversation in a list answer (`member_count` has them all; the
/// conversation's own route lists every member).
pub const LIST_MEMBERS_MAX: i64 = 100;

/// Creates a direct conversation (or answers the existing one of the pair) or a group.
#[utoipa::path(
    post, path = "/api/v1/conversations", tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 200, description = "the pair's existing direct conversation", body = Conversation),
        (status = 201, description = "created", body = Conversation),
        (status = 400, description = "bad kind, members or name", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "a member blocks the caller (`forbidden`)", body = ErrorBody),
        (status = 413, description = "too many members (`too_large`)", body = ErrorBody),
        (status = 429, description = "over the caller's conversations per minute (`rate_limited`, with `Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    body: web::Json<CreateConversation>,
) -> HttpResponse {
    into_answer(create_inner(user.0, &state, body.into_inner()).await)
}

async fn create_inner(caller: String, state: &AppState, body: CreateConversation) -> Answer {
    if let Some(bad) = body.members.iter().find(|m| !UserId::is_valid(m)) {
        return Err(ApiError::bad_request(format!("member {bad:?} is not a valid user id")).into());
    }
    match body.kind.as_str() {
        "direct" => create_direct(caller, state, &body.members).await,
        "group" => create_group(caller, state, body.name, body.members).await,
        other => Err(ApiError::bad_request(format!(
            "kind must be \"direct\" or \"group\", not {other:?}"
        ))
        .into()),
    }
}

/// The pair's direct conversation: created (201) unless it exists (200).
async fn create_direct(caller: String, state: &AppState, members: &[String]) -> Answer {
    let others: Vec<&String> = members.iter().filter(|m| **m != caller).collect();
    let other = match others.as_slice() {
        [one] => one.as_str(),
        [] if !members.is_empty() => caller.as_str(),
        _ => {
            return Err(
                ApiError::bad_request("a direct conversation has exactly one other member").into(),
            )
        }
    };
    refuse_if_blocked(state, &[other.to_owned()], &caller).await?;
    // Asking again for an existing pair creates nothing, so it takes no quota.
    let exists = state
        .store
        .direct_between(&caller, other)
        .await
        .map_err(db_error)?
        .is_some();
    if !exists {
        take_quota(state, &caller, Quota::conversations(state)).await?;
    }
    let (conversation, created) = state
        .store
        .create_direct(&caller, other)
        .await
        .map_err(db_error)?;
    if created {
        mirror_new(state, &conversation).await?;
    }
    Ok(created_or_found(conversation, created))
}

/// A new group owned by the caller; the others members or invitees by the add policy.
async fn create_group(
    caller: String,
    state: &AppState,
    name: Option<String>,
    mut members: Vec<String>,
) -> Answer {
    let name = name.unwrap_or_default();
    storable("the group name", &name)?;
    if !group_name_fits(&name) {
        return Err(ApiError::bad_request("a group needs a name of 1-200 bytes").into());
    }
    members.push(caller.clone());
    members.sort();
    members.dedup();
    group_size_fits(state, members.len())?;
    refuse_if_blocked(state, &members, &caller).await?;
    take_quota(state, &caller, Quota::conversations(state)).await?;
    let conversation = state
        .store
        .create_group_as(&caller, name.trim(), &members, added_state(state))
        .await
        .map_err(db_error)?;
    mirror_new(state, &conversation).await?;
    Ok(HttpResponse::Created().json(conversation))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct ListQuery {
    /// 1-1000 conversations per page (default 1000).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The caller's conversations, highest `last_seq` first, by pages.
#[utoipa::path(
    get, path = "/api/v1/conversations", tag = "conversations",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of the caller's conversations", body = ConversationList),
        (status = 400, description = "a bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    user: AuthUser,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(LIST_LIMIT_MAX);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1-{LIST_LIMIT_MAX}"
        )));
    }
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(ListCursor::decode(text).ok_or_else(|| {
            ApiError::bad_request("cursor is not a next_cursor this API answered")
        })?),
    };
    let (mut conversations, next) = state
        .store
        .list_for(&user.0, limit, cursor.as_ref(), LIST_MEMBERS_MAX)
        .await
        .map_err(db_error)?;
    let ids: Vec<String> = conversations.iter().map(|c| c.id.clone()).collect();
    let mut receipts = state.store.receipts_of(&ids).await.map_err(db_error)?;
    for c in &mut conversations {
        c.receipts = receipts.remove(&c.id).unwrap_or_default();
    }
    Ok(HttpResponse::Ok().json(ConversationList {
        conversations,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// One conversation with all its members (and a group's roles and open invites).
#[utoipa::path(
    get, path = "/api/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses(
        (status = 200, description = "the conversation", body = Conversation),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member (`not_a_member`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_conversation(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    require_member(&state.store, &conversation_id, &user.0).await?;
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(db_error)?
        .ok_or_else(not_a_member)?;
    Ok(HttpResponse::Ok().json(conversation))
}

/// `POST /api/v1/conversations/{id}/accept`: accepts an invite to a group (the caller
/// becomes a member), or a conversation the caller is in (presence under
/// `SB_PRESENCE_POLICY=accepted`). Idempotent.
#[utoipa::path(
    post, path = "/api/v1/conversations/{id}/accept", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses(
        (status = 200, description = "the conversation", body = Conversation),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "neither a member nor invited (`not_a_member`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn accept(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    let neither = || {
        ApiError::new(
            ErrorCode::NotAMember,
            "you are neither a member of nor invited to this conversation",
        )
    };
    // An id that is no ULID names no conversation anyone is in or invited to.
    let conversation_id = ConversationId::parse(conversation_id).map_err(|_| neither())?;
    let Some(accepted) = state
        .store
        .accept(&conversation_id, &user.0)
        .await
        .map_err(db_error)?
    else {
        return Err(neither());
    };
    if let Accepted::Joined(version) = accepted {
        crate::outbox::apply(&state.store, &state.cache, &conversation_id, version).await;
    }
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(conversation))
}

/// The group invites the caller has not answered (at most 1,000, newest first).
#[utoipa::path(
    get, path = "/api/v1/invitations", tag = "conversations",
    responses(
        (status = 200, description = "open invites", body = InvitationList),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn invitations(
    user: AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let invitations = state.store.invitations(&user.0).await.map_err(db_error)?;
    Ok(HttpResponse::Ok().json(InvitationList { invitations }))
}
