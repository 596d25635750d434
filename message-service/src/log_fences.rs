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
//! floor of some fence of a later epoch is refused. Such a record was numbered by a holder that
//! lost its lease in a failover (the new master never saw the number) and whose append was
//! still in flight when the fence was written: the number was handed out again under the new
//! epoch, and the record was never acknowledged (its holder's finish cannot succeed: see
//! docs/architecture.md, "Fencing the log"). Whichever of the two lands first, the store keeps
//! the one the new epoch acknowledged.

use std::collections::HashMap;

use sqlx::postgres::PgPool;
use sqlx::Row;
use switchboard_message_log::LogRecord;

/// A conversation's fences: (epoch, floor), ascending by epoch.
type Fences = Vec<(u64, u64)>;

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
    /// Whether `record` is a deposed holder's late append (see the module docs).
    pub fn fenced(&self, record: &LogRecord) -> Option<(u64, u64)> {
        let fences = self.by_conversation.get(&record.conversation_id)?;
        // Floors never go down as epochs go up, so the first later epoch has the lowest floor.
        fences
            .iter()
            .find(|(epoch, _)| *epoch > record.epoch)
            .filter(|(_, floor)| record.seq > *floor)
            .copied()
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

    /// Records a fence ingest has just applied.
    pub fn add(&mut self, conversation_id: &str, epoch: u64, floor: u64) {
        let fences = self
            .by_conversation
            .entry(conversation_id.to_owned())
            .or_default();
        if !fences.iter().any(|(e, _)| *e == epoch) {
            fences.push((epoch, floor));
            fences.sort_unstable();
        }
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Takes the conversation's next log epoch (1 for its first). Committed on its own before the
/// fence record is appended, so an epoch is never handed out twice.
pub async fn next_epoch(pool: &PgPool, conversation_id: &str) -> Result<u64, sqlx::Error> {
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
/// was first given. Answers the floor.
pub async fn apply(pool: &PgPool, conversation_id: &str, epoch: u64) -> Result<u64, sqlx::Error> {
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
    floor(pool, conversation_id, epoch)
        .await
        .map(|f| f.unwrap_or(0))
}

async fn floor(
    pool: &PgPool,
    conversation_id: &str,
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
    conversation_id: &str,
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
        "SELECT conversation_id, epoch, floor_seq FROM log_fences WHERE conversation_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut fences: HashMap<String, Fences> = HashMap::new();
    for row in rows {
        fences
            .entry(row.get("conversation_id"))
            .or_default()
            .push((to_u64(row.get("epoch")), to_u64(row.get("floor_seq"))));
    }
    Ok(fences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::Timestamp;

    fn record(seq: u64, epoch: u64) -> LogRecord {
        LogRecord {
            conversation_id: "c".into(),
            seq,
            message_id: format!("m{seq}-{epoch}"),
            sender_id: "u".into(),
            client_msg_id: format!("x{seq}"),
            body: String::new(),
            created_at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
            epoch,
        }
    }

    #[test]
    fn a_record_of_an_older_epoch_above_a_later_floor_is_fenced() {
        let mut book = FenceBook::default();
        assert_eq!(book.unknown(["c", "c", "d"]), ["c", "d"]);
        book.learn(&["c".into(), "d".into()], HashMap::new());
        assert!(book.unknown(["c"]).is_empty());
        assert_eq!(book.fenced(&record(5, 1)), None, "no fence yet");
        book.add("c", 1, 0);
        book.add("c", 2, 9);
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
        book.add("c", 2, 50);
        assert_eq!(
            book.fenced(&record(10, 1)),
            Some((2, 9)),
            "a fence keeps its first floor"
        );
        assert_eq!(book.fenced(&record(10, 1)).map(|f| f.0), Some(2));
        assert_eq!(
            book.fenced(&LogRecord {
                conversation_id: "e".into(),
                ..record(10, 0)
            }),
            None
        );
    }
}
