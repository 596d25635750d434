//! Attachments on an S3-compatible store (issue 28; docs/architecture.md, "Attachments";
//! docs/protocol.md, "Attachments"). The bytes never pass through Switchboard:
//!
//! 1. `POST /api/v1/conversations/{id}/attachments {filename, content_type, size}` (members
//!    only): checks the type against the allow-list, the size against the per-file limit and
//!    the uploader's quota, records the attachment and answers a pre-signed `PUT` URL for a
//!    key the server chose under the conversation (`c/{conversation}/{id}`), signed with that
//!    exact `Content-Type` and `Content-Length` and a short expiry.
//! 2. The client uploads, then sends a message naming the `attachment_id`. The socket manager
//!    asks [`claim`] (cluster-only) before numbering it: each attachment must be this
//!    conversation's and the sender's, its object there (`HEAD`) with the declared size and
//!    type, and an image within the pixel limit (read from its header only, in a bounded
//!    worker: a decompression bomb is refused without ever being decoded). The claim ties the
//!    attachment to the send (conversation, sender, `client_msg_id`); a trigger links it to
//!    the message when ingest stores it.
//! 3. History rows carry each message's attachments with a pre-signed download URL, and
//!    `GET /api/v1/conversations/{id}/attachments/{attachment_id}` redirects to one (members
//!    only).
//! 4. The [`sweeper`] deletes objects no message referenced within
//!    `SB_ATTACHMENT_UNREFERENCED_TTL_SECS`, and those of deleted messages
//!    ([`mark_message_deleted`]).

pub mod config;
pub mod s3;
pub mod sweeper;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use switchboard_protocol::error_code::{ErrorBody, ErrorDetail};
use switchboard_protocol::frames::is_storable_text;
use switchboard_protocol::internal::{AttachmentClaim, AttachmentVerdict};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http::ApiError;

use crate::auth::AuthUser;
use crate::store::StoredMessage;
use crate::AppState;
pub use config::AttachmentsConfig;

/// Content types whose width and height are read (and whose pixel limit applies).
const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];
/// How much of an image is read to find its dimensions: headers only, never the pixels.
const IMAGE_HEADER_BYTES: u64 = 256 * 1024;
/// Images examined at once; more wait (the examination is short: headers only).
const IMAGE_WORKERS: usize = 2;
/// The longest one image examination may take.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest file name, in bytes.
const MAX_FILENAME_BYTES: usize = 255;

/// The attachment service: `None` inside when attachments are off.
#[derive(Clone)]
pub struct Attachments {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    config: AttachmentsConfig,
    store: s3::ObjectStore,
    images: tokio::sync::Semaphore,
}

impl Attachments {
    pub fn new(config: AttachmentsConfig) -> anyhow::Result<Self> {
        let inner = match &config.store {
            None => None,
            Some(store) => Some(Arc::new(Inner {
                store: s3::ObjectStore::new(store)?,
                images: tokio::sync::Semaphore::new(IMAGE_WORKERS),
                config,
            })),
        };
        Ok(Attachments { inner })
    }

    fn enabled(&self) -> Result<&Inner, ApiError> {
        self.inner.as_deref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                "attachments are not enabled on this deployment",
            )
        })
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/v1/conversations/{id}/attachments",
        web::post().to(create),
    )
    .route(
        "/api/v1/conversations/{id}/attachments/{attachment_id}",
        web::get().to(download),
    )
    .route(
        "/internal/v1/conversations/{id}/attachments/claim",
        web::post().to(claim),
    );
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, download))]
struct AttachmentsApi;

/// The attachment routes' part of the public OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    AttachmentsApi::openapi()
}

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

/// An attachment as history shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttachmentInfo {
    pub id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Images only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A pre-signed download URL, valid until `url_expires_at`.
    pub url: String,
    pub url_expires_at: String,
}

fn expires_at(after: Duration) -> String {
    let at = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
    crate::store::rfc3339(at)
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable("the database is unavailable, retry shortly")
}

