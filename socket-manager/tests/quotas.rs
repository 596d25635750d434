//! The manager's per-user quotas, typing coalescing and batched receipts, in the fast tier:
//! `Application::build` on port 0 driven over the internal API, beside an in-process message
//! service, against the test binary's shared Redis, PostgreSQL and broker (as `tests/api.rs`).

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_config::names::{SB_USER_FRAMES_BURST, SB_USER_FRAMES_PER_MIN};
use switchboard_message_log::{decode_handler_envelope, Event};
use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use switchboard_protocol::internal::ServerItem;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::http::metric;
use switchboard_test_support::shared::{self};

use common::{spawn_apps, TestApp};

impl TestApp {
    async fn metric(&self, name: &str) -> f64 {
        metric(&self.http, &self.manager, name).await
    }
}

fn connected(connection_id: u64, user: &str) -> ServerItem {
    ServerItem::Connected {
        connection_id,
        user_id: user.parse().unwrap(),
    }
}

fn frame(connection_id: u64, user: &str, frame: ClientFrame) -> ServerItem {
    ServerItem::Frame {
        connection_id,
        user_id: user.parse().unwrap(),
        frame,
    }
}

fn send(connection_id: u64, user: &str, conversation_id: &str, client_msg_id: &str) -> ServerItem {
    frame(
        connection_id,
        user,
        ClientFrame::Send {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            body: format!("body of {client_msg_id}"),
            attachments: Vec::new(),
            reply_to: None,
        },
    )
}

/// The frames (parsed) of every handler record in `payloads`.
fn handler_frames(payloads: &[Vec<u8>]) -> Vec<ServerFrame> {
    payloads
        .iter()
        .flat_map(|p| {
            decode_handler_envelope(p)
                .map(|d| d.records)
                .unwrap_or_default()
        })
        .filter_map(|r| serde_json::from_str(&r.frame).ok())
        .collect()
}

/// One connection floods typing (500 frames in 10 batches over ~2.5 s): the handler topic
/// gets at most one typing record per (conversation, sender) per `SB_TYPING_INTERVAL_MS`
/// (1 s), the rest are dropped without an answer and counted. (Before coalescing, every one
/// of the 500 became a record.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typing_flood_from_one_connection_reaches_the_handler_topic_coalesced() {
    let app = spawn_apps("typing-flood", &[]).await;
    let topic = app.register("ht").await;
    let conversation = app.group("alice", &["bob"]).await;
    app.batch("ht", vec![connected(1, "alice"), connected(2, "bob")])
        .await;
    let started = Instant::now();
    for _ in 0..10 {
        let items = (0..50)
            .map(|_| {
                frame(
                    1,
                    "alice",
                    ClientFrame::Typing {
                        conversation_id: conversation.clone(),
                    },
                )
            })
            .collect();
        let replies = app.batch("ht", items).await;
        assert!(
            replies.iter().all(Option::is_none),
            "typing is never answered, dropped or not: {replies:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    // A marker after the flood: every typing record is before it on the topic.
    let marker = app
        .batch("ht", vec![send(1, "alice", &conversation, "marker")])
        .await;
    assert!(
        matches!(marker[0], Some(ServerFrame::Sent { .. })),
        "{marker:?}"
    );
    let payloads = app
        .consume(&topic, |p| {
            handler_frames(p)
                .iter()
                .any(|f| matches!(f, ServerFrame::Message { .. }))
        })
        .await;
    let typing = handler_frames(&payloads)
        .iter()
        .filter(|f| matches!(f, ServerFrame::Typing { .. }))
        .count();
    let allowed = elapsed.as_secs() as usize + 1;
    println!("500 typing frames over {elapsed:?}: {typing} typing records on the handler topic");
    assert!(
        (1..=allowed).contains(&typing),
        "{typing} typing records for {elapsed:?}: at most one a second"
    );
    let dropped = app.metric("switchboard_manager_typing_dropped_total").await;
    assert_eq!(
        dropped as usize,
        500 - typing,
        "every other one dropped and counted"
    );
}

/// A batch of receipts is recorded with one round of acknowledgements: all enqueued, then
/// awaited together (before, each was produced and awaited in turn); every one is on the
/// events topic, with the record shape the message service reads (one `Event` per record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_receipts_takes_one_round_of_acks() {
    let app = spawn_apps("receipt-round", &[]).await;
    app.register("hr").await;
    let members: Vec<String> = (0..40).map(|i| format!("reader{i}")).collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let conversation = app.group("alice", &member_refs).await;
    let mut items = vec![connected(1, "alice")];
    items.extend((0..3).map(|i| send(1, "alice", &conversation, &format!("m{i}"))));
    let sent = app.batch("hr", items).await;
    assert!(
        sent[1..]
            .iter()
            .all(|r| matches!(r, Some(ServerFrame::Sent { .. }))),
        "{sent:?}"
    );

    let rounds_before = app.metric("switchboard_manager_receipt_rounds_total").await;
    let receipts: Vec<ServerItem> = members
        .iter()
        .enumerate()
        .map(|(i, reader)| {
            frame(
                100 + i as u64,
                reader,
                if i % 2 == 0 {
                    ClientFrame::Read {
                        conversation_id: conversation.clone(),
                        seq: 3,
                    }
                } else {
                    ClientFrame::Delivered {
                        conversation_id: conversation.clone(),
                        seq: 2,
                    }
                },
            )
        })
        .collect();
    let replies = app.batch("hr", receipts).await;
    assert!(replies.iter().all(Option::is_none), "{replies:?}");
    let rounds = app.metric("switchboard_manager_receipt_rounds_total").await - rounds_before;
    assert_eq!(rounds, 1.0, "40 receipts, one round of acks");
    assert_eq!(
        app.metric("switchboard_manager_receipts_recorded_total")
            .await,
        40.0
    );
    let events = app
        .consume(&app.kafka.events_topic, |p| {
            p.iter()
                .filter(|e| {
                    serde_json::from_slice::<Event>(e).is_ok_and(|e| {
                        matches!(e, Event::Receipt { conversation_id, .. } if *conversation_id == conversation)
                    })
                })
                .count()
                >= 40
        })
        .await;
    assert!(events.len() >= 40);
}

