//! The server API (`/server/v1/...`, docs/server-api.md): what an application's own backend
//! calls, authenticated by API keys (`switchboard_service_kit::api_keys`, `Authorization:
//! Bearer sbk_...`) with a scope per route; a user token is 401 here, as an API key is on
//! `/api`.
//!
//! The backend speaks for its users, so none of the client API's consent rules apply:
//! conversations are made for named users, members are added and removed directly and
//! idempotently (`PUT`/`DELETE`), and history and presence are read without a membership
//! check. Messages go through a socket manager's sequencer like any client send
//! ([`managers`]), with an `Idempotency-Key`.

mod managers;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_chat_state::membership::Version;
use switchboard_protocol::conversations::{MessagePage, Presence, PresenceList};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::{is_storable_text, PresenceStatus};
use switchboard_protocol::server_api::{
    valid_idempotency_key, InternalServerSend, ServerCreateConversation, ServerPost, ServerPosted,
    IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX, IDEMPOTENT_REPLAYED_HEADER,
};
use switchboard_protocol::{ConversationId, ErrorCode, UserId};
use switchboard_service_kit::api_keys::Scope;
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http::ApiError;

use crate::store::{Accepted, Added, Conversation, MemberState};
use crate::AppState;

pub use managers::Managers;

type Answer = Result<HttpResponse, actix_web::Error>;

pub fn configure(cfg: &mut web::ServiceConfig, managers: Managers) {
    cfg.app_data(web::Data::new(managers))
        .route("/server/v1/conversations", web::post().to(create))
        .route(
            "/server/v1/conversations/{id}",
            web::get().to(get_conversation),
        )
        .route(
            "/server/v1/conversations/{id}/members/{user_id}",
            web::put().to(put_member),
        )
        .route(
            "/server/v1/conversations/{id}/members/{user_id}",
            web::delete().to(delete_member),
        )
        .route(
            "/server/v1/conversations/{id}/messages",
            web::get().to(history),
        )
        .route(
            "/server/v1/conversations/{id}/messages",
            web::post().to(post_message),
        )
        .route("/server/v1/presence", web::get().to(presence))
        .route(
            "/server/v1/users/{user_id}/sessions/end",
            web::post().to(end_sessions),
        );
}

/// The managers' client, from the service's settings and cluster credential.
pub fn managers(config: &crate::MessageServiceConfig) -> Managers {
    Managers::new(
        config.manager_urls.clone(),
        config
            .common
            .cluster
            .credential(ServiceRole::MessageService),
    )
}

/// The server API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create,
        get_conversation,
        put_member,
        delete_member,
        history,
        post_message,
        presence,
        end_sessions
    ),
    components(schemas(ServerCreateConversation, ServerPost, ServerPosted)),
    modifiers(&ApiKeyAuth)
)]
struct ServerApiDoc;

struct ApiKeyAuth;

impl utoipa::Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("sbk_<id>_<secret>")
                        .description(Some(
                            "A server API key (docs/server-api.md); each route names its scope.",
                        ))
                        .build(),
                ),
            );
    }
}

/// The server API's routes, to merge into the service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    ServerApiDoc::openapi()
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable("the database is unavailable, retry shortly")
}

