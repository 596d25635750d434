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

//!
//! Files: [`routes`] (the members' upload ticket and download redirect), [`claim`] (the
//! managers' verification before a send is numbered), [`history`] (attachments on history
//! rows), [`sweeper`], [`s3`] (the pre-signed requests) and [`config`].

mod claim;
pub mod config;
mod history;
mod routes;
pub mod s3;
pub mod sweeper;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use switchboard_protocol::{ErrorCode, MessageId};
use switchboard_service_kit::http::ApiError;

pub use claim::image_dimensions;
pub use config::AttachmentsConfig;
pub use history::{decorate, AttachmentInfo, HistoryMessage};
pub use routes::{NewAttachment, UploadTicket};

/// Images examined at once; more wait (the examination is short: headers only).
const IMAGE_WORKERS: usize = 2;

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
        web::post().to(routes::create),
    )
    .route(
        "/api/v1/conversations/{id}/attachments/{attachment_id}",
        web::get().to(routes::download),
    )
    .route(
        "/internal/v1/conversations/{id}/attachments/claim",
        web::post().to(claim::claim),
    );
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(routes::create, routes::download))]
struct AttachmentsApi;

/// The attachment routes' part of the public OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    AttachmentsApi::openapi()
}

/// RFC 3339 of `after` from now: when a pre-signed URL expires.
fn expires_at(after: Duration) -> String {
    let at = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
    crate::store::rfc3339(at)
}

/// Marks the attachments of a deleted message for deletion (the sweeper deletes their
/// objects). For message deletion (issue 28 part 1): call it in the transaction that
/// tombstones the message.
pub async fn mark_message_deleted<'e, E>(
    executor: E,
    message_id: &MessageId,
) -> Result<u64, sqlx::Error>
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
