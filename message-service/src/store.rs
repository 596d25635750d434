//! PostgreSQL access. Every query is here, so the schema and its uses read side by side.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{QueryBuilder, Row};
use switchboard_message_log::LogRecord;
pub use switchboard_protocol::conversations::{
    Conversation, ConversationSummary, MemberReceipt, Role, StoredMessage,
};
use switchboard_protocol::frames::ReceiptKind;
use switchboard_service_kit::tls::PostgresTls;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// One pool's settings ([`Store::connect_with`]).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// The session's `statement_timeout` (0: none).
    pub statement_timeout_ms: u64,
    /// How long a query waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// Runs the migrations (one pool per process does).
    pub migrate: bool,
}

/// One member's cumulative position, as reported (either field may be 0 = unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptUpdate {
    pub conversation_id: String,
    pub user_id: String,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

impl ReceiptUpdate {
    /// A member's receipt as the events topic carries it: `read` up to `seq` also means
    /// delivered up to `seq`; `delivered` says nothing about reading.
    pub fn from_event(
        conversation_id: String,
        user_id: String,
        kind: ReceiptKind,
        seq: u64,
    ) -> ReceiptUpdate {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let read_seq = if kind == ReceiptKind::Read { seq } else { 0 };
        ReceiptUpdate {
            conversation_id,
            user_id,
            delivered_seq: seq,
            read_seq,
        }
    }
}

