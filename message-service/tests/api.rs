//! The fast tier for the message service: `Application::build` on port 0 against the test
//! binary's shared PostgreSQL (a fresh database per test), Redis with Sentinels (a key prefix
//! per test) and broker (topics per test), all from `switchboard_test_support::shared`.
//! REST over real HTTP, ingest from real log records, readiness against real dependencies.

use std::time::{Duration, Instant};

use message_service::config::HELP_TABLES;
use message_service::{Application, MessageServiceConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchboard_kafka::KafkaConfig;
use switchboard_service_kit::redis_sentinel::{SB_REDIS_SENTINELS, SB_REDIS_TIMEOUT_MS};
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
                    "message_id": format!("{}-m{seq}", self.id),
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
        "INSERT INTO conversations (id, kind, name, created_by, last_seq)
         SELECT $1 || '-' || g, 'group', 'hoard', $1, $2 FROM generate_series(1, $3) g",
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
    let app = spawn_app_with("list-storm", &[("SB_DB_REST_MAX_CONNECTIONS", "2")]).await;
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
