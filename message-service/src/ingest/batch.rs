//! A batch of log records into `messages`, in one transaction: the rows, the conflicts told
//! from redeliveries, the dead letters, the senders' acceptance, each conversation's
//! `last_seq`, and the message events applied ([`crate::events::apply`]).
//!
//! These are methods of [`Store`] (the store's own types: [`Sourced`], [`BatchOutcome`],
//! [`DeadLetter`]); they live here, beside the consumer that calls them, because the batch
//! also runs the message events' steps.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::Row;
use switchboard_message_log::LogRecord;
use switchboard_protocol::{ConversationId, MessageId};

use crate::store::{
    insert_dead_letters, is_data_error, BatchOutcome, Conflict, DeadLetter, LogPosition, Sourced,
    Store, Tx,
};

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

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
        let mut tx = self.pool().begin().await?;
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
        let mut tx = self.pool().begin().await?;
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
    let new: HashSet<LogPosition> = insert_dead_letters(&mut tx, letters)
        .await?
        .into_iter()
        .map(|l| l.at)
        .collect();
    // Before `last_seq`: membership changes lock `members` rows before their conversation
    // row too, so the two never wait on each other in opposite orders.
    mark_senders_accepted(&mut tx, accepted).await?;
    raise_last_seqs(&mut tx, accepted).await?;
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

