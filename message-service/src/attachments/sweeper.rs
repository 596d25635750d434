//! Deletes objects nobody needs: attachments no message referenced within
//! `SB_ATTACHMENT_UNREFERENCED_TTL_SECS` of their creation (or of their last claim by a send),
//! and the attachments of deleted messages ([`super::mark_message_deleted`]).
//!
//! Each round marks a bounded batch `object_deleted_at` first, under the same conditions, in
//! one statement, and only then deletes the objects: a send claiming an attachment at the
//! same moment either claimed it first (then the mark skips it) or finds it marked (and is
//! refused `attachment_not_found`), so a message never references a deleted object. A delete
//! the store refuses is unmarked and tried again next round.

use std::time::Duration;

use sqlx::{PgPool, Row};
use switchboard_service_kit::shutdown::CancellationToken;

use super::Attachments;

/// Objects deleted per round at most.
const BATCH: i64 = 200;

/// Runs rounds every `SB_ATTACHMENT_SWEEP_INTERVAL_SECS` until `shutdown` (nothing when
/// attachments are off).
pub async fn run(attachments: Attachments, pool: PgPool, shutdown: CancellationToken) {
    let Some(inner) = attachments.inner.clone() else {
        shutdown.cancelled().await;
        return;
    };
    let mut tick = tokio::time::interval(inner.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep_once(&attachments, &pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "attachment sweeper deleted objects"),
            Err(e) => tracing::warn!(error = %e, "attachment sweep failed"),
        }
    }
}

/// One round: marks and deletes up to [`BATCH`] objects; answers how many went.
pub async fn sweep_once(attachments: &Attachments, pool: &PgPool) -> Result<u64, String> {
    let Some(inner) = attachments.inner.as_deref() else {
        return Ok(0);
    };
    let ttl = inner.config.unreferenced_ttl;
    let doomed = mark(pool, ttl).await.map_err(|e| e.to_string())?;
    let mut deleted = 0;
    for (id, key) in doomed {
        match inner.store.delete(&key).await {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(error = %e, attachment = %id, "could not delete an object; kept for the next round");
                let _ =
                    sqlx::query("UPDATE attachments SET object_deleted_at = NULL WHERE id = $1")
                        .bind(&id)
                        .execute(pool)
                        .await;
            }
        }
    }
    Ok(deleted)
}

async fn mark(pool: &PgPool, ttl: Duration) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE attachments SET object_deleted_at = now()
          WHERE id IN (
                SELECT id FROM attachments
                 WHERE object_deleted_at IS NULL
                   AND (message_deleted_at IS NOT NULL
                        OR (message_id IS NULL
                            AND created_at < now() - make_interval(secs => $1)
                            AND (claimed_at IS NULL OR claimed_at < now() - make_interval(secs => $1))))
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
         RETURNING id, object_key",
    )
    .bind(ttl.as_secs_f64())
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get("id"), r.get("object_key")))
        .collect())
}