/// One `(delivered_seq, read_seq)` per `(conversation, user)`: the highest of each, read
/// raising delivered (Postgres refuses a key twice in one `INSERT .. ON CONFLICT`, and
/// positions only move forward, so the order of the updates does not matter).
pub fn merge_receipts<'a>(
    updates: &[&'a ReceiptUpdate],
) -> std::collections::BTreeMap<(&'a str, &'a str), (i64, i64)> {
    let mut merged: std::collections::BTreeMap<(&str, &str), (i64, i64)> = Default::default();
    for u in updates {
        let entry = merged
            .entry((u.conversation_id.as_str(), u.user_id.as_str()))
            .or_default();
        entry.0 = entry.0.max(u.delivered_seq).max(u.read_seq);
        entry.1 = entry.1.max(u.read_seq);
    }
    merged
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Connects (retrying for up to 30 s while the database starts) and runs migrations.
    ///
    /// Every session commits synchronously (`synchronous_commit=on`) whatever the server's
    /// default: ingest stores a log offset only once its rows are committed, so a commit the
    /// server could still lose (`off`, or `local` with a standby that is then promoted) would
    /// let acknowledged messages vanish from history for good.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::connect_with(
            url,
            PoolSettings {
                max_connections,
                statement_timeout_ms: 0,
                acquire_timeout: Duration::from_secs(5),
                migrate: true,
            },
        )
        .await
    }

    /// [`Self::connect`] with the pool's own settings: the message service opens two pools,
    /// one for ingest (which runs the migrations) and one for the public REST API, with a
    /// `statement_timeout` so no client request holds a connection for long.
    pub async fn connect_with(url: &str, settings: PoolSettings) -> anyhow::Result<Self> {
        let mut session = vec![("synchronous_commit", "on".to_owned())];
        if settings.statement_timeout_ms > 0 {
            session.push((
                "statement_timeout",
                settings.statement_timeout_ms.to_string(),
            ));
        }
        // SB_POSTGRES_SSLMODE / SB_POSTGRES_CA_FILE become the URL's sslmode and sslrootcert.
        let url = PostgresTls::url_from_env(url)?;
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options(session);
        let mut attempt = 0;
        let pool = loop {
            match PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    let error = PostgresTls::explain(&e.to_string());
                    tracing::warn!(%error, "database not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(anyhow::anyhow!(PostgresTls::explain(&e.to_string()))),
            }
        };
        if settings.migrate {
            sqlx::migrate!("./migrations").run(&pool).await?;
        }
        Ok(Store { pool })
    }

    /// The pool, for the queries that live beside their own contract ([`crate::log_fences`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// The one direct conversation of a pair; `true` when it was created now.
    /// The direct conversation of a pair, if there is one.
    pub async fn direct_between(&self, a: &str, b: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
            .bind(direct_key(a, b))
            .fetch_optional(&self.pool)
            .await
    }

    /// The one direct conversation of a pair; `true` when it was created now. The caller
    /// accepts it either way (asking for the pair's conversation is consent to it).
    pub async fn create_direct(
        &self,
        caller: &str,
        other: &str,
    ) -> Result<(Conversation, bool), sqlx::Error> {
        let key = direct_key(caller, other);
        let mut tx = self.pool.begin().await?;
        let id = ulid::Ulid::new().to_string();
        let inserted = sqlx::query(
            "INSERT INTO conversations (id, kind, direct_key, created_by) VALUES ($1, 'direct', $2, $3)
             ON CONFLICT (direct_key) DO NOTHING",
        )
        .bind(&id)
        .bind(&key)
        .bind(caller)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let id: String = if inserted {
            let mut members = vec![caller.to_owned()];
            if other != caller {
                members.push(other.to_owned());
            }
            insert_members(&mut tx, &id, &members, "active", None).await?;
            membership_changed(&mut tx, &id, false).await?;
            record_created(&mut tx, &id, "direct", None, caller, &members).await?;
            id
        } else {
            sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?
        };
        accept_in(&mut tx, &id, caller).await?;
        tx.commit().await?;
        let conversation = self
            .conversation(&id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok((conversation, inserted))
    }

    /// A group owned by `caller`, who is an accepted member, with `members` as members.
    pub async fn create_group(
        &self,
        caller: &str,
        name: &str,
        members: &[String],
    ) -> Result<Conversation, sqlx::Error> {
        self.create_group_as(caller, name, members, MemberState::Active)
            .await
    }

    /// A group owned by `caller`, who is an accepted member; the others are members
    /// (`state` `active`) or invitees (`invited`).
    pub async fn create_group_as(
        &self,
        caller: &str,
        name: &str,
        others: &[String],
        state: MemberState,
    ) -> Result<Conversation, sqlx::Error> {
        let id = ulid::Ulid::new().to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO conversations (id, kind, name, created_by) VALUES ($1, 'group', $2, $3)",
        )
        .bind(&id)
        .bind(name)
        .bind(caller)
        .execute(&mut *tx)
        .await?;
        insert_members(&mut tx, &id, &[caller.to_owned()], "active", None).await?;
        let others: Vec<String> = others.iter().filter(|m| *m != caller).cloned().collect();
        if !others.is_empty() {
            insert_members(&mut tx, &id, &others, state.as_str(), Some(caller)).await?;
        }
        sqlx::query(
            "UPDATE members SET role = 'owner', accepted_at = now()
              WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(&id)
        .bind(caller)
        .execute(&mut *tx)
        .await?;
        membership_changed(&mut tx, &id, false).await?;
        let mut active = vec![caller.to_owned()];
        if state == MemberState::Active {
            active.extend(others.iter().cloned());
        }
        record_created(&mut tx, &id, "group", Some(name), caller, &active).await?;
        tx.commit().await?;
        self.conversation(&id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// A conversation with its members (and, for groups, their roles and the open invites).
    pub async fn conversation(&self, id: &str) -> Result<Option<Conversation>, sqlx::Error> {
        let Some(row) = sqlx::query("SELECT id, kind, name FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let kind: String = row.get("kind");
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT user_id, role, state FROM members WHERE conversation_id = $1 ORDER BY user_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut members = Vec::new();
        let mut invited = Vec::new();
        let mut roles = std::collections::BTreeMap::new();
        for (user, role, state) in rows {
            if state == "invited" {
                invited.push(user);
            } else {
                if kind == "group" {
                    roles.insert(user.clone(), Role::parse(&role));
                }
                members.push(user);
            }
        }
        Ok(Some(Conversation {
            id: row.get("id"),
            kind,
            name: row.get("name"),
            members,
            roles,
            invited,
        }))
    }

    /// Sets a member's role; `false` when the user is not a member.
    pub async fn set_role(
        &self,
        conversation_id: &str,
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
        conversation_id: &str,
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
    pub async fn members(&self, conversation_id: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT user_id FROM members WHERE conversation_id = $1 AND state = 'active'
              ORDER BY user_id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn is_member(&self, conversation_id: &str, user: &str) -> Result<bool, sqlx::Error> {
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
    pub async fn member_rows(&self, conversation_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM members WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_one(&self.pool)
            .await
    }

    /// The conversation's membership version (bumped by every change of its members).
    pub async fn members_version(&self, conversation_id: &str) -> Result<u64, sqlx::Error> {
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
        conversation_id: &str,
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
        conversation_id: &str,
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
        Ok(rows
            .into_iter()
            .map(|row| Invitation {
                conversation_id: row.get("id"),
                name: row.get("name"),
                invited_by: row.get("invited_by"),
            })
            .collect())
    }

    /// One page of the caller's conversations, highest `last_seq` first (then by id), after
    /// `after` (the last entry of the previous page), with at most `max_members` members each
    /// and `unread` from stored positions: the conversation's `last_seq` past the later of
    /// the caller's `read_seq` and the caller's own last message (one index probe per row,
    /// never a count of messages). The cursor of the next page comes with it when there is one.
    pub async fn list_for(
        &self,
        user: &str,
        limit: i64,
        after: Option<&ListCursor>,
        max_members: i64,
    ) -> Result<(Vec<ConversationSummary>, Option<ListCursor>), sqlx::Error> {
        let (after_seq, after_id) = match after {
            Some(c) => (Some(c.last_seq), Some(c.id.as_str())),
            None => (None, None),
        };
        let rows = sqlx::query(
            "WITH page AS (
               SELECT c.id, c.kind, c.name, c.last_seq, c.member_count,
                      COALESCE(r.read_seq, 0) AS read_seq
                 FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 LEFT JOIN receipts r ON r.conversation_id = c.id AND r.user_id = $1
                WHERE m.user_id = $1 AND m.state = 'active'
                  AND ($2::bigint IS NULL OR c.last_seq < $2 OR (c.last_seq = $2 AND c.id > $3))
                ORDER BY c.last_seq DESC, c.id
                LIMIT $4)
             , positioned AS (
               SELECT p.*,
                      ARRAY(SELECT m2.user_id FROM members m2
                             WHERE m2.conversation_id = p.id AND m2.state = 'active'
                             ORDER BY m2.user_id LIMIT $5) AS members,
                      (SELECT max(own.seq) FROM messages own
                        WHERE own.conversation_id = p.id AND own.sender_id = $1) AS own_seq
                 FROM page p)
             -- Edits, deletes and reactions take seqs too, but are not unread messages
             -- (issue 28; counted through the partial index messages_events).
             SELECT q.*,
                    (SELECT count(*) FROM messages ev
                      WHERE ev.conversation_id = q.id AND ev.kind <> 'message'
                        AND ev.seq > GREATEST(q.read_seq, COALESCE(q.own_seq, 0))) AS unread_events
               FROM positioned q
              ORDER BY q.last_seq DESC, q.id",
        )
        .bind(user)
        .bind(after_seq)
        .bind(after_id)
        .bind(limit + 1)
        .bind(max_members)
        .fetch_all(&self.pool)
        .await?;
        let mut conversations: Vec<ConversationSummary> = rows
            .into_iter()
            .map(|row| {
                let last_seq: i64 = row.get("last_seq");
                let read: i64 = row.get("read_seq");
                let own: Option<i64> = row.get("own_seq");
                let unread_events: i64 = row.get("unread_events");
                ConversationSummary {
                    id: row.get("id"),
                    kind: row.get("kind"),
                    name: row.get("name"),
                    members: row.get("members"),
                    member_count: i64::from(row.get::<i32, _>("member_count")),
                    last_seq,
                    unread: (last_seq - read.max(own.unwrap_or(0)) - unread_events).max(0),
                    receipts: Vec::new(),
                }
            })
            .collect();
        let next = if conversations.len() as i64 > limit {
            conversations.truncate(limit.max(0) as usize);
            conversations.last().map(|c| ListCursor {
                last_seq: c.last_seq,
                id: c.id.clone(),
            })
        } else {
            None
        };
        Ok((conversations, next))
    }

    /// Receipts of every member of these conversations, by conversation.
    pub async fn receipts_of(
        &self,
        conversation_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<MemberReceipt>>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT conversation_id, user_id, delivered_seq, read_seq FROM receipts
              WHERE conversation_id = ANY($1) ORDER BY user_id",
        )
        .bind(conversation_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_conversation: std::collections::HashMap<String, Vec<MemberReceipt>> =
            Default::default();
        for row in rows {
            by_conversation
                .entry(row.get("conversation_id"))
                .or_default()
                .push(MemberReceipt {
                    user_id: row.get("user_id"),
                    delivered_seq: row.get("delivered_seq"),
                    read_seq: row.get("read_seq"),
                });
        }
        Ok(by_conversation)
    }

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

    // ---- Blocks ----

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

    // ---- Quotas ----

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

    // ---- The membership mirror's outbox ----

    /// Changes whose mirror update is not applied yet, or was applied less than
    /// `recheck_secs` ago (a failover may still lose it): (conversation, version).
    pub async fn mirror_outbox(
        &self,
        recheck_secs: u64,
        limit: i64,
    ) -> Result<Vec<(String, u64)>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT conversation_id, version FROM mirror_outbox
              WHERE applied_at IS NULL OR applied_at > now() - make_interval(secs => $1)
              ORDER BY changed_at LIMIT $2",
        )
        .bind(recheck_secs as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, v)| (id, v.max(0) as u64))
            .collect())
    }

    /// The mirror update of `version` (or a later one) reached Redis: the first time, the
    /// re-check window starts now.
    pub async fn mirror_applied(
        &self,
        conversation_id: &str,
        version: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE mirror_outbox SET applied_at = now()
              WHERE conversation_id = $1 AND version <= $2 AND applied_at IS NULL",
        )
        .bind(conversation_id)
        .bind(version as i64)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Forgets changes applied more than `recheck_secs` ago.
    /// The oldest unpublished membership events: (row id, Kafka key, payload).
    pub async fn events_to_publish(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT id, key, payload FROM event_outbox ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    /// Forgets published membership events.
    pub async fn events_published(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM event_outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn prune_mirror_outbox(&self, recheck_secs: u64) -> Result<u64, sqlx::Error> {
        sqlx::query(
            "DELETE FROM mirror_outbox WHERE applied_at < now() - make_interval(secs => $1)",
        )
        .bind(recheck_secs as f64)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
    }

    pub async fn history(
        &self,
        conversation_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        // Messages only, each in its current state: edits, deletes and reactions are rows
        // too (`crate::events`), read with `?events=true`.
        let rows = sqlx::query(
            "SELECT conversation_id, message_id, seq, sender_id, client_msg_id, body, created_at,
                    target_id, edited_at, deleted_at
               FROM messages WHERE conversation_id = $1 AND seq > $2 AND kind = 'message'
              ORDER BY seq LIMIT $3",
        )
        .bind(conversation_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredMessage {
                conversation_id: row.get("conversation_id"),
                message_id: row.get("message_id"),
                seq: row.get("seq"),
                sender_id: row.get("sender_id"),
                client_msg_id: row.get("client_msg_id"),
                body: row.get("body"),
                created_at: rfc3339(row.get("created_at")),
                reply_to: row.get("target_id"),
                edited_at: row
                    .get::<Option<DateTime<Utc>>, _>("edited_at")
                    .map(rfc3339),
                deleted: row.get::<Option<DateTime<Utc>>, _>("deleted_at").is_some(),
                reactions: Vec::new(),
            })
            .collect())
    }

    /// The newest `limit` stored messages above `after_seq`, newest first: what a manager
    /// restores idempotency records from after Redis lost them (the newest are the ones
    /// clients may still resend).
    pub async fn newest_above(
        &self,
        conversation_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT conversation_id, message_id, seq, sender_id, client_msg_id, created_at
               FROM messages WHERE conversation_id = $1 AND seq > $2
              ORDER BY seq DESC LIMIT $3",
        )
        .bind(conversation_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredMessage {
                conversation_id: row.get("conversation_id"),
                message_id: row.get("message_id"),
                seq: row.get("seq"),
                sender_id: row.get("sender_id"),
                client_msg_id: row.get("client_msg_id"),
                body: String::new(),
                created_at: rfc3339(row.get("created_at")),
                reply_to: None,
                edited_at: None,
                deleted: false,
                reactions: Vec::new(),
            })
            .collect())
    }

    /// Highest stored seq of a conversation (0 when none).
    pub async fn last_seq(&self, conversation_id: &str) -> Result<i64, sqlx::Error> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM messages WHERE conversation_id = $1")
                .bind(conversation_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }
}

