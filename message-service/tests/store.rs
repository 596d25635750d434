//! The ingest side of the store against a real PostgreSQL: a record the database cannot take
//! goes to `dead_letters` without holding up the rest of its batch, a record that collides
//! with a different stored message is a conflict (dead-lettered, the stored row kept), a
//! redelivery is neither, and an unreachable database is an error to retry, not a dead
//! letter.
//!
//! Fast tier (docs/testing-fast-tier.md): every test gets a database of its own on the test
//! binary's shared PostgreSQL ([`shared::fresh_database`]). The outage test cannot stop the
//! shared server, so its store reaches the database through a [`Relay`] it takes down and
//! brings back on the same port: to the store, the database is gone and then back.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

use message_service::store::{
    is_data_error, DeadLetter, LogPosition, ReceiptUpdate, Sourced, Store,
};
use sqlx::postgres::PgPool;
use sqlx::Row;
use switchboard_message_log::LogRecord;
use switchboard_protocol::{ConversationId, UserId};
use switchboard_test_support::shared;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

struct Db {
    store: Store,
    /// Straight to the database (never through a [`Relay`]), for the assertions.
    pool: PgPool,
}

/// A store on a fresh database of the shared PostgreSQL.
async fn start_db(name: &str) -> Db {
    let url = shared::fresh_database(name).await;
    let store = Store::connect(&url, 4).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    Db { store, pool }
}

/// A store on a fresh database of the shared PostgreSQL, reaching it through a [`Relay`].
async fn start_db_behind_relay(name: &str) -> (Db, Relay) {
    let url = shared::fresh_database(name).await;
    let pg_port = shared::postgres().port;
    let relay = Relay::start(pg_port).await;
    let relayed = url.replacen(
        &format!("127.0.0.1:{pg_port}/"),
        &format!("127.0.0.1:{}/", relay.port),
        1,
    );
    assert_ne!(
        relayed, url,
        "the database URL names the shared server's port: {url}"
    );
    let store = Store::connect(&relayed, 4).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    (Db { store, pool }, relay)
}

/// A TCP relay on loopback to the shared PostgreSQL. [`Relay::cut`] closes its port and
/// every connection through it (as a stopped server would: refused, reset);
/// [`Relay::restore`] listens on the same port again.
struct Relay {
    port: u16,
    target: u16,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = Relay {
            port,
            target,
            task: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task: aborting it closes every relayed connection.
            let mut links = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                links.spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                // Reap the finished links.
                while links.try_join_next().is_some() {}
            }
        }));
    }

    /// The port closed, the connections through it gone.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listening on the same port again.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

impl Db {
    async fn group(&self) -> String {
        self.store
            .create_group("alice", "g", &["alice".to_owned(), "bob".to_owned()])
            .await
            .unwrap()
            .id
    }

