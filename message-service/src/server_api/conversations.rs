//! Conversations as an application's backend makes them: for named users, every member an
//! accepted member; members put and deleted directly and idempotently.

use actix_web::{web, HttpResponse};
use switchboard_protocol::conversations::Role;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::is_storable_text;
use switchboard_protocol::server_api::ServerCreateConversation;
use switchboard_protocol::UserId;
use switchboard_service_kit::http::ApiError;

use super::extract::{conversation_id, not_found, user_id, ApiKey, ConversationsWrite, Read};
use crate::http_common::{
    created_or_found, db_error, group_name_fits, group_size_fits, mirror_new, reapply_mirror,
    room_in_group, stored_id,
};
use crate::state::AppState;
use crate::store::{Accepted, Added, Conversation, MemberState};

async fn conversation_or_404(state: &AppState, id: &str) -> Result<Conversation, ApiError> {
    state
        .store
        .conversation(id)
        .await
        .map_err(db_error)?
        .ok_or_else(not_found)
}

/// The group named by `id`: 404 when none, 400 when not a group.
async fn group_or_404(state: &AppState, id: &str) -> Result<Conversation, ApiError> {
    let group = conversation_or_404(state, id).await?;
    if group.kind != "group" {
        return Err(ApiError::bad_request(
            "members can only be changed in groups",
        ));
    }
    Ok(group)
}