async fn require_member(pool: &PgPool, conversation_id: &str, user: &str) -> Result<(), ApiError> {
    let member: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2 AND state = 'active'",
    )
    .bind(conversation_id)
    .bind(user)
    .fetch_optional(pool)
    .await
    .map_err(db_error)?;
    match member {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::NotAMember,
            "you are not a member of this conversation",
        )),
    }
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
async fn create(
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
    let pool = state.store.pool();
    require_member(pool, &conversation_id, &user.0).await?;
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
    .execute(pool)
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

/// The server-chosen key of an attachment: under its conversation.
fn object_key(conversation_id: &str, id: &str) -> String {
    format!("c/{conversation_id}/{id}")
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
async fn download(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let inner = state.attachments.enabled()?;
    let (conversation_id, attachment_id) = path.into_inner();
    if !is_storable_text(&conversation_id) || !is_storable_text(&attachment_id) {
        return Err(ApiError::bad_request("an id contains U+0000"));
    }
    let pool = state.store.pool();
    require_member(pool, &conversation_id, &user.0).await?;
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
    .fetch_optional(pool)
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

/// The history rows of `messages` as JSON, each with its `attachments` when it has any (a
/// message without keeps exactly its old shape).
pub async fn decorate(
    attachments: &Attachments,
    pool: &PgPool,
    messages: Vec<StoredMessage>,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut rows: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::to_value(m).expect("a stored message serializes"))
        .collect();
    let Some(inner) = attachments.inner.as_deref() else {
        return Ok(rows);
    };
    if messages.is_empty() {
        return Ok(rows);
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let found = sqlx::query(
        "SELECT id, message_id, object_key, filename, content_type, size, width, height
           FROM attachments
          WHERE message_id = ANY($1) AND object_deleted_at IS NULL AND message_deleted_at IS NULL
          ORDER BY message_id, id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    if found.is_empty() {
        return Ok(rows);
    }
    let expiry = inner.config.url_expiry;
    let url_expires_at = expires_at(expiry);
    let mut by_message: HashMap<String, Vec<AttachmentInfo>> = HashMap::new();
    for row in found {
        let filename: String = row.get("filename");
        let content_type: String = row.get("content_type");
        let info = AttachmentInfo {
            url: inner
                .store
                .download_url(row.get("object_key"), &filename, &content_type, expiry),
            id: row.get("id"),
            filename,
            content_type,
            size: row.get::<i64, _>("size") as u64,
            width: row.get::<Option<i32>, _>("width").map(|w| w as u32),
            height: row.get::<Option<i32>, _>("height").map(|h| h as u32),
            url_expires_at: url_expires_at.clone(),
        };
        by_message
            .entry(row.get("message_id"))
            .or_default()
            .push(info);
    }
    for (row, message) in rows.iter_mut().zip(&messages) {
        if let Some(list) = by_message.remove(&message.message_id) {
            row["attachments"] = serde_json::to_value(list).expect("attachments serialize");
        }
    }
    Ok(rows)
}

/// A refusal of a claim.
fn refused(code: ErrorCode, message: impl Into<String>) -> AttachmentVerdict {
    AttachmentVerdict {
        refused: Some(ErrorDetail {
            code,
            message: message.into(),
        }),
    }
}

/// `POST /internal/v1/conversations/{id}/attachments/claim` (socket managers): see the module
/// docs. 200 with a verdict; 503 when the database or the store cannot answer (the send is
/// answered `unavailable` and retried by its client).
async fn claim(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<AttachmentClaim>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketManager])?;
    let conversation_id = path.into_inner();
    let verdict = match state.attachments.inner.as_deref() {
        None => refused(
            ErrorCode::AttachmentNotFound,
            "attachments are not enabled on this deployment",
        ),
        Some(inner) => {
            verify_and_claim(inner, state.internal.pool(), &conversation_id, &body).await?
        }
    };
    Ok(HttpResponse::Ok().json(verdict))
}

async fn verify_and_claim(
    inner: &Inner,
    pool: &PgPool,
    conversation_id: &str,
    claim: &AttachmentClaim,
) -> Result<AttachmentVerdict, ApiError> {
    let rows = sqlx::query(
        "SELECT id, conversation_id, uploader_id, object_key, content_type, size, width,
                claimed_client_msg_id, object_deleted_at IS NOT NULL AS gone
           FROM attachments WHERE id = ANY($1)",
    )
    .bind(&claim.attachments)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    let by_id: HashMap<String, &sqlx::postgres::PgRow> =
        rows.iter().map(|r| (r.get::<String, _>("id"), r)).collect();
    let mut checks = Vec::new();
    for id in &claim.attachments {
        // Unknown, another conversation's, another user's or swept: one answer, so nobody
        // learns about attachments they may not see.
        let Some(row) = by_id.get(id).filter(|r| {
            r.get::<String, _>("conversation_id") == conversation_id
                && r.get::<String, _>("uploader_id") == claim.sender_id
                && !r.get::<bool, _>("gone")
        }) else {
            return Ok(refused(
                ErrorCode::AttachmentNotFound,
                format!("attachment {id} is not one of yours in this conversation"),
            ));
        };
        if let Some(other) = row.get::<Option<String>, _>("claimed_client_msg_id") {
            if other != claim.client_msg_id {
                return Ok(refused(
                    ErrorCode::BadRequest,
                    format!("attachment {id} is already attached to another message"),
                ));
            }
        }
        checks.push(Check {
            id: id.clone(),
            key: row.get("object_key"),
            content_type: row.get("content_type"),
            size: row.get::<i64, _>("size") as u64,
            known_width: row.get::<Option<i32>, _>("width").is_some(),
        });
    }
    let results =
        futures_util::future::join_all(checks.iter().map(|c| check_object(inner, c))).await;
    let mut dimensions = Vec::new();
    for (check, result) in checks.iter().zip(results) {
        match result? {
            Ok(Some(d)) => dimensions.push((check.id.clone(), d)),
            Ok(None) => {}
            Err(verdict) => return Ok(verdict),
        }
    }
    let mut tx = pool.begin().await.map_err(db_error)?;
    for (id, (width, height)) in &dimensions {
        sqlx::query("UPDATE attachments SET width = $2, height = $3 WHERE id = $1")
            .bind(id)
            .bind(*width as i32)
            .bind(*height as i32)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    // The claim itself: only if still unclaimed (or claimed by this very send) and not swept
    // meanwhile (the sweeper marks before it deletes).
    let claimed = sqlx::query(
        "UPDATE attachments
            SET claimed_client_msg_id = $2, claimed_at = now()
          WHERE id = ANY($1) AND object_deleted_at IS NULL
            AND (claimed_client_msg_id IS NULL OR claimed_client_msg_id = $2)",
    )
    .bind(&claim.attachments)
    .bind(&claim.client_msg_id)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    if claimed.rows_affected() as usize != claim.attachments.len() {
        tx.rollback().await.map_err(db_error)?;
        return Ok(refused(
            ErrorCode::AttachmentNotFound,
            "an attachment was claimed by another message or removed meanwhile",
        ));
    }
    tx.commit().await.map_err(db_error)?;
    Ok(AttachmentVerdict { refused: None })
}

struct Check {
    id: String,
    key: String,
    content_type: String,
    size: u64,
    known_width: bool,
}

/// One object against its record: `Ok(Ok(dimensions of a newly examined image))`,
/// `Ok(Err(refusal))`, or `Err` when the store cannot answer.
async fn check_object(
    inner: &Inner,
    check: &Check,
) -> Result<Result<Option<(u32, u32)>, AttachmentVerdict>, ApiError> {
    let store_down = |e: String| {
        tracing::warn!(error = %e, "the object store did not answer");
        ApiError::unavailable("the object store is unavailable, retry shortly")
    };
    let Some(head) = inner.store.head(&check.key).await.map_err(store_down)? else {
        return Ok(Err(refused(
            ErrorCode::AttachmentNotFound,
            format!(
                "attachment {} was not uploaded (or its upload URL expired first)",
                check.id
            ),
        )));
    };
    if head.size != check.size {
        return Ok(Err(refused(
            ErrorCode::AttachmentMismatch,
            format!(
                "attachment {} is {} bytes; {} were declared",
                check.id, head.size, check.size
            ),
        )));
    }
    let stored_type = head
        .content_type
        .as_deref()
        .map(|t| t.trim().to_ascii_lowercase());
    if stored_type.as_deref() != Some(check.content_type.as_str()) {
        return Ok(Err(refused(
            ErrorCode::AttachmentMismatch,
            format!(
                "attachment {} was stored as {:?}; {:?} was declared",
                check.id, stored_type, check.content_type
            ),
        )));
    }
    if !IMAGE_TYPES.contains(&check.content_type.as_str()) || check.known_width {
        return Ok(Ok(None));
    }
    let header = inner
        .store
        .read_prefix(&check.key, IMAGE_HEADER_BYTES)
        .await
        .map_err(store_down)?;
    let examined = {
        let _permit = inner
            .images
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("shutting down"))?;
        let work = tokio::task::spawn_blocking(move || image_dimensions(&header));
        tokio::time::timeout(IMAGE_TIMEOUT, work).await
    };
    let dimensions = match examined {
        Ok(Ok(Ok(d))) => d,
        Ok(Ok(Err(why))) => {
            return Ok(Err(refused(
                ErrorCode::AttachmentRefused,
                format!("attachment {}: {why}", check.id),
            )))
        }
        Ok(Err(_)) | Err(_) => {
            return Ok(Err(refused(
                ErrorCode::AttachmentRefused,
                format!("attachment {}: the image could not be examined", check.id),
            )))
        }
    };
    let pixels = u64::from(dimensions.0) * u64::from(dimensions.1);
    if pixels > inner.config.image_max_pixels {
        return Ok(Err(refused(
            ErrorCode::AttachmentRefused,
            format!(
                "attachment {} is a {}x{} image; the limit is {} pixels",
                check.id, dimensions.0, dimensions.1, inner.config.image_max_pixels
            ),
        )));
    }
    Ok(Ok(Some(dimensions)))
}

/// An image's width and height from its header alone: nothing is decoded, so a file that
/// declares a billion pixels costs what its header costs.
pub fn image_dimensions(header: &[u8]) -> Result<(u32, u32), String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(header))
        .with_guessed_format()
        .map_err(|e| format!("not a readable image: {e}"))?;
    if reader.format().is_none() {
        return Err("not a readable image (unknown format)".into());
    }
    reader
        .into_dimensions()
        .map_err(|e| format!("not a readable image: {e}"))
}

/// Marks the attachments of a deleted message for deletion (the sweeper deletes their
/// objects). For message deletion (issue 28 part 1): call it in the transaction that
/// tombstones the message.
pub async fn mark_message_deleted<'e, E>(executor: E, message_id: &str) -> Result<u64, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let done = sqlx::query(
        "UPDATE attachments SET message_deleted_at = now()
          WHERE message_id = $1 AND message_deleted_at IS NULL",
    )
    .bind(message_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_come_from_the_header() {
        // A PNG signature and IHDR declaring 100000 x 100000 (no pixel data at all).
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = [0u8; 4];
        png.extend_from_slice(&crc);
        // The CRC is wrong; the decoder may refuse it, but it must never allocate the pixels.
        match image_dimensions(&png) {
            Ok(d) => assert_eq!(d, (100_000, 100_000)),
            Err(e) => assert!(e.contains("not a readable image"), "{e}"),
        }
        assert!(image_dimensions(b"hello").is_err());
    }
}
