//! Receipts: members' cumulative delivered/read positions, as the events topic reports them
//! and as the conversation list shows them.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{QueryBuilder, Row};
use switchboard_protocol::frames::ReceiptKind;
use switchboard_protocol::{ConversationId, UserId};

use super::{insert_dead_letters, is_data_error, DeadLetter, MemberReceipt, Sourced, Store};

/// One member's cumulative position, as reported (either field may be 0 = unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptUpdate {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

impl ReceiptUpdate {
    /// A member's receipt as the events topic carries it: `read` up to `seq` also means
    /// delivered up to `seq`; `delivered` says nothing about reading.
    pub fn from_event(
        conversation_id: ConversationId,
        user_id: UserId,
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

impl Store {
    /// Receipts of every member of these conversations, by conversation.
    pub async fn receipts_of(
        &self,
        conversation_ids: &[String],
    ) -> Result<HashMap<String, Vec<MemberReceipt>>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT conversation_id, user_id, delivered_seq, read_seq FROM receipts
              WHERE conversation_id = ANY($1) ORDER BY user_id",
        )
        .bind(conversation_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_conversation: HashMap<String, Vec<MemberReceipt>> = Default::default();
        // The user id checked as it is read: a row that breaks the rule is an error, not a
        // panic.
        for row in rows {
            by_conversation
                .entry(row.try_get("conversation_id")?)
                .or_default()
                .push(MemberReceipt {
                    user_id: row.try_get("user_id")?,
                    delivered_seq: row.try_get("delivered_seq")?,
                    read_seq: row.try_get("read_seq")?,
                });
        }
        Ok(by_conversation)
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

    const C: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const D: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAW";

    fn receipt(conversation: &str, user: &str, kind: ReceiptKind, seq: u64) -> ReceiptUpdate {
        ReceiptUpdate::from_event(
            ConversationId::parse(conversation).unwrap(),
            UserId::parse(user).unwrap(),
            kind,
            seq,
        )
    }

    #[test]
    fn read_implies_delivered_and_delivered_implies_nothing_read() {
        let read = receipt(C, "bob", ReceiptKind::Read, 7);
        assert_eq!((read.delivered_seq, read.read_seq), (7, 7));
        let delivered = receipt(C, "bob", ReceiptKind::Delivered, 9);
        assert_eq!((delivered.delivered_seq, delivered.read_seq), (9, 0));
        let huge = receipt(C, "bob", ReceiptKind::Read, u64::MAX);
        assert_eq!(huge.read_seq, i64::MAX);
    }

    #[test]
    fn merging_keeps_the_highest_positions_in_any_order() {
        let updates = [
            receipt(C, "bob", ReceiptKind::Delivered, 5),
            receipt(C, "bob", ReceiptKind::Read, 3),
            receipt(C, "bob", ReceiptKind::Delivered, 4),
            receipt(C, "ann", ReceiptKind::Read, 8),
            receipt(D, "bob", ReceiptKind::Delivered, 2),
        ];
        let forward: Vec<&ReceiptUpdate> = updates.iter().collect();
        let backward: Vec<&ReceiptUpdate> = updates.iter().rev().collect();
        let merged = merge_receipts(&forward);
        assert_eq!(merged, merge_receipts(&backward));
        assert_eq!(merged.len(), 3, "one row per (conversation, user)");
        assert_eq!(merged[&(C, "bob")], (5, 3));
        assert_eq!(merged[&(C, "ann")], (8, 8), "read raises delivered");
        assert_eq!(merged[&(D, "bob")], (2, 0));
        assert!(merge_receipts(&[]).is_empty());
    }
}