async fn insert_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
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

/// "a|b" (sorted): a pair has one direct conversation.
fn direct_key(a: &str, b: &str) -> String {
    let mut pair = [a, b];
    pair.sort_unstable();
    format!("{}|{}", pair[0], pair[1])
}

/// In a membership change's transaction: counts the active members again, bumps the
/// conversation's membership version and records the change in the mirror's outbox, so the
/// Redis mirror is updated even when the request that made the change cannot do it (Redis
/// down, the process gone, or a failover that loses the write). Answers the new version.
///
/// A conversation created in the same transaction records nothing (`record` false): no
/// mirror of it can be stale, and its creator fills it.
async fn membership_changed(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
    record: bool,
) -> Result<u64, sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE conversations
            SET members_version = members_version + 1,
                member_count = (SELECT count(*) FROM members
                                 WHERE conversation_id = $1 AND state = 'active')
          WHERE id = $1 RETURNING members_version",
    )
    .bind(conversation_id)
    .fetch_one(&mut **tx)
    .await?;
    if !record {
        return Ok(version.max(0) as u64);
    }
    sqlx::query(
        "INSERT INTO mirror_outbox (conversation_id, version) VALUES ($1, $2)
         ON CONFLICT (conversation_id) DO UPDATE
            SET version = EXCLUDED.version, changed_at = now(), applied_at = NULL",
    )
    .bind(conversation_id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(version.max(0) as u64)
}

