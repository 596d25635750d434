//! Push notifications against a real stack (nginx, PostgreSQL, Redis, the broker, a manager,
//! the message service and the dispatcher as processes) and the reference gateway
//! (`push::sink`, the code `push-gateway-sink` runs) in the test:
//!
//! - device registration: created, updated (and moved to a new user) by pushkey, deleted,
//!   bounded per user, bad input refused;
//! - a recipient with no connection gets exactly one push per coalescing window (the newest
//!   message, the unread count, signed); the sender and a member without a device get none;
//! - a recipient online who reads within the grace period gets none (counted as suppressed);
//!   one online who does not read is pushed after it;
//! - a pushkey the gateway rejects is removed: the next push goes without it;
//! - the gateway down (and the dispatcher killed with SIGKILL meanwhile): the push whose
//!   message is still within the TTL arrives once the gateway is back, the other is dropped
//!   and counted once.
//!
//! Needs the service binaries: `cargo build --bins -p registry -p socket-server
//! -p socket-manager -p message-service -p webhook-dispatcher`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::kv;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard_client::{Api, Connection};
use switchboard_config::names::{
    SB_PUSH_COALESCE_MS, SB_PUSH_GATEWAY_SECRET, SB_PUSH_GATEWAY_URL, SB_PUSH_GRACE_MS,
    SB_PUSH_PREVIEW_CHARS, SB_PUSH_RETRY_BASE_MS, SB_PUSH_RETRY_MAX_DELAY_MS, SB_PUSH_TTL_SECS,
};
use switchboard_protocol::frames::ClientFrame;
use switchboard_test_support::{Stack, StackOptions};
use webhook_dispatcher::push::sink::{Received, Sink};
use webhook_dispatcher::signing;

/// The two tests each start a stack; one at a time on a small machine.
static ONE_STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const APP: &str = "com.example.chat";

async fn stack(sink: &Sink, secret: &str, extra: &[(&str, &str)]) -> Stack {
    let mut env = vec![
        kv(SB_PUSH_GATEWAY_URL, &sink.url()),
        kv(SB_PUSH_GATEWAY_SECRET, secret),
        kv(SB_PUSH_COALESCE_MS, "2000"),
        kv(SB_PUSH_GRACE_MS, "5000"),
        kv(SB_PUSH_PREVIEW_CHARS, "12"),
        kv(SB_PUSH_RETRY_BASE_MS, "200"),
        kv(SB_PUSH_RETRY_MAX_DELAY_MS, "1000"),
    ];
    env.extend(extra.iter().map(|(k, v)| kv(k, v)));
    Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 0,
        managers: 1,
        webhook_dispatcher: true,
        extra_env: env,
        ..StackOptions::default()
    })
    .await
    .unwrap()
}

fn api(stack: &Stack, user: &str) -> (Api, String) {
    let token = stack
        .token_keys()
        .mint(
            &switchboard_protocol::UserId::parse(user).unwrap(),
            chrono::Duration::hours(1),
        )
        .unwrap()
        .0;
    (Api::new(&stack.nginx_url()).as_user(&token), token)
}

