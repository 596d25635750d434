//! What the manager's fast-tier tests share: a message service and a manager in-process
//! (`Application::build` on port 0) against the test binary's shared Redis, PostgreSQL and
//! broker, driven over the manager's internal API the way socket servers drive it.

// Tests spawn freely; product code gives every task an owner (clippy.toml). Each test binary
// uses its own part of this.
#![allow(clippy::disallowed_methods, dead_code)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use switchboard_kafka::KafkaConfig;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::internal::{
    ServerBatch, ServerBatchReply, ServerItem, ServerRegistered, ServerRegistration,
};
use switchboard_protocol::registry::CLUSTER_SECRET_HEADER;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::shared::{self, CLUSTER_SECRET};

pub struct TestApp {
    /// The test's id: its Redis key prefix is `sb:{id}:`.
    pub id: String,
    pub manager: String,
    pub messages: String,
    pub kafka: KafkaConfig,
    pub http: reqwest::Client,
}

/// A message service and a manager with the manager variables `extra` on top of the tests'.
pub async fn spawn_apps(name: &str, extra: &[(&str, &str)]) -> TestApp {
    shared::warm_up();
    let id = shared::unique(name);
    let database_url = shared::fresh_database(&id).await;
    let ms_config = shared::message_service_vars(&id, &database_url).config(
        message_service::config::HELP_TABLES,
        message_service::MessageServiceConfig::from_lookup,
    );
    let kafka = ms_config.kafka.clone();
    shared::create_topics(
        &kafka.brokers,
        &[&kafka.message_topic, &kafka.events_topic],
        1,
    )
    .await
    .expect("topics");
    let ms = message_service::Application::build(ms_config)
        .await
        .expect("the message service builds");
    let messages = format!("http://127.0.0.1:{}", ms.port());
    tokio::spawn(ms.run_until_stopped(CancellationToken::new()));
    let mut vars = shared::manager_vars(&id, &messages);
    for (name, value) in extra {
        vars = vars.with(name, value);
    }
    let manager_config = vars.config(
        socket_manager::config::HELP_TABLES,
        socket_manager::ManagerConfig::from_lookup,
    );
    let manager = socket_manager::Application::build(manager_config)
        .await
        .expect("the manager builds");
    let manager_url = format!("http://127.0.0.1:{}", manager.port());
    tokio::spawn(manager.run_until_stopped(CancellationToken::new()));
    TestApp {
        id,
        manager: manager_url,
        messages,
        kafka,
        http: reqwest::Client::new(),
    }
}

impl TestApp {
    pub async fn group(&self, owner: &str, members: &[&str]) -> String {
        let resp = self
            .http
            .post(format!("{}/api/v1/conversations", self.messages))
            .bearer_auth(shared::token(owner))
            .json(&json!({"kind": "group", "name": "g", "members": members}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn register(&self, handler_id: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/internal/v1/handlers", self.manager))
            .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
            .json(&ServerRegistration {
                server_id: switchboard_protocol::ServerId::parse(handler_id).unwrap(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let registered: ServerRegistered = resp.json().await.unwrap();
        assert_eq!(registered.topic, self.kafka.handler_topic(handler_id));
        registered.topic
    }

    pub async fn batch(
        &self,
        handler_id: &str,
        items: Vec<ServerItem>,
    ) -> Vec<Option<ServerFrame>> {
        let resp = self
            .http
            .post(format!(
                "{}/internal/v1/handlers/{handler_id}/batch",
                self.manager
            ))
            .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
            .json(&ServerBatch { items })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let reply: ServerBatchReply = resp.json().await.unwrap();
        reply.replies
    }

    /// Payloads of `topic` (one partition) until `done` says so, or 20 s.
    pub async fn consume(&self, topic: &str, done: impl Fn(&[Vec<u8>]) -> bool) -> Vec<Vec<u8>> {
        let consumer: StreamConsumer = self
            .kafka
            .consumer_config(&format!("check-{topic}"), 50)
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&partitions).unwrap();
        let mut payloads = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&payloads) {
            assert!(
                Instant::now() < deadline,
                "{topic}: only {}",
                payloads.len()
            );
            if let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            {
                payloads.push(message.payload().unwrap_or_default().to_vec());
            }
        }
        payloads
    }
}
