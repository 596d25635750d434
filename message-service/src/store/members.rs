//! Members of a conversation: roles, adding, accepting, leaving (keeping an owner), the
//! invitations of a user, and the member rows a creation inserts.

use sqlx::{QueryBuilder, Row};
use switchboard_protocol::ConversationId;

use super::outboxes::{membership_changed, record_member};
use super::{Role, Store, Tx};

impl Store {
    /// Sets a member's role; `false` when the user is not a member.
    pub async fn set_role(
        &self,
        conversation_id: &ConversationId,
        user: &str,
        role: Role,
    ) -> Result<bool, sqlx::Error> {
        let changed = sqlx::query(
            "UPDATE members SET role = $3
              WHERE conversation_id = $1 AND user_id = $2 AND state = 'active'",
        )
        .bind(conversation_id)
        .bind(user)
        .bind(role.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Removes a member or an invite; when that was the owner, the longest-standing admin
    /// (else member) becomes the owner, so a group always has one while it has members. A
    /// member leaving (`by_self`) is remembered, so a group in `open` policy can only invite
    /// them back. The change's membership version, or `None` when there was no such row.
    pub async fn remove_member_keeping_an_owner(
        &self,
        conversation_id: &ConversationId,
        user: &str,
        by_self: bool,
    ) -> Result<Option<u64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let removed: Option<(String, String)> = sqlx::query_as(
            "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2 RETURNING role, state",
        )
        .bind(conversation_id)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((role, state)) = removed else {
            return Ok(None);
        };
        if role == "owner" {
            sqlx::query(
                "UPDATE members SET role = 'owner'
                  WHERE conversation_id = $1
                    AND user_id = (SELECT user_id FROM members
                                    WHERE conversation_id = $1 AND state = 'active'
                                    ORDER BY (role = 'admin') DESC, joined_at, user_id LIMIT 1)",
            )
            .bind(conversation_id)
            .execute(&mut *tx)
            .await?;
        }
        if by_self && state == "active" {
            sqlx::query(
                "INSERT INTO departures (conversation_id, user_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(conversation_id)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        let version = membership_changed(&mut tx, conversation_id, true).await?;
        if state == "active" {
            record_member(&mut tx, conversation_id, user, false).await?;
        }
        tx.commit().await?;
        Ok(Some(version))
    }

    /// The active members (those who send and receive), as the mirror holds them.
    pub async fn members(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT user_id FROM members WHERE conversation_id = $1 AND state = 'active'
              ORDER BY user_id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn is_member(
        &self,
        conversation_id: &ConversationId,
        user: &str,
    ) -> Result<bool, sqlx::Error> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2 AND state = 'active'",
        )
        .bind(conversation_id)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// All rows of a conversation, invites included: for the group size limit.
    pub async fn member_rows(&self, conversation_id: &ConversationId) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM members WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_one(&self.pool)
            .await
    }

    /// The conversation's membership version (bumped by every change of its members).
    pub async fn members_version(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<u64, sqlx::Error> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT members_version FROM conversations WHERE id = $1")
                .bind(conversation_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(version.unwrap_or(0).max(0) as u64)
    }

    /// Adds `user` to a group as `state` (`active`, or `invited` by `by`). A user who left the
    /// group is invited, whatever `state` asks. Nothing changes for a user already there.
    pub async fn add_member(
        &self,
        conversation_id: &ConversationId,
        user: &str,
        by: &str,
        state: MemberState,
    ) -> Result<Added, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let left: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM departures WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation_id)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        let state = if left.is_some() {
            MemberState::Invited
        } else {
            state
        };
        let inserted = sqlx::query(
            "INSERT INTO members (conversation_id, user_id, state, invited_by)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(conversation_id)
        .bind(user)
        .bind(state.as_str())
        .bind(by)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let added = match (inserted, state) {
            (false, _) => Added::AlreadyThere,
            (true, MemberState::Invited) => Added::Invited,
            (true, MemberState::Active) => {
                record_member(&mut tx, conversation_id, user, true).await?;
                Added::Member(membership_changed(&mut tx, conversation_id, true).await?)
            }
        };
        tx.commit().await?;
        Ok(added)
    }

    /// `user` accepts a conversation: an invite becomes membership (its version returned in
    /// `Accepted::Joined`), a membership is marked accepted. `None`: neither a member nor
    /// invited.
    pub async fn accept(
        &self,
        conversation_id: &ConversationId,
        user: &str,
    ) -> Result<Option<Accepted>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let before: Option<String> = sqlx::query_scalar(
            "SELECT state FROM members WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(conversation_id)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE members SET state = 'active', accepted_at = COALESCE(accepted_at, now())
              WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation_id)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let accepted = if before == "invited" {
            sqlx::query("DELETE FROM departures WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation_id)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            record_member(&mut tx, conversation_id, user, true).await?;
            Accepted::Joined(membership_changed(&mut tx, conversation_id, true).await?)
        } else {
            Accepted::Already
        };
        tx.commit().await?;
        Ok(Some(accepted))
    }

    /// The groups `user` is invited to and has not answered.
    pub async fn invitations(&self, user: &str) -> Result<Vec<Invitation>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT c.id, c.name, m.invited_by FROM members m
               JOIN conversations c ON c.id = m.conversation_id
              WHERE m.user_id = $1 AND m.state = 'invited'
              ORDER BY m.joined_at DESC, c.id LIMIT 1000",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        // The id checked as it is read: a row that breaks the rule is an error, not a panic.
        rows.iter()
            .map(|row| {
                Ok(Invitation {
                    conversation_id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    invited_by: row.try_get("invited_by")?,
                })
            })
            .collect()
    }
}

pub(super) async fn insert_members(
    tx: &mut Tx<'_>,
    conversation_id: &ConversationId,
    members: &[String],
    state: &str,
    invited_by: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut builder =
        QueryBuilder::new("INSERT INTO members (conversation_id, user_id, state, invited_by) ");
    builder.push_values(members, |mut b, m| {
        b.push_bind(conversation_id)
            .push_bind(m)
            .push_bind(state)
            .push_bind(invited_by);
    });
    builder.push(" ON CONFLICT DO NOTHING");
    builder.build().execute(&mut **tx).await?;
    Ok(())
}

/// Marks `user`'s membership accepted (no-op when it already is, or is only an invite).
pub(super) async fn accept_in(
    tx: &mut Tx<'_>,
    conversation_id: &ConversationId,
    user: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE members SET accepted_at = now()
          WHERE conversation_id = $1 AND user_id = $2 AND state = 'active'
            AND accepted_at IS NULL",
    )
    .bind(conversation_id)
    .bind(user)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// A membership row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// A member: sends, receives, reads history.
    Active,
    /// Invited to a group, not a member until accepting.
    Invited,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Invited => "invited",
        }
    }
}

/// What [`Store::add_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A member now, at this membership version.
    Member(u64),
    /// Invited (the policy, or the user left the group before).
    Invited,
    /// A member or invitee already: nothing changed.
    AlreadyThere,
}

/// What [`Store::accept`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The invite became membership, at this membership version.
    Joined(u64),
    /// A member already (now marked accepted).
    Already,
}

pub use switchboard_protocol::conversations::Invitation;
