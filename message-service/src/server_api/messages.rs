//! Messages through the server API: history read without a membership check, and posts
//! numbered by a socket manager's sequencer like a client's send, made idempotent by the
//! `Idempotency-Key` header.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_protocol::conversations::MessagePage;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::is_storable_text;
use switchboard_protocol::server_api::{
    valid_idempotency_key, InternalServerSend, ServerPost, ServerPosted, IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_MAX, IDEMPOTENT_REPLAYED_HEADER,
};
use switchboard_service_kit::http::ApiError;

use super::extract::{conversation_id, not_found, user_id, ApiKey, MessagesWrite, Read};
use super::Managers;
use crate::http_common::db_error;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct HistoryQuery {
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
pub(super) async fn history(
    _key: ApiKey<Read>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(path.into_inner())?;
    if query.after_seq < 0 {
        return Err(ApiError::bad_request("after_seq must not be negative"));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-1000"));
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

/// The request's `Idempotency-Key`, or 400.
fn idempotency_key(req: &HttpRequest) -> Result<String, ApiError> {
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !valid_idempotency_key(key) {
        return Err(ApiError::bad_request(format!(
            "send an Idempotency-Key header: 1-{IDEMPOTENCY_KEY_MAX} bytes of visible ASCII"
        )));
    }
    Ok(key.to_owned())
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
pub(super) async fn post_message(
    _key: ApiKey<MessagesWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    managers: web::Data<Managers>,
    path: web::Path<String>,
    body: web::Json<ServerPost>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(path.into_inner())?;
    let idempotency_key = idempotency_key(&req)?;
    let ServerPost { sender_id, body } = body.into_inner();
    let sender_id = user_id(sender_id)?;
    if !is_storable_text(&body) {
        return Err(ApiError::bad_request(
            "body contains U+0000 (NUL), which cannot be stored",
        ));
    }
    if state.store.members_version(&id).await.map_err(db_error)? == 0 {
        return Err(not_found());
    }
    let send = InternalServerSend {
        conversation_id: id,
        reserved_sender: state.config.is_reserved_sender(&sender_id),
        sender_id,
        body,
        idempotency_key,
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
