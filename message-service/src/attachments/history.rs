//! Attachments on history rows: each message of a page with its attachments, each with a
//! download URL pre-signed for this answer. A message without attachments keeps exactly the
//! shape it has without this feature.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use switchboard_service_kit::http::ApiError;

use super::{expires_at, Attachments, Inner};
use crate::http_common::db_error;
use crate::store::StoredMessage;

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

/// A history row: the stored message's fields, and `attachments` when it has any.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryMessage {
    #[serde(flatten)]
    pub message: StoredMessage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<AttachmentInfo>>,
}

/// The history rows of `messages`, each with its `attachments` when it has any.
pub async fn decorate(
    attachments: &Attachments,
    pool: &PgPool,
    messages: Vec<StoredMessage>,
) -> Result<Vec<HistoryMessage>, ApiError> {
    let mut by_message = match attachments.inner.as_deref() {
        Some(inner) if !messages.is_empty() => attachments_of(inner, pool, &messages).await?,
        _ => HashMap::new(),
    };
    Ok(messages
        .into_iter()
        .map(|message| HistoryMessage {
            attachments: by_message.remove(message.message_id.as_str()),
            message,
        })
        .collect())
}

/// The live attachments of `messages` by message id, in id order, with download URLs.
async fn attachments_of(
    inner: &Inner,
    pool: &PgPool,
    messages: &[StoredMessage],
) -> Result<HashMap<String, Vec<AttachmentInfo>>, ApiError> {
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
    let url_expires_at = expires_at(inner.config.url_expiry);
    let mut by_message: HashMap<String, Vec<AttachmentInfo>> = HashMap::new();
    for row in found {
        let info = info(inner, &row, &url_expires_at);
        by_message
            .entry(row.get("message_id"))
            .or_default()
            .push(info);
    }
    Ok(by_message)
}

/// One attachment row as history shows it, its download URL signed now.
fn info(inner: &Inner, row: &PgRow, url_expires_at: &str) -> AttachmentInfo {
    let filename: String = row.get("filename");
    let content_type: String = row.get("content_type");
    AttachmentInfo {
        url: inner.store.download_url(
            row.get("object_key"),
            &filename,
            &content_type,
            inner.config.url_expiry,
        ),
        id: row.get("id"),
        filename,
        content_type,
        size: row.get::<i64, _>("size") as u64,
        width: row.get::<Option<i32>, _>("width").map(|w| w as u32),
        height: row.get::<Option<i32>, _>("height").map(|h| h as u32),
        url_expires_at: url_expires_at.to_owned(),
    }
}
