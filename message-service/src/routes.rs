//! REST of SPEC section 5, and the consent and limits of issue 24 (docs/protocol.md,
//! "Conversations and history"). Every handler authenticates with [`AuthUser`]; membership is
//! enforced here (403 `not_a_member`). Public handlers use the REST pool (`AppState::store`,
//! with a statement timeout); cluster-only ones the ingest pool (`AppState::internal`), so a
//! storm of client requests cannot hold up the socket managers.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::{is_storable_text, PresenceStatus};
use switchboard_protocol::internal::{SettledLog, SettledMessage};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::UserId;
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http::ApiError;

use crate::auth::AuthUser;
use crate::config::{GroupAddPolicy, PresencePolicy};
use crate::store::{Accepted, Added, Conversation, ListCursor, MemberState};
use crate::AppState;
use switchboard_chat_state::membership::Version;
use switchboard_protocol::conversations::{
    AddMember, BlockList, ConversationList, CreateConversation, InvitationList, MessagePage,
    Presence, PresenceList, Role, SetRole,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/conversations", web::post().to(create))
        .route("/api/v1/conversations", web::get().to(list))
        .route(
            "/api/v1/conversations/{id}",
            web::get().to(get_conversation),
        )
        .route(
            "/api/v1/conversations/{id}/messages",
            web::get().to(history),
        )
        .route(
            "/api/v1/conversations/{id}/members",
            web::post().to(add_member),
        )
        .route(
            "/api/v1/conversations/{id}/members/{user_id}",
            web::delete().to(remove_member),
        )
        .route(
            "/api/v1/conversations/{id}/members/{user_id}/role",
            web::put().to(set_role),
        )
        .route("/api/v1/conversations/{id}/accept", web::post().to(accept))
        .route("/api/v1/invitations", web::get().to(invitations))
        .route("/api/v1/blocks", web::get().to(blocks))
        .route("/api/v1/blocks/{user_id}", web::put().to(block))
        .route("/api/v1/blocks/{user_id}", web::delete().to(unblock))
        .route(
            "/internal/v1/conversations/{id}/members",
            web::get().to(internal_members),
        )
        .route(
            "/internal/v1/conversations/{id}/settled-last-seq",
            web::post().to(internal_settled_last_seq),
        )
        .route("/api/v1/presence", web::get().to(presence))
        .route("/api/v1/openapi.json", web::get().to(openapi_json))
        .route(
            "/internal/v1/users/{id}/contacts",
            web::get().to(internal_contacts),
        );
    crate::attachments::configure(cfg);
    crate::events::configure(cfg);
    crate::search::configure(cfg);
}

/// The public REST API of the message service, generated from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create,
        list,
        get_conversation,
        history,
        add_member,
        remove_member,
        set_role,
        accept,
        invitations,
        blocks,
        block,
        unblock,
        presence
    ),
    modifiers(&BearerAuth)
)]
struct PublicApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
    }
}

/// `GET /api/v1/openapi.json`: the whole public REST API (this service's routes and the
/// registry's), for client generators and for schemathesis (the `openapi` e2e test).
pub fn public_openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = PublicApi::openapi();
    doc.merge(switchboard_protocol::registry::public_openapi());
    doc.merge(crate::server_api::openapi());
    // The webhook dispatcher's endpoint API (nginx routes /server/v1/webhooks to it).
    doc.merge(switchboard_protocol::webhooks::openapi());
    doc.merge(<crate::push_devices::PushDevicesApi as OpenApi>::openapi());
    doc.merge(crate::attachments::openapi());
    doc.merge(crate::search::openapi());
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("Switchboard REST API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Errors are {\"error\":{\"code\",\"message\"}} with the stable codes of docs/protocol.md.",
        ))
        .build();
    doc
}

async fn openapi_json() -> HttpResponse {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        public_openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOC.as_str())
}

/// Refuses a string PostgreSQL `TEXT` cannot hold (one with U+0000) with 400, before it
/// reaches a query, where it would fail as a database error (503).
fn storable(what: &str, value: &str) -> Result<(), ApiError> {
    if is_storable_text(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} contains U+0000 (NUL), which cannot be stored"
        )))
    }
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable("the database is unavailable, retry shortly")
}