    /// `(seq, message_id)` of every stored message of a conversation.
    async fn stored(&self, conversation_id: &str) -> Vec<(i64, String)> {
        self.store
            .history(&conversation_id.parse().unwrap(), 0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.message_id.into_string()))
            .collect()
    }

    /// `(offset, record, error)` of every dead letter, by offset.
    async fn dead_letters(&self) -> Vec<(i64, String, String)> {
        sqlx::query(r#"SELECT "offset", record, error FROM dead_letters ORDER BY "offset""#)
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.get("offset"), row.get("record"), row.get("error")))
            .collect()
    }

    async fn last_seq(&self, conversation_id: &str) -> i64 {
        sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
            .bind(conversation_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn at(offset: i64) -> LogPosition {
    LogPosition {
        topic: "sb.messages".into(),
        partition: 0,
        offset,
        item: 0,
    }
}

/// The message id the test calls `name` (`m1`, `m-a`): a ULID, the same one each time.
fn mid(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    ulid::Ulid::from_parts(1, u128::from(hash)).to_string()
}

/// A record of message `message_id` ([`mid`]); its `client_msg_id` is `c-` and the name.
fn record(conversation_id: &str, seq: u64, message_id: &str, body: &str) -> LogRecord {
    LogRecord {
        conversation_id: conversation_id.parse().unwrap(),
        seq,
        message_id: mid(message_id).parse().unwrap(),
        sender_id: "alice".parse().unwrap(),
        client_msg_id: format!("c-{message_id}"),
        body: body.into(),
        created_at: switchboard_protocol::Timestamp::now(),
        epoch: 0,
        attachments: Vec::new(),
        event: None,
        traceparent: None,
    }
}

fn sourced(offset: i64, item: LogRecord) -> Sourced<LogRecord> {
    Sourced {
        at: at(offset),
        item,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_nul_are_dead_lettered_and_the_rest_of_the_batch_is_stored() {
    let db = start_db("nul-dead-lettered").await;
    let conv = db.group().await;
    let mut nul_client_id = record(&conv, 4, "m4", "fine");
    nul_client_id.client_msg_id = "c\0".into();
    let batch = vec![
        sourced(10, record(&conv, 1, "m1", "one")),
        sourced(11, record(&conv, 2, "m2", "a\0b")),
        sourced(12, record(&conv, 3, "m3", "three")),
        sourced(13, nul_client_id),
        // A refused record of another conversation must not break the last_seq update (ids
        // are checked before they get here, so the text it carries is what is refused).
        sourced(14, record("01ARZ3NDEKTSV4RRFFQ69G5FAV", 1, "m5", "x\0")),
        sourced(15, record(&conv, 6, "m6", "six")),
    ];

    let outcome = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(outcome.inserted, 3);
    assert!(outcome.conflicts.is_empty(), "{:?}", outcome.conflicts);
    let refused: Vec<i64> = outcome.refused.iter().map(|l| l.at.offset).collect();
    assert_eq!(refused, vec![11, 13, 14]);
    assert_eq!(
        db.stored(&conv).await,
        vec![(1, mid("m1")), (3, mid("m3")), (6, mid("m6"))]
    );
    assert_eq!(db.last_seq(&conv).await, 6);

    let letters = db.dead_letters().await;
    assert_eq!(letters.len(), 3);
    let (offset, text, error) = &letters[0];
    assert_eq!(*offset, 11);
    assert!(error.contains("0x00"), "the database's reason: {error}");
    assert!(!text.contains('\0') && text.contains(r"\u0000"), "{text}");
    let back: LogRecord = serde_json::from_str(text).unwrap();
    assert_eq!(
        back, batch[1].item,
        "the dead letter holds the whole record"
    );

    // Redelivered, the batch changes nothing and is not dead-lettered twice.
    let again = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(again.inserted, 0);
    assert!(again.refused.is_empty() && again.conflicts.is_empty());
    assert_eq!(db.dead_letters().await.len(), 3);

    // The slow path on its own: a batch without bad records goes in whole.
    let clean = vec![sourced(16, record(&conv, 7, "m7", "seven"))];
    let outcome = db.store.insert_one_by_one(&clean).await.unwrap();
    assert_eq!(outcome.inserted, 1);
    assert!(outcome.refused.is_empty());
    assert_eq!(db.last_seq(&conv).await, 7);

    // One batch over several conversations moves each one's last_seq, never backwards.
    let other = db.group().await;
    let mixed = vec![
        sourced(17, record(&other, 1, "o1", "one")),
        sourced(18, record(&conv, 8, "m8", "eight")),
        sourced(19, record(&other, 2, "o2", "two")),
        sourced(20, record(&conv, 5, "m5b", "an old seq, redelivered late")),
    ];
    let outcome = db.store.insert_batch(&mixed).await.unwrap();
    assert_eq!(outcome.inserted, 4);
    assert_eq!(db.last_seq(&conv).await, 8);
    assert_eq!(db.last_seq(&other).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_colliding_with_a_different_message_is_a_conflict_and_the_stored_row_stays() {
    let db = start_db("conflict").await;
    let conv = db.group().await;
    let first = db
        .store
        .insert_batch(&[sourced(1, record(&conv, 1, "m-a", "original"))])
        .await
        .unwrap();
    assert_eq!(first.inserted, 1);

    // Same seq, another message (a sequence lock that expired under a pause).
    let same_seq = record(&conv, 1, "m-b", "usurper");
    // Same message id at another seq.
    let same_id = record(&conv, 3, "m-a", "again");
    // Same sender and client_msg_id, another message id and seq (idempotency broken).
    let mut same_client_id = record(&conv, 4, "m-d", "retry");
    same_client_id.client_msg_id = "c-m-a".into();
    let batch = vec![
        sourced(2, same_seq),
        sourced(3, record(&conv, 2, "m-c", "fine")),
        sourced(4, same_id),
        sourced(5, same_client_id),
    ];
    let outcome = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(outcome.inserted, 1);
    assert!(outcome.refused.is_empty());
    let conflicts: Vec<(&str, &str, i64)> = outcome
        .conflicts
        .iter()
        .map(|c| {
            (
                c.message_id.as_str(),
                c.stored_message_id.as_str(),
                c.dead_letter.at.offset,
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        vec![
            (mid("m-b").as_str(), mid("m-a").as_str(), 2),
            (mid("m-a").as_str(), mid("m-a").as_str(), 4),
            (mid("m-d").as_str(), mid("m-a").as_str(), 5)
        ]
    );
    for c in &outcome.conflicts {
        let error = &c.dead_letter.error;
        assert!(error.starts_with("conflict: "), "{error}");
        assert!(
            error.contains(c.message_id.as_str()) && error.contains(c.stored_message_id.as_str())
        );
    }
    assert!(outcome.conflicts[0]
        .dead_letter
        .error
        .contains(&format!("seq 1 of conversation {conv}")));

    // The stored row is kept; the losers are in dead_letters.
    assert_eq!(
        db.stored(&conv).await,
        vec![(1, mid("m-a")), (2, mid("m-c"))]
    );
    let letters = db.dead_letters().await;
    assert_eq!(
        letters.iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![2, 4, 5]
    );
    let loser: LogRecord = serde_json::from_str(&letters[0].1).unwrap();
    assert_eq!(loser.body, "usurper");

    // Redelivered, the conflicts are not dead-lettered (or reported) a second time.
    let again = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(again.inserted, 0);
    assert!(again.conflicts.is_empty());
    assert_eq!(db.dead_letters().await.len(), 3);

    // Two messages with one seq inside one batch: the first wins.
    let batch = vec![
        sourced(6, record(&conv, 5, "m-e", "first")),
        sourced(7, record(&conv, 5, "m-f", "second")),
    ];
    let outcome = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(outcome.inserted, 1);
    assert_eq!(outcome.conflicts.len(), 1);
    assert_eq!(outcome.conflicts[0].message_id, mid("m-f"));
    assert_eq!(outcome.conflicts[0].stored_message_id, mid("m-e"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_identical_record_is_not_a_conflict() {
    let db = start_db("redelivered").await;
    let conv = db.group().await;
    let batch = vec![
        sourced(1, record(&conv, 1, "m1", "one")),
        sourced(2, record(&conv, 2, "m2", "two")),
    ];
    assert_eq!(db.store.insert_batch(&batch).await.unwrap().inserted, 2);
    let again = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(again.inserted, 0);
    assert!(again.conflicts.is_empty() && again.refused.is_empty());

    // Redelivered at other offsets (a new consumer, a replay), and twice within one batch.
    let mixed = vec![
        sourced(7, record(&conv, 1, "m1", "one")),
        sourced(8, record(&conv, 2, "m2", "two")),
        sourced(9, record(&conv, 2, "m2", "two")),
        sourced(10, record(&conv, 3, "m3", "three")),
        sourced(11, record(&conv, 3, "m3", "three")),
    ];
    let outcome = db.store.insert_batch(&mixed).await.unwrap();
    assert_eq!(outcome.inserted, 1);
    assert!(outcome.conflicts.is_empty(), "{:?}", outcome.conflicts);
    assert!(db.dead_letters().await.is_empty());
    assert_eq!(db.stored(&conv).await.len(), 3);
    assert_eq!(db.last_seq(&conv).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_unreadable_records_the_database_cannot_take_are_dead_lettered() {
    let db = start_db("receipts-unreadable").await;
    let conv = db.group().await;
    // Receipts carry checked ids, so nothing a producer sends breaks a column today; a rule
    // the database adds later could. This one, the test's own, refuses one user's receipts.
    sqlx::query(
        "ALTER TABLE receipts ADD CONSTRAINT test_refuses_mallory CHECK (user_id <> 'mallory')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let receipt = |offset, user_id: &str, seq| Sourced {
        at: LogPosition {
            topic: "sb.events".into(),
            partition: 0,
            offset,
            item: 0,
        },
        item: ReceiptUpdate {
            conversation_id: ConversationId::parse(conv.as_str()).unwrap(),
            user_id: UserId::parse(user_id).unwrap(),
            delivered_seq: seq,
            read_seq: seq,
        },
    };
    let refused = db
        .store
        .upsert_receipts(&[receipt(1, "bob", 3), receipt(2, "mallory", 4)])
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].at.offset, 2);
    let receipts = db
        .store
        .receipts_of(std::slice::from_ref(&conv))
        .await
        .unwrap();
    assert_eq!(
        receipts[&conv][0].read_seq, 3,
        "the good receipt is applied"
    );

    let unreadable = DeadLetter::unreadable(at(40), b"{\"not\0json", "unreadable log record");
    let new = db
        .store
        .dead_letter(vec![unreadable.clone()])
        .await
        .unwrap();
    assert_eq!(new, vec![unreadable.clone()]);
    assert!(db
        .store
        .dead_letter(vec![unreadable])
        .await
        .unwrap()
        .is_empty());
    let letters = db.dead_letters().await;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[1].1, "{\"not\\u0000json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_an_error_to_retry_not_a_dead_letter() {
    let (db, mut relay) = start_db_behind_relay("unreachable").await;
    let conv = db.group().await;
    relay.cut().await;
    let batch = vec![
        sourced(1, record(&conv, 1, "m1", "one")),
        sourced(2, record(&conv, 2, "m2", "a\0b")),
    ];
    let error = db.store.insert_batch(&batch).await.unwrap_err();
    assert!(!is_data_error(&error), "{error}");

    // Back up, the same batch goes in as if nothing had happened.
    relay.restore().await;
    let outcome = db.store.insert_batch(&batch).await.unwrap();
    assert_eq!(outcome.inserted, 1);
    assert_eq!(outcome.refused.len(), 1);
    assert_eq!(db.dead_letters().await.len(), 1);
}

/// The ids' PostgreSQL mapping (protocol's `sqlx` feature): bound and read as text, and a
/// stored value that breaks an id's rule is a decode error, never an unchecked id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_ids_are_text_checked_as_they_are_read() {
    use switchboard_protocol::{ConversationId, UserId};
    let db = start_db("typed-ids").await;
    let id: ConversationId = "01HZY0000000000000000000C1".parse().unwrap();
    let echoed: ConversationId = sqlx::query_scalar("SELECT $1::text")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(echoed, id);
    let user: UserId = sqlx::query_scalar("SELECT 'auth0|5f7c8e'::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(user, "auth0|5f7c8e");
    let refused = sqlx::query_scalar::<_, ConversationId>("SELECT 'not-a-ulid'::text")
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, sqlx::Error::ColumnDecode { .. }),
        "{refused:?}"
    );
}
