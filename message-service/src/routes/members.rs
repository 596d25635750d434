//! A group's members and roles, as its members change them: add (or invite), remove (or
//! leave, or decline), and the owner's naming of admins. Every change reaches the members
//! mirror through the outbox before it is answered.

use actix_web::{web, HttpResponse};
use switchboard_protocol::conversations::{AddMember, Role, SetRole};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::{ConversationId, ErrorCode};
use switchboard_service_kit::http::ApiError;

use super::consent::{added_state, into_answer, refuse_if_blocked, take_quota, Answer, Quota};
use crate::auth::AuthUser;
use crate::http_common::{db_error, not_a_member, reapply_mirror, room_in_group, storable};
use crate::state::AppState;
use crate::store::{Added, Conversation};

/// The conversation id of a members route's path, checked once: text PostgreSQL cannot
/// store is a bad request; an id that is no ULID names no conversation (404 `not_found`, as
/// an unknown one is).
fn group_id(path_id: String) -> Result<ConversationId, ApiError> {
    storable("the conversation id", &path_id)?;
    ConversationId::parse(path_id)
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "no such conversation"))
}

/// The group, once the caller is known to be one of its members (or, with
/// `invitee_may`, an invitee: declining is removing oneself).
async fn group_of(
    state: &AppState,
    conversation_id: &ConversationId,
    caller: &str,
    invitee_may: bool,
) -> Result<Conversation, ApiError> {
    let conversation = state
        .store
        .conversation(conversation_id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such conversation"))?;
    let member = conversation.members.iter().any(|m| m == caller);
    let invited = invitee_may && conversation.invited.iter().any(|m| m == caller);
    if !member && !invited {
        return Err(not_a_member());
    }
    if conversation.kind != "group" {
        return Err(ApiError::bad_request(
            "members can only be changed in groups",
        ));
    }
    Ok(conversation)
}

fn role_in(conversation: &Conversation, user: &str) -> Role {
    conversation
        .roles
        .get(user)
        .copied()
        .unwrap_or(Role::Member)
}

/// The conversation as it is now, after a change.
async fn current(
    state: &AppState,
    conversation_id: &ConversationId,
) -> Result<HttpResponse, ApiError> {
    let conversation = state
        .store
        .conversation(conversation_id)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(conversation))
}

/// Adds a member to a group (its owner and admins), or invites them (`SB_GROUP_ADD_POLICY`
/// `invite`, or a user who left the group).
#[utoipa::path(
    post, path = "/api/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    request_body = AddMember,
    responses(
        (status = 200, description = "the group (an invitee is listed in `invited`)", body = Conversation),
        (status = 400, description = "not a group, or a bad user id", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member, not an owner or admin, or the user blocks the caller", body = ErrorBody),
        (status = 404, description = "no such conversation", body = ErrorBody),
        (status = 413, description = "the group is full", body = ErrorBody),
        (status = 429, description = "over the caller's members added per minute (`rate_limited`, with `Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn add_member(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<AddMember>,
) -> HttpResponse {
    into_answer(add_member_inner(user.0, &state, path.into_inner(), body.into_inner()).await)
}

async fn add_member_inner(
    caller: String,
    state: &AppState,
    path_id: String,
    body: AddMember,
) -> Answer {
    let conversation_id = group_id(path_id)?;
    // Checked by the body's extractor (a bad one is a `bad_request` naming the rule).
    let user_id = body.user_id.into_string();
    let group = group_of(state, &conversation_id, &caller, false).await?;
    if !role_in(&group, &caller).manages_members() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the group's owner and admins add members",
        )
        .into());
    }
    let there = group.members.contains(&user_id) || group.invited.contains(&user_id);
    if there {
        return Ok(HttpResponse::Ok().json(group));
    }
    room_in_group(state, &conversation_id).await?;
    refuse_if_blocked(state, std::slice::from_ref(&user_id), &caller).await?;
    take_quota(state, &caller, Quota::members_added(state)).await?;
    let added = state
        .store
        .add_member(&conversation_id, &user_id, &caller, added_state(state))
        .await
        .map_err(db_error)?;
    if let Added::Member(version) = added {
        crate::outbox::apply(&state.store, &state.cache, &conversation_id, version).await;
    }
    Ok(current(state, &conversation_id).await?)
}

