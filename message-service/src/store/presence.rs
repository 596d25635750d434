//! Who may see whose presence: contacts through shared conversations, minus blocks.

use super::Store;

impl Store {
    /// Who may see `user`'s presence: the active members of the conversations of at most
    /// `max_group` members `user` is active in (through conversations both accepted, when
    /// `accepted_only`), except those `user` blocked.
    pub async fn contacts(
        &self,
        user: &str,
        max_group: i64,
        accepted_only: bool,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT other.user_id
               FROM members mine
               JOIN conversations c ON c.id = mine.conversation_id
               JOIN members other ON other.conversation_id = mine.conversation_id
              WHERE mine.user_id = $1 AND other.user_id <> $1
                AND mine.state = 'active' AND other.state = 'active'
                AND c.member_count <= $2
                AND (NOT $3 OR (mine.accepted_at IS NOT NULL AND other.accepted_at IS NOT NULL))
                AND NOT EXISTS (SELECT 1 FROM blocks b
                                 WHERE b.user_id = $1 AND b.blocked_id = other.user_id)",
        )
        .bind(user)
        .bind(max_group)
        .bind(accepted_only)
        .fetch_all(&self.pool)
        .await
    }

    /// Which of `users` `caller` may see the presence of: they share a conversation in which
    /// both are active (both accepted it, when `accepted_only`), and they have not blocked
    /// `caller`.
    pub async fn sharing_a_conversation(
        &self,
        caller: &str,
        users: &[String],
        accepted_only: bool,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT other.user_id
               FROM members mine
               JOIN members other ON other.conversation_id = mine.conversation_id
              WHERE mine.user_id = $1 AND other.user_id = ANY($2)
                AND mine.state = 'active' AND other.state = 'active'
                AND (NOT $3 OR (mine.accepted_at IS NOT NULL AND other.accepted_at IS NOT NULL))
                AND NOT EXISTS (SELECT 1 FROM blocks b
                                 WHERE b.user_id = other.user_id AND b.blocked_id = $1)",
        )
        .bind(caller)
        .bind(users)
        .bind(accepted_only)
        .fetch_all(&self.pool)
        .await
    }
}
