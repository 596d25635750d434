//! Message events at ingest, against a real PostgreSQL (issue 28 part 1): events apply once
//! (a redelivered record, alone or in a batch with later ones, changes nothing again), in
//! `seq` order within a batch and across batches, by the rules that follow from the log
//! (an event of a deleted or unknown message changes nothing and keeps its `seq`), and a
//! delete erases the body, the edits' texts, the reactions and the search entry. The check
//! before numbering answers with the stable codes. History shows the current state and the
//! raw events.
//!
//! Fast tier (docs/testing-fast-tier.md): every test gets a database of its own on the test
//! binary's shared PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use message_service::events::{self, EventLimits};
use message_service::store::{LogPosition, Sourced, Store};
use sqlx::postgres::PgPool;
use switchboard_message_log::{LogRecord, RecordEvent};
use switchboard_protocol::frames::RecordKind;
use switchboard_protocol::internal::EventCheckItem;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::shared;

async fn start_db(name: &str) -> (Store, PgPool, String) {
    let url = shared::fresh_database(name).await;
    let store = Store::connect(&url, 4).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    let conversation = store
        .create_group(
            "alice",
            "g",
            &["alice".to_owned(), "bob".to_owned(), "carol".to_owned()],
        )
        .await
        .unwrap()
        .id;
    (store, pool, conversation)
}

/// The message id the test calls `name` (`m1`, `m8`): a ULID, the same one each time.
fn mid(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    ulid::Ulid::from_parts(1, u128::from(hash)).to_string()
}

/// Record `seq` of `conversation`, id `m{seq}` ([`mid`]), from `sender`.
fn record(conversation: &str, seq: u64, sender: &str, body: &str) -> Sourced<LogRecord> {
    Sourced {
        at: LogPosition {
            topic: "sb.messages".into(),
            partition: 0,
            offset: seq as i64,
            item: 0,
        },
        item: LogRecord {
            conversation_id: conversation.parse().unwrap(),
            seq,
            message_id: mid(&format!("m{seq}")).parse().unwrap(),
            sender_id: sender.parse().unwrap(),
            client_msg_id: format!("c{seq}"),
            body: body.into(),
            created_at: switchboard_protocol::Timestamp::now(),
            epoch: 0,
            attachments: Vec::new(),
            event: None,
            traceparent: None,
        },
    }
}

fn event(
    conversation: &str,
    seq: u64,
    sender: &str,
    kind: RecordKind,
    target: u64,
    body: &str,
    emoji: Option<&str>,
) -> Sourced<LogRecord> {
    let mut r = record(conversation, seq, sender, body);
    r.item.event = Some(RecordEvent {
        kind,
        target_id: mid(&format!("m{target}")).parse().unwrap(),
        emoji: emoji.map(str::to_owned),
        moderated: false,
    });
    r
}

/// message id → (body, deleted, edited_at present, reply_to, emoji → users).
type State = BTreeMap<
    String,
    (
        String,
        bool,
        bool,
        Option<String>,
        BTreeMap<String, Vec<String>>,
    ),
>;

