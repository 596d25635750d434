//! Fencing the message log: the store's side of the per-conversation log epochs.
//!
//! A socket manager numbers a conversation's messages under a Redis lease, and checks the
//! sequence counter against the log whenever it cannot trust it (a new conversation, a Redis
//! master that may have lost numbers in a failover). That check is [`crate::settled`]: it
//! takes the conversation's next *epoch* here ([`next_epoch`], committed before anything else
//! happens), appends a [`LogFence`] to the conversation's log partition, and waits for ingest to
//! reach it. Ingest, reaching the fence, records its *floor* ([`apply`]): the highest `seq`
//! stored from everything before it in the log. The manager then numbers above that floor under
//! the new epoch, and every record it appends carries the epoch.
//!
//! The rule ([`FenceBook::fenced`]): a record numbered under epoch `e` whose `seq` is above the
//! floor of some *active* fence of a later epoch is refused. Such a record was numbered by a
//! holder that lost its lease in a failover (the new master never saw the number) and whose
//! append was still in flight when the fence was written: the number was handed out again
//! under the new epoch, and the record was never acknowledged (its holder's finish cannot
//! succeed: see docs/architecture.md, "Fencing the log").
//!
//! A fence becomes **active** when the first record numbered under its own epoch lands
//! ([`activate`]): only then is the epoch known to be in use. A request whose caller gave up
//! (it timed out while the database or the broker was slow) can still take an epoch and
//! append its fence later, after the epoch the caller's retry adopted; such a fence never sees
//! a record of its epoch and never refuses anything. When a fence becomes active, the older
//! epochs' records stored after it above its floor (a late append that landed before the new
//! epoch's first record) are moved to `dead_letters`, so whichever of the two lands first, the
//! store keeps the one the new epoch acknowledged.

use std::collections::HashMap;

use sqlx::postgres::PgPool;
use sqlx::Row;
use switchboard_message_log::LogRecord;
use switchboard_protocol::ConversationId;

/// A conversation's fence, as ingest knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence {
    pub epoch: u64,
    pub floor: u64,
    /// A record of this epoch has landed (see the module docs).
    pub active: bool,
}

/// A conversation's fences, ascending by epoch.
type Fences = Vec<Fence>;

/// Fences cached per conversation beyond this many are forgotten (and read again on need):
/// the cache only saves a query per batch for conversations seen lately.
const CACHED_CONVERSATIONS: usize = 100_000;

/// Ingest's view of the fences, read lazily per conversation and updated as ingest applies
/// new ones.
#[derive(Default)]
pub struct FenceBook {
    by_conversation: HashMap<String, Fences>,
}

impl FenceBook {
    /// Whether `record` is a deposed holder's late append (see the module docs): the
    /// (epoch, floor) of the active fence that refuses it.
    pub fn fenced(&self, record: &LogRecord) -> Option<(u64, u64)> {
        let fences = self.by_conversation.get(record.conversation_id.as_str())?;
        // Floors never go down as epochs go up, so the first later epoch has the lowest floor.
        fences
            .iter()
            .find(|f| f.active && f.epoch > record.epoch)
            .filter(|f| record.seq > f.floor)
            .map(|f| (f.epoch, f.floor))
    }

