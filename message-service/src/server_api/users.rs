//! Users through the server API: presence without the shared-conversation check, and ending
//! every session of a user (logout everywhere, a ban) through the socket managers.

use actix_web::{web, HttpResponse};
use switchboard_protocol::conversations::PresenceList;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::UserId;
use switchboard_service_kit::http::ApiError;

use super::extract::{user_id, ApiKey, Read, UsersDisconnect};
use super::Managers;
use crate::http_common::{presence_of, presence_users};
use crate::state::AppState;

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
pub(super) async fn presence(
    _key: ApiKey<Read>,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let users = presence_users(query.into_inner())?;
    let presence = presence_of(&state, &users).await?;
    Ok(HttpResponse::Ok().json(PresenceList { presence }))
}

/// The answer of `POST /server/v1/users/{user_id}/sessions/end`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct SessionsEndedBody {
    #[schema(value_type = String)]
    user_id: UserId,
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
pub(super) async fn end_sessions(
    _key: ApiKey<UsersDisconnect>,
    managers: web::Data<Managers>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = user_id(path.into_inner())?;
    let ended = managers.end_sessions(&user).await?;
    Ok(HttpResponse::Ok().json(SessionsEndedBody {
        user_id: ended.user_id,
        ended_before: ended.ended_before,
        servers: ended.servers,
    }))
}