/// In a membership change's transaction: the event describing it, for the events topic
/// (`event_outbox`, published once committed by [`crate::outbox::publish_events`]).
async fn record_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
    event: &switchboard_message_log::Event,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("INSERT INTO event_outbox (key, payload) VALUES ($1, $2)")
        .bind(conversation_id)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `member.added` (`added`) or `member.removed` of `user`.
async fn record_member(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
    user: &str,
    added: bool,
) -> Result<(), sqlx::Error> {
    use switchboard_message_log::Event;
    let (event_id, conversation_id_owned, user_id, at) = (
        ulid::Ulid::new().to_string(),
        conversation_id.to_owned(),
        user.to_owned(),
        switchboard_protocol::Timestamp::now(),
    );
    let event = if added {
        Event::MemberAdded {
            event_id,
            conversation_id: conversation_id_owned,
            user_id,
            at,
        }
    } else {
        Event::MemberRemoved {
            event_id,
            conversation_id: conversation_id_owned,
            user_id,
            at,
        }
    };
    record_event(tx, conversation_id, &event).await
}

/// `conversation.created`, with its active members.
async fn record_created(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
    kind: &str,
    name: Option<&str>,
    created_by: &str,
    members: &[String],
) -> Result<(), sqlx::Error> {
    let event = switchboard_message_log::Event::ConversationCreated {
        event_id: ulid::Ulid::new().to_string(),
        conversation_id: conversation_id.to_owned(),
        kind: kind.to_owned(),
        name: name.map(str::to_owned),
        created_by: created_by.to_owned(),
        members: members.to_vec(),
        at: switchboard_protocol::Timestamp::now(),
    };
    record_event(tx, conversation_id, &event).await
}

/// Marks `user`'s membership accepted (no-op when it already is, or is only an invite).
async fn accept_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
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

/// A transaction-scoped advisory lock on (`what`, `user`): serializes one user's
/// check-then-insert (quotas, the block list bound) across instances.
async fn lock_user(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    what: &str,
    user: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{what}|{user}"))
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Most users one user may block.
pub const MAX_BLOCKS: i64 = 10_000;

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

/// Where a page of the conversation list ends: its last entry's `last_seq` and id. Written
/// for clients as an opaque `next_cursor` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub last_seq: i64,
    pub id: String,
}