/// One user's sends past the per-user quota are refused `rate_limited` with their
/// `client_msg_id`, wherever they come from (two handlers, as two socket servers), while
/// another user's sends in the same batches pass; nothing refused is numbered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_users_quota_are_refused_with_their_client_msg_id() {
    let app = spawn_apps(
        "send-quota",
        &[(SB_USER_FRAMES_PER_MIN, "1"), (SB_USER_FRAMES_BURST, "10")],
    )
    .await;
    app.register("q1").await;
    app.register("q2").await;
    let conversation = app.group("mallory", &["bob"]).await;
    app.batch("q1", vec![connected(1, "mallory"), connected(2, "bob")])
        .await;
    app.batch("q2", vec![connected(3, "mallory")]).await;
    // Eight from each of mallory's connections, on two servers; bob's one in each.
    let mut answers = Vec::new();
    for (handler, connection) in [("q1", 1), ("q2", 3)] {
        let mut items: Vec<ServerItem> = (0..8)
            .map(|i| {
                send(
                    connection,
                    "mallory",
                    &conversation,
                    &format!("{handler}-{i}"),
                )
            })
            .collect();
        items.push(send(2, "bob", &conversation, &format!("bob-{handler}")));
        answers.extend(app.batch(handler, items).await);
    }
    let sent = |a: &Option<ServerFrame>| matches!(a, Some(ServerFrame::Sent { .. }));
    let mallory: Vec<&Option<ServerFrame>> = answers
        .iter()
        .filter(|a| !matches!(a, Some(ServerFrame::Sent { client_msg_id, .. }) if client_msg_id.starts_with("bob")))
        .collect();
    assert_eq!(
        answers.iter().filter(|a| sent(a)).count(),
        12,
        "{answers:?}"
    );
    let refused: Vec<String> = mallory
        .iter()
        .filter_map(|a| match a {
            Some(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                client_msg_id: Some(id),
                ..
            }) => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        ["q2-2", "q2-3", "q2-4", "q2-5", "q2-6", "q2-7"],
        "the burst of 10 is mallory's across both servers: {answers:?}"
    );
    // The numbers went to the sends that passed, and only to them.
    let max_seq = answers
        .iter()
        .filter_map(|a| match a {
            Some(ServerFrame::Sent { seq, .. }) => Some(*seq),
            _ => None,
        })
        .max();
    assert_eq!(max_seq, Some(12));
    assert_eq!(
        app.metric("switchboard_manager_quota_refused_total").await,
        6.0
    );
}