fn conversation_id(text: String) -> Result<String, ApiError> {
    ConversationId::parse(text)
        .map(ConversationId::into_string)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn user_id(text: String) -> Result<String, ApiError> {
    UserId::parse(text)
        .map(UserId::into_string)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such conversation")
}

async fn conversation_or_404(state: &AppState, id: &str) -> Result<Conversation, ApiError> {
    state
        .store
        .conversation(id)
        .await
        .map_err(db_error)?
        .ok_or_else(not_found)
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
async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ServerCreateConversation>,
) -> Answer {
    state
        .config
        .api_keys
        .authorize(&req, Scope::ConversationsWrite)?;
    let body = body.into_inner();
    let mut members = Vec::with_capacity(body.members.len());
    for member in body.members {
        members.push(user_id(member)?);
    }
    match body.kind.as_str() {
        "direct" => {
            let [a, b] = members.as_slice() else {
                return Err(ApiError::bad_request(
                    "a direct conversation names exactly two members",
                )
                .into());
            };
            let (conversation, created) =
                state.store.create_direct(a, b).await.map_err(db_error)?;
            // The backend speaks for both: the second accepts too (presence under
            // SB_PRESENCE_POLICY=accepted).
            state
                .store
                .accept(&conversation.id, b)
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
            if !is_storable_text(&name) || name.trim().is_empty() || name.len() > 200 {
                return Err(
                    ApiError::bad_request("a group needs a name of 1-200 bytes (no NUL)").into(),
                );
            }
            let owner = match body.owner {
                Some(owner) => user_id(owner)?,
                None => members
                    .first()
                    .cloned()
                    .ok_or_else(|| ApiError::bad_request("a group needs members"))?,
            };
            members.push(owner.clone());
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
            let conversation = state
                .store
                .create_group_as(&owner, name.trim(), &members, MemberState::Active)
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
async fn get_conversation(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Answer {
    state.config.api_keys.authorize(&req, Scope::Read)?;
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
async fn put_member(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Answer {
    state
        .config
        .api_keys
        .authorize(&req, Scope::ConversationsWrite)?;
    let (id, member) = path.into_inner();
    let id = conversation_id(id)?;
    let member = user_id(member)?;
    let group = conversation_or_404(&state, &id).await?;
    if group.kind != "group" {
        return Err(ApiError::bad_request("members can only be changed in groups").into());
    }
    if group.members.contains(&member) {
        return Ok(HttpResponse::Ok().json(group));
    }
    if !group.invited.contains(&member) {
        let rows = state.store.member_rows(&id).await.map_err(db_error)?;
        if rows >= state.config.max_group_members as i64 {
            return Err(ApiError::new(ErrorCode::TooLarge, "the group is full").into());
        }
    }
    // Added by the group's owner (the invite's `invited_by`); a user who left is let back in
    // as an invite, which the backend then accepts for them.
    let by = group
        .roles
        .iter()
        .find(|(_, role)| **role == switchboard_protocol::conversations::Role::Owner)
        .map(|(user, _)| user.clone())
        .unwrap_or_else(|| member.clone());
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
async fn delete_member(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Answer {
    state
        .config
        .api_keys
        .authorize(&req, Scope::ConversationsWrite)?;
    let (id, member) = path.into_inner();
    let id = conversation_id(id)?;
    let member = user_id(member)?;
    let group = conversation_or_404(&state, &id).await?;
    if group.kind != "group" {
        return Err(ApiError::bad_request("members can only be changed in groups").into());
    }
    match state
        .store
        .remove_member_keeping_an_owner(&id, &member, false)
        .await
        .map_err(db_error)?
    {
        Some(version) => crate::outbox::apply(&state.store, &state.cache, &id, version).await,
        None => {
            // A retried DELETE: the mirror still gets the current version.
            let version = state.store.members_version(&id).await.map_err(db_error)?;
            if version > 0 {
                state
                    .cache
                    .invalidate_at(&id, version)
                    .await
                    .map_err(ApiError::from)?;
            }
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct HistoryQuery {
    /// Messages after this seq (default 0: from the first).
    #[serde(default)]
    after_seq: i64,
    /// 1-1000 (default 100).
    #[serde(default)]
    limit: Option<i64>,
}

/// A page of a conversation's history, in ascending `seq`, without a membership check.
#[utoipa::path(
    get, path = "/server/v1/conversations/{id}/messages", tag = "server",
    params(("id" = String, Path, description = "conversation id"), HistoryQuery),
    responses(
        (status = 200, description = "messages after `after_seq`", body = MessagePage),
        (status = 400, description = "a bad parameter", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `read`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Answer {
    state.config.api_keys.authorize(&req, Scope::Read)?;
    let id = conversation_id(path.into_inner())?;
    if query.after_seq < 0 {
        return Err(ApiError::bad_request("after_seq must not be negative").into());
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-1000").into());
    }
    let messages = state
        .store
        .history(&id, query.after_seq, limit)
        .await
        .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(MessagePage {
        messages,
        events: None,
    }))
}

/// Posts a message through the sequencer, like a client's send: members get an ordinary
/// `message` frame. `Idempotency-Key` is required; the same key again answers the first
/// message (201 with `Idempotent-Replayed: true`); with another sender or body, 422.
#[utoipa::path(
    post, path = "/server/v1/conversations/{id}/messages", tag = "server",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("Idempotency-Key" = String, Header, description = "1-255 bytes of visible ASCII; scoped to the conversation, kept SB_IDEMPOTENCY_TTL_SECS"),
    ),
    request_body = ServerPost,
    responses(
        (status = 201, description = "numbered and stored (a replay too, with `Idempotent-Replayed: true`)", body = ServerPosted),
        (status = 400, description = "no or a bad Idempotency-Key, a bad id, a body with NUL", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `messages:write`, or the sender is neither a member nor reserved (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "no such conversation", body = ErrorBody),
        (status = 413, description = "body over SB_MAX_BODY_BYTES (`too_large`)", body = ErrorBody),
        (status = 422, description = "the key was used for another message (`idempotency_conflict`)", body = ErrorBody),
        (status = 429, description = "the key is over its rate (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "not stored durably; retry with the same Idempotency-Key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn post_message(
    req: HttpRequest,
    state: web::Data<AppState>,
    managers: web::Data<Managers>,
    path: web::Path<String>,
    body: web::Json<ServerPost>,
) -> Answer {
    state
        .config
        .api_keys
        .authorize(&req, Scope::MessagesWrite)?;
    let id = conversation_id(path.into_inner())?;
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !valid_idempotency_key(key) {
        return Err(ApiError::bad_request(format!(
            "send an Idempotency-Key header: 1-{IDEMPOTENCY_KEY_MAX} bytes of visible ASCII"
        ))
        .into());
    }
    let ServerPost { sender_id, body } = body.into_inner();
    let sender_id = user_id(sender_id)?;
    if !is_storable_text(&body) {
        return Err(
            ApiError::bad_request("body contains U+0000 (NUL), which cannot be stored").into(),
        );
    }
    if state.store.members_version(&id).await.map_err(db_error)? == 0 {
        return Err(not_found().into());
    }
    let send = InternalServerSend {
        conversation_id: id,
        reserved_sender: state.config.is_reserved_sender(&sender_id),
        sender_id,
        body,
        idempotency_key: key.to_owned(),
    };
    let sent = managers.send(&send).await?;
    let mut resp = HttpResponse::Created();
    if sent.replayed {
        resp.insert_header((IDEMPOTENT_REPLAYED_HEADER, "true"));
    }
    Ok(resp.json(ServerPosted {
        message_id: sent.message_id,
        seq: sent.seq,
        created_at: sent.created_at,
    }))
}

/// Whether each user is online, and when offline since when: no shared-conversation check.
#[utoipa::path(
    get, path = "/server/v1/presence", tag = "server",
    params(("user_id" = Vec<String>, Query, description = "1-500 user ids, repeated")),
    responses(
        (status = 200, description = "each user's presence", body = PresenceList),
        (status = 400, description = "no or too many or bad user ids", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `read`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn presence(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Answer {
    state.config.api_keys.authorize(&req, Scope::Read)?;
    let users: Vec<String> = query
        .into_inner()
        .into_iter()
        .filter(|(k, _)| k == "user_id")
        .map(|(_, v)| v)
        .collect();
    if users.is_empty() || users.len() > 500 {
        return Err(ApiError::bad_request("give 1-500 user_id parameters").into());
    }
    if let Some(bad) = users.iter().find(|u| !UserId::is_valid(u)) {
        return Err(ApiError::bad_request(format!("{bad:?} is not a valid user id")).into());
    }
    let now = chrono::Utc::now();
    let states =
        switchboard_chat_state::presence::read(state.cache.redis(), &users, now.timestamp_millis())
            .await
            .map_err(ApiError::from)?;
    let presence = users
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
        .collect();
    Ok(HttpResponse::Ok().json(PresenceList { presence }))
}

/// The answer of `POST /server/v1/users/{user_id}/sessions/end`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct SessionsEndedBody {
    user_id: String,
    /// Seconds since the epoch: the user's tokens issued at or before it are refused from
    /// now on (at the upgrade and in a `refresh`).
    ended_before: i64,
    /// The socket servers told to close the user's sockets (every live one).
    servers: usize,
}

/// Ends every session of a user: every socket closes (4403) within a second on every
/// server, and the user's tokens issued until now are refused (logout everywhere, a ban).
/// Safe to retry.
#[utoipa::path(
    post, path = "/server/v1/users/{user_id}/sessions/end", tag = "server",
    params(("user_id" = String, Path, description = "the user (percent-encoded)")),
    responses(
        (status = 200, description = "ended", body = SessionsEndedBody),
        (status = 400, description = "a bad user id", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 403, description = "the key lacks `users:disconnect`", body = ErrorBody),
        (status = 503, description = "not every server could be told yet; retry", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn end_sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    managers: web::Data<Managers>,
    path: web::Path<String>,
) -> Answer {
    state
        .config
        .api_keys
        .authorize(&req, Scope::UsersDisconnect)?;
    let user = user_id(path.into_inner())?;
    let ended = managers.end_sessions(&user).await?;
    Ok(HttpResponse::Ok().json(SessionsEndedBody {
        user_id: ended.user_id,
        ended_before: ended.ended_before,
        servers: ended.servers,
    }))
}
