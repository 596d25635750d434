//! Blocks: one user blocking another, bounded by [`MAX_BLOCKS`].

use super::{lock_user, Store};

impl Store {
    /// `user` blocks `blocked`; `false` when `user` already blocks [`MAX_BLOCKS`] others.
    pub async fn block(&self, user: &str, blocked: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, "blocks", user).await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM blocks WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO blocks (user_id, blocked_id)
             SELECT $1, $2 WHERE $3 < $4 ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(blocked)
        .bind(count)
        .bind(MAX_BLOCKS)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let there: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM blocks WHERE user_id = $1 AND blocked_id = $2")
                .bind(user)
                .bind(blocked)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(inserted == 1 || there.is_some())
    }

    pub async fn unblock(&self, user: &str, blocked: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2")
            .bind(user)
            .bind(blocked)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Everyone `user` blocks.
    pub async fn blocks_of(&self, user: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT blocked_id FROM blocks WHERE user_id = $1 ORDER BY blocked_id")
            .bind(user)
            .fetch_all(&self.pool)
            .await
    }

    /// Which of `users` block `user`.
    pub async fn blocking(&self, users: &[String], user: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT user_id FROM blocks WHERE blocked_id = $1 AND user_id = ANY($2)")
            .bind(user)
            .bind(users)
            .fetch_all(&self.pool)
            .await
    }
}

/// Most users one user may block.
pub const MAX_BLOCKS: i64 = 10_000;