/// A refusal the handler answers itself (a status or header [`ApiError`] cannot carry).
enum Refused {
    Api(ApiError),
    /// 429 `rate_limited` with `Retry-After` (seconds).
    Quota {
        what: &'static str,
        retry_after: u64,
    },
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

type Answer = Result<HttpResponse, Refused>;

fn into_answer(result: Answer) -> HttpResponse {
    match result {
        Ok(resp) => resp,
        Err(Refused::Api(e)) => actix_web::ResponseError::error_response(&e),
        Err(Refused::Quota { what, retry_after }) => HttpResponse::TooManyRequests()
            .insert_header((
                actix_web::http::header::RETRY_AFTER,
                retry_after.to_string(),
            ))
            .json(ErrorBody::new(
                ErrorCode::RateLimited,
                format!("too many {what} per minute; retry in {retry_after} s"),
            )),
    }
}

/// Takes one of the caller's per-minute `kind` events, or refuses with `Retry-After`.
async fn take_quota(
    state: &AppState,
    user: &str,
    kind: &'static str,
    what: &'static str,
    per_minute: u32,
) -> Result<(), Refused> {
    match state
        .store
        .take_quota(user, kind, per_minute)
        .await
        .map_err(db_error)?
    {
        None => Ok(()),
        Some(retry_after) => Err(Refused::Quota { what, retry_after }),
    }
}

/// 403 `forbidden` when any of `users` blocks `caller` (named, so the caller knows whom).
async fn refuse_if_blocked(
    state: &AppState,
    users: &[String],
    caller: &str,
) -> Result<(), ApiError> {
    let others: Vec<String> = users.iter().filter(|u| *u != caller).cloned().collect();
    if others.is_empty() {
        return Ok(());
    }
    let blocking = state
        .store
        .blocking(&others, caller)
        .await
        .map_err(db_error)?;
    match blocking.first() {
        None => Ok(()),
        Some(who) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{who:?} does not accept conversations with you"),
        )),
    }
}

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
async fn create(
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
        "direct" => {
            let others: Vec<&String> = body.members.iter().filter(|m| **m != caller).collect();
            let other = match others.as_slice() {
                [one] => one.as_str(),
                [] if !body.members.is_empty() => caller.as_str(),
                _ => {
                    return Err(ApiError::bad_request(
                        "a direct conversation has exactly one other member",
                    )
                    .into())
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
                take_quota(
                    state,
                    &caller,
                    "conversation",
                    "conversations created",
                    state.config.conversations_per_minute,
                )
                .await?;
            }
            let (conversation, created) = state
                .store
                .create_direct(&caller, other)
                .await
                .map_err(db_error)?;
            if created {
                state
                    .cache
                    .refill(
                        &conversation.id,
                        &Version::new_conversation(),
                        &conversation.members,
                    )
                    .await
                    .map_err(ApiError::from)?;
                Ok(HttpResponse::Created().json(conversation))
            } else {
                Ok(HttpResponse::Ok().json(conversation))
            }
        }
        "group" => {
            let name = body.name.unwrap_or_default();
            storable("the group name", &name)?;
            if name.trim().is_empty() || name.len() > 200 {
                return Err(ApiError::bad_request("a group needs a name of 1-200 bytes").into());
            }
            let mut members = body.members;
            members.push(caller.clone());
            members.sort();
            members.dedup();
            if members.len() > state.config.max_group_members {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "a group has at most {} members",
                        state.config.max_group_members
                    ),
                )
                .into());
            }
            refuse_if_blocked(state, &members, &caller).await?;
            take_quota(
                state,
                &caller,
                "conversation",
                "conversations created",
                state.config.conversations_per_minute,
            )
            .await?;
            let others_state = match state.config.group_add_policy {
                GroupAddPolicy::Open => MemberState::Active,
                GroupAddPolicy::Invite => MemberState::Invited,
            };
            let conversation = state
                .store
                .create_group_as(&caller, name.trim(), &members, others_state)
                .await
                .map_err(db_error)?;
            state
                .cache
                .refill(
                    &conversation.id,
                    &Version::new_conversation(),
                    &conversation.members,
                )
                .await
                .map_err(ApiError::from)?;
            Ok(HttpResponse::Created().json(conversation))
        }
        other => Err(ApiError::bad_request(format!(
            "kind must be \"direct\" or \"group\", not {other:?}"
        ))
        .into()),
    }
}

