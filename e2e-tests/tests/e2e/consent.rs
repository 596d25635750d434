//! Consent over the whole stack (issue 24 item 7): with `SB_GROUP_ADD_POLICY=invite` and
//! `SB_PRESENCE_POLICY=accepted`, creating a direct conversation shows nothing of the other
//! user until they accept it (here: by sending in it), an invitee neither receives nor sends
//! until accepting, and a block stops the blocked user from starting a conversation.
//! docs/security.md lists these controls.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use switchboard_config::names::{SB_GROUP_ADD_POLICY, SB_PRESENCE_POLICY};
use switchboard_protocol::frames::{PresenceStatus, ServerFrame};
use switchboard_protocol::ErrorCode;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{
    api, create_conversation, http, messages_of, sent_of, token_for, WsClient, WAIT,
};

fn presence_of(frames: &[ServerFrame], who: &str, want: PresenceStatus) -> bool {
    frames.iter().any(|f| {
        matches!(f, ServerFrame::Presence { user_id, status, .. } if user_id == who && *status == want)
    })
}

fn refused_as_not_a_member(frames: &[ServerFrame], client_msg_id: &str) -> bool {
    frames.iter().any(|f| {
        matches!(f, ServerFrame::Error { code: ErrorCode::NotAMember, client_msg_id: Some(c), .. } if c == client_msg_id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_invites_and_blocks_need_consent() {
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        extra_env: vec![
            (SB_GROUP_ADD_POLICY.into(), "invite".into()),
            (SB_PRESENCE_POLICY.into(), "accepted".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let (alice_t, bob_t, carol_t) = (
        token_for(&stack, "alice"),
        token_for(&stack, "bob"),
        token_for(&stack, "carol"),
    );
    let servers: Vec<String> = stack.socket_servers.iter().map(|s| s.ws_url()).collect();

    // alice opens a direct conversation with bob: that alone shows her nothing of bob.
    let dm = create_conversation(
        &http,
        &stack,
        &alice_t,
        json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let mut alice = WsClient::connect(&servers[0], &alice_t).await.unwrap();
    let bob = WsClient::connect(&servers[1], &bob_t).await.unwrap();
    let frames = alice
        .collect_until(Duration::from_secs(3), |f| {
            presence_of(f, "bob", PresenceStatus::Online)
        })
        .await;
    assert!(
        !presence_of(&frames, "bob", PresenceStatus::Online),
        "alice saw bob's presence through a conversation bob never accepted"
    );
    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::GET,
        "/api/v1/presence?user_id=bob",
        None,
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    bob.close().await;

    // bob answers in it: a message of his stored is acceptance. His next arrival shows.
    let mut bob = WsClient::connect(&servers[1], &bob_t).await.unwrap();
    bob.send_message(&dm, "hi-alice", "hi").await;
    let frames = bob
        .collect_until(WAIT, |f| sent_of(f).contains_key("hi-alice"))
        .await;
    assert!(sent_of(&frames).contains_key("hi-alice"), "{frames:?}");
    let accepted = crate::client::eventually(WAIT, || {
        let (http, stack, alice_t) = (&http, &stack, &alice_t);
        async move {
            api(
                http,
                stack,
                alice_t,
                Method::GET,
                "/api/v1/presence?user_id=bob",
                None,
            )
            .await
            .0 == 200
        }
    })
    .await;
    assert!(
        accepted,
        "bob's stored message never made the conversation accepted"
    );
    bob.close().await;
    // Offline first: a reconnect reported before the close would be no transition at all
    // (bob never left), and no presence frame would follow.
    let frames = alice
        .collect_until(WAIT, |f| presence_of(f, "bob", PresenceStatus::Offline))
        .await;
    assert!(
        presence_of(&frames, "bob", PresenceStatus::Offline),
        "{frames:?}"
    );
    let _bob = WsClient::connect(&servers[1], &bob_t).await.unwrap();
    let frames = alice
        .collect_until(WAIT, |f| presence_of(f, "bob", PresenceStatus::Online))
        .await;
    assert!(presence_of(&frames, "bob", PresenceStatus::Online));

    // A group invites carol: until she accepts she gets nothing and cannot send.
    let (status, group) = api(
        &http,
        &stack,
        &alice_t,
        Method::POST,
        "/api/v1/conversations",
        Some(json!({"kind":"group","name":"club","members":["carol"]})),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["invited"], json!(["carol"]));
    let group = group["id"].as_str().unwrap().to_owned();
    let mut carol = WsClient::connect(&servers[1], &carol_t).await.unwrap();
    alice.send_message(&group, "before", "only alice").await;
    carol.send_message(&group, "uninvited", "let me in").await;
    let frames = carol
        .collect_until(Duration::from_secs(3), |f| {
            refused_as_not_a_member(f, "uninvited")
        })
        .await;
    assert!(refused_as_not_a_member(&frames, "uninvited"), "{frames:?}");
    assert!(messages_of(&frames, &group).is_empty(), "{frames:?}");

    let (status, joined) = api(
        &http,
        &stack,
        &carol_t,
        Method::POST,
        &format!("/api/v1/conversations/{group}/accept"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    alice.send_message(&group, "after", "welcome").await;
    let frames = carol
        .collect_until(WAIT, |f| !messages_of(f, &group).is_empty())
        .await;
    assert_eq!(
        messages_of(&frames, &group).len(),
        1,
        "the accepted member receives what is sent after: {frames:?}"
    );
    carol.send_message(&group, "member-now", "thanks").await;
    let frames = carol
        .collect_until(WAIT, |f| sent_of(f).contains_key("member-now"))
        .await;
    assert!(sent_of(&frames).contains_key("member-now"), "{frames:?}");

    // carol blocks alice (through the public entry point, nginx); alice can then neither start
    // a direct conversation with her nor invite her anywhere.
    let (status, body) = api(
        &http,
        &stack,
        &carol_t,
        Method::PUT,
        "/api/v1/blocks/alice",
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::POST,
        "/api/v1/conversations",
        Some(json!({"kind":"direct","members":["carol"]})),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::POST,
        "/api/v1/conversations",
        Some(json!({"kind":"group","name":"again","members":["carol"]})),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
}
