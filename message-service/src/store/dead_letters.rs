//! What ingest writes besides rows: where a record sits in the log ([`LogPosition`],
//! [`Sourced`]), what cannot go in (`dead_letters`, [`DeadLetter`], [`Conflict`]), and what a
//! batch did ([`BatchOutcome`]).

use serde::Serialize;
use sqlx::{QueryBuilder, Row};
use switchboard_protocol::MessageId;

use super::{Store, Tx};

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
    pub message_id: MessageId,
    /// The stored row's.
    pub stored_message_id: MessageId,
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

impl Store {
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

/// Inserts dead letters, once per log position; returns those that were not there yet.
pub(crate) async fn insert_dead_letters(
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