async fn register(api: &Api, pushkey: &str) -> (u16, Value) {
    let (status, body) = api
        .raw(
            Method::POST,
            "/api/v1/push/devices",
            Some(&json!({"app_id": APP, "platform": "fcm", "pushkey": pushkey, "data": {"k": 1}})),
        )
        .await
        .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn pushkeys(api: &Api) -> Vec<String> {
    let (status, body) = api
        .raw(Method::GET, "/api/v1/push/devices", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pushkey"].as_str().unwrap().to_owned())
        .collect()
}

fn pushes_for(sink: &Sink, user: &str) -> Vec<Received> {
    sink.pushes()
        .into_iter()
        .filter(|p| p.body["user_id"] == user)
        .collect()
}

async fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(stack: &Stack, name: &str) -> u64 {
    let text = reqwest::get(format!(
        "{}/metrics",
        stack.webhook_dispatcher.as_ref().unwrap().url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("switchboard_{name} ")))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn wait_online(api: &Api, users: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let presence = api.presence(users).await.unwrap();
        if presence
            .iter()
            .all(|p| serde_json::to_value(p.status).unwrap() == "online")
        {
            return;
        }
        assert!(Instant::now() < deadline, "not online: {presence:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(conn: &mut Connection, conversation: &str, cmid: &str, body: &str) -> (u64, String) {
    let ack = conn
        .send_and_expect_sent(conversation, cmid, body, Duration::from_secs(10))
        .await
        .expect("sent");
    (ack.seq, ack.message_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_push_per_window_none_after_a_read_in_the_grace_period_and_rejected_pushkeys_go() {
    let _one = ONE_STACK.lock().await;
    let secret = signing::new_secret();
    let sink = Sink::bind(
        "127.0.0.1:0",
        Some(secret.clone()),
        HashSet::from(["bob-old-phone".to_owned()]),
    )
    .unwrap()
    .spawn();
    let stack = stack(&sink, &secret, &[]).await;
    let (alice, alice_token) = api(&stack, "alice");
    let (bob, _) = api(&stack, "bob");
    let (carol, carol_token) = api(&stack, "carol");
    let (dave, dave_token) = api(&stack, "dave");
    let (frank, _) = api(&stack, "frank");

    // Registration: a user token only; checked fields; the same pushkey is one device.
    let anonymous = Api::new(&stack.nginx_url());
    let (status, _) = anonymous
        .raw(Method::GET, "/api/v1/push/devices", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = bob
        .raw(
            Method::POST,
            "/api/v1/push/devices",
            Some(&json!({"app_id": APP, "platform": "symbian", "pushkey": "x"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = bob
        .raw(
            Method::POST,
            "/api/v1/push/devices",
            Some(&json!({"app_id": APP, "platform": "apns", "pushkey": ""})),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, phone) = register(&bob, "bob-phone").await;
    assert_eq!(status, 201, "{phone}");
    let (status, again) = register(&bob, "bob-phone").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["device_id"], phone["device_id"]);
    assert_eq!(register(&bob, "bob-old-phone").await.0, 201);
    // A tablet that changes hands moves to its new user.
    let (status, tablet) = register(&alice, "shared-tablet").await;
    assert_eq!(status, 201);
    let (status, moved) = register(&bob, "shared-tablet").await;
    assert_eq!(status, 200);
    assert_eq!(moved["device_id"], tablet["device_id"]);
    assert!(pushkeys(&alice).await.is_empty());
    // Logout deletes it; only its owner can.
    let path = format!(
        "/api/v1/push/devices/{}",
        tablet["device_id"].as_str().unwrap()
    );
    assert_eq!(alice.raw(Method::DELETE, &path, None).await.unwrap().0, 404);
    assert_eq!(bob.raw(Method::DELETE, &path, None).await.unwrap().0, 204);
    assert_eq!(bob.raw(Method::DELETE, &path, None).await.unwrap().0, 404);
    let mut mine = pushkeys(&bob).await;
    mine.sort();
    assert_eq!(mine, vec!["bob-old-phone", "bob-phone"]);
    // Bounded per user.
    for i in 0..20 {
        assert_eq!(register(&frank, &format!("frank-{i}")).await.0, 201);
    }
    let (status, refused) = register(&frank, "frank-20").await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    assert_eq!(
        register(&frank, "frank-3").await.0,
        200,
        "an update is no new device"
    );

    assert_eq!(register(&alice, "alice-phone").await.0, 201);
    assert_eq!(register(&carol, "carol-phone").await.0, 201);
    assert_eq!(register(&dave, "dave-phone").await.0, 201);
    // erin is a member without a device.
    let group = alice
        .create_group("push", ["bob", "carol", "dave", "erin"])
        .await
        .unwrap()
        .id;

    let mut carol_conn = carol.connect(&carol_token).await.unwrap();
    let dave_conn = dave.connect(&dave_token).await.unwrap().keep_alive();
    wait_online(&alice, &["carol", "dave"]).await;
    let mut alice_conn = alice.connect(&alice_token).await.unwrap();

    // Five messages within the window: one push for bob, for the newest.
    let started = Instant::now();
    let mut last = (0, String::new());
    for i in 1..=5 {
        last = send(
            &mut alice_conn,
            &group,
            &format!("w1-{i}"),
            &format!("window one #{i}"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(started.elapsed() < Duration::from_millis(1800));
    // carol reads on her connected device within the grace period.
    carol_conn
        .send(&ClientFrame::Read {
            conversation_id: group.clone(),
            seq: last.0,
        })
        .await
        .unwrap();
    let carol_keep = carol_conn.keep_alive();

    let first = wait_for("bob's first push", Duration::from_secs(15), || {
        pushes_for(&sink, "bob").into_iter().next()
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "pushed after {waited:?}, before the coalescing window closed"
    );
    let body = &first.body;
    assert!(first.verified, "the push is signed with the gateway secret");
    assert_eq!(body["conversation_id"], group.as_str());
    assert_eq!(body["seq"], last.0);
    assert_eq!(body["message_id"], last.1.as_str());
    assert_eq!(body["sender_id"], "alice");
    assert_eq!(body["counts"]["unread"], 5);
    assert_eq!(body["body_preview"], "window one #");
    let mut keys: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pushkey"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["bob-old-phone", "bob-phone"]);
    assert_eq!(body["devices"][0]["platform"], "fcm");
    assert_eq!(body["devices"][0]["data"]["k"], 1);

    // The gateway rejected bob-old-phone: its device is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pushkeys(&bob).await != vec!["bob-phone"] {
        assert!(Instant::now() < deadline, "{:?}", pushkeys(&bob).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // After the grace period: dave (online, unread) pushed; carol (read) not.
    let dave_push = wait_for(
        "dave's push after the grace period",
        Duration::from_secs(15),
        || pushes_for(&sink, "dave").into_iter().next(),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(4900));
    assert_eq!(dave_push.body["seq"], last.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        pushes_for(&sink, "carol").is_empty(),
        "carol read within the grace period"
    );
    assert!(metric(&stack, "push_suppressed_total").await >= 1);
    assert_eq!(pushes_for(&sink, "bob").len(), 1, "one push per window");

    // A message after the window: a second push for bob, without the rejected pushkey.
    // A fresh connection: the first one answered no ping while the test waited.
    let mut alice_conn = alice.connect(&alice_token).await.unwrap();
    let next = send(&mut alice_conn, &group, "w2-1", "window two").await;
    let second = wait_for("bob's second push", Duration::from_secs(15), || {
        pushes_for(&sink, "bob").into_iter().nth(1)
    })
    .await;
    assert_eq!(second.body["seq"], next.0);
    assert_eq!(second.body["counts"]["unread"], 6);
    let keys: Vec<&str> = second.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pushkey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["bob-phone"]);
    assert_ne!(second.id, first.id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pushes_for(&sink, "bob").len(),
        2,
        "exactly one push per window"
    );
    assert!(
        pushes_for(&sink, "alice").is_empty(),
        "the sender is not pushed"
    );
    assert!(pushes_for(&sink, "erin").is_empty(), "no device, no push");
    assert_eq!(metric(&stack, "push_rejected_devices_total").await, 1);
    assert!(metric(&stack, "push_sent_total").await >= 3);

    carol_keep.abort();
    dave_conn.abort();
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_down_pushes_arrive_after_or_are_dropped_once_past_the_ttl() {
    let _one = ONE_STACK.lock().await;
    let secret = signing::new_secret();
    let sink = Sink::bind("127.0.0.1:0", Some(secret.clone()), HashSet::new())
        .unwrap()
        .spawn();
    let port = sink.port;
    let mut stack = stack(&sink, &secret, &[(SB_PUSH_TTL_SECS, "15")]).await;
    let (alice, alice_token) = api(&stack, "alice");
    let (bob, _) = api(&stack, "bob");
    assert_eq!(register(&bob, "bob-phone").await.0, 201);
    let early = alice.create_group("early", ["bob"]).await.unwrap().id;
    let late = alice.create_group("late", ["bob"]).await.unwrap().id;
    let mut alice_conn = alice.connect(&alice_token).await.unwrap();

    // The gateway goes down.
    let state = sink.stop().await;
    let down = Instant::now();
    let (_, early_id) = send(&mut alice_conn, &early, "e1", "early").await;
    // The dispatcher is killed while the push waits for the gateway, and comes back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.webhook_dispatcher.as_ref().unwrap().process.kill9();
    stack.restart_webhook_dispatcher().await.unwrap();
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(down.elapsed())).await;
    // A fresh connection: the first one answered no ping while the test slept.
    let mut alice_conn = alice.connect(&alice_token).await.unwrap();
    let (late_seq, late_id) = send(&mut alice_conn, &late, "l1", "late").await;
    // Back when the early message is past the TTL (15 s) and the late one is not.
    tokio::time::sleep(Duration::from_secs(18).saturating_sub(down.elapsed())).await;
    let sink = Sink::bind_with(&format!("127.0.0.1:{port}"), state)
        .unwrap()
        .spawn();

    let arrived = wait_for(
        "the late push after the outage",
        Duration::from_secs(15),
        || {
            pushes_for(&sink, "bob")
                .into_iter()
                .find(|p| p.body["conversation_id"] == late.as_str())
        },
    )
    .await;
    assert!(arrived.verified);
    assert_eq!(arrived.body["message_id"], late_id.as_str());
    assert_eq!(arrived.body["seq"], late_seq);
    assert!(
        arrived.body.get("body_preview").is_some(),
        "preview configured"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&stack, "push_dropped_total").await < 1 {
        assert!(Instant::now() < deadline, "the early push was not dropped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bobs = pushes_for(&sink, "bob");
    assert!(
        bobs.iter()
            .all(|p| p.body["message_id"] != early_id.as_str()),
        "a push past its TTL was sent: {bobs:?}"
    );
    let ids: Vec<&str> = bobs.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "the late push once: {ids:?}");
    assert_eq!(
        metric(&stack, "push_dropped_total").await,
        1,
        "dropped, counted once"
    );
    assert!(metric(&stack, "push_retries_total").await >= 1);
    assert!(metric(&stack, "push_failed_attempts_total").await >= 1);
    sink.stop().await;
}
