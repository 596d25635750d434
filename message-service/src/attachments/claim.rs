//! `POST /internal/v1/conversations/{id}/attachments/claim` (socket managers): before a send
//! that names attachments is numbered, each must be this conversation's and the sender's, its
//! object there with the declared size and type, and an image within the pixel limit (read
//! from its header only, in a bounded worker); then the claim ties them to the send. See the
//! module docs of [`super`].

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use switchboard_protocol::error_code::ErrorDetail;
use switchboard_protocol::internal::{AttachmentClaim, AttachmentVerdict};
use switchboard_protocol::{ConversationId, ErrorCode};
use switchboard_service_kit::http::ApiError;

use super::Inner;
use crate::http_common::{db_error, managers_only};
use crate::state::AppState;

/// Content types whose width and height are read (and whose pixel limit applies).
const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];
/// How much of an image is read to find its dimensions: headers only, never the pixels.
const IMAGE_HEADER_BYTES: u64 = 256 * 1024;
/// The longest one image examination may take.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a claim does not go through: a verdict for the manager (200), or the database or the
/// store unable to answer (503: the send is answered `unavailable` and retried).
enum NotClaimed {
    Refused(AttachmentVerdict),
    Unavailable(ApiError),
}

impl From<ApiError> for NotClaimed {
    fn from(e: ApiError) -> Self {
        NotClaimed::Unavailable(e)
    }
}

/// A refusal of a claim.
fn refused(code: ErrorCode, message: impl Into<String>) -> NotClaimed {
    NotClaimed::Refused(AttachmentVerdict {
        refused: Some(ErrorDetail {
            code,
            message: message.into(),
        }),
    })
}

/// The refusal of an attachment that is unknown, another conversation's, another user's or
/// swept: one answer, so nobody learns about attachments they may not see.
fn not_yours(id: &str) -> NotClaimed {
    refused(
        ErrorCode::AttachmentNotFound,
        format!("attachment {id} is not one of yours in this conversation"),
    )
}

/// `POST /internal/v1/conversations/{id}/attachments/claim` (socket managers): see the module
/// docs. 200 with a verdict; 503 when the database or the store cannot answer (the send is
/// answered `unavailable` and retried by its client).
pub(super) async fn claim(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<AttachmentClaim>,
) -> Result<HttpResponse, ApiError> {
    managers_only(&state, &req)?;
    let conversation_id = path.into_inner();
    let outcome = match state.attachments.inner.as_deref() {
        None => Err(refused(
            ErrorCode::AttachmentNotFound,
            "attachments are not enabled on this deployment",
        )),
        Some(inner) => match ConversationId::parse(conversation_id) {
            Ok(conversation_id) => {
                verify_and_claim(inner, state.internal.pool(), &conversation_id, &body).await
            }
            // An id that is no ULID holds no attachments: none claimed is none of the
            // sender's here, as in an unknown conversation.
            Err(_) => match body.attachments.first() {
                Some(id) => Err(not_yours(id)),
                None => Ok(()),
            },
        },
    };
    let verdict = match outcome {
        Ok(()) => AttachmentVerdict { refused: None },
        Err(NotClaimed::Refused(verdict)) => verdict,
        Err(NotClaimed::Unavailable(e)) => return Err(e),
    };
    Ok(HttpResponse::Ok().json(verdict))
}

async fn verify_and_claim(
    inner: &Inner,
    pool: &PgPool,
    conversation_id: &ConversationId,
    claim: &AttachmentClaim,
) -> Result<(), NotClaimed> {
    let checks = records(pool, conversation_id, claim).await?;
    let results =
        futures_util::future::join_all(checks.iter().map(|c| check_object(inner, c))).await;
    let mut dimensions = Vec::new();
    for (check, result) in checks.iter().zip(results) {
        if let Some(d) = result? {
            dimensions.push((check.id.clone(), d));
        }
    }
    record_claim(pool, claim, &dimensions).await
}

/// What one attachment's object must match.
struct Check {
    id: String,
    key: String,
    content_type: String,
    size: u64,
    known_width: bool,
}

