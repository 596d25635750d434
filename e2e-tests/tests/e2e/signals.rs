//! Receipts, presence and typing over the real stack.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use switchboard_protocol::frames::{PresenceStatus, ReceiptKind, ServerFrame};
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{
    alice_and_bob, api, create_conversation, history, http, messages_of, sent_of, token_for,
    WsClient, WAIT,
};

async fn conversation_entry(http: &reqwest::Client, stack: &Stack, token: &str, id: &str) -> Value {
    let (status, list) = api(
        http,
        stack,
        token,
        Method::GET,
        "/api/v1/conversations",
        None,
    )
    .await;
    assert_eq!(status, 200);
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .expect("conversation listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipts_reach_the_senders_devices_and_are_stored_for_unread() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice_phone = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut alice_laptop = WsClient::connect(&stack.socket_servers[1].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut bob = WsClient::connect(&stack.socket_servers[2].ws_url(), &bob_t)
        .await
        .unwrap();
    for i in 0..5 {
        alice_phone
            .send_message(&conv, &format!("r{i}"), "read me")
            .await;
    }
    assert_eq!(
        sent_of(
            &alice_phone
                .collect_until(WAIT, |f| sent_of(f).len() >= 5)
                .await
        )
        .len(),
        5
    );
    bob.collect_until(WAIT, |f| messages_of(f, &conv).len() >= 5)
        .await;
    bob.send_json(json!({"type":"delivered","conversation_id":conv,"seq":5}))
        .await;
    bob.send_json(json!({"type":"read","conversation_id":conv,"seq":3}))
        .await;

    for device in [&mut alice_phone, &mut alice_laptop] {
        let frames = device
            .collect_until(WAIT, |f| {
                f.iter()
                    .filter(|x| matches!(x, ServerFrame::Receipt { .. }))
                    .count()
                    >= 2
            })
            .await;
        let receipts: Vec<(String, ReceiptKind, u64)> = frames
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Receipt {
                    conversation_id,
                    user_id,
                    kind,
                    seq,
                } if conversation_id == conv => Some((String::from(user_id), kind, seq)),
                _ => None,
            })
            .collect();
        assert_eq!(
            receipts,
            vec![
                ("bob".to_owned(), ReceiptKind::Delivered, 5),
                ("bob".to_owned(), ReceiptKind::Read, 3)
            ]
        );
    }
    // Stored: after a reconnect the list agrees (bob has read 3 of alice's 5).
    drop(bob);
    let _bob_again = WsClient::connect(&stack.socket_servers[0].ws_url(), &bob_t)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = conversation_entry(&http, &stack, &bob_t, &conv).await;
        if entry["unread"] == 2 {
            let alice_view = conversation_entry(&http, &stack, &alice_t, &conv).await;
            let bob_receipt = alice_view["receipts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["user_id"] == "bob")
                .cloned()
                .unwrap();
            assert_eq!(bob_receipt["delivered_seq"], 5);
            assert_eq!(bob_receipt["read_seq"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "unread never became 2: {entry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Receipts are cumulative: an older one does not move the position back.
    let mut bob3 = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    bob3.send_json(json!({"type":"read","conversation_id":conv,"seq":1}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        conversation_entry(&http, &stack, &bob_t, &conv).await["unread"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_follows_devices_and_a_killed_server_takes_its_users_offline() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let http = http();
    let (alice_t, bob_t) = (token_for(&stack, "alice"), token_for(&stack, "bob"));
    create_conversation(
        &http,
        &stack,
        &alice_t,
        json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    let presence_of = |frames: &[ServerFrame], want: PresenceStatus| {
        frames.iter().find_map(|f| match f {
            ServerFrame::Presence {
                user_id,
                status,
                last_seen,
            } if user_id == "bob" && *status == want => Some(*last_seen),
            _ => None,
        })
    };
    let frames = alice
        .collect_until(WAIT, |f| presence_of(f, PresenceStatus::Online).is_some())
        .await;
    assert!(
        presence_of(&frames, PresenceStatus::Online).is_some(),
        "alice sees bob come online"
    );
    let (_, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::GET,
        "/api/v1/presence?user_id=bob&user_id=alice",
        None,
    )
    .await;
    assert_eq!(body["presence"][0]["status"], "online");
    assert_eq!(body["presence"][1]["status"], "online", "oneself");
    // Presence is not public: a user who shares no conversation with alice is not hers to
    // watch, and asking about one refuses the whole query.
    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::GET,
        "/api/v1/presence?user_id=bob&user_id=stranger",
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    // Bob's server dies without a word: he goes offline once his handler's TTL lapses.
    let bob_reader = bob.keep_alive();
    let killed_at = chrono::Utc::now();
    stack.socket_servers[1].process.kill9();
    let frames = alice
        .collect_until(Duration::from_secs(15), |f| {
            presence_of(f, PresenceStatus::Offline).is_some()
        })
        .await;
    bob_reader.abort();
    let last_seen = presence_of(&frames, PresenceStatus::Offline)
        .flatten()
        .expect("offline with last_seen");
    let last_seen = chrono::DateTime::parse_from_rfc3339(&last_seen.to_string()).unwrap();
    assert!(last_seen >= killed_at - chrono::Duration::seconds(1));
    let (_, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::GET,
        "/api/v1/presence?user_id=bob",
        None,
    )
    .await;
    assert_eq!(body["presence"][0]["status"], "offline");
    assert!(body["presence"][0]["last_seen"].is_string());

    // Back online elsewhere, then a clean close goes offline at once.
    let bob = WsClient::connect(&stack.socket_servers[2].ws_url(), &bob_t)
        .await
        .unwrap();
    alice
        .collect_until(WAIT, |f| presence_of(f, PresenceStatus::Online).is_some())
        .await;
    bob.close().await;
    let frames = alice
        .collect_until(WAIT, |f| presence_of(f, PresenceStatus::Offline).is_some())
        .await;
    assert!(presence_of(&frames, PresenceStatus::Offline).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_reaches_the_other_member_and_is_not_stored() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    alice
        .send_json(json!({"type":"typing","conversation_id":conv}))
        .await;
    let frames = bob
        .collect_until(WAIT, |f| {
            f.iter().any(|x| matches!(x, ServerFrame::Typing { .. }))
        })
        .await;
    assert!(frames.iter().any(|f| matches!(
        f,
        ServerFrame::Typing { conversation_id, user_id } if *conversation_id == conv && user_id == "alice"
    )));
    // The typist's own device is not echoed, nothing is numbered or stored.
    let echoed = alice
        .collect_until(Duration::from_millis(500), |f| !f.is_empty())
        .await;
    assert!(!echoed
        .iter()
        .any(|f| matches!(f, ServerFrame::Typing { .. })));
    assert!(history(&http, &stack, &bob_t, &conv, 0).await.is_empty());
    alice.send_message(&conv, "first", "real message").await;
    match alice
        .collect_until(WAIT, |f| !sent_of(f).is_empty())
        .await
        .pop()
    {
        Some(ServerFrame::Sent { seq, .. }) => assert_eq!(seq, 1, "typing took no seq"),
        other => panic!("expected sent, got {other:?}"),
    }
}