/// Removes a member from a group, leaves it, or declines an invite to it.
#[utoipa::path(
    delete, path = "/api/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("user_id" = String, Path, description = "the member (percent-encoded)"),
    ),
    responses(
        (status = 204, description = "removed"),
        (status = 400, description = "not a group", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member, or not allowed to remove this member", body = ErrorBody),
        (status = 404, description = "no such conversation or member", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn remove_member(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, member) = path.into_inner();
    let conversation_id = group_id(conversation_id)?;
    storable("the member id", &member)?;
    let by_self = member == user.0;
    let group = match group_of(&state, &conversation_id, &user.0, by_self).await {
        Ok(group) => group,
        Err(e) => {
            // A retried leave (the first answer was lost) finds the caller gone: the mirror
            // is brought up to date all the same before the refusal.
            if by_self && e.code == ErrorCode::NotAMember {
                reapply_mirror(&state, &conversation_id).await?;
            }
            return Err(e);
        }
    };
    let there = group.members.contains(&member) || group.invited.contains(&member);
    if !by_self && !may_remove(&group, &user.0, &member) && there {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the group's owner removes admins, and only the owner and admins remove members",
        ));
    }
    match state
        .store
        .remove_member_keeping_an_owner(&conversation_id, &member, by_self)
        .await
        .map_err(db_error)?
    {
        Some(version) => {
            crate::outbox::apply(&state.store, &state.cache, &conversation_id, version).await;
            Ok(HttpResponse::NoContent().finish())
        }
        None => {
            // A retried DELETE (the first removed the member, but its answer, or its mirror
            // update, was lost): still bring the mirror up to date, then answer 404.
            reapply_mirror(&state, &conversation_id).await?;
            Err(ApiError::new(ErrorCode::NotFound, "no such member"))
        }
    }
}

/// Whether `caller` may remove `member` from `group` (anyone may leave, checked apart): the
/// owner removes anyone, an admin removes members and invites.
fn may_remove(group: &Conversation, caller: &str, member: &str) -> bool {
    let caller = role_in(group, caller);
    match role_in(group, member) {
        Role::Owner => false,
        Role::Admin => caller == Role::Owner,
        Role::Member => caller.manages_members(),
    }
}

/// `PUT /api/v1/conversations/{id}/members/{user_id}/role` `{"role":"admin"|"member"}`: the
/// owner names and unnames admins. Ownership passes only when the owner leaves.
#[utoipa::path(
    put, path = "/api/v1/conversations/{id}/members/{user_id}/role", tag = "conversations",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("user_id" = String, Path, description = "the member (percent-encoded)"),
    ),
    request_body = SetRole,
    responses(
        (status = 200, description = "the group", body = Conversation),
        (status = 400, description = "not a group, or a role that cannot be set", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such conversation or member", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set_role(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Json<SetRole>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, member) = path.into_inner();
    let conversation_id = group_id(conversation_id)?;
    storable("the member id", &member)?;
    let group = group_of(&state, &conversation_id, &user.0, false).await?;
    if role_in(&group, &user.0) != Role::Owner {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the group's owner changes roles",
        ));
    }
    if body.role == Role::Owner || member == user.0 {
        return Err(ApiError::bad_request(
            "roles can be \"admin\" or \"member\", for members other than the owner",
        ));
    }
    if !state
        .store
        .set_role(&conversation_id, &member, body.role)
        .await
        .map_err(db_error)?
    {
        return Err(ApiError::new(ErrorCode::NotFound, "no such member"));
    }
    current(&state, &conversation_id).await
}