async fn state(store: &Store, conversation: &str, caller: &str) -> State {
    let page = events::page(
        store,
        &conversation.parse().unwrap(),
        caller,
        0,
        1000,
        false,
    )
    .await
    .unwrap();
    page.messages
        .into_iter()
        .map(|m| {
            (
                m.message_id.into_string(),
                (
                    m.body,
                    m.deleted,
                    m.edited_at.is_some(),
                    m.reply_to,
                    m.reactions
                        .into_iter()
                        .map(|r| (r.emoji, r.users))
                        .collect(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_apply_once_in_seq_order_and_redelivery_changes_nothing() {
    let (store, pool, c) = start_db("events-apply-once").await;
    let first = vec![
        record(&c, 1, "alice", "hello"),
        record(&c, 2, "bob", "hi"),
        event(&c, 3, "alice", RecordKind::Edit, 1, "hello, edited", None),
        event(&c, 4, "bob", RecordKind::Reaction, 1, "", Some("\u{1F44D}")),
        event(
            &c,
            5,
            "carol",
            RecordKind::Reaction,
            1,
            "",
            Some("\u{1F44D}"),
        ),
    ];
    store.insert_batch(&first).await.unwrap();
    // The next batch: bob's reaction removed then set again, a reply, a second edit.
    let second = vec![
        event(&c, 6, "bob", RecordKind::Reaction, 1, "", None),
        event(&c, 7, "bob", RecordKind::Reaction, 1, "", Some("\u{2764}")),
        {
            let mut reply = event(&c, 8, "carol", RecordKind::Message, 2, "re: hi", None);
            reply.item.message_id = mid("m8").parse().unwrap();
            reply
        },
        event(&c, 9, "alice", RecordKind::Edit, 1, "hello, twice", None),
    ];
    store.insert_batch(&second).await.unwrap();
    let after = state(&store, &c, "bob").await;
    let m1 = &after[&mid("m1")];
    assert_eq!(m1.0, "hello, twice");
    assert!(m1.2, "edited");
    assert_eq!(
        m1.4,
        BTreeMap::from([
            ("\u{1F44D}".to_owned(), vec!["carol".to_owned()]),
            ("\u{2764}".to_owned(), vec!["bob".to_owned()]),
        ])
    );
    assert_eq!(after[&mid("m8")].3, Some(mid("m2")), "a reply");
    assert_eq!(after.len(), 3, "events are not messages");
    // Redelivered: the removal (seq 6) and the first edit (seq 3), alone and with others.
    store.insert_batch(&second[..1]).await.unwrap();
    store
        .insert_batch(&[first[2].clone(), first[3].clone(), second[0].clone()])
        .await
        .unwrap();
    assert_eq!(state(&store, &c, "bob").await, after, "applied once");
    let edits: i32 = sqlx::query_scalar("SELECT edit_count FROM messages WHERE message_id = $1")
        .bind(mid("m1"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(edits, 2);
    // Every record holds its seq; last_seq counts events.
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq")
            .bind(&c)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(seqs, (1..=9).collect::<Vec<i64>>());
    assert_eq!(store.last_seq(&c.parse().unwrap()).await.unwrap(), 9);
    // `unread` counts messages past the caller's position (its own last record), not events:
    // bob's last is his reaction at 7, then carol's reply (8) and alice's edit (9).
    for (user, unread) in [("bob", 1), ("carol", 0), ("alice", 0)] {
        let (list, _) = store.list_for(user, 10, None, 100).await.unwrap();
        assert_eq!(list[0].unread, unread, "{user}");
    }
    // The raw events, for clients that replay.
    let page = events::page(&store, &c.parse().unwrap(), "bob", 0, 1000, true)
        .await
        .unwrap();
    let raw: Vec<(i64, String, bool)> = page
        .events
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind, e.applied))
        .collect();
    assert_eq!(
        raw,
        [3, 4, 5, 6, 7, 9]
            .iter()
            .map(|s| (
                *s,
                if *s == 3 || *s == 9 {
                    "edit"
                } else {
                    "reaction"
                }
                .to_owned(),
                true
            ))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_erases_and_later_events_of_the_message_change_nothing() {
    let (store, pool, c) = start_db("events-delete").await;
    let batch = vec![
        record(&c, 1, "alice", "the secret plan"),
        event(
            &c,
            2,
            "alice",
            RecordKind::Edit,
            1,
            "the secret plan, revised",
            None,
        ),
        event(&c, 3, "bob", RecordKind::Reaction, 1, "", Some("\u{1F44D}")),
        event(&c, 4, "alice", RecordKind::Delete, 1, "", None),
        // Numbered after the delete (a race the check could not see): no effect.
        event(&c, 5, "alice", RecordKind::Edit, 1, "resurrected?", None),
        event(
            &c,
            6,
            "carol",
            RecordKind::Reaction,
            1,
            "",
            Some("\u{2764}"),
        ),
        // An event of an unknown message, and a non-author's edit (never admitted by the
        // check; ingest still refuses it): no effect.
        event(&c, 7, "bob", RecordKind::Edit, 99, "nothing", None),
        record(&c, 8, "bob", "still here"),
        event(&c, 9, "bob", RecordKind::Edit, 10, "not mine", None),
        record(&c, 10, "carol", "carol's"),
        event(&c, 11, "bob", RecordKind::Edit, 10, "not mine either", None),
    ];
    store.insert_batch(&batch).await.unwrap();
    let s = state(&store, &c, "alice").await;
    assert_eq!(s[&mid("m1")].0, "");
    assert!(s[&mid("m1")].1, "a tombstone");
    assert!(s[&mid("m1")].4.is_empty(), "no reactions");
    assert_eq!(
        s[&mid("m10")].0,
        "carol's",
        "a non-author's edit changed nothing"
    );
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages
          WHERE body LIKE '%secret%' OR payload LIKE '%secret%' OR payload = 'resurrected?'
             OR search @@ to_tsquery('simple', 'secret')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "the text is gone, edits and search included");
    let reactions: i64 = sqlx::query_scalar("SELECT count(*) FROM message_reactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reactions, 0);
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT seq, applied FROM messages WHERE kind <> 'message' ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        applied,
        vec![
            (2, true),
            (3, true),
            (4, true),
            (5, false),
            (6, false),
            (7, false),
            (9, false),
            (11, false)
        ],
        "events of a deleted, unknown or other author's message keep their seq and change nothing"
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        dead, 0,
        "an event that changed nothing is not a dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_answers_with_stable_codes() {
    let (store, _pool, c) = start_db("events-check").await;
    store
        .set_role(
            &switchboard_protocol::ConversationId::parse(c.as_str()).unwrap(),
            "carol",
            switchboard_protocol::conversations::Role::Admin,
        )
        .await
        .unwrap();
    store
        .insert_batch(&[
            record(&c, 1, "alice", "a"),
            record(&c, 2, "bob", "b"),
            event(&c, 3, "bob", RecordKind::Delete, 2, "", None),
            event(&c, 4, "bob", RecordKind::Reaction, 1, "", Some("x")),
            event(&c, 5, "carol", RecordKind::Reaction, 1, "", Some("y")),
        ])
        .await
        .unwrap();
    // A message of another conversation, its id fresh (a ULID minted now).
    let other = store
        .create_group("alice", "other", &["alice".to_owned()])
        .await
        .unwrap()
        .id;
    let other_message = ulid::Ulid::new().to_string();
    let mut elsewhere = record(&other, 1, "alice", "elsewhere");
    elsewhere.item.message_id = other_message.parse().unwrap();
    store.insert_batch(&[elsewhere]).await.unwrap();
    let item = |sender: &str, cmid: &str, kind, target: &str, emoji: Option<&str>| EventCheckItem {
        sender_id: sender.into(),
        client_msg_id: cmid.into(),
        kind,
        target_id: target.into(),
        emoji: emoji.map(str::to_owned),
    };
    let limits = EventLimits {
        edit_window: Some(Duration::from_secs(60)),
        max_edits: 1,
        max_reactions_per_message: 2,
    };
    let items = vec![
        item("alice", "e1", RecordKind::Edit, &mid("m1"), None),
        item("bob", "e2", RecordKind::Edit, &mid("m1"), None),
        item("bob", "d1", RecordKind::Delete, &mid("m1"), None),
        item("carol", "d2", RecordKind::Delete, &mid("m1"), None),
        item("alice", "e3", RecordKind::Edit, &mid("m2"), None),
        item("alice", "r1", RecordKind::Reaction, &mid("m1"), Some("z")),
        item("alice", "r2", RecordKind::Reaction, &mid("m1"), Some("x")),
        item("alice", "e4", RecordKind::Edit, &mid("m3"), None),
        item("dave", "e5", RecordKind::Reaction, &mid("m1"), Some("x")),
        item("bob", "c4", RecordKind::Reaction, &mid("m2"), Some("x")),
        item("carol", "re", RecordKind::Message, &mid("m2"), None),
        item("alice", "e8", RecordKind::Edit, &other_message, None),
    ];
    let started = std::time::Instant::now();
    let verdicts = events::verdicts(store.pool(), &limits, &c.parse().unwrap(), &items)
        .await
        .unwrap();
    assert!(
        started.elapsed() < events::TARGET_WAIT,
        "a target stored elsewhere is not waited for"
    );
    let codes: Vec<(Option<ErrorCode>, bool)> = verdicts
        .iter()
        .map(|v| (v.refused.as_ref().map(|r| r.code), v.moderated))
        .collect();
    assert_eq!(
        codes,
        vec![
            (None, false),                              // the author edits
            (Some(ErrorCode::NotAuthor), false),        // someone else's
            (Some(ErrorCode::NotAuthor), false),        // a member deletes another's
            (None, true),                               // an admin does: moderated
            (Some(ErrorCode::MessageDeleted), false),   // m2 was deleted
            (Some(ErrorCode::TooManyReactions), false), // a third distinct emoji
            (None, false),                              // one of the two
            (Some(ErrorCode::MessageNotFound), false),  // an event's id
            (Some(ErrorCode::NotAMember), false),       // not a member
            (None, false),                              // c4 is stored: its resend passes
            (None, false),                              // a reply to a deleted message
            (Some(ErrorCode::MessageNotFound), false),  // another conversation's, at once
        ]
    );
    // The edit limit and the window.
    store
        .insert_batch(&[event(&c, 6, "alice", RecordKind::Edit, 1, "a'", None)])
        .await
        .unwrap();
    let again = events::verdicts(store.pool(), &limits, &c.parse().unwrap(), &items[..1])
        .await
        .unwrap();
    assert_eq!(
        again[0].refused.as_ref().map(|r| r.code),
        Some(ErrorCode::TooManyEdits)
    );
    let closed = EventLimits {
        edit_window: Some(Duration::ZERO),
        max_edits: 10,
        ..limits
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let late = events::verdicts(store.pool(), &closed, &c.parse().unwrap(), &items[..1])
        .await
        .unwrap();
    assert_eq!(
        late[0].refused.as_ref().map(|r| r.code),
        Some(ErrorCode::EditWindowClosed)
    );
}