/// Conversations per page of `GET /api/v1/conversations` when `limit` is not given, and the
/// most a `limit` may ask: a client of the original contract (no `limit`) gets every
/// conversation in one answer unless it has more than this.
pub const LIST_LIMIT_MAX: i64 = 1000;

/// Members listed per conversation in a list answer (`member_count` has them all; the
/// conversation's own route lists every member).
pub const LIST_MEMBERS_MAX: i64 = 100;

#[derive(Deserialize, utoipa::IntoParams)]
struct ListQuery {
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
async fn list(
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
async fn get_conversation(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    require_member(&state, &conversation_id, &user.0).await?;
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotAMember,
                "you are not a member of this conversation",
            )
        })?;
    Ok(HttpResponse::Ok().json(conversation))
}

async fn require_member(
    state: &AppState,
    conversation_id: &str,
    user: &str,
) -> Result<(), ApiError> {
    if state
        .store
        .is_member(conversation_id, user)
        .await
        .map_err(db_error)?
    {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::NotAMember,
            "you are not a member of this conversation",
        ))
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
struct HistoryQuery {
    #[serde(default)]
    after_seq: i64,
    #[serde(default)]
    limit: Option<i64>,
    /// `true`: also the edits, deletes and reactions of the page's `seq` range (`events`),
    /// and `limit` counts them with the messages. Default `false`: messages only, each in
    /// its current state.
    #[serde(default)]
    events: bool,
}

