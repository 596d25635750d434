//! REST of SPEC section 5. Every handler authenticates with [`AuthUser`]; membership is
//! enforced here (403 `not_a_member`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::{is_storable_text, PresenceStatus};
use switchboard_protocol::internal::{SettledLog, SettledMessage};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::UserId;
use switchboard_service_kit::http::{require_cluster_secret, ApiError};

use crate::auth::AuthUser;
use crate::store::Conversation;
use crate::AppState;
use switchboard_chat_state::membership::Version;
use switchboard_protocol::conversations::{
    AddMember, ConversationList, CreateConversation, MessagePage, Presence, PresenceList, Role,
    SetRole,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/conversations", web::post().to(create))
        .route("/api/v1/conversations", web::get().to(list))
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
}

/// The public REST API of the message service, generated from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, history, add_member, remove_member, set_role, presence),
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

/// Creates a direct conversation (or answers the existing one of the pair) or a group.
#[utoipa::path(
    post, path = "/api/v1/conversations", tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 200, description = "the pair's existing direct conversation", body = Conversation),
        (status = 201, description = "created", body = Conversation),
        (status = 400, description = "bad kind, members or name", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 413, description = "too many members (`too_large`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    body: web::Json<CreateConversation>,
) -> Result<HttpResponse, ApiError> {
    let caller = user.0;
    let body = body.into_inner();
    if let Some(bad) = body.members.iter().find(|m| !UserId::is_valid(m)) {
        return Err(ApiError::bad_request(format!(
            "member {bad:?} is not a valid user id"
        )));
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
                    ))
                }
            };
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
                    .await?;
                Ok(HttpResponse::Created().json(conversation))
            } else {
                Ok(HttpResponse::Ok().json(conversation))
            }
        }
        "group" => {
            let name = body.name.unwrap_or_default();
            storable("the group name", &name)?;
            if name.trim().is_empty() || name.len() > 200 {
                return Err(ApiError::bad_request("a group needs a name of 1-200 bytes"));
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
                ));
            }
            let conversation = state
                .store
                .create_group(&caller, name.trim(), &members)
                .await
                .map_err(db_error)?;
            state
                .cache
                .refill(
                    &conversation.id,
                    &Version::new_conversation(),
                    &conversation.members,
                )
                .await?;
            Ok(HttpResponse::Created().json(conversation))
        }
        other => Err(ApiError::bad_request(format!(
            "kind must be \"direct\" or \"group\", not {other:?}"
        ))),
    }
}

/// The caller's conversations.
#[utoipa::path(
    get, path = "/api/v1/conversations", tag = "conversations",
    responses(
        (status = 200, description = "the caller's conversations", body = ConversationList),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut conversations = state.store.list_for(&user.0).await.map_err(db_error)?;
    let ids: Vec<String> = conversations.iter().map(|c| c.id.clone()).collect();
    let mut receipts = state.store.receipts_of(&ids).await.map_err(db_error)?;
    for c in &mut conversations {
        c.receipts = receipts.remove(&c.id).unwrap_or_default();
    }
    Ok(HttpResponse::Ok().json(ConversationList { conversations }))
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
    let messages = state
        .store
        .history(&conversation_id, query.after_seq, limit.min(1000))
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "messages": messages })))
}

/// The group, once the caller is known to be one of its members.
async fn group_of(
    state: &AppState,
    conversation_id: &str,
    caller: &str,
    adding: bool,
) -> Result<Conversation, ApiError> {
    let conversation = state
        .store
        .conversation(conversation_id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such conversation"))?;
    if !conversation.members.iter().any(|m| m == caller) {
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
    if adding && conversation.members.len() >= state.config.max_group_members {
        return Err(ApiError::new(ErrorCode::TooLarge, "the group is full"));
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

/// Adds a member to a group (its owner and admins).
#[utoipa::path(
    post, path = "/api/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    request_body = AddMember,
    responses(
        (status = 200, description = "the group", body = Conversation),
        (status = 400, description = "not a group, or a bad user id", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member, or not an owner or admin", body = ErrorBody),
        (status = 404, description = "no such conversation", body = ErrorBody),
        (status = 413, description = "the group is full", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn add_member(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<AddMember>,
) -> Result<HttpResponse, ApiError> {
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    if !UserId::is_valid(&body.user_id) {
        return Err(ApiError::bad_request("user_id is not a valid user id"));
    }
    let group = group_of(&state, &conversation_id, &user.0, true).await?;
    if !role_in(&group, &user.0).manages_members() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the group's owner and admins add members",
        ));
    }
    state
        .store
        .add_member(&conversation_id, &body.user_id)
        .await
        .map_err(db_error)?;
    state.cache.invalidate(&conversation_id).await?;
    let conversation = state
        .store
        .conversation(&conversation_id)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(conversation))
}

/// Removes a member from a group, or leaves it.
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
    let group = group_of(&state, &conversation_id, &user.0, false).await?;
    // Anyone may leave; the owner removes anyone, an admin removes members.
    let caller = role_in(&group, &user.0);
    let allowed = member == user.0
        || match role_in(&group, &member) {
            Role::Owner => false,
            Role::Admin => caller == Role::Owner,
            Role::Member => caller.manages_members(),
        };
    if !allowed && group.members.contains(&member) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the group's owner removes admins, and only the owner and admins remove members",
        ));
    }
    if !state
        .store
        .remove_member_keeping_an_owner(&conversation_id, &member)
        .await
        .map_err(db_error)?
    {
        return Err(ApiError::new(ErrorCode::NotFound, "no such member"));
    }
    state.cache.invalidate(&conversation_id).await?;
    Ok(HttpResponse::NoContent().finish())
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
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
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
            .store
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
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    let conversation_id = path.into_inner();
    storable("the conversation id", &conversation_id)?;
    let version = state.cache.version(&conversation_id).await?;
    let members = state
        .store
        .members(&conversation_id)
        .await
        .map_err(db_error)?;
    state
        .cache
        .refill(&conversation_id, &version, &members)
        .await?;
    let last_seq = state
        .store
        .last_seq(&conversation_id)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "members": members, "last_seq": last_seq })))
}

/// `GET /api/v1/presence?user_id=a&user_id=b`: online while a device is connected, else
/// offline with the time the last device left. Only about the caller and users who share a
/// conversation with the caller (403 `forbidden` otherwise): presence is not public.
/// Presence of the caller and of users who share a conversation with the caller.
#[utoipa::path(
    get, path = "/api/v1/presence", tag = "presence",
    params(("user_id" = Vec<String>, Query, description = "1-500 user ids, repeated")),
    responses(
        (status = 200, description = "each user's presence", body = PresenceList),
        (status = 400, description = "no or too many or bad user ids", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "a user who shares no conversation with the caller", body = ErrorBody),
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
            .sharing_a_conversation(&user.0, &others)
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

/// Cluster-only: who shares a conversation (of at most `max_group` members) with a user.
async fn internal_contacts(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ContactsQuery>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    storable("the user id", &path)?;
    let contacts = state
        .store
        .contacts(&path, query.max_group)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "contacts": contacts })))
}
