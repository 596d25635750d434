//! PostgreSQL access. Every query is here, so the schema and its uses read side by side.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{QueryBuilder, Row};
use switchboard_message_log::LogRecord;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationSummary {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub last_seq: i64,
    pub unread: i64,
    /// Every member's cumulative receipts, so a client can draw delivered/read marks after
    /// a reconnect without waiting for new `receipt` frames.
    pub receipts: Vec<MemberReceipt>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MemberReceipt {
    pub user_id: String,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

/// One member's cumulative position, as reported (either field may be 0 = unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptUpdate {
    pub conversation_id: String,
    pub user_id: String,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub conversation_id: String,
    pub message_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
    pub created_at: String,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Connects (retrying for up to 30 s while the database starts) and runs migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let mut attempt = 0;
        let pool = loop {
            match PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
            {
                Ok(pool) => break pool,
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "database not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// The one direct conversation of a pair; `true` when it was created now.
    pub async fn create_direct(
        &self,
        caller: &str,
        other: &str,
    ) -> Result<(Conversation, bool), sqlx::Error> {
        let mut pair = [caller, other];
        pair.sort_unstable();
        let key = format!("{}|{}", pair[0], pair[1]);
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
            insert_members(&mut tx, &id, &members).await?;
            id
        } else {
            sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?
        };
        tx.commit().await?;
        let conversation = self
            .conversation(&id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok((conversation, inserted))
    }

    pub async fn create_group(
        &self,
        caller: &str,
        name: &str,
        members: &[String],
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
        insert_members(&mut tx, &id, members).await?;
        tx.commit().await?;
        self.conversation(&id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    pub async fn conversation(&self, id: &str) -> Result<Option<Conversation>, sqlx::Error> {
        let Some(row) = sqlx::query("SELECT id, kind, name FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Conversation {
            id: row.get("id"),
            kind: row.get("kind"),
            name: row.get("name"),
            members: self.members(id).await?,
        }))
    }

    pub async fn members(&self, conversation_id: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn is_member(&self, conversation_id: &str, user: &str) -> Result<bool, sqlx::Error> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation_id)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    pub async fn add_member(&self, conversation_id: &str, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO members (conversation_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(conversation_id)
        .bind(user)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    pub async fn remove_member(
        &self,
        conversation_id: &str,
        user: &str,
    ) -> Result<bool, sqlx::Error> {
        let removed =
            sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation_id)
                .bind(user)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(removed == 1)
    }

    /// The caller's conversations with their last `seq` and how many messages from others
    /// lie past the caller's read receipt.
    pub async fn list_for(&self, user: &str) -> Result<Vec<ConversationSummary>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.name, c.last_seq,
                    (SELECT array_agg(m2.user_id ORDER BY m2.user_id) FROM members m2
                      WHERE m2.conversation_id = c.id) AS members,
                    (SELECT count(*) FROM messages msg
                      WHERE msg.conversation_id = c.id
                        AND msg.seq > COALESCE(r.read_seq, 0)
                        AND msg.sender_id <> $1) AS unread
               FROM members m
               JOIN conversations c ON c.id = m.conversation_id
               LEFT JOIN receipts r ON r.conversation_id = c.id AND r.user_id = $1
              WHERE m.user_id = $1
              ORDER BY c.last_seq DESC, c.id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| ConversationSummary {
                id: row.get("id"),
                kind: row.get("kind"),
                name: row.get("name"),
                members: row
                    .get::<Option<Vec<String>>, _>("members")
                    .unwrap_or_default(),
                last_seq: row.get("last_seq"),
                unread: row.get("unread"),
                receipts: Vec::new(),
            })
            .collect())
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

    /// Applies a batch of receipts; positions only move forward, and read implies delivered.
    pub async fn upsert_receipts(&self, updates: &[ReceiptUpdate]) -> Result<(), sqlx::Error> {
        // One row per key: Postgres refuses a key twice in one INSERT .. ON CONFLICT.
        let mut merged: std::collections::BTreeMap<(&str, &str), (i64, i64)> = Default::default();
        for u in updates {
            let entry = merged
                .entry((u.conversation_id.as_str(), u.user_id.as_str()))
                .or_default();
            entry.0 = entry.0.max(u.delivered_seq).max(u.read_seq);
            entry.1 = entry.1.max(u.read_seq);
        }
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
        builder.build().execute(&self.pool).await.map(|_| ())
    }

    /// Users sharing a conversation of at most `max_group` members with `user`.
    pub async fn contacts(&self, user: &str, max_group: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT other.user_id
               FROM members mine
               JOIN members other ON other.conversation_id = mine.conversation_id
              WHERE mine.user_id = $1 AND other.user_id <> $1
                AND (SELECT count(*) FROM members m WHERE m.conversation_id = mine.conversation_id) <= $2",
        )
        .bind(user)
        .bind(max_group)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn history(
        &self,
        conversation_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT conversation_id, message_id, seq, sender_id, client_msg_id, body, created_at
               FROM messages WHERE conversation_id = $1 AND seq > $2
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
            })
            .collect())
    }

    /// Inserts a batch from the log in one statement. Redelivered records (same message) are
    /// skipped; so is a record whose `(conversation_id, seq)` is taken by another message,
    /// which is the fence against a sequence lock that expired under a pause.
    pub async fn insert_batch(&self, records: &[LogRecord]) -> Result<u64, sqlx::Error> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut builder = QueryBuilder::new(
            "INSERT INTO messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, created_at) ",
        );
        builder.push_values(records, |mut b, r| {
            let created = DateTime::parse_from_rfc3339(&r.created_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now());
            b.push_bind(&r.conversation_id)
                .push_bind(i64::try_from(r.seq).unwrap_or(i64::MAX))
                .push_bind(&r.message_id)
                .push_bind(&r.sender_id)
                .push_bind(&r.client_msg_id)
                .push_bind(&r.body)
                .push_bind(created);
        });
        builder.push(" ON CONFLICT DO NOTHING");
        let inserted = builder.build().execute(&mut *tx).await?.rows_affected();
        let mut last: std::collections::BTreeMap<&str, u64> = Default::default();
        for r in records {
            let entry = last.entry(r.conversation_id.as_str()).or_default();
            *entry = (*entry).max(r.seq);
        }
        for (conversation, seq) in last {
            sqlx::query("UPDATE conversations SET last_seq = GREATEST(last_seq, $2) WHERE id = $1")
                .bind(conversation)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(inserted)
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
) -> Result<(), sqlx::Error> {
    let mut builder = QueryBuilder::new("INSERT INTO members (conversation_id, user_id) ");
    builder.push_values(members, |mut b, m| {
        b.push_bind(conversation_id).push_bind(m);
    });
    builder.push(" ON CONFLICT DO NOTHING");
    builder.build().execute(&mut **tx).await?;
    Ok(())
}