/// Creates a direct conversation of two users (or answers their existing one) or a group;
/// every member is an accepted member.
#[utoipa::path(
    post, path = "/server/v1/conversations", tag = "server",
    request_body = ServerCreateConversation,
    responses(
        (status = 200, description = "the pair's existing direct conversation", body = Conversation),
        (status = 201, description = "created", body = Conversation),
        (status = 400, description = "bad kind, members, owner or name", body = ErrorBody),
        (status = 401, description = "no valid API key (a user token included)", body = ErrorBody),
        (status = 403, description = "the key lacks `conversations:write`", body = ErrorBody),
        (status = 413, description = "too many members (`too_large`)", body = ErrorBody),
        (status = 429, description = "the key is over its rate (`Retry-After`)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(super) async fn create(
    _key: ApiKey<ConversationsWrite>,
    state: web::Data<AppState>,
    body: web::Json<ServerCreateConversation>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let members = body
        .members
        .into_iter()
        .map(|member| user_id(member).map(UserId::into_string))
        .collect::<Result<Vec<_>, _>>()?;
    match body.kind.as_str() {
        "direct" => create_direct(&state, &members).await,
        "group" => create_group(&state, body.name, body.owner, members).await,
        other => Err(ApiError::bad_request(format!(
            "kind must be \"direct\" or \"group\", not {other:?}"
        ))),
    }
}

/// The pair's direct conversation, both accepted: created (201) unless it exists (200).
async fn create_direct(state: &AppState, members: &[String]) -> Result<HttpResponse, ApiError> {
    let [a, b] = members else {
        return Err(ApiError::bad_request(
            "a direct conversation names exactly two members",
        ));
    };
    let (conversation, created) = state.store.create_direct(a, b).await.map_err(db_error)?;
    // The backend speaks for both: the second accepts too (presence under
    // SB_PRESENCE_POLICY=accepted).
    state
        .store
        .accept(&stored_id(&conversation)?, b)
        .await
        .map_err(db_error)?;
    if created {
        mirror_new(state, &conversation).await?;
    }
    Ok(created_or_found(conversation, created))
}

/// A new group of accepted members, owned by `owner` (default: the first member).
async fn create_group(
    state: &AppState,
    name: Option<String>,
    owner: Option<String>,
    mut members: Vec<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.unwrap_or_default();
    if !is_storable_text(&name) || !group_name_fits(&name) {
        return Err(ApiError::bad_request(
            "a group needs a name of 1-200 bytes (no NUL)",
        ));
    }
    let owner = match owner {
        Some(owner) => user_id(owner)?.into_string(),
        None => members
            .first()
            .cloned()
            .ok_or_else(|| ApiError::bad_request("a group needs members"))?,
    };
    members.push(owner.clone());
    members.sort();
    members.dedup();
    group_size_fits(state, members.len())?;
    let conversation = state
        .store
        .create_group_as(&owner, name.trim(), &members, MemberState::Active)
        .await
        .map_err(db_error)?;
    mirror_new(state, &conversation).await?;
    Ok(HttpResponse::Created().json(conversation))
}

/// One conversation with all its members, roles and open invites.
#[utoipa::path(
    get, path = "/server/v1/conversations/{id}", tag = "server",
    params(("id" = String, Path, description = "conversation id")),
    responses(
        (status = 200, description = "the conversation", body = Conversation),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `read`", body = ErrorBody),
        (status = 404, description = "no such conversation", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(super) async fn get_conversation(
    _key: ApiKey<Read>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(path.into_inner())?;
    Ok(HttpResponse::Ok().json(conversation_or_404(&state, &id).await?))
}

/// Makes a user an accepted member of a group: added, or an open invite accepted, or (a user
/// who left) back in. Idempotent: a member stays one.
#[utoipa::path(
    put, path = "/server/v1/conversations/{id}/members/{user_id}", tag = "server",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("user_id" = String, Path, description = "the user (percent-encoded)"),
    ),
    responses(
        (status = 200, description = "the group, the user among its members", body = Conversation),
        (status = 400, description = "not a group, or a bad id", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `conversations:write`", body = ErrorBody),
        (status = 404, description = "no such conversation", body = ErrorBody),
        (status = 413, description = "the group is full", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(super) async fn put_member(
    _key: ApiKey<ConversationsWrite>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, member) = path.into_inner();
    let id = conversation_id(id)?;
    let member = user_id(member)?;
    let group = group_or_404(&state, &id).await?;
    if group.members.iter().any(|m| *m == member) {
        return Ok(HttpResponse::Ok().json(group));
    }
    if !group.invited.iter().any(|m| *m == member) {
        room_in_group(&state, &id).await?;
    }
    // Added by the group's owner (the invite's `invited_by`); a user who left is let back in
    // as an invite, which the backend then accepts for them.
    let by = group
        .roles
        .iter()
        .find(|(_, role)| **role == Role::Owner)
        .map(|(user, _)| user.clone())
        .unwrap_or_else(|| member.to_string());
    let added = state
        .store
        .add_member(&id, &member, &by, MemberState::Active)
        .await
        .map_err(db_error)?;
    let version = match added {
        Added::Member(version) => Some(version),
        Added::Invited | Added::AlreadyThere => {
            match state.store.accept(&id, &member).await.map_err(db_error)? {
                Some(Accepted::Joined(version)) => Some(version),
                _ => None,
            }
        }
    };
    if let Some(version) = version {
        crate::outbox::apply(&state.store, &state.cache, &id, version).await;
    }
    Ok(HttpResponse::Ok().json(conversation_or_404(&state, &id).await?))
}

/// Removes a member (or an open invite) from a group. Idempotent: 204 whether or not the
/// user was there; the members mirror is brought up to date either way.
#[utoipa::path(
    delete, path = "/server/v1/conversations/{id}/members/{user_id}", tag = "server",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("user_id" = String, Path, description = "the user (percent-encoded)"),
    ),
    responses(
        (status = 204, description = "not a member (any more)"),
        (status = 400, description = "not a group, or a bad id", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `conversations:write`", body = ErrorBody),
        (status = 404, description = "no such conversation", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(super) async fn delete_member(
    _key: ApiKey<ConversationsWrite>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, member) = path.into_inner();
    let id = conversation_id(id)?;
    let member = user_id(member)?;
    group_or_404(&state, &id).await?;
    match state
        .store
        .remove_member_keeping_an_owner(&id, &member, false)
        .await
        .map_err(db_error)?
    {
        Some(version) => crate::outbox::apply(&state.store, &state.cache, &id, version).await,
        // A retried DELETE: the mirror still gets the current version.
        None => reapply_mirror(&state, &id).await?,
    }
    Ok(HttpResponse::NoContent().finish())
}