impl ListCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.last_seq, self.id)
    }

    /// `None` for anything [`Self::encode`] did not write.
    pub fn decode(text: &str) -> Option<ListCursor> {
        let (seq, id) = text.split_once('.')?;
        let last_seq: i64 = seq.parse().ok()?;
        (last_seq >= 0 && !id.is_empty() && !id.contains('\0')).then(|| ListCursor {
            last_seq,
            id: id.to_owned(),
        })
    }
}

// ---- Ingest: the log into the tables, and what cannot go in into `dead_letters`. ----

/// Where a record sits in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message's place in its Kafka record (a manager's envelope carries many).
    pub item: i32,
}

/// A record read from the log, with where it was read.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub at: LogPosition,
    pub item: T,
}

/// A record ingest could not store, as it goes into `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub at: LogPosition,
    /// The record as JSON text. U+0000 is escaped, so a dead letter can always be stored.
    pub record: String,
    pub error: String,
}

impl DeadLetter {
    pub fn new(at: LogPosition, record: &impl Serialize, error: impl Into<String>) -> Self {
        // serde_json writes U+0000 as the escape \u0000; escaping again is a no-op safeguard.
        let record = serde_json::to_string(record).unwrap_or_else(|e| format!("{e}"));
        DeadLetter {
            at,
            record: escape_nul(&record),
            error: escape_nul(&error.into()),
        }
    }

    /// A payload that could not even be read: its bytes, lossily as text, NULs escaped.
    pub fn unreadable(at: LogPosition, payload: &[u8], error: impl Into<String>) -> Self {
        DeadLetter {
            at,
            record: escape_nul(&String::from_utf8_lossy(payload)),
            error: escape_nul(&error.into()),
        }
    }
}

/// A record whose seq, message id or client message id is already stored for a different
/// message: two messages got one seq (or one message two). The stored row is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub message_id: String,
    pub stored_message_id: String,
    /// Its dead letter; `error` starts with `conflict:` and names both messages.
    pub dead_letter: DeadLetter,
}

/// What one batch of log records did to the database.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Rows added to `messages`.
    pub inserted: u64,
    /// Records the database refused for their data (SQLSTATE class 22/23), newly put in
    /// `dead_letters`. A redelivered record already there is not listed again.
    pub refused: Vec<DeadLetter>,
    /// Records that lost to a different stored message, newly put in `dead_letters`.
    pub conflicts: Vec<Conflict>,
}

/// Whether the database refused a statement for the data in it (SQLSTATE class 22, data
/// exception, e.g. 22021 for U+0000 in a text; class 23, integrity constraint violation, e.g.
/// 23514) rather than for being unreachable or overloaded. Retrying a data error fails the
/// same way forever; retrying anything else may succeed.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