/// A page of a conversation's history, in ascending `seq`.
#[utoipa::path(
    get, path = "/api/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = String, Path, description = "conversation id"), HistoryQuery),
    responses(
        (status = 200, description = "messages after `after_seq`", body = MessagePage),
        (status = 400, description = "a bad parameter", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member (`not_a_member`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn history(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    if query.after_seq < 0 {
        return Err(ApiError::bad_request("after_seq must not be negative"));
    }
    let limit = query.limit.unwrap_or(100);
    if limit < 1 {
        return Err(ApiError::bad_request("limit must be positive"));
    }
    require_member(&state, &conversation_id, &user.0).await?;
    let crate::events::Page { messages, events } = crate::events::page(
        &state.store,
        &conversation_id,
        &user.0,
        query.after_seq,
        limit.min(1000),
        query.events,
    )
    .await
    .map_err(db_error)?;
    // Messages with attachments carry them (with download URLs); the others are unchanged.
    let messages =
        crate::attachments::decorate(&state.attachments, state.store.pool(), messages).await?;
    let mut page = serde_json::json!({ "messages": messages });
    if let Some(events) = events {
        page["events"] = serde_json::to_value(events).expect("events serialize");
    }
    Ok(HttpResponse::Ok().json(page))
}

/// The group, once the caller is known to be one of its members (or, with
/// `invitee_may`, an invitee: declining is removing oneself).
async fn group_of(
    state: &AppState,
    conversation_id: &str,
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
        return Err(ApiError::new(
            ErrorCode::NotAMember,
            "you are not a member of this conversation",
        ));
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
async fn add_member(
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
    conversation_id: String,
    body: AddMember,
) -> Answer {
    storable("the conversation id", &conversation_id)?;
    if !UserId::is_valid(&body.user_id) {
        return Err(ApiError::bad_request("user_id is not a valid user id").into());
    }
    let group = group_of(state, &conversation_id, &caller, false).await?;
    if !role_in(&group, &caller).manages_members() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the group's owner and admins add members",
        )
        .into());
    }
    let there = group.members.contains(&body.user_id) || group.invited.contains(&body.user_id);
    if there {
        return Ok(HttpResponse::Ok().json(group));
    }
    let rows = state
        .store
        .member_rows(&conversation_id)
        .await
        .map_err(db_error)?;
    if rows >= state.config.max_group_members as i64 {
        return Err(ApiError::new(ErrorCode::TooLarge, "the group is full").into());
    }
    refuse_if_blocked(state, std::slice::from_ref(&body.user_id), &caller).await?;
    take_quota(
        state,
        &caller,
        "member",
        "members added",
        state.config.members_added_per_minute,
    )
    .await?;
    let wanted = match state.config.group_add_policy {
        GroupAddPolicy::Open => MemberState::Active,
        GroupAddPolicy::Invite => MemberState::Invited,
    };
    let added = state
        .store
        .add_member(&conversation_id, &body.user_id, &caller, wanted)
        .await
        .map_err(db_error)?;
    if let Added::Member(version) = added {
        crate::outbox::apply(&state.store, &state.cache, &conversation_id, version).await;
    }
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(conversation))
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
async fn remove_member(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, member) = path.into_inner();
    storable("the conversation id", &conversation_id)?;
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
    // Anyone may leave; the owner removes anyone, an admin removes members and invites.
    let caller = role_in(&group, &user.0);
    let allowed = by_self
        || match role_in(&group, &member) {
            Role::Owner => false,
            Role::Admin => caller == Role::Owner,
            Role::Member => caller.manages_members(),
        };
    let there = group.members.contains(&member) || group.invited.contains(&member);
    if !allowed && there {
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

/// Applies the conversation's current membership version to the mirror (a no-op when the
/// mirror already reflects it). Fails the request when Redis cannot be reached, so a client
/// retrying a removal learns it is not in force yet.
async fn reapply_mirror(state: &AppState, conversation_id: &str) -> Result<(), ApiError> {
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
async fn set_role(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Json<SetRole>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, member) = path.into_inner();
    storable("the conversation id", &conversation_id)?;
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
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(db_error)?;
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
async fn accept(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    match state
        .store
        .accept(&conversation_id, &user.0)
        .await
        .map_err(db_error)?
    {
        None => Err(ApiError::new(
            ErrorCode::NotAMember,
            "you are neither a member of nor invited to this conversation",
        )),
        Some(accepted) => {
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
    }
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
async fn invitations(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let invitations = state.store.invitations(&user.0).await.map_err(db_error)?;
    Ok(HttpResponse::Ok().json(InvitationList { invitations }))
}

/// The users the caller blocks.
#[utoipa::path(
    get, path = "/api/v1/blocks", tag = "blocks",
    responses(
        (status = 200, description = "blocked users", body = BlockList),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn blocks(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let blocked = state.store.blocks_of(&user.0).await.map_err(db_error)?;
    Ok(HttpResponse::Ok().json(BlockList { blocked }))
}

fn blocked_user(path: String) -> Result<String, ApiError> {
    if UserId::is_valid(&path) {
        Ok(path)
    } else {
        Err(ApiError::bad_request("not a valid user id"))
    }
}

/// Blocks a user: they can no longer start a direct conversation with the caller, add or
/// invite the caller to a group, or see the caller's presence. Idempotent.
#[utoipa::path(
    put, path = "/api/v1/blocks/{user_id}", tag = "blocks",
    params(("user_id" = String, Path, description = "the user to block (percent-encoded)")),
    responses(
        (status = 204, description = "blocked"),
        (status = 400, description = "a bad user id, or oneself", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 413, description = "the block list is full (`too_large`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn block(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let blocked = blocked_user(path.into_inner())?;
    if blocked == user.0 {
        return Err(ApiError::bad_request("you cannot block yourself"));
    }
    if !state
        .store
        .block(&user.0, &blocked)
        .await
        .map_err(db_error)?
    {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "a block list holds at most {} users",
                crate::store::MAX_BLOCKS
            ),
        ));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Unblocks a user. Idempotent.
#[utoipa::path(
    delete, path = "/api/v1/blocks/{user_id}", tag = "blocks",
    params(("user_id" = String, Path, description = "the user to unblock (percent-encoded)")),
    responses(
        (status = 204, description = "not blocked (any more)"),
        (status = 400, description = "a bad user id", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn unblock(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let blocked = blocked_user(path.into_inner())?;
    state
        .store
        .unblock(&user.0, &blocked)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Cluster-only: fences the conversation's log and answers its floor and new epoch once ingest
/// has applied the fence (503 while it cannot: fail closed), for checking a sequence counter;
/// with `after_seq`, also the newest stored messages above it (at most
/// [`SETTLED_MESSAGES_MAX`], newest first) with who sent them, so a manager can restore the
/// idempotency records a Redis failover lost together with those numbers. See
/// `crate::settled` and docs/architecture.md ("Fencing the log").
async fn internal_settled_last_seq(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<SettledQuery>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketManager])?;
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
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
        numbered = state
            .internal
            .newest_above(&conversation_id, after.max(0), SETTLED_MESSAGES_MAX)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|m| m.seq <= last_seq)
            .filter_map(|m| {
                Some(SettledMessage {
                    seq: u64::try_from(m.seq).ok()?,
                    created_at: switchboard_protocol::Timestamp::parse(&m.created_at).ok()?,
                    message_id: m.message_id,
                    sender_id: m.sender_id,
                    client_msg_id: m.client_msg_id,
                })
            })
            .collect();
    }
    Ok(HttpResponse::Ok().json(SettledLog {
        last_seq: fenced.floor,
        epoch: fenced.epoch,
        messages: numbered,
    }))
}

#[derive(Deserialize)]
struct SettledQuery {
    after_seq: Option<i64>,
    /// The managers' `SB_MESSAGE_PARTITIONS`: the fence goes to the conversation's partition.
    partitions: Option<i32>,
}

/// At most this many of the newest messages above `after_seq` in a settled answer: a
/// manager restores their idempotency records, and clients resend recent messages, not old
/// ones. It bounds what one reseed writes to Redis (~150 bytes a record).
const SETTLED_MESSAGES_MAX: i64 = 1_000;

/// How long a settled read waits for ingest to apply the fence (below the manager's 3 s
/// request timeout, so it gets a clear 503 rather than a dropped request).
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_millis(2500);

/// Cluster-only: the members of a conversation, refilling the Redis cache on the way.
async fn internal_members(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketManager])?;
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
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
    Ok(HttpResponse::Ok().json(serde_json::json!({ "members": members, "last_seq": last_seq })))
}

/// `GET /api/v1/presence?user_id=a&user_id=b`: online while a device is connected, else
/// offline with the time the last device left. Only about the caller and users who share a
/// conversation with the caller (under `SB_PRESENCE_POLICY=accepted`, one both accepted) and
/// do not block the caller (403 `forbidden` otherwise): presence is not public.
#[utoipa::path(
    get, path = "/api/v1/presence", tag = "presence",
    params(("user_id" = Vec<String>, Query, description = "1-500 user ids, repeated")),
    responses(
        (status = 200, description = "each user's presence", body = PresenceList),
        (status = 400, description = "no or too many or bad user ids", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "a user who shares no (accepted) conversation with the caller, or blocks the caller", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn presence(
    user: AuthUser,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let users: Vec<String> = query
        .into_inner()
        .into_iter()
        .filter(|(k, _)| k == "user_id")
        .map(|(_, v)| v)
        .collect();
    if users.is_empty() || users.len() > 500 {
        return Err(ApiError::bad_request("give 1-500 user_id parameters"));
    }
    if let Some(bad) = users.iter().find(|u| !UserId::is_valid(u)) {
        return Err(ApiError::bad_request(format!(
            "{bad:?} is not a valid user id"
        )));
    }
    let others: Vec<String> = users.iter().filter(|u| **u != user.0).cloned().collect();
    if !others.is_empty() {
        let shared = state
            .store
            .sharing_a_conversation(
                &user.0,
                &others,
                state.config.presence_policy == PresencePolicy::Accepted,
            )
            .await
            .map_err(db_error)?;
        if let Some(stranger) = others.iter().find(|u| !shared.contains(u)) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("you share no conversation with {stranger:?}"),
            ));
        }
    }
    let now = chrono::Utc::now();
    let states =
        switchboard_chat_state::presence::read(state.cache.redis(), &users, now.timestamp_millis())
            .await?;
    let presence: Vec<Presence> = users
        .iter()
        .zip(states)
        .map(|(user, (online, last_seen_ms))| {
            let last_seen = if online {
                Some(crate::store::rfc3339(now))
            } else {
                last_seen_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(crate::store::rfc3339)
            };
            Presence {
                user_id: user.clone(),
                status: if online {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                },
                last_seen,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(PresenceList { presence }))
}

#[derive(Deserialize)]
struct ContactsQuery {
    #[serde(default = "default_max_group")]
    max_group: i64,
}

fn default_max_group() -> i64 {
    100
}

/// Cluster-only: who may see a user's presence: who shares a conversation (of at most
/// `max_group` members; under `SB_PRESENCE_POLICY=accepted`, one both accepted) with the user
/// and is not blocked by the user.
async fn internal_contacts(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ContactsQuery>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketManager])?;
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
    Ok(HttpResponse::Ok().json(serde_json::json!({ "contacts": contacts })))
}
