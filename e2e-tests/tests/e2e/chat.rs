//! The chat path end to end: socket servers -> managers (Redlock seq) -> Kafka -> handler
//! topics -> devices, and the log into PostgreSQL behind the history API.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{
    alice_and_bob, api, create_conversation, history, history_with, http, messages_of, metric,
    sent_of, token_for, WsClient, WAIT,
};

async fn chat_stack() -> Stack {
    Stack::start(StackOptions::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_chat_across_servers_is_ordered_acknowledged_and_stored() {
    let stack = chat_stack().await;
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    // Creating the same pair again (from either side) returns the same conversation.
    assert_eq!(
        create_conversation(
            &http,
            &stack,
            &bob_t,
            json!({"kind":"direct","members":["alice"]})
        )
        .await,
        conv
    );

    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    for i in 0..50 {
        alice
            .send_message(&conv, &format!("m{i}"), &format!("hello {i}"))
            .await;
    }
    let alice_frames = alice
        .collect_until(Duration::from_secs(20), |f| sent_of(f).len() >= 50)
        .await;
    let sent = sent_of(&alice_frames);
    assert_eq!(sent.len(), 50, "50 sent frames: {alice_frames:?}");
    let mut seqs: Vec<u64> = sent.values().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    // The sending device gets `sent`, never its own `message`.
    assert!(messages_of(&alice_frames, &conv).is_empty());

    let bob_frames = bob
        .collect_until(Duration::from_secs(20), |f| {
            messages_of(f, &conv).len() >= 50
        })
        .await;
    let received: Vec<u64> = messages_of(&bob_frames, &conv)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        received,
        (1..=50).collect::<Vec<_>>(),
        "bob gets 1..50 in order"
    );

    let stored = history_with(&http, &stack, &bob_t, &conv, 50).await;
    assert_eq!(stored.len(), 50);
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(m["sender_id"], "alice");
        let cmid = m["client_msg_id"].as_str().unwrap();
        assert_eq!(
            sent[cmid].1,
            m["message_id"].as_str().unwrap(),
            "same id as `sent`"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap()).is_ok());
    }
    // Paging and the limit clamp.
    let (status, page) = api(
        &http,
        &stack,
        &bob_t,
        Method::GET,
        &format!("/api/v1/conversations/{conv}/messages?after_seq=10&limit=5"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![11, 12, 13, 14, 15]);
    // Only members read.
    let (status, body) = api(
        &http,
        &stack,
        &token_for(&stack, "eve"),
        Method::GET,
        &format!("/api/v1/conversations/{conv}/messages"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "not_a_member");
    // The conversation list shows last_seq and unread.
    let (_, list) = api(
        &http,
        &stack,
        &bob_t,
        Method::GET,
        "/api/v1/conversations",
        None,
    )
    .await;
    let entry = &list["conversations"].as_array().unwrap()[0];
    assert_eq!(entry["id"], conv.as_str());
    assert_eq!(entry["last_seq"], 50);
    assert_eq!(entry["unread"], 50);

    // What an operator sees.
    let bob_server = stack.socket_servers[1].http_url();
    assert_eq!(
        metric(&http, &bob_server, "switchboard_socket_connections").await,
        1.0
    );
    assert!(
        metric(
            &http,
            &bob_server,
            "switchboard_socket_delivery_latency_seconds_count"
        )
        .await
            >= 50.0
    );
    assert!(metric(&http, &bob_server, "switchboard_socket_deliveries_total").await >= 50.0);
    let mut numbered = 0.0;
    for m in &stack.managers {
        numbered += metric(&http, &m.url(), "switchboard_manager_messages_sent_total").await;
        assert!(
            metric(
                &http,
                &m.url(),
                "switchboard_http_request_duration_seconds_count"
            )
            .await
                > 0.0
        );
    }
    assert_eq!(numbered, 50.0);
    let ms = stack.message_service.as_ref().unwrap().url();
    assert_eq!(
        metric(&http, &ms, "switchboard_messages_stored_total").await,
        50.0
    );
    assert!(metric(&http, &ms, "switchboard_ingest_lag_seconds").await >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_of_50_over_3_servers_every_device_gets_every_message_once_in_order() {
    let stack = chat_stack().await;
    let http = http();
    let users: Vec<String> = (0..50).map(|i| format!("member{i}")).collect();
    let owner_t = token_for(&stack, &users[0]);
    let conv = create_conversation(
        &http,
        &stack,
        &owner_t,
        json!({"kind":"group","name":"fifty","members": users[1..]}),
    )
    .await;
    // Every user on a server by index; every fifth user with a second device elsewhere.
    let mut devices = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let token = token_for(&stack, user);
        let server = &stack.socket_servers[i % 3];
        devices.push((
            user.clone(),
            WsClient::connect(&server.ws_url(), &token).await.unwrap(),
        ));
        if i % 5 == 0 {
            let other = &stack.socket_servers[(i + 1) % 3];
            devices.push((
                user.clone(),
                WsClient::connect(&other.ws_url(), &token).await.unwrap(),
            ));
        }
    }
    // Three members send 10 each, concurrently.
    let mut senders = Vec::new();
    for s in [1usize, 2, 3] {
        let token = token_for(&stack, &users[s]);
        let url = stack.socket_servers[s % 3].ws_url();
        let conv = conv.clone();
        senders.push(tokio::spawn(async move {
            let mut client = WsClient::connect(&url, &token).await.unwrap();
            for i in 0..10 {
                client
                    .send_message(&conv, &format!("s{s}-{i}"), "hi all")
                    .await;
            }
            let frames = client
                .collect_until(Duration::from_secs(20), |f| sent_of(f).len() >= 10)
                .await;
            sent_of(&frames)
        }));
    }
    let mut acknowledged = HashSet::new();
    for s in senders {
        for (_, (seq, id)) in s.await.unwrap() {
            acknowledged.insert((seq, id));
        }
    }
    assert_eq!(acknowledged.len(), 30);
    for (user, device) in &mut devices {
        let frames = device
            .collect_until(Duration::from_secs(20), |f| {
                messages_of(f, &conv).len() >= 30
            })
            .await;
        let got = messages_of(&frames, &conv);
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=30).collect::<Vec<_>>(),
            "{user}: all 30, once, in order"
        );
        let ids: HashSet<(u64, String)> = got.into_iter().collect();
        assert_eq!(ids, acknowledged, "{user}: the acknowledged messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_through_two_managers_get_gapless_seqs_and_resends_are_idempotent() {
    let stack = chat_stack().await;
    assert_eq!(stack.managers.len(), 2);
    let http = http();
    let users: Vec<String> = (0..6).map(|i| format!("racer{i}")).collect();
    let conv = create_conversation(
        &http,
        &stack,
        &token_for(&stack, &users[0]),
        json!({"kind":"group","name":"race","members": users[1..]}),
    )
    .await;
    let mut watcher = WsClient::connect(
        &stack.socket_servers[2].ws_url(),
        &token_for(&stack, "racer5"),
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for (n, user) in users.iter().take(5).enumerate() {
        let url = stack.socket_servers[n % 3].ws_url();
        let token = token_for(&stack, user);
        let conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = WsClient::connect(&url, &token).await.unwrap();
            for i in 0..20 {
                client.send_message(&conv, &format!("{n}-{i}"), "go").await;
            }
            let frames = client
                .collect_until(Duration::from_secs(30), |f| sent_of(f).len() >= 20)
                .await;
            let first = sent_of(&frames);
            // Resending an id returns the same message and seq.
            client.send_message(&conv, &format!("{n}-0"), "go").await;
            let again = client.collect_until(WAIT, |f| !sent_of(f).is_empty()).await;
            assert_eq!(sent_of(&again)[&format!("{n}-0")], first[&format!("{n}-0")]);
            first
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap().into_values().map(|(s, _)| s));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=100).collect::<Vec<_>>(),
        "exactly 1..N, no gap, no duplicate"
    );
    let frames = watcher
        .collect_until(Duration::from_secs(20), |f| {
            messages_of(f, &conv).len() >= 100
        })
        .await;
    let seen: Vec<u64> = messages_of(&frames, &conv)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        seen,
        (1..=100).collect::<Vec<_>>(),
        "a device sees them in order"
    );
    // One row per message, despite the resends.
    let stored = history_with(&http, &stack, &token_for(&stack, "racer0"), &conv, 100).await;
    assert_eq!(stored.len(), 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        history(&http, &stack, &token_for(&stack, "racer0"), &conv, 0)
            .await
            .len(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_device_catches_up_from_history_and_fills_gaps() {
    let stack = chat_stack().await;
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    for i in 0..20 {
        alice
            .send_message(&conv, &format!("o{i}"), "while you were out")
            .await;
    }
    let sent = sent_of(
        &alice
            .collect_until(Duration::from_secs(20), |f| sent_of(f).len() >= 20)
            .await,
    );
    assert_eq!(sent.len(), 20);

    // Bob comes online later and asks history after his last seen seq (0).
    let mut bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    let missed = history_with(&http, &stack, &bob_t, &conv, 20).await;
    assert_eq!(missed.len(), 20);
    // Live from now on: one more message arrives with seq 21.
    alice.send_message(&conv, "live", "now").await;
    let frames = bob
        .collect_until(WAIT, |f| !messages_of(f, &conv).is_empty())
        .await;
    assert_eq!(messages_of(&frames, &conv)[0].0, 21);
    // A client that saw seq 12 then 21 fills the gap 13..20 from history.
    let (status, gap) = api(
        &http,
        &stack,
        &bob_t,
        Method::GET,
        &format!("/api/v1/conversations/{conv}/messages?after_seq=12&limit=8"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = gap["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_members_and_oversized_bodies_are_refused() {
    let stack = chat_stack().await;
    let http = http();
    let conv = create_conversation(
        &http,
        &stack,
        &token_for(&stack, "alice"),
        json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let mut eve = WsClient::connect(&stack.socket_servers[0].ws_url(), &token_for(&stack, "eve"))
        .await
        .unwrap();
    eve.send_message(&conv, "sneaky", "let me in").await;
    match eve.next_frame(WAIT).await {
        Some(ServerFrame::Error {
            code,
            client_msg_id,
            ..
        }) => {
            assert_eq!(code, ErrorCode::NotAMember);
            assert_eq!(client_msg_id.as_deref(), Some("sneaky"));
        }
        other => panic!("expected not_a_member, got {other:?}"),
    }
    // Not a conversation id at all, or one built to reach another path when pasted into an
    // internal URL: never a member, and nothing else happens.
    for bogus in [
        "no-such-conversation",
        "../../internal/v1/users/eve/contacts?x=",
    ] {
        eve.send_message(bogus, "x", "hello?").await;
        assert!(matches!(
            eve.next_frame(WAIT).await,
            Some(ServerFrame::Error {
                code: ErrorCode::NotAMember,
                ..
            })
        ));
    }
    let mut alice = WsClient::connect(
        &stack.socket_servers[0].ws_url(),
        &token_for(&stack, "alice"),
    )
    .await
    .unwrap();
    alice
        .send_message(&conv, "big", &"x".repeat(64 * 1024 + 1))
        .await;
    assert!(matches!(
        alice.next_frame(WAIT).await,
        Some(ServerFrame::Error {
            code: ErrorCode::TooLarge,
            ..
        })
    ));
    // Nothing was stored or numbered by the refusals: the next message is seq 1.
    alice.send_message(&conv, "ok", "fine").await;
    match alice.next_frame(WAIT).await {
        Some(ServerFrame::Sent { seq, .. }) => assert_eq!(seq, 1),
        other => panic!("expected sent, got {other:?}"),
    }
    // Group membership changes through REST.
    let alice_t = token_for(&stack, "alice");
    let group = create_conversation(
        &http,
        &stack,
        &alice_t,
        json!({"kind":"group","name":"g","members":["bob"]}),
    )
    .await;
    let (status, _) = api(
        &http,
        &stack,
        &alice_t,
        Method::POST,
        &format!("/api/v1/conversations/{group}/members"),
        Some(json!({"user_id":"carol"})),
    )
    .await;
    assert_eq!(status, 200);
    let mut carol = WsClient::connect(
        &stack.socket_servers[1].ws_url(),
        &token_for(&stack, "carol"),
    )
    .await
    .unwrap();
    carol.send_message(&group, "hi", "I'm in").await;
    assert!(matches!(
        carol.next_frame(WAIT).await,
        Some(ServerFrame::Sent { .. })
    ));
    let (status, _) = api(
        &http,
        &stack,
        &alice_t,
        Method::DELETE,
        &format!("/api/v1/conversations/{group}/members/carol"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    carol.send_message(&group, "hi2", "still here?").await;
    assert!(matches!(
        carol.next_frame(WAIT).await,
        Some(ServerFrame::Error {
            code: ErrorCode::NotAMember,
            ..
        })
    ));
    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::POST,
        "/api/v1/conversations",
        Some(json!({"kind":"direct","members":["a","b"]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = api(
        &http,
        &stack,
        "not-a-token",
        Method::GET,
        "/api/v1/conversations",
        None,
    )
    .await;
    assert_eq!(status, 401);
}

/// Group roles: the owner and admins manage members, only the owner names admins, anyone may
/// leave, and ownership passes on when the owner leaves. A removal takes effect within a
/// second everywhere: the removed member's sends are refused and it stops receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_roles_limit_who_manages_members_and_removals_take_effect_at_once() {
    let stack = chat_stack().await;
    let http = http();
    let t = |user: &str| token_for(&stack, user);
    let group = create_conversation(
        &http,
        &stack,
        &t("alice"),
        json!({"kind":"group","name":"roles","members":["bob","carol","dave"]}),
    )
    .await;
    let path = format!("/api/v1/conversations/{group}/members");
    let call = |who: &str, method: Method, path: String, body: Option<serde_json::Value>| {
        let (http, token, stack) = (http.clone(), t(who), &stack);
        async move { api(&http, stack, &token, method, &path, body).await }
    };

    // A plain member neither adds nor removes, nor names admins.
    let (status, body) = call(
        "bob",
        Method::POST,
        path.clone(),
        Some(json!({"user_id":"erin"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = call("bob", Method::DELETE, format!("{path}/carol"), None).await;
    assert_eq!(status, 403);
    let (status, _) = call(
        "bob",
        Method::PUT,
        format!("{path}/bob/role"),
        Some(json!({"role":"admin"})),
    )
    .await;
    assert_eq!(status, 403);

    // The owner names bob admin; an admin adds and removes members, but not the owner.
    let (status, body) = call(
        "alice",
        Method::PUT,
        format!("{path}/bob/role"),
        Some(json!({"role":"admin"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"]["alice"], "owner");
    assert_eq!(body["roles"]["bob"], "admin");
    assert_eq!(body["roles"]["carol"], "member");
    let (status, _) = call(
        "alice",
        Method::PUT,
        format!("{path}/bob/role"),
        Some(json!({"role":"owner"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        "bob",
        Method::POST,
        path.clone(),
        Some(json!({"user_id":"erin"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call("bob", Method::DELETE, format!("{path}/alice"), None).await;
    assert_eq!(status, 403);

    // carol is connected and has sent (the membership mirror is warm); then bob removes her.
    let mut carol = WsClient::connect(&stack.socket_servers[1].ws_url(), &t("carol"))
        .await
        .unwrap();
    let mut erin = WsClient::connect(&stack.socket_servers[2].ws_url(), &t("erin"))
        .await
        .unwrap();
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &t("alice"))
        .await
        .unwrap();
    carol.send_message(&group, "c1", "before").await;
    let first = carol
        .collect_until(WAIT, |fs| {
            fs.iter().any(|f| matches!(f, ServerFrame::Sent { .. }))
        })
        .await;
    assert!(
        first.iter().any(|f| matches!(f, ServerFrame::Sent { .. })),
        "{first:?}"
    );
    let (status, _) = call("bob", Method::DELETE, format!("{path}/carol"), None).await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_secs(1)).await;
    carol.send_message(&group, "c2", "after").await;
    let frames = carol
        .collect_until(WAIT, |fs| {
            fs.iter()
                .any(|f| matches!(f, ServerFrame::Error { .. } | ServerFrame::Sent { .. }))
        })
        .await;
    assert!(
        frames.iter().any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::NotAMember, client_msg_id, .. } if client_msg_id.as_deref() == Some("c2"))),
        "a removed member's send must be refused: {frames:?}"
    );
    // alice's next message reaches erin, never carol.
    alice.send_message(&group, "a1", "carol is gone").await;
    let got = erin
        .collect_until(WAIT, |fs| {
            fs.iter().any(
                |f| matches!(f, ServerFrame::Message { sender_id, .. } if sender_id == "alice"),
            )
        })
        .await;
    assert!(
        !messages_of(&got, &group).is_empty(),
        "erin gets the group's messages"
    );
    let late = carol.collect_until(Duration::from_secs(2), |_| false).await;
    assert!(
        messages_of(&late, &group).is_empty(),
        "a removed member stops receiving: {late:?}"
    );

    // Anyone may leave; when the owner leaves, the admin becomes the owner.
    let (status, _) = call("dave", Method::DELETE, format!("{path}/dave"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call("alice", Method::DELETE, format!("{path}/alice"), None).await;
    assert_eq!(status, 204);
    let (status, body) = call(
        "bob",
        Method::PUT,
        format!("{path}/erin/role"),
        Some(json!({"role":"admin"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"]["bob"], "owner");
    assert!(body["roles"].get("alice").is_none());
}

/// Identity providers' subjects (`auth0|…`, e-mail addresses) are user ids: they chat, and
/// they travel percent-encoded in URL paths, public and internal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_provider_user_ids_chat_and_are_escaped_in_paths() {
    let stack = chat_stack().await;
    let http = http();
    let (owner, provider_user) = ("ann+work@example.com", "auth0|5f7c8ec7c33c6c004bbafe82");
    let group = create_conversation(
        &http,
        &stack,
        &token_for(&stack, owner),
        json!({"kind":"group","name":"idp","members":[provider_user]}),
    )
    .await;
    let mut device = WsClient::connect(
        &stack.socket_servers[1].ws_url(),
        &token_for(&stack, provider_user),
    )
    .await
    .unwrap();
    device.send_message(&group, "p1", "hello from auth0").await;
    let frames = device
        .collect_until(WAIT, |fs| {
            fs.iter().any(|f| matches!(f, ServerFrame::Sent { .. }))
        })
        .await;
    assert!(
        frames.iter().any(|f| matches!(f, ServerFrame::Sent { .. })),
        "{frames:?}"
    );
    let (status, body) = api(
        &http,
        &stack,
        &token_for(&stack, owner),
        Method::DELETE,
        &format!("/api/v1/conversations/{group}/members/auth0%7C5f7c8ec7c33c6c004bbafe82"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = api(
        &http,
        &stack,
        &token_for(&stack, owner),
        Method::POST,
        &format!("/api/v1/conversations/{group}/members"),
        Some(json!({"user_id":"has:colon"})),
    )
    .await;
    assert_eq!(
        status, 400,
        "':' never becomes part of a user id (it splits Redis keys)"
    );
}