fn escape_nul(s: &str) -> String {
    s.replace('\0', "\\u0000")
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

impl Store {
    /// Inserts a batch from the log, in one statement when the database takes all of it.
    ///
    /// Redelivered records (the same message at the same seq) are skipped. Only when fewer
    /// rows went in than records came are the stored rows under the batch's keys read back, to
    /// tell redeliveries from conflicts (see [`Conflict`]). When the statement fails for its
    /// data, the batch goes in record by record ([`Store::insert_one_by_one`]) and the records
    /// refused are dead-lettered. Any other error (the database unreachable) is returned and
    /// nothing is written: the caller retries the whole batch.
    pub async fn insert_batch(
        &self,
        batch: &[Sourced<LogRecord>],
    ) -> Result<BatchOutcome, sqlx::Error> {
        if batch.is_empty() {
            return Ok(BatchOutcome::default());
        }
        match self.insert_together(batch).await {
            Err(e) if is_data_error(&e) => {
                tracing::warn!(
                    error = %e,
                    records = batch.len(),
                    "the database refused a batch for its data; inserting its records one by one"
                );
                self.insert_one_by_one(batch).await
            }
            other => other,
        }
    }

    async fn insert_together(
        &self,
        batch: &[Sourced<LogRecord>],
    ) -> Result<BatchOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let records: Vec<&Sourced<LogRecord>> = batch.iter().collect();
        let inserted = insert_messages(&mut tx, &records).await?;
        let outcome = finish_batch(tx, &records, inserted, Vec::new()).await?;
        Ok(outcome)
    }

    /// The slow path of [`Store::insert_batch`]: each record under its own savepoint, in one
    /// transaction. A record refused for its data is dead-lettered and the rest go in; any
    /// other error rolls everything back and is returned.
    pub async fn insert_one_by_one(
        &self,
        batch: &[Sourced<LogRecord>],
    ) -> Result<BatchOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut accepted = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        let mut inserted = 0;
        for record in batch {
            let mut savepoint = sqlx::Acquire::begin(&mut tx).await?;
            match insert_messages(&mut savepoint, &[record]).await {
                Ok(n) => {
                    savepoint.commit().await?;
                    inserted += n;
                    accepted.push(record);
                }
                Err(e) if is_data_error(&e) => {
                    savepoint.rollback().await?;
                    refused.push(DeadLetter::new(
                        record.at.clone(),
                        &record.item,
                        format!("refused by the database: {e}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        finish_batch(tx, &accepted, inserted, refused).await
    }

    /// Applies a batch of receipts; positions only move forward, and read implies delivered.
    /// When the database refuses the batch for its data, the receipts are applied one by one
    /// and those refused are dead-lettered (the newly dead-lettered are returned).
    pub async fn upsert_receipts(
        &self,
        updates: &[Sourced<ReceiptUpdate>],
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        let all: Vec<&ReceiptUpdate> = updates.iter().map(|u| &u.item).collect();
        match upsert_receipts(&self.pool, &all).await {
            Ok(()) => return Ok(Vec::new()),
            Err(e) if is_data_error(&e) => tracing::warn!(
                error = %e,
                receipts = updates.len(),
                "the database refused receipts for their data; applying them one by one"
            ),
            Err(e) => return Err(e),
        }
        let mut tx = self.pool.begin().await?;
        let mut refused = Vec::new();
        for update in updates {
            let mut savepoint = sqlx::Acquire::begin(&mut tx).await?;
            match upsert_receipts(&mut *savepoint, &[&update.item]).await {
                Ok(()) => savepoint.commit().await?,
                Err(e) if is_data_error(&e) => {
                    savepoint.rollback().await?;
                    refused.push(DeadLetter::new(
                        update.at.clone(),
                        &update.item,
                        format!("refused by the database: {e}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        let refused = insert_dead_letters(&mut tx, refused).await?;
        tx.commit().await?;
        Ok(refused)
    }

    /// Stores dead letters (records found unreadable before they reached a statement);
    /// returns those not already there.
    pub async fn dead_letter(
        &self,
        letters: Vec<DeadLetter>,
    ) -> Result<Vec<DeadLetter>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let letters = insert_dead_letters(&mut tx, letters).await?;
        tx.commit().await?;
        Ok(letters)
    }
}

/// One text field of every record, as an array parameter.
fn text_column<'a>(
    records: &[&'a Sourced<LogRecord>],
    field: fn(&LogRecord) -> &str,
) -> Vec<&'a str> {
    records.iter().map(|r| field(&r.item)).collect()
}

/// `INSERT .. ON CONFLICT DO NOTHING` of these records; the number of rows that went in.
/// One statement text whatever the batch size (columns as arrays), so PostgreSQL plans it
/// once per connection and there is no limit of bind parameters per batch.
async fn insert_messages(
    tx: &mut Tx<'_>,
    records: &[&Sourced<LogRecord>],
) -> Result<u64, sqlx::Error> {
    // Replies and events (issue 28) carry more columns; a batch of plain messages takes the
    // one statement it always did.
    if crate::events::any_rich(records) {
        let (rich, plain): (Vec<&Sourced<LogRecord>>, Vec<&Sourced<LogRecord>>) =
            records.iter().partition(|r| r.item.event.is_some());
        let events = crate::events::insert_rich(tx, &rich).await?;
        let plain = if plain.is_empty() {
            0
        } else {
            insert_plain(tx, &plain).await?
        };
        return Ok(events + plain);
    }
    insert_plain(tx, records).await
}

/// [`insert_messages`] of plain messages.
async fn insert_plain(
    tx: &mut Tx<'_>,
    records: &[&Sourced<LogRecord>],
) -> Result<u64, sqlx::Error> {
    let column = |f| text_column(records, f);
    let seqs: Vec<i64> = records.iter().map(|r| seq_i64(r.item.seq)).collect();
    let created: Vec<chrono::DateTime<chrono::Utc>> = records
        .iter()
        .map(|r| r.item.created_at.datetime())
        .collect();
    let epochs: Vec<i64> = records.iter().map(|r| seq_i64(r.item.epoch)).collect();
    let inserted = sqlx::query(
        "INSERT INTO messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, created_at, epoch)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(column(|r| &r.conversation_id))
    .bind(&seqs)
    .bind(column(|r| &r.message_id))
    .bind(column(|r| &r.sender_id))
    .bind(column(|r| &r.client_msg_id))
    .bind(column(|r| &r.body))
    .bind(&created)
    .bind(&epochs)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected())
}

/// The end of a batch that went in (`accepted` are the records the database took, stored or
/// skipped): tells conflicts from redeliveries when some were skipped, dead-letters the
/// conflicts and `refused`, moves each conversation's `last_seq`, and commits.
async fn finish_batch(
    mut tx: Tx<'_>,
    accepted: &[&Sourced<LogRecord>],
    inserted: u64,
    refused: Vec<DeadLetter>,
) -> Result<BatchOutcome, sqlx::Error> {
    let conflicts = if (inserted as usize) < accepted.len() {
        conflicts_of(&mut tx, accepted).await?
    } else {
        Vec::new()
    };
    let mut letters = refused.clone();
    letters.extend(conflicts.iter().map(|c| c.dead_letter.clone()));
    let new: std::collections::HashSet<LogPosition> = insert_dead_letters(&mut tx, letters)
        .await?
        .into_iter()
        .map(|l| l.at)
        .collect();

    // A member whose message is stored has accepted the conversation (presence under
    // SB_PRESENCE_POLICY=accepted). One statement; only rows not yet accepted are written.
    // Before `last_seq`: membership changes lock `members` rows before their conversation
    // row too, so the two never wait on each other in opposite orders.
    let senders: std::collections::BTreeSet<(&str, &str)> = accepted
        .iter()
        .map(|r| (r.item.conversation_id.as_str(), r.item.sender_id.as_str()))
        .collect();
    if !senders.is_empty() {
        let (conversations, users): (Vec<&str>, Vec<&str>) = senders.into_iter().unzip();
        sqlx::query(
            "UPDATE members m SET accepted_at = now()
               FROM UNNEST($1::text[], $2::text[]) AS v(conversation_id, user_id)
              WHERE m.conversation_id = v.conversation_id AND m.user_id = v.user_id
                AND m.state = 'active' AND m.accepted_at IS NULL",
        )
        .bind(&conversations)
        .bind(&users)
        .execute(&mut *tx)
        .await?;
    }
    let mut last: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in accepted {
        let entry = last.entry(r.item.conversation_id.as_str()).or_default();
        *entry = (*entry).max(r.item.seq);
    }
    // Every conversation's `last_seq` in one statement (ids in order, one writer: no
    // deadlock), not one round trip per conversation.
    let (conversations, seqs): (Vec<&str>, Vec<i64>) =
        last.into_iter().map(|(c, seq)| (c, seq_i64(seq))).unzip();
    if !conversations.is_empty() {
        sqlx::query(
            "UPDATE conversations c SET last_seq = GREATEST(c.last_seq, v.seq)
               FROM UNNEST($1::text[], $2::bigint[]) AS v(id, seq) WHERE c.id = v.id",
        )
        .bind(&conversations)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
    }
    // Edits, deletes and reactions change their messages in the same transaction, in seq
    // order, once (`crate::events::apply`); a batch without them skips this.
    if crate::events::any_rich(accepted) {
        crate::events::apply(&mut tx, accepted).await?;
    }
    tx.commit().await?;
    Ok(BatchOutcome {
        inserted,
        refused: refused
            .into_iter()
            .filter(|l| new.contains(&l.at))
            .collect(),
        conflicts: conflicts
            .into_iter()
            .filter(|c| new.contains(&c.dead_letter.at))
            .collect(),
    })
}

/// The stored rows under the keys of these records (seq, message id, client message id),
/// compared with the records: a record whose own row is there was stored (now or before);
/// any other lost to a different message.
async fn conflicts_of(
    tx: &mut Tx<'_>,
    records: &[&Sourced<LogRecord>],
) -> Result<Vec<Conflict>, sqlx::Error> {
    let column = |f| text_column(records, f);
    let message_ids = column(|r| &r.message_id);
    let conversations = column(|r| &r.conversation_id);
    let senders = column(|r| &r.sender_id);
    let client_msg_ids = column(|r| &r.client_msg_id);
    let seqs: Vec<i64> = records.iter().map(|r| seq_i64(r.item.seq)).collect();
    let rows = sqlx::query(
        "SELECT conversation_id, seq, message_id, sender_id, client_msg_id FROM messages
          WHERE message_id = ANY($1)
             OR (conversation_id, seq) IN (SELECT * FROM UNNEST($2::text[], $3::bigint[]))
             OR (conversation_id, sender_id, client_msg_id) IN
                (SELECT * FROM UNNEST($2::text[], $4::text[], $5::text[]))",
    )
    .bind(&message_ids)
    .bind(&conversations)
    .bind(&seqs)
    .bind(&senders)
    .bind(&client_msg_ids)
    .fetch_all(&mut **tx)
    .await?;
    struct Stored {
        conversation_id: String,
        seq: i64,
        message_id: String,
    }
    let mut by_seq: HashMap<(String, i64), usize> = HashMap::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut by_client_id: HashMap<(String, String, String), usize> = HashMap::new();
    let mut stored = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let conversation_id: String = row.get("conversation_id");
        let seq: i64 = row.get("seq");
        let message_id: String = row.get("message_id");
        by_seq.insert((conversation_id.clone(), seq), i);
        by_id.insert(message_id.clone(), i);
        by_client_id.insert(
            (
                conversation_id.clone(),
                row.get("sender_id"),
                row.get("client_msg_id"),
            ),
            i,
        );
        stored.push(Stored {
            conversation_id,
            seq,
            message_id,
        });
    }

    let mut conflicts = Vec::new();
    for record in records {
        let r = &record.item;
        let seq = seq_i64(r.seq);
        let at_seq = by_seq
            .get(&(r.conversation_id.clone(), seq))
            .map(|&i| &stored[i]);
        if at_seq.is_some_and(|s| s.message_id == r.message_id) {
            continue; // its own row: stored now, or a redelivery
        }
        let (other, why) = if let Some(other) = at_seq {
            (
                other,
                format!(
                    "seq {seq} of conversation {} is stored as message",
                    r.conversation_id
                ),
            )
        } else if let Some(other) = by_id.get(&r.message_id).map(|&i| &stored[i]) {
            (
                other,
                format!(
                    "message {} is stored as seq {} of conversation {}; message",
                    r.message_id, other.seq, other.conversation_id
                ),
            )
        } else if let Some(other) = by_client_id
            .get(&(
                r.conversation_id.clone(),
                r.sender_id.clone(),
                r.client_msg_id.clone(),
            ))
            .map(|&i| &stored[i])
        {
            (
                other,
                format!(
                    "client_msg_id {:?} of {} in conversation {} is stored as seq {}, message",
                    r.client_msg_id, r.sender_id, r.conversation_id, other.seq
                ),
            )
        } else {
            // Skipped, yet nothing under its keys: cannot happen inside one transaction.
            tracing::warn!(message_id = %r.message_id, "a skipped record has no stored row in its way");
            continue;
        };
        let error = format!(
            "conflict: {why} {}, not {} (seq {seq})",
            other.message_id, r.message_id
        );
        conflicts.push(Conflict {
            message_id: r.message_id.clone(),
            stored_message_id: other.message_id.clone(),
            dead_letter: DeadLetter::new(record.at.clone(), r, error),
        });
    }
    Ok(conflicts)
}

/// Inserts dead letters, once per log position; returns those that were not there yet.
async fn insert_dead_letters(
    tx: &mut Tx<'_>,
    letters: Vec<DeadLetter>,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    if letters.is_empty() {
        return Ok(letters);
    }
    let mut builder = QueryBuilder::new(
        "INSERT INTO dead_letters (topic, partition, \"offset\", item, record, error) ",
    );
    builder.push_values(&letters, |mut b, l| {
        b.push_bind(&l.at.topic)
            .push_bind(l.at.partition)
            .push_bind(l.at.offset)
            .push_bind(l.at.item)
            .push_bind(&l.record)
            .push_bind(&l.error);
    });
    builder.push(
        " ON CONFLICT (topic, partition, \"offset\", item) DO NOTHING
          RETURNING topic, partition, \"offset\", item",
    );
    let new: std::collections::HashSet<LogPosition> = builder
        .build()
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|row| LogPosition {
            topic: row.get("topic"),
            partition: row.get("partition"),
            offset: row.get("offset"),
            item: row.get("item"),
        })
        .collect();
    Ok(letters
        .into_iter()
        .filter(|l| new.contains(&l.at))
        .collect())
}

/// Applies receipts in one statement; positions only move forward, and read implies delivered.
async fn upsert_receipts<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    updates: &[&ReceiptUpdate],
) -> Result<(), sqlx::Error> {
    let merged = merge_receipts(updates);
    if merged.is_empty() {
        return Ok(());
    }
    let mut builder = QueryBuilder::new(
        "INSERT INTO receipts (conversation_id, user_id, delivered_seq, read_seq) ",
    );
    builder.push_values(
        merged,
        |mut b, ((conversation, user), (delivered, read))| {
            b.push_bind(conversation)
                .push_bind(user)
                .push_bind(delivered)
                .push_bind(read);
        },
    );
    builder.push(
        " ON CONFLICT (conversation_id, user_id) DO UPDATE SET
                delivered_seq = GREATEST(receipts.delivered_seq, EXCLUDED.delivered_seq),
                read_seq = GREATEST(receipts.read_seq, EXCLUDED.read_seq)",
    );
    builder.build().execute(executor).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(conversation: &str, user: &str, kind: ReceiptKind, seq: u64) -> ReceiptUpdate {
        ReceiptUpdate::from_event(conversation.into(), user.into(), kind, seq)
    }

    #[test]
    fn read_implies_delivered_and_delivered_implies_nothing_read() {
        let read = receipt("c", "bob", ReceiptKind::Read, 7);
        assert_eq!((read.delivered_seq, read.read_seq), (7, 7));
        let delivered = receipt("c", "bob", ReceiptKind::Delivered, 9);
        assert_eq!((delivered.delivered_seq, delivered.read_seq), (9, 0));
        let huge = receipt("c", "bob", ReceiptKind::Read, u64::MAX);
        assert_eq!(huge.read_seq, i64::MAX);
    }

    #[test]
    fn merging_keeps_the_highest_positions_in_any_order() {
        let updates = [
            receipt("c", "bob", ReceiptKind::Delivered, 5),
            receipt("c", "bob", ReceiptKind::Read, 3),
            receipt("c", "bob", ReceiptKind::Delivered, 4),
            receipt("c", "ann", ReceiptKind::Read, 8),
            receipt("d", "bob", ReceiptKind::Delivered, 2),
        ];
        let forward: Vec<&ReceiptUpdate> = updates.iter().collect();
        let backward: Vec<&ReceiptUpdate> = updates.iter().rev().collect();
        let merged = merge_receipts(&forward);
        assert_eq!(merged, merge_receipts(&backward));
        assert_eq!(merged.len(), 3, "one row per (conversation, user)");
        assert_eq!(merged[&("c", "bob")], (5, 3));
        assert_eq!(merged[&("c", "ann")], (8, 8), "read raises delivered");
        assert_eq!(merged[&("d", "bob")], (2, 0));
        assert!(merge_receipts(&[]).is_empty());
    }
}