/// The claimed attachments' records, each the sender's in this conversation, not swept, and
/// not claimed by another send.
async fn records(
    pool: &PgPool,
    conversation_id: &ConversationId,
    claim: &AttachmentClaim,
) -> Result<Vec<Check>, NotClaimed> {
    let rows = sqlx::query(
        "SELECT id, conversation_id, uploader_id, object_key, content_type, size, width,
                claimed_client_msg_id, object_deleted_at IS NOT NULL AS gone
           FROM attachments WHERE id = ANY($1)",
    )
    .bind(&claim.attachments)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    let by_id: HashMap<String, &PgRow> =
        rows.iter().map(|r| (r.get::<String, _>("id"), r)).collect();
    let mut checks = Vec::new();
    for id in &claim.attachments {
        // Unknown, another conversation's, another user's or swept: one answer, so nobody
        // learns about attachments they may not see.
        let Some(row) = by_id.get(id).filter(|r| {
            r.get::<String, _>("conversation_id") == conversation_id.as_str()
                && r.get::<String, _>("uploader_id") == claim.sender_id
                && !r.get::<bool, _>("gone")
        }) else {
            return Err(not_yours(id));
        };
        if let Some(other) = row.get::<Option<String>, _>("claimed_client_msg_id") {
            if other != claim.client_msg_id {
                return Err(refused(
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
    Ok(checks)
}

/// Stores the images' dimensions and the claim, in one transaction.
async fn record_claim(
    pool: &PgPool,
    claim: &AttachmentClaim,
    dimensions: &[(String, (u32, u32))],
) -> Result<(), NotClaimed> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    for (id, (width, height)) in dimensions {
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
        return Err(refused(
            ErrorCode::AttachmentNotFound,
            "an attachment was claimed by another message or removed meanwhile",
        ));
    }
    tx.commit().await.map_err(db_error)?;
    Ok(())
}

fn store_down(e: String) -> ApiError {
    tracing::warn!(error = %e, "the object store did not answer");
    ApiError::unavailable("the object store is unavailable, retry shortly")
}

/// One object against its record: the dimensions of a newly examined image (`None` for
/// anything else, or an image examined before), or why not.
async fn check_object(inner: &Inner, check: &Check) -> Result<Option<(u32, u32)>, NotClaimed> {
    let Some(head) = inner.store.head(&check.key).await.map_err(store_down)? else {
        return Err(refused(
            ErrorCode::AttachmentNotFound,
            format!(
                "attachment {} was not uploaded (or its upload URL expired first)",
                check.id
            ),
        ));
    };
    if head.size != check.size {
        return Err(refused(
            ErrorCode::AttachmentMismatch,
            format!(
                "attachment {} is {} bytes; {} were declared",
                check.id, head.size, check.size
            ),
        ));
    }
    let stored_type = head
        .content_type
        .as_deref()
        .map(|t| t.trim().to_ascii_lowercase());
    if stored_type.as_deref() != Some(check.content_type.as_str()) {
        return Err(refused(
            ErrorCode::AttachmentMismatch,
            format!(
                "attachment {} was stored as {:?}; {:?} was declared",
                check.id, stored_type, check.content_type
            ),
        ));
    }
    if !IMAGE_TYPES.contains(&check.content_type.as_str()) || check.known_width {
        return Ok(None);
    }
    examine_image(inner, check).await.map(Some)
}

/// An image's dimensions from its header (read from the store, examined in a bounded
/// worker with a deadline), within the pixel limit.
async fn examine_image(inner: &Inner, check: &Check) -> Result<(u32, u32), NotClaimed> {
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
    let (width, height) = match examined {
        Ok(Ok(Ok(d))) => d,
        Ok(Ok(Err(why))) => {
            return Err(refused(
                ErrorCode::AttachmentRefused,
                format!("attachment {}: {why}", check.id),
            ))
        }
        Ok(Err(_)) | Err(_) => {
            return Err(refused(
                ErrorCode::AttachmentRefused,
                format!("attachment {}: the image could not be examined", check.id),
            ))
        }
    };
    if u64::from(width) * u64::from(height) > inner.config.image_max_pixels {
        return Err(refused(
            ErrorCode::AttachmentRefused,
            format!(
                "attachment {} is a {width}x{height} image; the limit is {} pixels",
                check.id, inner.config.image_max_pixels
            ),
        ));
    }
    Ok((width, height))
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
