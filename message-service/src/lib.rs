//! The message service: the durable home of conversations and messages.
//!
//! - [`store`]: PostgreSQL through sqlx (migrations in `migrations/`): conversations, members,
//!   messages (primary key `(conversation_id, seq)`, the fence behind the sequence lock),
//!   receipts, and `dead_letters`.
//! - [`ingest`]: consumes the message log from Kafka in batches and inserts them idempotently;
//!   offsets are stored only after the rows are committed (at-least-once, duplicates ignored).
//!   A record the database refuses for its data, or one that conflicts with a different
//!   stored message, goes to `dead_letters` and ingest goes on.
//! - `routes`: REST of SPEC section 5 (JWT auth), one file a resource, plus the cluster-only
//!   lookups the socket managers use (members when their Redis cache is cold, the settled
//!   log, contacts).
//! - `server_api`: the server API (`/server/v1`, API keys) for applications' backends.
//! - [`attachments`], [`search`], `push_devices`: attachments on an S3-compatible store,
//!   message search, and the devices push notifications go to.
//! - `state`: the state the handlers share (`AppState`); `http_common`: what they share
//!   besides (error answers, input checks, membership, presence, the mirror after a change).
//! - the members mirror in Redis the managers read is `switchboard_chat_state::membership`;
//!   [`outbox`] applies every membership change to it until Redis has surely kept it.
//!
//! Two database pools: ingest's (ingest, the settled check and log fences, the cluster-only
//! routes, the outbox) and the public REST API's, with a `statement_timeout`, so no number
//! of slow client requests can hold up ingest, and through the settled check, sends.

pub mod attachments;
mod auth;
pub mod config;
pub mod events;
mod http_common;
pub mod ingest;
pub mod log_fences;
pub mod outbox;
mod push_devices;
mod routes;
pub mod search;
mod server_api;
pub mod settled;
mod state;
pub mod store;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::web;
use switchboard_chat_state::membership::MembershipMirror;
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::http;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::state::AppState;

pub use config::MessageServiceConfig;

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    /// Keeps an identity provider's keys fresh, when one is configured.
    jwks: Option<switchboard_service_kit::jwks::JwksRefresher>,
    ingest: ingest::Ingest,
    outbox: (store::Store, MembershipMirror),
    /// The membership events' outbox: published to the events topic once committed.
    events: (store::Store, switchboard_kafka::KafkaConfig),
    /// The attachment sweeper's work: the store's objects and the ingest pool.
    sweeper: (attachments::Attachments, store::Store),
}

impl Application {
    pub async fn build(config: MessageServiceConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.bind)?;
        let port = listener.local_addr()?.port();
        let (store, rest_store) = connect_pools(&config).await?;
        let redis = SentinelRedis::new(config.common.redis.clone());
        let ops = Ops::new("message-service");
        let progress = settled::IngestProgress::default();
        let settled = settled::Settled::new(&config.kafka, store.clone(), progress.clone())?;
        let ingest = ingest::Ingest::new(
            &config.kafka,
            store.clone(),
            &ops,
            config.ingest_fetch_wait_ms,
            config.ingest_rewind_records,
            progress,
        )?;
        let ops = readiness(ops, &store, &redis, &ingest);
        let config_origins = config.common.allowed_origins.clone();
        let mirror = MembershipMirror::new(redis);
        let event_limits = events::EventLimits::from_env()?;
        let outbox = (store.clone(), mirror.clone());
        let events = (store.clone(), config.kafka.clone());
        let managers = server_api::managers(&config);
        let attachments =
            attachments::Attachments::new(attachments::AttachmentsConfig::from_env()?)?;
        let sweeper = (attachments.clone(), store.clone());
        let (tokens, jwks) = config.common.token_keys();
        let state = web::Data::new(AppState {
            store: rest_store,
            internal: store,
            tokens,
            cache: mirror,
            settled,
            config,
            attachments,
            events: event_limits,
        });
        let server = http::serve_json_api(
            ops,
            listener,
            1024 * 1024,
            &config_origins,
            None,
            move |cfg| {
                cfg.app_data(state.clone());
                routes::configure(cfg);
                server_api::configure(cfg, managers.clone());
                push_devices::configure(cfg);
            },
        )?;
        Ok(Application {
            port,
            server,
            jwks,
            ingest,
            outbox,
            events,
            sweeper,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` (then the ingest loop commits what it stored), or until the
    /// ingest loop exits (logged by name and returned as an error: history would silently
    /// stop growing otherwise).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut workers = switchboard_service_kit::supervise::Workers::new();
        if let Some(jwks) = self.jwks {
            workers.spawn("jwks", jwks.run(shutdown.clone()));
        }
        workers.spawn("ingest", self.ingest.run(shutdown.clone()));
        let (store, mirror) = self.outbox;
        workers.spawn(
            "membership outbox",
            outbox::run(store, mirror, shutdown.clone()),
        );
        let (store, kafka) = self.events;
        workers.spawn(
            "membership events",
            outbox::publish_events(store, kafka, shutdown.clone()),
        );
        let (attachments, store) = self.sweeper;
        workers.spawn(
            "attachment sweeper",
            attachments::sweeper::run(attachments, store.pool().clone(), shutdown.clone()),
        );
        workers.serve(self.server, shutdown).await?;
        Ok(())
    }
}

/// The two pools: ingest's (migrated here), and the public REST API's, with a statement
/// timeout and a short acquire timeout.
async fn connect_pools(
    config: &MessageServiceConfig,
) -> anyhow::Result<(store::Store, store::Store)> {
    let store = store::Store::connect(&config.database_url, config.db_max_connections).await?;
    let rest_store = store::Store::connect_with(
        &config.database_url,
        store::PoolSettings {
            max_connections: config.db_rest_max_connections,
            statement_timeout_ms: config.db_rest_statement_timeout_ms,
            // Shorter than ingest's: a client gets a quick 503 rather than a long queue.
            acquire_timeout: std::time::Duration::from_secs(2),
            migrate: false,
        },
    )
    .await?;
    Ok((store, rest_store))
}

/// The readiness checks: the database (ingest's pool), Redis, and ingest keeping up.
fn readiness(
    ops: Ops,
    store: &store::Store,
    redis: &SentinelRedis,
    ingest: &ingest::Ingest,
) -> Ops {
    let ready_store = store.clone();
    ops.with_check(
        "database",
        Arc::new(move || {
            let store = ready_store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        }),
    )
    .with_check(
        "redis",
        switchboard_service_kit::redis::readiness_check(redis),
    )
    .with_check("ingest", ingest.alarm().readiness_check())
}
