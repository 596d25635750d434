//! The fast tier for the socket manager: `Application::build` on port 0, driven over its
//! cluster-internal HTTP API the way socket servers drive it (`protocol::internal` bodies,
//! the cluster secret header), against the test binary's shared Redis, PostgreSQL and broker
//! (`switchboard_test_support::shared`). A message service runs in-process beside it, because
//! the manager learns members and the settled log from it (and its Redis mirror).

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use switchboard_message_log::{
    decode_handler_envelope, decode_log_envelope, decode_log_item, LogItem, LogRecord,
};
use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use switchboard_protocol::internal::{ServerBatch, ServerItem, ServerRegistration};
use switchboard_protocol::registry::CLUSTER_SECRET_HEADER;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::shared::{self, CLUSTER_SECRET};

use common::spawn_apps;

fn connected(connection_id: u64, user: &str) -> ServerItem {
    ServerItem::Connected {
        connection_id,
        user_id: user.parse().unwrap(),
    }
}

fn send(connection_id: u64, user: &str, conversation_id: &str, client_msg_id: &str) -> ServerItem {
    ServerItem::Frame {
        connection_id,
        user_id: user.parse().unwrap(),
        frame: ClientFrame::Send {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            body: format!("body of {client_msg_id}"),
            attachments: Vec::new(),
            reply_to: None,
        },
    }
}

