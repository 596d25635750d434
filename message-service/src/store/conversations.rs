//! Conversations: the direct one of a pair, groups, one conversation with its members, and
//! the caller's list (paged by [`ListCursor`]).

use sqlx::Row;
use switchboard_protocol::{ConversationId, ConversationKind};

use super::members::{accept_in, insert_members, MemberState};
use super::outboxes::{membership_changed, record_created};
use super::{Conversation, ConversationSummary, Role, Store};

impl Store {
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
        let id = new_conversation_id()?;
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
        let id: ConversationId = if inserted {
            let mut members = vec![caller.to_owned()];
            if other != caller {
                members.push(other.to_owned());
            }
            insert_members(&mut tx, &id, &members, "active", None).await?;
            membership_changed(&mut tx, &id, false).await?;
            record_created(
                &mut tx,
                &id,
                ConversationKind::Direct,
                None,
                caller,
                &members,
            )
            .await?;
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
        let id = new_conversation_id()?;
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
        record_created(
            &mut tx,
            &id,
            ConversationKind::Group,
            Some(name),
            caller,
            &active,
        )
        .await?;
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
}

/// "a|b" (sorted): a pair has one direct conversation.
fn direct_key(a: &str, b: &str) -> String {
    let mut pair = [a, b];
    pair.sort_unstable();
    format!("{}|{}", pair[0], pair[1])
}

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

/// A new conversation's id: a fresh ULID, which always passes [`ConversationId`]'s rule.
fn new_conversation_id() -> Result<ConversationId, sqlx::Error> {
    ConversationId::parse(ulid::Ulid::new().to_string())
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))
}