    /// The inactive fences that records among `records` make active: (conversation, epoch,
    /// floor), once each.
    pub fn activated_by<'a>(
        &self,
        records: impl IntoIterator<Item = &'a LogRecord>,
    ) -> Vec<(ConversationId, u64, u64)> {
        let mut found: Vec<(ConversationId, u64, u64)> = Vec::new();
        for record in records {
            let Some(fences) = self.by_conversation.get(record.conversation_id.as_str()) else {
                continue;
            };
            if let Some(f) = fences.iter().find(|f| !f.active && f.epoch == record.epoch) {
                let key = (record.conversation_id.clone(), f.epoch, f.floor);
                if !found.contains(&key) {
                    found.push(key);
                }
            }
        }
        found
    }

    /// Records that a fence is active.
    pub fn activate(&mut self, conversation_id: &ConversationId, epoch: u64) {
        if let Some(fences) = self.by_conversation.get_mut(conversation_id.as_str()) {
            for f in fences.iter_mut().filter(|f| f.epoch == epoch) {
                f.active = true;
            }
        }
    }

    /// Conversations among `ids` whose fences are not cached yet.
    pub fn unknown<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut unknown: Vec<String> = ids
            .into_iter()
            .filter(|c| !self.by_conversation.contains_key(*c))
            .map(str::to_owned)
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }

    /// Caches the fences read for `ids` (a conversation with none gets an empty list).
    pub fn learn(&mut self, ids: &[String], mut read: HashMap<String, Fences>) {
        if self.by_conversation.len() + ids.len() > CACHED_CONVERSATIONS {
            self.by_conversation.clear();
        }
        for id in ids {
            let mut fences = read.remove(id).unwrap_or_default();
            fences.sort_unstable();
            self.by_conversation.insert(id.clone(), fences);
        }
    }

    /// Records a fence ingest has just applied (inactive until a record of its epoch lands,
    /// unless it was already active: a fence read again).
    pub fn add(&mut self, fence: Fence, conversation_id: &ConversationId) {
        let fences = self
            .by_conversation
            .entry(conversation_id.to_string())
            .or_default();
        if !fences.iter().any(|f| f.epoch == fence.epoch) {
            fences.push(fence);
            fences.sort_unstable();
        }
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Takes the conversation's next log epoch (1 for its first). Committed on its own before the
/// fence record is appended, so an epoch is never handed out twice.
pub async fn next_epoch(
    pool: &PgPool,
    conversation_id: &ConversationId,
) -> Result<u64, sqlx::Error> {
    let epoch: i64 = sqlx::query_scalar(
        "INSERT INTO log_epochs (conversation_id, epoch) VALUES ($1, 1)
         ON CONFLICT (conversation_id) DO UPDATE SET epoch = log_epochs.epoch + 1
         RETURNING epoch",
    )
    .bind(conversation_id)
    .fetch_one(pool)
    .await?;
    Ok(to_u64(epoch))
}

/// Applies a fence ingest has reached: its floor is the highest `seq` stored now, which is
/// everything before it in the log (ingest stores a partition in order, and a conversation
/// lives in one partition). A fence read again (a redelivery, a rewind) keeps the floor it
/// was first given. Answers the fence as stored.
pub async fn apply(
    pool: &PgPool,
    conversation_id: &ConversationId,
    epoch: u64,
) -> Result<Fence, sqlx::Error> {
    let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO log_fences (conversation_id, epoch, floor_seq)
         SELECT $1, $2, COALESCE(max(seq), 0) FROM messages WHERE conversation_id = $1
         ON CONFLICT (conversation_id, epoch) DO NOTHING",
    )
    .bind(conversation_id)
    .bind(epoch)
    .execute(pool)
    .await?;
    let row = sqlx::query(
        "SELECT floor_seq, active FROM log_fences WHERE conversation_id = $1 AND epoch = $2",
    )
    .bind(conversation_id)
    .bind(epoch)
    .fetch_one(pool)
    .await?;
    Ok(Fence {
        epoch: to_u64(epoch),
        floor: to_u64(row.get("floor_seq")),
        active: row.get("active"),
    })
}

