//! The webhook dispatcher: delivers what happens in Switchboard to app backends as signed
//! HTTP requests (Standard Webhooks), at least once, in order per conversation.
//!
//! - [`routes`]: the endpoint API (`/server/v1/webhooks`, API keys with `webhooks:manage`).
//! - [`consumer`]: reads the message log (`message.created`) and the events topic
//!   (`receipt.updated`, `presence.changed`, `conversation.created`, `member.added`,
//!   `member.removed`; [`events`]) and records a delivery per subscribed endpoint in
//!   PostgreSQL before it lets the topics' offsets move on.
//! - [`delivery`]: one worker per endpoint delivers its queue from the table: signed
//!   ([`signing`]), through the SSRF guard ([`ssrf`]), retried with backoff, in order per
//!   stream, never waiting for another endpoint.
//! - [`retry`]: the retry schedule (backoff with jitter, `Retry-After`) of webhooks and pushes.
//! - [`store`]: the tables, in a PostgreSQL schema of the dispatcher's own.
//! - [`state`]: what the endpoint API's handlers share.
//!
//! - [`push`]: the push notifier (on when `SB_PUSH_GATEWAY_URL` is set): pushes for users
//!   with no live connection, or who have not read within a grace period, to the operator's
//!   push gateway (docs/push.md).
//!
//! docs/webhooks.md is the user's guide (verifying signatures, retries, ordering, payloads).

pub mod config;
pub mod consumer;
pub mod delivery;
pub mod events;
pub mod metrics;
pub mod push;
pub mod retry;
pub mod routes;
pub mod signing;
pub mod ssrf;
pub mod state;
pub mod store;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use switchboard_service_kit::http;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::Notify;

pub use config::DispatcherConfig;

/// How often finished deliveries past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    consumer: consumer::TopicConsumer,
    deliverer: Arc<delivery::Deliverer>,
    store: store::Store,
    retention: Duration,
    /// The push notifier's two halves, when a gateway is configured.
    notifier: Option<(push::plan::Planner, Arc<push::send::Sender>)>,
}

impl Application {
    pub async fn build(config: DispatcherConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.bind)?;
        let port = listener.local_addr()?.port();
        let store = store::Store::connect(
            &config.database_url,
            &config.db_schema,
            config.db_max_connections,
        )
        .await?;
        let ops = Ops::new("webhook-dispatcher");
        let metrics = metrics::Metrics::new(&ops)?;
        let wake = Arc::new(Notify::new());
        let consumer = consumer::TopicConsumer::new(
            &config.kafka,
            store.clone(),
            metrics.clone(),
            config.max_pending,
            wake.clone(),
        )?;
        let deliverer = Arc::new(delivery::Deliverer {
            store: store.clone(),
            http: ssrf::client(&config.allow_nets, config.timeout, config.connect_timeout)?,
            allow: config.allow_nets.clone(),
            retry: config.retry,
            in_flight: config.in_flight,
            metrics,
            wake: wake.clone(),
        });
        let notifier = match &config.push {
            Some(push) => Some(notifier(&config, push, &store, &ops)?),
            None => None,
        };
        let ready_store = store.clone();
        let ops = ops.with_check(
            "database",
            Arc::new(move || {
                let store = ready_store.clone();
                Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
            }),
        );
        let state = web::Data::new(state::ApiState {
            store: store.clone(),
            keys: config.api_keys.clone(),
            allow: config.allow_nets.clone(),
            max_endpoints: config.max_endpoints,
            secret_overlap: config.secret_overlap,
            wake,
        });
        let server = http::serve_json_api(ops, listener, 64 * 1024, &[], Some(2), move |cfg| {
            cfg.app_data(state.clone());
            routes::configure(cfg);
        })?;
        Ok(Application {
            port,
            server,
            consumer,
            deliverer,
            store,
            retention: config.retention,
            notifier,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`, or until the consumer or the delivery supervisor exits
    /// (logged by name and returned as an error: webhooks would silently stop otherwise).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut workers = switchboard_service_kit::supervise::Workers::new();
        workers.spawn("topic consumer", self.consumer.run(shutdown.clone()));
        workers.spawn("deliveries", self.deliverer.run(shutdown.clone()));
        if let Some((planner, sender)) = self.notifier {
            workers.spawn("push planner", planner.run(shutdown.clone()));
            workers.spawn("push sender", sender.run(shutdown.clone()));
        }
        workers.spawn(
            "pruning",
            prune(self.store, self.retention, shutdown.clone()),
        );
        workers.serve(self.server, shutdown).await?;
        Ok(())
    }
}

/// The notifier's planner and sender: the queue in the dispatcher's schema, the message
/// service's database (`SB_PUSH_DATABASE_URL`, connected lazily so a slow start of either
/// service orders nothing), and Redis for presence.
fn notifier(
    config: &DispatcherConfig,
    push: &push::PushConfig,
    store: &store::Store,
    ops: &Ops,
) -> anyhow::Result<(push::plan::Planner, Arc<push::send::Sender>)> {
    let url = push.database_url.as_deref().unwrap_or(&config.database_url);
    let messages = sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(url.parse::<sqlx::postgres::PgConnectOptions>()?);
    let queue = push::queue::Queue {
        own: store.pool().clone(),
        messages,
    };
    let metrics = push::metrics::PushMetrics::new(ops)?;
    let wake = Arc::new(Notify::new());
    let redis = switchboard_redis::SentinelRedis::new(config.redis.clone());
    let planner = push::plan::Planner::new(
        &config.kafka,
        queue.clone(),
        redis,
        push.clone(),
        metrics.clone(),
        wake.clone(),
    )?;
    let sender = Arc::new(push::send::Sender {
        queue,
        http: push::send::client(push.timeout)?,
        config: push.clone(),
        metrics,
        wake,
    });
    Ok((planner, sender))
}

async fn prune(store: store::Store, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        match store.prune(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                "finished deliveries past their retention deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "pruning deliveries failed"),
        }
    }
}
