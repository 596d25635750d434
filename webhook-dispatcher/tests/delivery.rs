//! Webhook delivery against a real stack (nginx, PostgreSQL, the broker, the managers, the
//! message service and the dispatcher as processes) and a sink in the test that fails as it
//! is told: 503 three times, a 429 with `Retry-After`, then two stalls past the dispatcher's
//! timeout. Every `message.created` arrives, signed (verified against the endpoint's secret),
//! in `seq` order per conversation, and the unique `webhook-id`s are exactly the messages
//! sent; a second endpoint answering 410 is disabled and never holds up the first; the
//! dispatcher is killed with SIGKILL in the middle and nothing is lost.
//!
//! Needs the service binaries: `cargo build --bins -p registry -p socket-server
//! -p socket-manager -p message-service -p webhook-dispatcher`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{key_env, kv, webhooks_api, Act, Sink};
use reqwest::Method;
use serde_json::{json, Value};
use switchboard_client::Api;
use switchboard_config::names::{
    SB_WEBHOOK_ALLOW_NETS, SB_WEBHOOK_RETRY_BASE_MS, SB_WEBHOOK_RETRY_MAX_DELAY_MS,
    SB_WEBHOOK_TIMEOUT_MS,
};
use switchboard_credentials::api_keys::{mint, Scope};
use switchboard_test_support::{Stack, StackOptions};
use webhook_dispatcher::signing;

const PER_PHASE: usize = 4;