/// `(client_msg_id, seq, message_id)` of a `sent` reply.
fn sent(reply: &Option<ServerFrame>) -> (String, u64, String) {
    match reply {
        Some(ServerFrame::Sent {
            client_msg_id,
            seq,
            message_id,
            ..
        }) => (client_msg_id.clone(), *seq, message_id.to_string()),
        other => panic!("expected sent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_numbered_idempotent_and_land_on_the_log_and_the_handler_topic() {
    let app = spawn_apps("sends", &[]).await;
    let topic = app.register("h1").await;
    let first = app.group("alice", &["bob"]).await;
    let second = app.group("bob", &["alice"]).await;

    // One batch: two devices connect, then sends to two conversations, interleaved.
    let replies = app
        .batch(
            "h1",
            vec![
                connected(1, "alice"),
                connected(2, "bob"),
                send(1, "alice", &first, "a1"),
                send(2, "bob", &second, "b1"),
                send(1, "alice", &first, "a2"),
                send(2, "bob", &first, "b2"),
                send(1, "alice", &second, "a3"),
                ServerItem::Frame {
                    connection_id: 1,
                    user_id: "alice".parse().unwrap(),
                    frame: ClientFrame::Ping,
                },
            ],
        )
        .await;
    assert_eq!(replies.len(), 8);
    assert!(replies[0].is_none() && replies[1].is_none());
    let numbered: Vec<(String, u64)> = replies[2..7]
        .iter()
        .map(|r| {
            let (id, seq, _) = sent(r);
            (id, seq)
        })
        .collect();
    assert_eq!(
        numbered,
        [
            ("a1".into(), 1),
            ("b1".into(), 1),
            ("a2".into(), 2),
            ("b2".into(), 3),
            ("a3".into(), 2)
        ],
        "seq 1..n per conversation, in batch order"
    );
    assert_eq!(replies[7], Some(ServerFrame::Pong));

    // A resend (same sender, same client_msg_id) gets the original answer, no new number.
    let (_, seq, message_id) = sent(&replies[4]);
    let again = app.batch("h1", vec![send(1, "alice", &first, "a2")]).await;
    assert_eq!(sent(&again[0]), ("a2".into(), seq, message_id));
    let next = app.batch("h1", vec![send(1, "alice", &first, "a4")]).await;
    assert_eq!(sent(&next[0]).1, 4);

    // The log holds each message once, numbered.
    let log = app
        .consume(&app.kafka.message_topic, |payloads| {
            let records: usize = payloads
                .iter()
                .map(|p| decode_log_envelope(p).map(|d| d.records.len()).unwrap_or(0))
                .sum();
            records >= 6
        })
        .await;
    // Fence records (one per conversation's first counter check) carry no messages.
    let mut records: Vec<LogRecord> = log
        .iter()
        .flat_map(|p| match decode_log_item(p).unwrap() {
            LogItem::Messages(decoded) => decoded.records,
            LogItem::Fence(_) => Vec::new(),
        })
        .collect();
    records.sort_by(|a, b| (&a.conversation_id, a.seq).cmp(&(&b.conversation_id, b.seq)));
    let in_first: Vec<(u64, &str)> = records
        .iter()
        .filter(|r| r.conversation_id == first)
        .map(|r| (r.seq, r.client_msg_id.as_str()))
        .collect();
    assert_eq!(in_first, [(1, "a1"), (2, "a2"), (3, "b2"), (4, "a4")]);
    assert_eq!(records.len(), 6, "no message appended twice");

    // The handler topic carries the `message` frames for the members on this handler.
    let routed = app
        .consume(&topic, |payloads| {
            payloads
                .iter()
                .flat_map(|p| {
                    decode_handler_envelope(p)
                        .map(|d| d.records)
                        .unwrap_or_default()
                })
                .filter(|r| r.frame.contains("\"type\":\"message\""))
                .count()
                >= 6
        })
        .await;
    let frames: Vec<(Vec<String>, Option<u64>, ServerFrame)> = routed
        .iter()
        .flat_map(|p| decode_handler_envelope(p).unwrap().records)
        .map(|r| {
            (
                r.recipients,
                r.skip_connection,
                serde_json::from_str(&r.frame).unwrap(),
            )
        })
        .collect();
    let a1 = frames
        .iter()
        .find(|(_, _, f)| {
            matches!(f, ServerFrame::Message { conversation_id, seq: 1, .. } if *conversation_id == first)
        })
        .expect("a1 routed");
    let mut recipients = a1.0.clone();
    recipients.sort();
    assert_eq!(recipients, ["alice", "bob"]);
    assert_eq!(
        a1.1,
        Some(1),
        "the sending device gets `sent`, not the message"
    );
    match &a1.2 {
        ServerFrame::Message {
            sender_id, body, ..
        } => {
            assert_eq!(sender_id, "alice");
            assert_eq!(body, "body of a1");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_are_one_string_with_an_expiry_and_older_hash_records_still_answer() {
    let app = spawn_apps("idem-format", &[]).await;
    app.register("h1").await;
    let conversation = app.group("alice", &["bob"]).await;
    let redis =
        switchboard_redis::SentinelRedis::new(shared::redis_config("socket-manager", &app.id));
    let idem_key =
        |client_msg_id: &str| redis.key(&format!("idem:{conversation}:alice:{client_msg_id}"));

    // A record as a manager from before wrote it: a hash, as if "old" was numbered 1.
    let old_message_id = "01JFAKE01DREC0RD000000000A";
    let old_created_at = "2026-12-01T10:00:00.000Z";
    let _: i64 = redis
        .query(
            redis::cmd("HSET")
                .arg(idem_key("old"))
                .arg("seq")
                .arg(1)
                .arg("message_id")
                .arg(old_message_id)
                .arg("created_at")
                .arg(old_created_at),
        )
        .await
        .unwrap();
    let _: () = redis
        .query(
            redis::cmd("SET")
                .arg(redis.key(&format!("seq:{conversation}")))
                .arg(1),
        )
        .await
        .unwrap();
    let resent = app
        .batch("h1", vec![send(1, "alice", &conversation, "old")])
        .await;
    assert_eq!(
        sent(&resent[0]),
        ("old".into(), 1, old_message_id.into()),
        "a resend answered from a hash record gets its original numbers"
    );

    // A new message's record is one string "seq message_id created_at" with the TTL.
    let fresh = app
        .batch("h1", vec![send(1, "alice", &conversation, "new")])
        .await;
    let (_, seq, message_id) = sent(&fresh[0]);
    assert_eq!(seq, 2, "the hash record's number was not taken again");
    let record: String = redis
        .query(redis::cmd("GET").arg(idem_key("new")))
        .await
        .unwrap();
    let fields: Vec<&str> = record.split(' ').collect();
    assert_eq!(fields.len(), 3, "{record}");
    assert_eq!((fields[0], fields[1]), ("2", message_id.as_str()));
    switchboard_protocol::Timestamp::parse(fields[2]).expect("created_at");
    let ttl: i64 = redis
        .query(redis::cmd("TTL").arg(idem_key("new")))
        .await
        .unwrap();
    assert!(ttl > 0, "the record expires (TTL {ttl})");
    let again = app
        .batch("h1", vec![send(1, "alice", &conversation, "new")])
        .await;
    assert_eq!(sent(&again[0]), ("new".into(), 2, message_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_and_bad_sends_are_refused() {
    let app = spawn_apps("refused", &[]).await;
    app.register("h2").await;
    let conversation = app.group("alice", &["bob"]).await;
    let replies = app
        .batch(
            "h2",
            vec![
                connected(7, "mallory"),
                send(7, "mallory", &conversation, "m1"),
                send(7, "mallory", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "m2"),
                send(7, "mallory", &conversation, ""),
                ServerItem::Frame {
                    connection_id: 7,
                    user_id: "mallory".parse().unwrap(),
                    frame: ClientFrame::Typing {
                        conversation_id: conversation.clone(),
                    },
                },
            ],
        )
        .await;
    let codes: Vec<Option<(ErrorCode, Option<String>)>> = replies
        .into_iter()
        .map(|r| match r {
            Some(ServerFrame::Error {
                code,
                client_msg_id,
                ..
            }) => Some((code, client_msg_id)),
            None => None,
            Some(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some((ErrorCode::NotAMember, Some("m1".into()))),
            Some((ErrorCode::NotAMember, Some("m2".into()))),
            Some((ErrorCode::BadRequest, Some(String::new()))),
            Some((ErrorCode::NotAMember, None)),
        ]
    );
}

/// The numbering script vouches for members from the mirror; only a cold mirror or a
/// stranger sends a batch to the message service (`manager_membership_fallbacks_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_checked_in_the_numbering_script_and_strangers_fall_back() {
    let app = spawn_apps("membership-fallback", &[]).await;
    app.register("h3").await;
    let conversation = app.group("alice", &["bob"]).await;
    let fallbacks = || {
        switchboard_test_support::http::metric(
            &app.http,
            &app.manager,
            "switchboard_manager_membership_fallbacks_total",
        )
    };
    let sent = |replies: Vec<Option<ServerFrame>>| {
        replies
            .iter()
            .filter(|r| matches!(r, Some(ServerFrame::Sent { .. })))
            .count()
    };

    let from = |connection: u64, user: &str, id: &str| send(connection, user, &conversation, id);

    // The first send may find the mirror cold; it is refilled then.
    let first = app.batch("h3", vec![from(1, "alice", "a1")]).await;
    assert_eq!(sent(first), 1);
    let before = fallbacks().await;
    let warm = vec![from(1, "alice", "a2"), from(2, "bob", "b1")];
    assert_eq!(sent(app.batch("h3", warm).await), 2);
    assert_eq!(fallbacks().await, before, "the mirror vouched for both");

    let mixed = vec![from(1, "alice", "a3"), from(3, "mallory", "m1")];
    let mixed = app.batch("h3", mixed).await;
    assert!(matches!(mixed[0], Some(ServerFrame::Sent { .. })));
    assert!(matches!(
        mixed[1],
        Some(ServerFrame::Error {
            code: ErrorCode::NotAMember,
            ..
        })
    ));
    assert_eq!(fallbacks().await, before + 1.0, "a stranger falls back");
}

fn read(connection_id: u64, user: &str, conversation_id: &str, seq: u64) -> ServerItem {
    ServerItem::Frame {
        connection_id,
        user_id: user.parse().unwrap(),
        frame: ClientFrame::Read {
            conversation_id: conversation_id.into(),
            seq,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_past_the_last_seq_are_refused() {
    let app = spawn_apps("receipts", &[]).await;
    app.register("h3").await;
    let conversation = app.group("alice", &["bob"]).await;
    let empty = app.group("alice", &["bob"]).await;
    let numbered = app
        .batch(
            "h3",
            vec![
                connected(1, "alice"),
                connected(2, "bob"),
                send(1, "alice", &conversation, "r1"),
                send(1, "alice", &conversation, "r2"),
            ],
        )
        .await;
    assert_eq!(sent(&numbered[3]).1, 2);

    let replies = app
        .batch(
            "h3",
            vec![
                read(2, "bob", &conversation, 3),
                ServerItem::Frame {
                    connection_id: 2,
                    user_id: "bob".parse().unwrap(),
                    frame: ClientFrame::Delivered {
                        conversation_id: conversation.clone(),
                        seq: 9999,
                    },
                },
                read(2, "bob", &empty, 1),
                read(2, "bob", &conversation, 2),
                read(2, "bob", &conversation, 1),
            ],
        )
        .await;
    let refused = |reply: &Option<ServerFrame>| match reply {
        Some(ServerFrame::Error { code, message, .. }) => (*code, message.clone()),
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        refused(&replies[0]),
        (
            ErrorCode::BadRequest,
            "seq 3 is past the conversation's last message (2)".into()
        )
    );
    assert_eq!(
        refused(&replies[1]),
        (
            ErrorCode::BadRequest,
            "seq 9999 is past the conversation's last message (2)".into()
        )
    );
    assert_eq!(
        refused(&replies[2]),
        (
            ErrorCode::BadRequest,
            "seq 1 is past the conversation's last message (0)".into()
        )
    );
    assert_eq!(replies[3], None, "a receipt at the last seq is accepted");
    assert_eq!(replies[4], None, "and one below it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_api_needs_the_cluster_secret() {
    let app = spawn_apps("secret", &[]).await;
    let resp = app
        .http
        .post(format!("{}/internal/v1/handlers", app.manager))
        .header(CLUSTER_SECRET_HEADER, "guessed")
        .json(&ServerRegistration {
            server_id: switchboard_protocol::ServerId::parse("rogue").unwrap(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .http
        .post(format!("{}/internal/v1/handlers/rogue/batch", app.manager))
        .json(&ServerBatch { items: Vec::new() })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A bad handler id (it names a topic) is refused.
    let resp = app
        .http
        .post(format!("{}/internal/v1/handlers", app.manager))
        .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
        .json(&serde_json::json!({ "handler_id": "no/slashes" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