/// Makes a fence active (the first record of its epoch is about to be stored) and moves the
/// older epochs' records stored above its floor to `dead_letters` (`topic` is the message
/// log's name: they are filed under `"{topic}:evicted"`, the epoch and their seq), in one
/// transaction. Answers the evicted records' dead-letter errors, for the log.
pub async fn activate(
    pool: &PgPool,
    topic: &str,
    conversation_id: &ConversationId,
    epoch: u64,
    floor: u64,
) -> Result<Vec<String>, sqlx::Error> {
    let epoch_i = i64::try_from(epoch).unwrap_or(i64::MAX);
    let floor_i = i64::try_from(floor).unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE log_fences SET active = true WHERE conversation_id = $1 AND epoch = $2")
        .bind(conversation_id)
        .bind(epoch_i)
        .execute(&mut *tx)
        .await?;
    let evicted = sqlx::query(
        "DELETE FROM messages WHERE conversation_id = $1 AND seq > $2 AND epoch < $3
         RETURNING seq, message_id, sender_id, client_msg_id, body, created_at, epoch",
    )
    .bind(conversation_id)
    .bind(floor_i)
    .bind(epoch_i)
    .fetch_all(&mut *tx)
    .await?;
    let mut errors = Vec::with_capacity(evicted.len());
    for row in evicted {
        let seq: i64 = row.get("seq");
        let old_epoch: i64 = row.get("epoch");
        let created_at: chrono::DateTime<chrono::Utc> = row.get("created_at");
        let record = serde_json::json!({
            "conversation_id": conversation_id,
            "seq": seq,
            "message_id": row.get::<String, _>("message_id"),
            "sender_id": row.get::<String, _>("sender_id"),
            "client_msg_id": row.get::<String, _>("client_msg_id"),
            "body": row.get::<String, _>("body"),
            "created_at": crate::store::rfc3339(created_at),
            "epoch": old_epoch,
        });
        let error = format!(
            "fenced: seq {seq} of conversation {conversation_id} was numbered under epoch {old_epoch}, and epoch {epoch} took the numbers above {floor} (a deposed lease holder's late append, never acknowledged; stored before epoch {epoch}'s first record landed, and moved here when it did)"
        );
        sqlx::query(
            "INSERT INTO dead_letters (topic, partition, \"offset\", item, record, error)
             VALUES ($1, 0, $2, $3, $4, $5)
             ON CONFLICT (topic, partition, \"offset\", item) DO NOTHING",
        )
        .bind(format!("{topic}:evicted"))
        .bind(seq)
        .bind(i32::try_from(epoch).unwrap_or(i32::MAX))
        .bind(record.to_string())
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        errors.push(error);
    }
    tx.commit().await?;
    Ok(errors)
}

async fn floor(
    pool: &PgPool,
    conversation_id: &ConversationId,
    epoch: i64,
) -> Result<Option<u64>, sqlx::Error> {
    let floor: Option<i64> = sqlx::query_scalar(
        "SELECT floor_seq FROM log_fences WHERE conversation_id = $1 AND epoch = $2",
    )
    .bind(conversation_id)
    .bind(epoch)
    .fetch_optional(pool)
    .await?;
    Ok(floor.map(to_u64))
}

/// The floor of a fence, once ingest has applied it.
pub async fn floor_of(
    pool: &PgPool,
    conversation_id: &ConversationId,
    epoch: u64,
) -> Result<Option<u64>, sqlx::Error> {
    floor(
        pool,
        conversation_id,
        i64::try_from(epoch).unwrap_or(i64::MAX),
    )
    .await
}

/// Every fence of these conversations.
pub async fn read(pool: &PgPool, ids: &[String]) -> Result<HashMap<String, Fences>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT conversation_id, epoch, floor_seq, active FROM log_fences WHERE conversation_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut fences: HashMap<String, Fences> = HashMap::new();
    for row in rows {
        fences
            .entry(row.get("conversation_id"))
            .or_default()
            .push(Fence {
                epoch: to_u64(row.get("epoch")),
                floor: to_u64(row.get("floor_seq")),
                active: row.get("active"),
            });
    }
    Ok(fences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::Timestamp;

    /// The conversation the fences are of, and another.
    const C: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const E: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";

    fn c() -> ConversationId {
        C.parse().unwrap()
    }

    fn record(seq: u64, epoch: u64) -> LogRecord {
        LogRecord {
            conversation_id: C.parse().unwrap(),
            seq,
            message_id: format!("01BX5ZZKBKACTAV9WEVGEM{seq:02}{epoch:02}")
                .parse()
                .unwrap(),
            sender_id: "u".parse().unwrap(),
            client_msg_id: format!("x{seq}"),
            body: String::new(),
            created_at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
            epoch,
            attachments: Vec::new(),
            event: None,
            traceparent: None,
        }
    }

    #[test]
    fn a_record_of_an_older_epoch_above_a_later_active_floor_is_fenced() {
        let fence = |epoch, floor| Fence {
            epoch,
            floor,
            active: false,
        };
        let mut book = FenceBook::default();
        assert_eq!(book.unknown([C, C, "d"]), [C, "d"]);
        book.learn(&[C.into(), "d".into()], HashMap::new());
        assert!(book.unknown([C]).is_empty());
        assert_eq!(book.fenced(&record(5, 1)), None, "no fence yet");
        book.add(fence(1, 0), &c());
        book.add(fence(2, 9), &c());
        assert_eq!(
            book.fenced(&record(10, 1)),
            None,
            "epoch 2 is not in use yet: its fence refuses nothing"
        );
        assert_eq!(
            book.activated_by([&record(10, 0)]),
            [],
            "no fence opened epoch 0"
        );
        assert_eq!(
            book.activated_by([&record(10, 2), &record(11, 2), &record(1, 1)]),
            [(c(), 2, 9), (c(), 1, 0)]
        );
        book.activate(&c(), 1);
        book.activate(&c(), 2);
        assert_eq!(book.activated_by([&record(12, 2)]), [], "once");
        assert_eq!(
            book.fenced(&record(10, 1)),
            Some((2, 9)),
            "deposed holder's late append"
        );
        assert_eq!(
            book.fenced(&record(9, 1)),
            None,
            "below the floor: landed before the fence"
        );
        assert_eq!(book.fenced(&record(10, 2)), None, "the current epoch");
        assert_eq!(book.fenced(&record(10, 3)), None, "a later epoch");
        assert_eq!(
            book.fenced(&record(1, 0)),
            Some((1, 0)),
            "pre-epoch record above epoch 1's floor"
        );
        book.add(fence(2, 50), &c());
        assert_eq!(
            book.fenced(&record(10, 1)),
            Some((2, 9)),
            "a fence keeps its first floor"
        );
        // An abandoned epoch: its fence landed after epoch 3 was adopted, and stays inert.
        book.add(fence(4, 20), &c());
        book.add(fence(3, 15), &c());
        book.activate(&c(), 3);
        assert_eq!(book.fenced(&record(30, 3)), None, "epoch 4 never used");
        let other = LogRecord {
            conversation_id: E.parse().unwrap(),
            ..record(10, 0)
        };
        assert_eq!(book.fenced(&other), None);
    }
}