/// Sends `PER_PHASE` messages to each conversation (alternating): (conversation, seq,
/// message id) of each.
async fn send_phase(
    conn: &mut switchboard_client::Connection,
    conversations: &[String],
    phase: usize,
) -> Vec<(String, u64, String)> {
    let mut sent = Vec::new();
    for i in 0..PER_PHASE {
        for c in conversations {
            let cmid = format!("p{phase}-{i}-{c}");
            let ack = conn
                .send_and_expect_sent(
                    c,
                    &cmid,
                    &format!("hello {phase}/{i}"),
                    Duration::from_secs(10),
                )
                .await
                .expect("sent");
            sent.push((c.clone(), ack.seq, ack.message_id));
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_arrives_signed_in_order_through_failures_a_gone_endpoint_and_kill_9() {
    let sink = Sink::start();
    let (key, entry) = mint("backend", vec![Scope::WebhooksManage], 0.0).unwrap();
    let (reader, reader_entry) = mint("reader", vec![Scope::Read], 0.0).unwrap();
    let mut stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 0,
        managers: 1,
        webhook_dispatcher: true,
        extra_env: vec![
            key_env(&[&entry, &reader_entry]),
            kv(SB_WEBHOOK_ALLOW_NETS, "127.0.0.1/32"),
            kv(SB_WEBHOOK_TIMEOUT_MS, "1000"),
            kv(SB_WEBHOOK_RETRY_BASE_MS, "100"),
            kv(SB_WEBHOOK_RETRY_MAX_DELAY_MS, "2000"),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();

    // The API takes only a key with webhooks:manage.
    let body = json!({"url": sink.url("/hook"), "event_types": ["message.created", "conversation.created", "member.added", "member.removed"]});
    let (status, _) = webhooks_api(
        &stack,
        None,
        Method::POST,
        "/server/v1/webhooks",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = webhooks_api(
        &stack,
        Some(&reader),
        Method::POST,
        "/server/v1/webhooks",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, bad) = webhooks_api(
        &stack,
        Some(&key),
        Method::POST,
        "/server/v1/webhooks",
        Some(json!({"url": sink.url("/hook"), "event_types": ["message.deleted"]})),
    )
    .await;
    assert_eq!(status, 400, "{bad}");

    let (status, first) = webhooks_api(
        &stack,
        Some(&key),
        Method::POST,
        "/server/v1/webhooks",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let secret = first["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let first_id = first["id"].as_str().unwrap().to_owned();
    let (status, gone) = webhooks_api(
        &stack,
        Some(&key),
        Method::POST,
        "/server/v1/webhooks",
        Some(json!({"url": sink.url("/gone"), "event_types": ["message.created"]})),
    )
    .await;
    assert_eq!(status, 201, "{gone}");
    let gone_id = gone["id"].as_str().unwrap().to_owned();
    // The secret is shown once: not in a listing.
    let (_, listed) =
        webhooks_api(&stack, Some(&key), Method::GET, "/server/v1/webhooks", None).await;
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("whsec_"));

    // The first endpoint fails in every way before it accepts anything.
    sink.state.lock().unwrap().script.extend([
        Act::Status(503),
        Act::Status(503),
        Act::Status(503),
        Act::TooMany(1),
        Act::Stall(Duration::from_millis(1500)),
        Act::Stall(Duration::from_millis(1500)),
    ]);

    let token = stack
        .token_keys()
        .mint(
            &switchboard_protocol::UserId::parse("alice").unwrap(),
            chrono::Duration::hours(1),
        )
        .unwrap()
        .0;
    let api = Api::new(&stack.nginx_url()).as_user(&token);
    let mut conversations = Vec::new();
    for name in ["one", "two"] {
        conversations.push(api.create_group(name, ["bob"]).await.unwrap().id);
    }
    let mut conn = api.connect(&token).await.unwrap();

    let mut sent = send_phase(&mut conn, &conversations, 1).await;
    // Mid-stream: once the endpoint has accepted something, with deliveries still waiting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink
        .seen("/hook")
        .iter()
        .any(|s| s.answered == 200 && s.body.contains("message.created"))
    {
        assert!(
            Instant::now() < deadline,
            "nothing accepted: {:?}",
            sink.seen("/hook")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.webhook_dispatcher.as_ref().unwrap().process.kill9();
    sent.extend(send_phase(&mut conn, &conversations, 2).await);
    stack.restart_webhook_dispatcher().await.unwrap();
    sent.extend(send_phase(&mut conn, &conversations, 3).await);
    api.add_member(&conversations[0], "carol").await.unwrap();
    api.remove_member(&conversations[0], "carol").await.unwrap();

    let expected: HashSet<String> = sent.iter().map(|(_, _, m)| format!("evt_{m}")).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let accepted: HashSet<String> = sink
            .seen("/hook")
            .into_iter()
            .filter(|s| s.answered == 200)
            .map(|s| s.id)
            .collect();
        if expected.is_subset(&accepted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            expected.difference(&accepted).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let seen = sink.seen("/hook");
    // Every request is signed with the endpoint's secret, timestamped now.
    let now = chrono::Utc::now().timestamp();
    for s in &seen {
        let ts: i64 = s.timestamp.parse().unwrap();
        assert!((now - ts).abs() < 300, "timestamp {ts}");
        assert!(
            signing::verify(&secret, &s.id, ts, s.body.as_bytes(), &s.signature),
            "bad signature on {}",
            s.id
        );
    }
    // The script ran: 503 ×3, a 429, two stalls; Retry-After was honoured.
    let answers: Vec<u16> = seen.iter().map(|s| s.answered).collect();
    assert_eq!(
        &answers[..6],
        &[503, 503, 503, 429, 503, 503],
        "{answers:?}"
    );
    let limited = &seen[3];
    let again = seen
        .iter()
        .find(|s| s.id == limited.id && s.at > limited.at)
        .expect("the delivery answered 429 was retried");
    assert!(
        again.at.duration_since(limited.at) >= Duration::from_millis(950),
        "the retry after Retry-After: 1 came too soon"
    );
    // message.created in seq order per conversation, by first acceptance; ids deduplicated.
    let by_id: HashMap<String, (String, u64)> = sent
        .iter()
        .map(|(c, seq, m)| (format!("evt_{m}"), (c.clone(), *seq)))
        .collect();
    let mut first_accepted = HashSet::new();
    let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicates = 0;
    for s in seen.iter().filter(|s| s.answered == 200) {
        if !first_accepted.insert(s.id.clone()) {
            duplicates += 1;
            continue;
        }
        let body: Value = serde_json::from_str(&s.body).unwrap();
        if body["type"] != "message.created" {
            continue;
        }
        let (conversation, seq) = by_id[&s.id].clone();
        assert_eq!(body["data"]["seq"], seq);
        assert_eq!(body["data"]["conversation_id"], conversation.as_str());
        let last = last_seq.entry(conversation.clone()).or_insert(0);
        assert!(seq > *last, "{conversation}: seq {seq} after {last}");
        *last = seq;
    }
    eprintln!("redelivered after acceptance (deduplicated by webhook-id): {duplicates}");
    // conversation.created came too (the groups were made after the endpoint).
    let created: Vec<Value> = seen
        .iter()
        .filter(|s| s.answered == 200)
        .map(|s| serde_json::from_str::<Value>(&s.body).unwrap())
        .filter(|b| b["type"] == "conversation.created")
        .collect();
    for c in &conversations {
        assert!(
            created
                .iter()
                .any(|b| b["data"]["conversation_id"] == c.as_str()
                    && b["data"]["members"].as_array().unwrap().len() == 2),
            "no conversation.created for {c}: {created:?}"
        );
    }

    // Membership: carol added, then removed, in that order (one stream per conversation).
    let deadline = Instant::now() + Duration::from_secs(30);
    let membership = loop {
        let membership: Vec<(String, String)> = sink
            .seen("/hook")
            .into_iter()
            .filter(|s| s.answered == 200)
            .map(|s| serde_json::from_str::<Value>(&s.body).unwrap())
            .filter(|b| b["type"].as_str().unwrap_or("").starts_with("member."))
            .map(|b| {
                (
                    b["type"].as_str().unwrap().to_owned(),
                    b["data"]["user_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if membership.len() >= 2 || Instant::now() > deadline {
            break membership;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        membership,
        vec![
            ("member.added".to_owned(), "carol".to_owned()),
            ("member.removed".to_owned(), "carol".to_owned())
        ]
    );

    // The 410 endpoint was disabled at its first answer and asked nothing more.
    let (_, gone) = webhooks_api(
        &stack,
        Some(&key),
        Method::GET,
        &format!("/server/v1/webhooks/{gone_id}"),
        None,
    )
    .await;
    assert_eq!(gone["disabled"], true, "{gone}");
    assert_eq!(gone["disabled_reason"], "gone");
    let gone_hits = sink.seen("/gone").len();
    assert!((1..=8).contains(&gone_hits), "{gone_hits}");
    let (_, first) = webhooks_api(
        &stack,
        Some(&key),
        Method::GET,
        &format!("/server/v1/webhooks/{first_id}"),
        None,
    )
    .await;
    assert_eq!(first["disabled"], false, "{first}");

    // The metrics count what happened.
    let metrics = reqwest::get(format!(
        "{}/metrics",
        stack.webhook_dispatcher.as_ref().unwrap().url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("switchboard_webhook_deliveries_total{outcome=\"delivered\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_webhook_retries_total"));
    assert!(metrics.contains("switchboard_webhook_lag_seconds{endpoint="));

    // Deleting an endpoint: 204, then 404.
    let path = format!("/server/v1/webhooks/{gone_id}");
    assert_eq!(
        webhooks_api(&stack, Some(&key), Method::DELETE, &path, None)
            .await
            .0,
        204
    );
    assert_eq!(
        webhooks_api(&stack, Some(&key), Method::GET, &path, None)
            .await
            .0,
        404
    );
    sink.stop().await;
}