/// A conversation idle past its counter's expiry loses `seq:` and `seq-epoch:` together (here
/// deleted, as the expiry would): a receipt is then checked against the stored last seq (kept
/// as the counter), and the next send has the counter checked against the fenced log and
/// continues after the last stored message, never from 1. Both keys come back with their idle
/// expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_whose_counter_expired_continues_after_its_log() {
    let app = spawn_apps("idle-counter", &[]).await;
    app.register("hi").await;
    let conversation = app.group("alice", &["bob"]).await;
    let items = vec![
        connected(1, "alice"),
        connected(2, "bob"),
        send(1, "alice", &conversation, "a1"),
        send(1, "alice", &conversation, "a2"),
    ];
    let replies = app.batch("hi", items).await;
    assert!(
        matches!(replies[3], Some(ServerFrame::Sent { seq: 2, .. })),
        "{replies:?}"
    );
    // Stored (the fence below waits for ingest anyway; the receipt check reads the store).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp: Value = app
            .http
            .get(format!(
                "{}/api/v1/conversations/{conversation}/messages",
                app.messages
            ))
            .bearer_auth(shared::token("alice"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored = resp["messages"].as_array().map_or(0, Vec::len);
        if stored == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not stored: {resp}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let redis =
        switchboard_redis::SentinelRedis::new(shared::redis_config("socket-manager", &app.id));
    for key in [
        format!("seq:{conversation}"),
        format!("seq-epoch:{conversation}"),
    ] {
        let ttl: i64 = redis
            .query(redis::cmd("TTL").arg(redis.key(&key)))
            .await
            .unwrap();
        assert!(ttl > 6 * 86_400, "{key} expires when idle: {ttl}");
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(redis.key(&key)))
            .await
            .unwrap();
    }

    let read = |seq| {
        frame(
            2,
            "bob",
            ClientFrame::Read {
                conversation_id: conversation.clone(),
                seq,
            },
        )
    };
    let replies = app.batch("hi", vec![read(2), read(3)]).await;
    assert_eq!(replies[0], None, "the last stored message may be read");
    assert!(
        matches!(&replies[1], Some(ServerFrame::Error { code: ErrorCode::BadRequest, message, .. }) if message.contains("(2)")),
        "{replies:?}"
    );
    // The stored last seq is kept as the counter (with its idle expiry, without an epoch), so
    // further receipts read Redis rather than ask the message service each time.
    let kept: Option<u64> = redis
        .query(redis::cmd("GET").arg(redis.key(&format!("seq:{conversation}"))))
        .await
        .unwrap();
    assert_eq!(kept, Some(2));
    let epoch: Option<String> = redis
        .query(redis::cmd("GET").arg(redis.key(&format!("seq-epoch:{conversation}"))))
        .await
        .unwrap();
    assert_eq!(
        epoch, None,
        "not checked against the log: the next send checks it"
    );
    let replies = app
        .batch("hi", vec![send(1, "alice", &conversation, "a3")])
        .await;
    assert!(
        matches!(replies[0], Some(ServerFrame::Sent { seq: 3, .. })),
        "numbering continues after the log: {replies:?}"
    );
    let ttl: i64 = redis
        .query(redis::cmd("TTL").arg(redis.key(&format!("seq-epoch:{conversation}"))))
        .await
        .unwrap();
    assert!(ttl > 6 * 86_400, "the epoch is back with its expiry: {ttl}");
}

/// Total Redis CPU (µs) of every command so far, from `INFO commandstats`.
async fn redis_usec(redis: &switchboard_redis::SentinelRedis) -> u64 {
    let stats: String = redis
        .query(redis::cmd("INFO").arg("commandstats"))
        .await
        .unwrap();
    stats
        .lines()
        .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// What the quota check adds to the message path, A/B on the same Redis: the same sends (in
/// batches of 16 from 16 senders, 16 conversations) through a manager with the quotas on
/// (the defaults) and one with them off, each measured in Redis CPU per message (every
/// command, from `INFO commandstats`) and wall time per batch. Printed (run with
/// `--nocapture`); the figures are in docs/architecture.md. The bound asserted is loose: the
/// shared test Redis also serves other tests of this binary when they run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_quota_check_costs_per_message() {
    let mut results = Vec::new();
    for (arm, extra) in [
        ("quotas off", vec![(SB_USER_FRAMES_PER_MIN, "0")]),
        ("quotas on", vec![]),
        ("quotas off, again", vec![(SB_USER_FRAMES_PER_MIN, "0")]),
        ("quotas on, again", vec![]),
        ("quotas off, third", vec![(SB_USER_FRAMES_PER_MIN, "0")]),
        ("quotas on, third", vec![]),
    ] {
        let app = spawn_apps("quota-cost", &extra).await;
        app.register("hc").await;
        let senders: Vec<String> = (0..16).map(|i| format!("sender{i}")).collect();
        let mut conversations = Vec::new();
        for sender in &senders {
            conversations.push(app.group(sender, &["reader"]).await);
        }
        let mut connect: Vec<ServerItem> = senders
            .iter()
            .enumerate()
            .map(|(i, s)| connected(i as u64 + 1, s))
            .collect();
        connect.push(connected(99, "reader"));
        app.batch("hc", connect).await;
        let batch = |round: usize| -> Vec<ServerItem> {
            senders
                .iter()
                .zip(&conversations)
                .enumerate()
                .map(|(i, (s, c))| send(i as u64 + 1, s, c, &format!("r{round}-{i}")))
                .collect()
        };
        // Warm: every counter checked against the log once.
        app.batch("hc", batch(0)).await;
        let redis =
            switchboard_redis::SentinelRedis::new(shared::redis_config("socket-manager", &app.id));
        let rounds = 100;
        let before = redis_usec(&redis).await;
        let started = Instant::now();
        for round in 1..=rounds {
            let replies = app.batch("hc", batch(round)).await;
            assert!(
                replies
                    .iter()
                    .all(|r| matches!(r, Some(ServerFrame::Sent { .. }))),
                "{replies:?}"
            );
        }
        let per_batch = started.elapsed() / rounds as u32;
        let messages = (rounds * senders.len()) as u64;
        let per_message = (redis_usec(&redis).await - before) / messages;
        println!("{arm}: {per_message} µs of Redis CPU per message, {per_batch:?} per batch of 16");
        results.push(per_message);
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[1]
    };
    let off = median(vec![results[0], results[2], results[4]]);
    let on = median(vec![results[1], results[3], results[5]]);
    println!("median: {off} µs per message with the quotas off, {on} with them on");
    assert!(
        on <= off + 100,
        "quotas on: {on} µs per message; off: {off}"
    );
}
