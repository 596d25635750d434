//! The members' attachment routes: an upload ticket (a pre-signed `PUT` for a key the server
//! chose, within the type allow-list, the per-file limit and the uploader's quota) and a
//! download redirect (a pre-signed `GET`). Both for active members of the conversation only.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::is_storable_text;
use switchboard_protocol::{ConversationId, ErrorCode};
use switchboard_service_kit::http::ApiError;

use super::{expires_at, Inner};
use crate::auth::AuthUser;
use crate::http_common::{db_error, require_member};
use crate::state::AppState;

/// The longest file name, in bytes.
const MAX_FILENAME_BYTES: usize = 255;

/// `POST /api/v1/conversations/{id}/attachments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewAttachment {
    /// The file's name as the user knows it (1-255 bytes); shown to downloaders.
    pub filename: String,
    /// Its MIME type, one of the deployment's allow-list (`SB_ATTACHMENT_CONTENT_TYPES`).
    pub content_type: String,
    /// Its exact size in bytes: the upload must be exactly this long.
    pub size: u64,
}

/// The answer: where and how to upload.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadTicket {
    pub attachment_id: String,
    /// `PUT` the bytes here with exactly `upload_headers`, before `expires_at`.
    pub upload_url: String,
    pub upload_method: String,
    pub upload_headers: HashMap<String, String>,
    pub expires_at: String,
}

/// The server-chosen key of an attachment: under its conversation.
fn object_key(conversation_id: &ConversationId, id: &str) -> String {
    format!("c/{conversation_id}/{id}")
}

/// The new file's content type (lowercased), once its name, type and size are acceptable.
fn acceptable(inner: &Inner, body: &NewAttachment) -> Result<String, ApiError> {
    if body.filename.is_empty()
        || body.filename.len() > MAX_FILENAME_BYTES
        || body.filename.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "filename must be 1-255 bytes without control characters",
        ));
    }
    let content_type = body.content_type.trim().to_ascii_lowercase();
    if !inner.config.content_types.contains(&content_type) {
        return Err(ApiError::new(
            ErrorCode::AttachmentRefused,
            format!("content type {content_type:?} is not accepted here"),
        ));
    }
    if body.size > inner.config.max_bytes {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the file is {} bytes; the limit is {}",
                body.size, inner.config.max_bytes
            ),
        ));
    }
    Ok(content_type)
}

#[utoipa::path(
    post, path = "/api/v1/conversations/{id}/attachments", tag = "attachments",
    params(("id" = String, Path, description = "conversation id")),
    request_body = NewAttachment,
    responses(
        (status = 201, description = "a pre-signed upload URL and the attachment's id", body = UploadTicket),
        (status = 400, description = "a bad file name or body", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "attachments are not enabled (`not_found`)", body = ErrorBody),
        (status = 413, description = "over the per-file limit or the caller's quota (`too_large`)", body = ErrorBody),
        (status = 422, description = "a content type the deployment does not take (`attachment_refused`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<NewAttachment>,
) -> Result<HttpResponse, ApiError> {
    let inner = state.attachments.enabled()?;
    let conversation_id = path.into_inner();
    let body = body.into_inner();
    if !is_storable_text(&conversation_id) {
        return Err(ApiError::bad_request("the conversation id contains U+0000"));
    }
    let content_type = acceptable(inner, &body)?;
    let conversation_id = require_member(&state.store, &conversation_id, &user.0).await?;
    let id = ulid::Ulid::new().to_string();
    let key = object_key(&conversation_id, &id);
    // The quota and the insert in one statement: the live bytes of the uploader plus this
    // file must fit.
    let inserted = sqlx::query(
        "INSERT INTO attachments (id, conversation_id, uploader_id, object_key, filename, content_type, size)
         SELECT $1, $2, $3, $4, $5, $6, $7
          WHERE (SELECT COALESCE(SUM(size), 0) FROM attachments
                  WHERE uploader_id = $3 AND object_deleted_at IS NULL) + $7 <= $8",
    )
    .bind(&id)
    .bind(&conversation_id)
    .bind(&user.0)
    .bind(&key)
    .bind(&body.filename)
    .bind(&content_type)
    .bind(body.size as i64)
    .bind(inner.config.user_quota_bytes as i64)
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "over your attachment quota of {} bytes",
                inner.config.user_quota_bytes
            ),
        ));
    }
    let expiry = inner.config.url_expiry;
    let ticket = UploadTicket {
        upload_url: inner
            .store
            .upload_url(&key, &content_type, body.size, expiry),
        attachment_id: id,
        upload_method: "PUT".into(),
        upload_headers: HashMap::from([
            ("content-type".to_owned(), content_type),
            ("content-length".to_owned(), body.size.to_string()),
        ]),
        expires_at: expires_at(expiry),
    };
    Ok(HttpResponse::Created().json(ticket))
}

#[utoipa::path(
    get, path = "/api/v1/conversations/{id}/attachments/{attachment_id}", tag = "attachments",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("attachment_id" = String, Path, description = "attachment id"),
    ),
    responses(
        (status = 302, description = "redirect (`Location`) to a pre-signed download URL"),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "no such attachment in this conversation (`attachment_not_found`), or attachments are off (`not_found`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn download(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let inner = state.attachments.enabled()?;
    let (conversation_id, attachment_id) = path.into_inner();
    if !is_storable_text(&conversation_id) || !is_storable_text(&attachment_id) {
        return Err(ApiError::bad_request("an id contains U+0000"));
    }
    let conversation_id = require_member(&state.store, &conversation_id, &user.0).await?;
    // A member sees the attachments of the conversation's messages, and their own uploads
    // not sent yet.
    let row = sqlx::query(
        "SELECT object_key, filename, content_type FROM attachments
          WHERE id = $1 AND conversation_id = $2 AND object_deleted_at IS NULL
            AND message_deleted_at IS NULL
            AND (message_id IS NOT NULL OR uploader_id = $3)",
    )
    .bind(&attachment_id)
    .bind(&conversation_id)
    .bind(&user.0)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| {
        ApiError::new(
            ErrorCode::AttachmentNotFound,
            "no such attachment in this conversation",
        )
    })?;
    let url = inner.store.download_url(
        row.get("object_key"),
        row.get("filename"),
        row.get("content_type"),
        inner.config.url_expiry,
    );
    Ok(HttpResponse::Found()
        .insert_header((actix_web::http::header::LOCATION, url))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .finish())
}
