//! Per-user quotas of events per minute, exact across instances.

use super::{lock_user, Store};

impl Store {
    /// Takes one of `user`'s `per_minute` events of `kind`: `None` when taken, else the
    /// seconds until one is free again. Exact across instances: the count and the insert run
    /// under a transaction-scoped advisory lock on (user, kind).
    pub async fn take_quota(
        &self,
        user: &str,
        kind: &str,
        per_minute: u32,
    ) -> Result<Option<u64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, kind, user).await?;
        let (count, oldest_age_ms): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), (EXTRACT(EPOCH FROM now() - min(at)) * 1000)::float8
               FROM quota_events
              WHERE user_id = $1 AND kind = $2 AND at > now() - interval '1 minute'",
        )
        .bind(user)
        .bind(kind)
        .fetch_one(&mut *tx)
        .await?;
        if count >= i64::from(per_minute) {
            let age_ms = oldest_age_ms.unwrap_or(0.0).clamp(0.0, 60_000.0);
            return Ok(Some(((60_000.0 - age_ms) / 1000.0).ceil().max(1.0) as u64));
        }
        sqlx::query("INSERT INTO quota_events (user_id, kind) VALUES ($1, $2)")
            .bind(user)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(None)
    }

    /// Forgets quota events older than a minute.
    pub async fn prune_quota_events(&self) -> Result<u64, sqlx::Error> {
        sqlx::query("DELETE FROM quota_events WHERE at < now() - interval '1 minute'")
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
    }
}
