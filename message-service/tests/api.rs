//! The fast tier for the message service: `Application::build` on port 0 against the test
//! binary's shared PostgreSQL (a fresh database per test), Redis with Sentinels (a key prefix
//! per test) and broker (topics per test), all from `switchboard_test_support::shared`.
//! REST over real HTTP, ingest from real log records, readiness against real dependencies.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use message_service::config::HELP_TABLES;
use message_service::{Application, MessageServiceConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchboard_chat_state::membership::MembershipMirror;
use switchboard_config::names::{
    SB_CONVERSATIONS_PER_MINUTE, SB_DB_REST_MAX_CONNECTIONS, SB_DB_REST_STATEMENT_TIMEOUT_MS,
    SB_GROUP_ADD_POLICY, SB_MEMBERS_ADDED_PER_MINUTE, SB_PRESENCE_POLICY, SB_REDIS_SENTINELS,
    SB_REDIS_TIMEOUT_MS,
};
use switchboard_kafka::KafkaConfig;
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::shared;

struct TestApp {
    url: String,
    id: String,
    database_url: String,
    kafka: KafkaConfig,
    http: reqwest::Client,
}

/// A message service for a new test: its own database, key prefix and topics.
async fn spawn_app(name: &str) -> TestApp {
    spawn_app_with(name, &[]).await
}

/// [`spawn_app`] with some variables of the test's own.
async fn spawn_app_with(name: &str, vars: &[(&str, &str)]) -> TestApp {
    shared::warm_up();
    let id = shared::unique(name);
    let database_url = shared::fresh_database(&id).await;
    let mut all = shared::message_service_vars(&id, &database_url);
    for (name, value) in vars {
        all.set(name, value);
    }
    let config = all.config(HELP_TABLES, MessageServiceConfig::from_lookup);
    shared::create_topics(
        &config.kafka.brokers,
        &[&config.kafka.message_topic, &config.kafka.events_topic],
        1,
    )
    .await
    .expect("topics");
    let kafka = config.kafka.clone();
    let app = Application::build(config)
        .await
        .expect("the message service builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(CancellationToken::new()));
    TestApp {
        url,
        id,
        database_url,
        kafka,
        http: reqwest::Client::new(),
    }
}

impl TestApp {
    async fn post(&self, user: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(shared::token(user))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, user: &str, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(shared::token(user))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        user: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(shared::token(user));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    async fn delete(&self, user: &str, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.send(reqwest::Method::DELETE, user, path, None).await;
        (status, body)
    }

    async fn put(&self, user: &str, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.send(reqwest::Method::PUT, user, path, None).await;
        (status, body)
    }

    /// The membership mirror the managers read, under this test's key prefix.
    fn mirror(&self) -> MembershipMirror {
        MembershipMirror::new(SentinelRedis::new(shared::redis_config(
            "message-service",
            &self.id,
        )))
    }

    async fn direct(&self, caller: &str, other: &str) -> (StatusCode, Value) {
        self.post(
            caller,
            "/api/v1/conversations",
            json!({"kind": "direct", "members": [other]}),
        )
        .await
    }

    /// The cluster-only contacts route: who gets `user`'s presence frames.
    async fn contacts(&self, user: &str) -> Vec<String> {
        let resp = self
            .http
            .get(format!("{}/internal/v1/users/{user}/contacts", self.url))
            .header("x-cluster-secret", shared::CLUSTER_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        let mut contacts: Vec<String> = serde_json::from_value(body["contacts"].clone()).unwrap();
        contacts.sort();
        contacts
    }

    /// The cluster-only members route (what a manager with a cold mirror asks).
    async fn internal_members(&self, conversation_id: &str) -> Vec<String> {
        let resp = self
            .http
            .get(format!(
                "{}/internal/v1/conversations/{conversation_id}/members",
                self.url
            ))
            .header("x-cluster-secret", shared::CLUSTER_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        serde_json::from_value(body["members"].clone()).unwrap()
    }

    async fn group(&self, owner: &str, members: &[&str]) -> String {
        let (status, body) = self
            .post(
                owner,
                "/api/v1/conversations",
                json!({"kind": "group", "name": "team", "members": members}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Appends `records` to the message log as one envelope, the way a manager does.
    async fn produce(&self, conversation_id: &str, seqs: std::ops::RangeInclusive<u64>) {
        let records: Vec<Value> = seqs
            .map(|seq| {
                json!({
                    "conversation_id": conversation_id,
                    "seq": seq,
                    // A ULID, one per (app, seq), the same each time.
                    "message_id": ulid::Ulid::from_parts(
                        seq,
                        u128::from(self.id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                        }))
                    )
                    .to_string(),
                    "sender_id": "alice",
                    "client_msg_id": format!("c{seq}"),
                    "body": format!("message {seq}"),
                    "created_at": "2025-01-02T03:04:05.678Z",
                })
            })
            .collect();
        let payload = serde_json::to_vec(&json!({ "records": records })).unwrap();
        let producer: FutureProducer = self.kafka.producer_config(10_000).create().unwrap();
        producer
            .send(
                FutureRecord::to(&self.kafka.message_topic)
                    .key(conversation_id)
                    .partition(0)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }

    async fn seqs(&self, user: &str, conversation_id: &str, query: &str) -> Vec<i64> {
        let (status, body) = self
            .get(
                user,
                &format!("/api/v1/conversations/{conversation_id}/messages{query}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    }

    async fn ready(&self) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}/ready", self.url))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_conversations_are_created_once_per_pair() {
    let app = spawn_app("direct").await;
    let (status, first) = app
        .post(
            "alice",
            "/api/v1/conversations",
            json!({"kind": "direct", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["kind"], "direct");
    let mut members: Vec<&str> = first["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);

    // The other side asking again gets the same conversation, 200.
    let (status, again) = app
        .post(
            "bob",
            "/api/v1/conversations",
            json!({"kind": "direct", "members": ["alice"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);

    let (status, list) = app.get("bob", "/api/v1/conversations").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&Value> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&first["id"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_include_their_creator_and_list_for_every_member() {
    let app = spawn_app("group").await;
    let id = app.group("alice", &["bob", "carol"]).await;
    for user in ["alice", "bob", "carol"] {
        let (_, list) = app.get(user, "/api/v1/conversations").await;
        let conversations = list["conversations"].as_array().unwrap();
        assert_eq!(conversations.len(), 1, "{user}: {list}");
        assert_eq!(conversations[0]["id"], id.as_str());
        assert_eq!(conversations[0]["name"], "team");
    }
    let (_, list) = app.get("dave", "/api/v1/conversations").await;
    assert_eq!(list["conversations"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_input_errors() {
    let app = spawn_app("errors").await;
    let id = app.group("alice", &["bob"]).await;

    // Not a member: 403 not_a_member, for history and for adding members.
    let (status, body) = app
        .get("mallory", &format!("/api/v1/conversations/{id}/messages"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "not_a_member");
    let (status, body) = app
        .post(
            "mallory",
            &format!("/api/v1/conversations/{id}/members"),
            json!({"user_id": "mallory"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "not_a_member");

    // No such conversation: 404.
    let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let (status, body) = app
        .post(
            "alice",
            &format!("/api/v1/conversations/{missing}/members"),
            json!({"user_id": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    // Bad ids and parameters: 400.
    let (status, body) = app
        .post(
            "alice",
            "/api/v1/conversations",
            json!({"kind": "direct", "members": ["not a user id!"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = app
        .post(
            "alice",
            &format!("/api/v1/conversations/{id}/members"),
            json!({"user_id": "no spaces allowed"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("user_id") && message.contains("must be"),
        "the refusal names the id's rule: {body}"
    );
    let (status, body) = app
        .get(
            "alice",
            &format!("/api/v1/conversations/{id}/messages?after_seq=-1"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .post(
            "alice",
            "/api/v1/conversations",
            json!({"kind": "channel", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // No token: 401.
    let resp = app
        .http
        .get(format!("{}/api/v1/conversations", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_records_end_up_in_history_which_pages() {
    let app = spawn_app("ingest").await;
    let id = app.group("alice", &["bob"]).await;
    assert!(app.seqs("bob", &id, "").await.is_empty());

    app.produce(&id, 1..=5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seqs = app.seqs("bob", &id, "").await;
        if seqs.len() == 5 {
            assert_eq!(seqs, [1, 2, 3, 4, 5]);
            break;
        }
        assert!(Instant::now() < deadline, "ingest stored only {seqs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, page) = app
        .get(
            "bob",
            &format!("/api/v1/conversations/{id}/messages?limit=1"),
        )
        .await;
    let first = &page["messages"][0];
    assert_eq!(first["body"], "message 1");
    assert_eq!(first["sender_id"], "alice");
    assert_eq!(first["client_msg_id"], "c1");

    // Paging: after_seq and limit.
    assert_eq!(app.seqs("bob", &id, "?limit=2").await, [1, 2]);
    assert_eq!(app.seqs("bob", &id, "?after_seq=2&limit=2").await, [3, 4]);
    assert_eq!(app.seqs("bob", &id, "?after_seq=4&limit=2").await, [5]);
    assert!(app.seqs("bob", &id, "?after_seq=5").await.is_empty());

    // A redelivered record is not stored twice.
    app.produce(&id, 5..=6).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.seqs("bob", &id, "").await.len() < 6 {
        assert!(Instant::now() < deadline, "seq 6 never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.seqs("bob", &id, "").await, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reflects_the_database() {
    let app = spawn_app("ready-db").await;
    let (status, body) = app.ready().await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The database goes away under the service.
    let name = app.database_url.rsplit('/').next().unwrap();
    let output = tokio::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &shared::postgres().port.to_string(),
        ])
        .args(["-U", "switchboard", "-d", "postgres", "-c"])
        .arg(format!("DROP DATABASE {name} WITH (FORCE)"))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = app.ready().await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(body.contains("database"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reflects_redis() {
    shared::warm_up();
    let id = shared::unique("ready-redis");
    let database_url = shared::fresh_database(&id).await;
    // Sentinels nobody answers on.
    let config = shared::message_service_vars(&id, &database_url)
        .with(
            SB_REDIS_SENTINELS,
            format!("127.0.0.1:{}", switchboard_test_support::free_port()),
        )
        .with(SB_REDIS_TIMEOUT_MS, 300)
        .config(HELP_TABLES, MessageServiceConfig::from_lookup);
    let app = Application::build(config)
        .await
        .expect("builds without Redis");
    let url = format!("http://127.0.0.1:{}/ready", app.port());
    tokio::spawn(app.run_until_stopped(CancellationToken::new()));
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.text().await.unwrap();
    assert!(body.contains("redis"), "{body}");
    assert!(!body.contains("database"), "{body}");
}

/// Gives `user` `count` groups of four with `messages` messages each, straight in SQL (the
/// REST quotas would take hours): a user whose conversation list is expensive to answer.
async fn hoard(pool: &sqlx::PgPool, user: &str, count: i64, messages: i64) {
    sqlx::query(
        "INSERT INTO conversations (id, kind, name, created_by, last_seq, member_count)
         SELECT $1 || '-' || g, 'group', 'hoard', $1, $2, 4 FROM generate_series(1, $3) g",
    )
    .bind(user)
    .bind(messages)
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id)
         SELECT $1 || '-' || g, u FROM generate_series(1, $2) g,
                unnest(ARRAY[$1, 'x1', 'x2', 'x3']) u",
    )
    .bind(user)
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, created_at)
         SELECT $1 || '-' || g, s, $1 || '-' || g || '-' || s, 'x1', 'c' || s, 'hello', now()
           FROM generate_series(1, $2) g, generate_series(1, $3) s",
    )
    .bind(user)
    .bind(count)
    .bind(messages)
    .execute(pool)
    .await
    .unwrap();
}

/// Issue 24 item 4: REST and ingest used to share one pool, so a storm of expensive
/// conversation lists (a user with thousands of conversations, many concurrent requests)
/// queued ingest behind it, and with it the settled check sends wait on. Ingest has a pool of
/// its own now (here a REST pool of 2, saturated by the storm whatever each list costs):
/// each message produced during the storm is in the store within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversation_list_storm_does_not_delay_ingest() {
    let app = spawn_app_with("list-storm", &[(SB_DB_REST_MAX_CONNECTIONS, "2")]).await;
    let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    hoard(&pool, "hoarder", 5_000, 20).await;
    let target = app.group("alice", &["bob"]).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let (http, url, stop) = (app.http.clone(), app.url.clone(), stop.clone());
        let token = shared::token("hoarder");
        storm.spawn(async move {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = http
                    .get(format!("{url}/api/v1/conversations"))
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                if let Ok(resp) = sent {
                    let _ = resp.bytes().await;
                    answered += 1;
                }
            }
            answered
        });
    }
    // Let the storm fill the queue before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lags = Vec::new();
    for seq in 1..=5u64 {
        let produced = Instant::now();
        app.produce(&target, seq..=seq).await;
        loop {
            let stored: i64 =
                sqlx::query_scalar("SELECT count(*) FROM messages WHERE conversation_id = $1")
                    .bind(&target)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if stored >= seq as i64 {
                break;
            }
            assert!(
                produced.elapsed() < Duration::from_secs(30),
                "seq {seq} never stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lags.push(produced.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    while let Some(n) = storm.join_next().await {
        answered += n.unwrap();
    }
    assert!(answered > 0, "the storm never got an answer");
    assert!(
        lags.iter().all(|lag| *lag < Duration::from_secs(1)),
        "ingest lag under a list storm ({answered} lists answered): {lags:?}"
    );
}

/// The members a manager would read from the mirror, sorted.
async fn mirrored(mirror: &MembershipMirror, conversation_id: &str) -> Vec<String> {
    let mut members = mirror
        .mirrored(&switchboard_protocol::ConversationId::parse(conversation_id).unwrap())
        .await
        .unwrap();
    members.sort();
    members
}

/// What a Redis failover that lost a removal leaves: the mirror as it was before (the
/// removed member back in the set, the version from before the change).
async fn lose_the_removal(
    mirror: &MembershipMirror,
    conversation_id: &str,
    version_before: &str,
    members: &[&str],
) {
    let redis = mirror.redis();
    let _: () = redis
        .query(
            redis::cmd("SET")
                .arg(redis.key(&format!("members-version:{conversation_id}")))
                .arg(version_before),
        )
        .await
        .unwrap();
    let _: i64 = redis
        .query(
            redis::cmd("SADD")
                .arg(mirror.key(&conversation_id.parse().unwrap()))
                .arg(members),
        )
        .await
        .unwrap();
}

async fn mirror_version(mirror: &MembershipMirror, conversation_id: &str) -> String {
    let redis = mirror.redis();
    let version: Option<String> = redis
        .query(redis::cmd("GET").arg(redis.key(&format!("members-version:{conversation_id}"))))
        .await
        .unwrap();
    version.unwrap_or_default()
}

/// Issue 24 item 9: a removal whose mirror update was lost (a failover after the master
/// acknowledged it) left the removed member in the mirror for up to its 10-minute TTL, and a
/// retried DELETE answered 404 without touching the mirror. Now the retried DELETE brings
/// the mirror up to date before its 404, and the outbox sweeper repairs a lost update by
/// itself within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_removal_is_applied_again_by_a_retried_delete_and_by_the_outbox() {
    let app = spawn_app("lost-removal").await;
    let mirror = app.mirror();
    let group = app.group("alice", &["bob", "carol"]).await;
    let before = mirror_version(&mirror, &group).await;
    assert_eq!(mirrored(&mirror, &group).await, ["alice", "bob", "carol"]);

    // Removed; then the failover loses the mirror update.
    let (status, body) = app
        .delete(
            "alice",
            &format!("/api/v1/conversations/{group}/members/bob"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    lose_the_removal(&mirror, &group, &before, &["alice", "bob", "carol"]).await;
    assert!(mirrored(&mirror, &group).await.contains(&"bob".to_owned()));

    // The client retries: 404 (bob is gone), and the mirror no longer lets bob in.
    let (status, body) = app
        .delete(
            "alice",
            &format!("/api/v1/conversations/{group}/members/bob"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        !mirrored(&mirror, &group).await.contains(&"bob".to_owned()),
        "a retried DELETE leaves the removed member in the mirror"
    );

    // carol leaves; the update is lost again and nobody retries: the outbox applies it.
    let before = mirror_version(&mirror, &group).await;
    let (status, body) = app
        .delete(
            "carol",
            &format!("/api/v1/conversations/{group}/members/carol"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    lose_the_removal(&mirror, &group, &before, &["alice", "carol"]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while mirrored(&mirror, &group)
        .await
        .contains(&"carol".to_owned())
    {
        assert!(
            Instant::now() < deadline,
            "the lost removal is still in the mirror after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A retried leave is a 403 (carol is no member), and still leaves the mirror right.
    lose_the_removal(&mirror, &group, &before, &["carol"]).await;
    let (status, _) = app
        .delete(
            "carol",
            &format!("/api/v1/conversations/{group}/members/carol"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!mirrored(&mirror, &group)
        .await
        .contains(&"carol".to_owned()));
}

/// Issue 24 item 4: `GET /api/v1/conversations` pages by cursor (default and most 1,000),
/// lists at most 100 members per conversation with `member_count` for all, and `unread`
/// comes from stored positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_pages_by_cursor_with_bounded_members() {
    let app = spawn_app("list-pages").await;
    let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    hoard(&pool, "pager", 25, 3).await;
    // One big group: 150 members (in SQL: the test's group limit is 50).
    sqlx::query(
        "INSERT INTO conversations (id, kind, name, created_by, last_seq, member_count)
         VALUES ('01B1GGR0VP0000000000000000', 'group', 'big', 'pager', 99, 150)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id)
         SELECT '01B1GGR0VP0000000000000000', 'pager' UNION ALL SELECT '01B1GGR0VP0000000000000000', 'm' || g FROM generate_series(1, 149) g",
    )
    .execute(&pool)
    .await
    .unwrap();

    // No limit: everything in one answer (the original contract), the last page.
    let (status, all) = app.get("pager", "/api/v1/conversations").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["conversations"].as_array().unwrap().len(), 26);
    assert_eq!(all["next_cursor"], Value::Null);
    let big = &all["conversations"][0];
    assert_eq!(
        big["id"], "01B1GGR0VP0000000000000000",
        "highest last_seq first"
    );
    assert_eq!(big["members"].as_array().unwrap().len(), 100);
    assert_eq!(big["member_count"], 150);
    let hoarded = &all["conversations"][1];
    assert_eq!(hoarded["member_count"], 4);
    assert_eq!(
        hoarded["unread"], 3,
        "three messages from x1 past read_seq 0"
    );

    // Pages of 10: every conversation once, in the same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => "/api/v1/conversations?limit=10".to_owned(),
            Some(c) => format!("/api/v1/conversations?limit=10&cursor={c}"),
        };
        let (status, page) = app.get("pager", &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let entries = page["conversations"].as_array().unwrap();
        assert!(entries.len() <= 10);
        paged.extend(entries.iter().map(|c| c["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let every: Vec<Value> = all["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(paged, every);

    // The whole member list is one call away, for members.
    let (status, whole) = app
        .get("pager", "/api/v1/conversations/01B1GGR0VP0000000000000000")
        .await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["members"].as_array().unwrap().len(), 150);
    let (status, _) = app
        .get(
            "stranger",
            "/api/v1/conversations/01B1GGR0VP0000000000000000",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=nonsense",
        "cursor=-1.a",
    ] {
        let (status, body) = app
            .get("pager", &format!("/api/v1/conversations?{bad}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
}

/// Issue 24 item 4: conversations created and members added are limited per user and
/// minute (`SB_CONVERSATIONS_PER_MINUTE`, `SB_MEMBERS_ADDED_PER_MINUTE`), refused with 429
/// `rate_limited` and `Retry-After`; asking again for an existing direct conversation is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_created_and_members_added_are_limited_per_minute() {
    let app = spawn_app_with(
        "quotas",
        &[
            (SB_CONVERSATIONS_PER_MINUTE, "3"),
            (SB_MEMBERS_ADDED_PER_MINUTE, "2"),
        ],
    )
    .await;
    for other in ["b1", "b2"] {
        let (status, body) = app.direct("spammer", other).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let group = app.group("spammer", &["b1"]).await;
    let (status, headers, body) = app
        .send(
            reqwest::Method::POST,
            "spammer",
            "/api/v1/conversations",
            Some(json!({"kind": "direct", "members": ["b4"]})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // An existing pair is answered, not counted; others are not limited by spammer's quota.
    let (status, _) = app.direct("spammer", "b1").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.direct("b1", "spammer").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.direct("b4", "spammer").await;
    assert_eq!(status, StatusCode::CREATED);

    for user in ["c1", "c2"] {
        let (status, body) = app
            .post(
                "spammer",
                &format!("/api/v1/conversations/{group}/members"),
                json!({ "user_id": user }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, headers, body) = app
        .send(
            reqwest::Method::POST,
            "spammer",
            &format!("/api/v1/conversations/{group}/members"),
            Some(json!({"user_id": "c3"})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    // Adding an existing member changes nothing and takes no quota.
    let (status, _) = app
        .post(
            "spammer",
            &format!("/api/v1/conversations/{group}/members"),
            json!({"user_id": "c1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Issue 24 item 7: a block list. A blocked user cannot start a direct conversation with,
/// add to a group, or see the presence of the user who blocked them; unblocking undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_cannot_reach_or_watch_the_blocker() {
    let app = spawn_app("blocks").await;
    // Before the block: a shared group makes presence visible.
    let group = app.group("stalker", &["victim"]).await;
    let (status, _) = app.get("stalker", "/api/v1/presence?user_id=victim").await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = app.put("victim", "/api/v1/blocks/stalker").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = app.put("victim", "/api/v1/blocks/stalker").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "idempotent");
    let (_, list) = app.get("victim", "/api/v1/blocks").await;
    assert_eq!(list["blocked"], json!(["stalker"]));

    let (status, body) = app.direct("stalker", "victim").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = app
        .post(
            "stalker",
            "/api/v1/conversations",
            json!({"kind": "group", "name": "trap", "members": ["victim"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let other = app.group("stalker", &["friend"]).await;
    let (status, body) = app
        .post(
            "stalker",
            &format!("/api/v1/conversations/{other}/members"),
            json!({"user_id": "victim"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.get("stalker", "/api/v1/presence?user_id=victim").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The presence frames follow the same rule: the victim's contacts leave out the stalker.
    let contacts = app.contacts("victim").await;
    assert!(!contacts.contains(&"stalker".to_owned()), "{contacts:?}");
    // The victim still sees the stalker (the block is one way) and the group stays.
    let (status, _) = app.get("victim", "/api/v1/presence?user_id=stalker").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.seqs("stalker", &group, "").await, Vec::<i64>::new());

    let (status, _) = app.put("victim", "/api/v1/blocks/victim").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "oneself");
    let (status, _) = app.delete("victim", "/api/v1/blocks/stalker").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.direct("stalker", "victim").await;
    assert_eq!(status, StatusCode::CREATED);
}

/// Issue 24 item 7: with `SB_GROUP_ADD_POLICY=invite`, a group's members are invited and
/// become members (in the mirror, so they send and receive) only on accepting; with
/// `SB_PRESENCE_POLICY=accepted`, creating a direct conversation with someone does not
/// show their presence until they accept it (or send in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_and_presence_need_the_other_users_consent() {
    let app = spawn_app_with(
        "consent",
        &[
            (SB_GROUP_ADD_POLICY, "invite"),
            (SB_PRESENCE_POLICY, "accepted"),
        ],
    )
    .await;
    let mirror = app.mirror();

    // A direct conversation alone shows nothing of the other side.
    let (status, dm) = app.direct("curious", "celebrity").await;
    assert_eq!(status, StatusCode::CREATED, "{dm}");
    let dm = dm["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .get("curious", "/api/v1/presence?user_id=celebrity")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(app.contacts("celebrity").await.is_empty());
    let (status, _) = app
        .post(
            "celebrity",
            &format!("/api/v1/conversations/{dm}/accept"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .get("curious", "/api/v1/presence?user_id=celebrity")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.contacts("celebrity").await, ["curious"]);

    // A group invites; the invitee is not a member until accepting.
    let (status, group) = app
        .post(
            "owner",
            "/api/v1/conversations",
            json!({"kind": "group", "name": "club", "members": ["guest"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["members"], json!(["owner"]));
    assert_eq!(group["invited"], json!(["guest"]));
    let group = group["id"].as_str().unwrap().to_owned();
    assert_eq!(mirrored(&mirror, &group).await, ["owner"]);
    let (status, _) = app
        .get("guest", &format!("/api/v1/conversations/{group}/messages"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an invitee reads nothing");
    let (_, list) = app.get("guest", "/api/v1/conversations").await;
    assert_eq!(list["conversations"], json!([]));
    let (_, invites) = app.get("guest", "/api/v1/invitations").await;
    assert_eq!(invites["invitations"][0]["conversation_id"], group.as_str());
    assert_eq!(invites["invitations"][0]["invited_by"], "owner");

    let (status, joined) = app
        .post(
            "guest",
            &format!("/api/v1/conversations/{group}/accept"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["members"], json!(["guest", "owner"]));
    // The mirror lets the new member in at once (refilled on the next lookup).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let members = app.internal_members(&group).await;
        if members == ["guest", "owner"] {
            break;
        }
        assert!(Instant::now() < deadline, "{members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, invites) = app.get("guest", "/api/v1/invitations").await;
    assert_eq!(invites["invitations"], json!([]));

    // Declining: an invitee removes themselves.
    let (status, _) = app
        .post(
            "owner",
            &format!("/api/v1/conversations/{group}/members"),
            json!({"user_id": "shy"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .delete("shy", &format!("/api/v1/conversations/{group}/members/shy"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, invites) = app.get("shy", "/api/v1/invitations").await;
    assert_eq!(invites["invitations"], json!([]));
    let (status, _) = app
        .post(
            "stranger",
            &format!("/api/v1/conversations/{group}/accept"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Issue 24 item 7, under the default (`open`) policy: a member who left a group is not
/// added back without consent: adding them again invites them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_is_invited_not_added_back() {
    let app = spawn_app("rejoin").await;
    let group = app.group("owner", &["leaver"]).await;
    let (status, _) = app
        .delete(
            "leaver",
            &format!("/api/v1/conversations/{group}/members/leaver"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app
        .post(
            "owner",
            &format!("/api/v1/conversations/{group}/members"),
            json!({"user_id": "leaver"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["members"], json!(["owner"]));
    assert_eq!(body["invited"], json!(["leaver"]));
    let (status, _) = app
        .get("leaver", &format!("/api/v1/conversations/{group}/messages"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .post(
            "leaver",
            &format!("/api/v1/conversations/{group}/accept"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["members"], json!(["leaver", "owner"]));
}

/// Issue 24 item 4: the REST pool's `statement_timeout` (`SB_DB_REST_STATEMENT_TIMEOUT_MS`)
/// cancels a statement that runs too long, answered 503 `unavailable`, while ingest (its own
/// pool, no timeout) stores as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_statement_over_the_timeout_is_cancelled_and_ingest_goes_on() {
    let app = spawn_app_with("rest-timeout", &[(SB_DB_REST_STATEMENT_TIMEOUT_MS, "5")]).await;
    let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    hoard(&pool, "hoarder", 5_000, 1).await;
    let (status, body) = app.get("hoarder", "/api/v1/conversations").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");

    // Ingest needs no conversation row; no REST call here, whose statements could meet the
    // tiny timeout on a loaded machine.
    let target = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned();
    app.produce(&target, 1..=3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE conversation_id = $1")
                .bind(&target)
                .fetch_one(&pool)
                .await
                .unwrap();
        if stored == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest stored {stored} of 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
