//! The caller's block list: a blocked user can no longer start a direct conversation with
//! the caller, add or invite the caller to a group, or see the caller's presence.

use actix_web::{web, HttpResponse};
use switchboard_protocol::conversations::BlockList;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::{ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;

use crate::auth::AuthUser;
use crate::http_common::db_error;
use crate::state::AppState;

/// The users the caller blocks.
#[utoipa::path(
    get, path = "/api/v1/blocks", tag = "blocks",
    responses(
        (status = 200, description = "blocked users", body = BlockList),
        (status = 401, description = "no valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn blocks(
    user: AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
pub(super) async fn block(
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
pub(super) async fn unblock(
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
