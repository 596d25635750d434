//! A conversation's history by pages, for its members: messages in ascending `seq`, each in
//! its current state with its attachments (download URLs signed per answer), and with
//! `?events=true` the edits, deletes and reactions of the same `seq` range.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_protocol::conversations::{MessageEvent, MessagePage};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_service_kit::http::ApiError;

use crate::attachments::HistoryMessage;
use crate::auth::AuthUser;
use crate::http_common::{db_error, require_member, storable};
use crate::state::AppState;

/// Messages per page when `limit` is not given.
const DEFAULT_LIMIT: i64 = 100;
/// The most one page holds, whatever `limit` asks.
const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct HistoryQuery {
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

/// The answer: [`MessagePage`]'s shape, its messages with their `attachments` when they
/// have any.
#[derive(Serialize)]
struct HistoryPage {
    messages: Vec<HistoryMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<MessageEvent>>,
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
pub(super) async fn history(
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
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit < 1 {
        return Err(ApiError::bad_request("limit must be positive"));
    }
    let conversation_id = require_member(&state.store, &conversation_id, &user.0).await?;
    let crate::events::Page { messages, events } = crate::events::page(
        &state.store,
        &conversation_id,
        &user.0,
        query.after_seq,
        limit.min(MAX_LIMIT),
        query.events,
    )
    .await
    .map_err(db_error)?;
    // Messages with attachments carry them (with download URLs); the others are unchanged.
    let messages =
        crate::attachments::decorate(&state.attachments, state.store.pool(), messages).await?;
    Ok(HttpResponse::Ok().json(HistoryPage { messages, events }))
}
