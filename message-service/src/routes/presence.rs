//! `GET /api/v1/presence` for clients: presence is not public, so only about the caller and
//! the users who share a conversation with the caller and do not block the caller.

use actix_web::{web, HttpResponse};
use switchboard_protocol::conversations::PresenceList;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;

use crate::auth::AuthUser;
use crate::config::PresencePolicy;
use crate::http_common::{db_error, presence_of, presence_users};
use crate::state::AppState;

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
pub(super) async fn presence(
    user: AuthUser,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let users = presence_users(query.into_inner())?;
    let others: Vec<String> = users
        .iter()
        .filter(|u| **u != user.0)
        .map(|u| u.to_string())
        .collect();
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
    let presence = presence_of(&state, &users).await?;
    Ok(HttpResponse::Ok().json(PresenceList { presence }))
}