/// A member whose message is stored has accepted the conversation (presence under
/// SB_PRESENCE_POLICY=accepted). One statement; only rows not yet accepted are written.
async fn mark_senders_accepted(
    tx: &mut Tx<'_>,
    accepted: &[&Sourced<LogRecord>],
) -> Result<(), sqlx::Error> {
    let senders: BTreeSet<(&str, &str)> = accepted
        .iter()
        .map(|r| (r.item.conversation_id.as_str(), r.item.sender_id.as_str()))
        .collect();
    if senders.is_empty() {
        return Ok(());
    }
    let (conversations, users): (Vec<&str>, Vec<&str>) = senders.into_iter().unzip();
    sqlx::query(
        "UPDATE members m SET accepted_at = now()
           FROM UNNEST($1::text[], $2::text[]) AS v(conversation_id, user_id)
          WHERE m.conversation_id = v.conversation_id AND m.user_id = v.user_id
            AND m.state = 'active' AND m.accepted_at IS NULL",
    )
    .bind(&conversations)
    .bind(&users)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every conversation's `last_seq` raised to its highest record of the batch, in one
/// statement (ids in order, one writer: no deadlock), not one round trip per conversation.
async fn raise_last_seqs(
    tx: &mut Tx<'_>,
    accepted: &[&Sourced<LogRecord>],
) -> Result<(), sqlx::Error> {
    let mut last: BTreeMap<&str, u64> = Default::default();
    for r in accepted {
        let entry = last.entry(r.item.conversation_id.as_str()).or_default();
        *entry = (*entry).max(r.item.seq);
    }
    let (conversations, seqs): (Vec<&str>, Vec<i64>) =
        last.into_iter().map(|(c, seq)| (c, seq_i64(seq))).unzip();
    if conversations.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE conversations c SET last_seq = GREATEST(c.last_seq, v.seq)
           FROM UNNEST($1::text[], $2::bigint[]) AS v(id, seq) WHERE c.id = v.id",
    )
    .bind(&conversations)
    .bind(&seqs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The stored rows under the keys of these records (seq, message id, client message id),
/// compared with the records: a record whose own row is there was stored (now or before);
/// any other lost to a different message.
async fn conflicts_of(
    tx: &mut Tx<'_>,
    records: &[&Sourced<LogRecord>],
) -> Result<Vec<Conflict>, sqlx::Error> {
    let stored = StoredKeys::read(tx, records).await?;
    Ok(records
        .iter()
        .filter_map(|record| stored.conflict_of(record))
        .collect())
}

/// A stored row in the way of a record.
struct Stored {
    conversation_id: ConversationId,
    seq: i64,
    message_id: MessageId,
}

/// The stored rows under a batch's keys, indexed by each key.
struct StoredKeys {
    rows: Vec<Stored>,
    by_seq: HashMap<(ConversationId, i64), usize>,
    by_id: HashMap<MessageId, usize>,
    by_client_id: HashMap<(ConversationId, String, String), usize>,
}

impl StoredKeys {
    /// Reads the rows stored under the records' keys (seq, message id, client message id).
    async fn read(
        tx: &mut Tx<'_>,
        records: &[&Sourced<LogRecord>],
    ) -> Result<StoredKeys, sqlx::Error> {
        let column = |f| text_column(records, f);
        let seqs: Vec<i64> = records.iter().map(|r| seq_i64(r.item.seq)).collect();
        let rows = sqlx::query(
            "SELECT conversation_id, seq, message_id, sender_id, client_msg_id FROM messages
              WHERE message_id = ANY($1)
                 OR (conversation_id, seq) IN (SELECT * FROM UNNEST($2::text[], $3::bigint[]))
                 OR (conversation_id, sender_id, client_msg_id) IN
                    (SELECT * FROM UNNEST($2::text[], $4::text[], $5::text[]))",
        )
        .bind(column(|r| &r.message_id))
        .bind(column(|r| &r.conversation_id))
        .bind(&seqs)
        .bind(column(|r| &r.sender_id))
        .bind(column(|r| &r.client_msg_id))
        .fetch_all(&mut **tx)
        .await?;
        let mut keys = StoredKeys {
            rows: Vec::with_capacity(rows.len()),
            by_seq: HashMap::new(),
            by_id: HashMap::new(),
            by_client_id: HashMap::new(),
        };
        for (i, row) in rows.iter().enumerate() {
            // Checked as read: a row that breaks an id's rule is an error, never a panic.
            let conversation_id: ConversationId = row.try_get("conversation_id")?;
            let seq: i64 = row.try_get("seq")?;
            let message_id: MessageId = row.try_get("message_id")?;
            keys.by_seq.insert((conversation_id.clone(), seq), i);
            keys.by_id.insert(message_id.clone(), i);
            let client_key = (
                conversation_id.clone(),
                row.try_get("sender_id")?,
                row.try_get("client_msg_id")?,
            );
            keys.by_client_id.insert(client_key, i);
            keys.rows.push(Stored {
                conversation_id,
                seq,
                message_id,
            });
        }
        Ok(keys)
    }

    /// The conflict a record ran into, if it did: `None` when its own row is there (stored
    /// now, or a redelivery).
    fn conflict_of(&self, record: &Sourced<LogRecord>) -> Option<Conflict> {
        let r = &record.item;
        let seq = seq_i64(r.seq);
        let at_seq = self
            .by_seq
            .get(&(r.conversation_id.clone(), seq))
            .map(|&i| &self.rows[i]);
        if at_seq.is_some_and(|s| s.message_id == r.message_id) {
            return None; // its own row: stored now, or a redelivery
        }
        let Some((other, why)) = self.in_the_way(r, at_seq) else {
            // Skipped, yet nothing under its keys: cannot happen inside one transaction.
            tracing::warn!(message_id = %r.message_id, "a skipped record has no stored row in its way");
            return None;
        };
        let error = format!(
            "conflict: {why} {}, not {} (seq {seq})",
            other.message_id, r.message_id
        );
        Some(Conflict {
            message_id: r.message_id.clone(),
            stored_message_id: other.message_id.clone(),
            dead_letter: DeadLetter::new(record.at.clone(), r, error),
        })
    }

    /// The stored row in a record's way (at its seq, else under its message id, else under
    /// its client message id) and the start of the sentence saying why.
    fn in_the_way<'s>(
        &'s self,
        r: &LogRecord,
        at_seq: Option<&'s Stored>,
    ) -> Option<(&'s Stored, String)> {
        if let Some(other) = at_seq {
            let why = format!(
                "seq {} of conversation {} is stored as message",
                seq_i64(r.seq),
                r.conversation_id
            );
            return Some((other, why));
        }
        if let Some(other) = self
            .by_id
            .get(r.message_id.as_str())
            .map(|&i| &self.rows[i])
        {
            let why = format!(
                "message {} is stored as seq {} of conversation {}; message",
                r.message_id, other.seq, other.conversation_id
            );
            return Some((other, why));
        }
        let client_key = (
            r.conversation_id.clone(),
            r.sender_id.to_string(),
            r.client_msg_id.to_string(),
        );
        let other = self.by_client_id.get(&client_key).map(|&i| &self.rows[i])?;
        let why = format!(
            "client_msg_id {:?} of {} in conversation {} is stored as seq {}, message",
            r.client_msg_id, r.sender_id, r.conversation_id, other.seq
        );
        Some((other, why))
    }
}
