//! The socket manager: the cluster's brain between socket servers and the log.
//!
//! - `routes`: the cluster-internal HTTP API socket servers call (register, batch of reports
//!   and client frames, heartbeat, renew, deregister), protected by the cluster secret.
//! - `batch`: one batch answered: planned (`plan`), quotas checked, sends numbered beside the
//!   typing and receipt `signals`.
//! - `state`: the app state every route and task shares.
//! - `presence`: presence changes announced; who is on which socket server lives in
//!   `switchboard_chat_state::presence`.
//! - `sequencer`: per-conversation sequence numbers under a Redis lock, idempotency, the
//!   append to the message log and routing to per-server topics.
//! - `members`: conversation members from the message service's Redis mirror.
//! - `kafka`: the shared idempotent producer and topic admin.
//! - `quota`: per-user quotas (frames, body bytes) shared by every manager through Redis, and
//!   typing coalesced per (conversation, sender); one script call per batch.
//! - `janitor`: reaps socket servers gone from the directory (their topics and mappings);
//!   one manager at a time holds the janitor lease.
//!
//! Run two or more: they share nothing but Redis and Kafka, so a socket server can send any
//! batch to any manager and retry on another when one dies.

mod attachments;
mod batch;
mod batching;
pub mod config;
mod end_sessions;
mod events;
mod janitor;
mod kafka;
mod members;
mod numbering;
mod plan;
mod presence;
pub mod quota;
mod routes;
mod sequencer;
mod server_send;
mod signals;
mod state;

use std::net::TcpListener;

use actix_web::web;
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::http;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::redis::RedisMemoryGauges;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::{OwnedTask, Workers};

pub use config::ManagerConfig;
use state::AppState;

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    state: web::Data<AppState>,
    redis_memory: RedisMemoryGauges,
    /// The message path's own tasks (appender, router, numbering): if one exits, the
    /// manager stops rather than answer `unavailable` to every send with `/ready` green.
    workers: Workers,
}

impl Application {
    pub async fn build(config: ManagerConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.bind)?;
        let port = listener.local_addr()?.port();
        let redis = SentinelRedis::new(config.common.redis.clone());
        let kafka = kafka::Kafka::new(config.kafka.clone(), config.produce_timeout_ms)?;
        let log_partitions = prepare_topics(&kafka, &config).await;
        let ops = Ops::new("socket-manager");
        let mut workers = Workers::new();
        let origins = config.common.allowed_origins.clone();
        let state = web::Data::new(AppState::new(
            config,
            redis.clone(),
            kafka.clone(),
            log_partitions,
            &ops,
            &mut workers,
        )?);
        let redis_memory = RedisMemoryGauges::new(&ops)?;
        let ops = ops
            .with_check(
                "redis",
                switchboard_service_kit::redis::readiness_check(&redis),
            )
            .with_check("broker", kafka.readiness_check());
        let app_state = state.clone();
        let server = http::serve_json_api(
            ops,
            listener,
            16 * 1024 * 1024,
            &origins,
            None,
            move |cfg| {
                cfg.app_data(app_state.clone());
                routes::configure(cfg);
            },
        )?;
        Ok(Application {
            port,
            server,
            state,
            redis_memory,
            workers,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`, or until a task of the message path (or the janitor) exits,
    /// which is logged by name and returned as an error.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut workers = self.workers;
        workers.spawn(
            "janitor",
            janitor::run(self.state.clone(), shutdown.clone()),
        );
        // Gauges only: not worth a restart, so not a worker; ends with this function.
        let _gauges = OwnedTask::spawn(
            "redis memory gauges",
            self.redis_memory.run(
                self.state.sequencer.redis.clone(),
                std::time::Duration::from_secs(5),
                shutdown.clone(),
            ),
        );
        let background = self.state.background.clone();
        // Once the server has drained, the last handles on the appender, router and
        // numbering queues go with it, so those tasks finish their queued work and end.
        drop(self.state);
        workers.serve(self.server, shutdown).await?;
        background.close();
        if tokio::time::timeout(std::time::Duration::from_secs(5), background.wait())
            .await
            .is_err()
        {
            tracing::warn!("presence announcements still running at shutdown; abandoned");
        }
        Ok(())
    }
}

/// Ensures the message, events and readiness-probe topics (a broker not up yet only logs), and
/// answers the message log's partition count.
async fn prepare_topics(kafka: &kafka::Kafka, config: &ManagerConfig) -> i32 {
    for topic in [&config.kafka.message_topic, &config.kafka.events_topic] {
        if let Err(e) = kafka.ensure_topic(topic, config.message_partitions).await {
            tracing::warn!(error = %e, %topic, "could not ensure the topic yet");
        }
    }
    if let Err(e) = kafka.ensure_topic(&kafka.probe_topic(), 1).await {
        tracing::warn!(error = %e, "could not ensure the readiness probe topic yet");
    }
    // The log is partitioned explicitly by conversation: every manager must agree on the
    // count, so it is the topic's own (the configured count only creates it).
    match kafka.partition_count(&config.kafka.message_topic).await {
        Ok(count) => count,
        Err(e) => {
            tracing::warn!(error = %e, "message log partitions unknown; assuming the configured count");
            config.message_partitions
        }
    }
}
