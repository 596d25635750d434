//! The socket manager: the cluster's brain between socket handlers and the log.
//!
//! - `routes`: the cluster-internal HTTP API handlers call (register, batch of reports and
//!   client frames, heartbeat, renew, deregister), protected by the cluster secret.
//! - presence (who is on which handler) lives in `switchboard_chat_state::presence`.
//! - `sequencer`: per-conversation sequence numbers under a Redis lock, idempotency, the
//!   append to the message log and routing to per-handler topics.
//! - `members`: conversation members from the message service's Redis mirror.
//! - `kafka`: the shared idempotent producer and topic admin.
//! - `quota`: per-user quotas (frames, body bytes) shared by every manager through Redis, and
//!   typing coalesced per (conversation, sender); one script call per batch.
//! - `janitor`: notices dead handlers (expired liveness keys) and removes their topics and
//!   mappings; one manager at a time holds the janitor lease.
//!
//! Run two or more: they share nothing but Redis and Kafka, so a handler can send any batch to
//! any manager and retry on another when one dies.

mod attachments;
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

use std::net::TcpListener;

use actix_web::web;
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::redis_sentinel::{RedisMemoryGauges, SentinelRedis};
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::{OwnedTask, TaskTracker, Workers};

pub use config::ManagerConfig;

/// Histogram buckets (seconds) for the stages of a send.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub(crate) struct AppState {
    pub config: ManagerConfig,
    pub sequencer: sequencer::Sequencer,
    pub quotas: quota::Quotas,
    pub signal_metrics: SignalMetrics,
    /// The runtime the message path's tasks (Redis connections, batchers) run on; batches
    /// are answered there rather than on the HTTP worker's own runtime (see `routes::batch`).
    pub runtime: tokio::runtime::Handle,
    /// Verifies the attachments a send references before it is numbered.
    pub attachments: attachments::Verifier,
    /// Checks edits, deletes, reactions and replies before they are numbered.
    pub events: events::Checker,
    /// Presence announcements in flight (`presence::announce`), waited for at shutdown.
    pub background: TaskTracker,
}

/// Counters of the typing and receipt path (`routes::answer_signals`).
pub(crate) struct SignalMetrics {
    /// `manager_receipt_rounds_total`: rounds of acknowledgements awaited for receipts, one
    /// per batch that records any (all of its receipts enqueued, then awaited together).
    pub receipt_rounds: prometheus::IntCounter,
    /// `manager_receipts_recorded_total`: receipts enqueued on the events topic.
    pub receipts_recorded: prometheus::IntCounter,
}

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
        let log_partitions = match kafka.partition_count(&config.kafka.message_topic).await {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!(error = %e, "message log partitions unknown; assuming the configured count");
                config.message_partitions
            }
        };
        let ops = Ops::new("socket-manager");
        let metrics = sequencer::SequencerMetrics {
            lock_wait_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "manager_lock_wait_seconds",
                    "time to acquire a conversation's sequence lock",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ]),
            )?,
            numbering_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "manager_numbering_seconds",
                    "one numbering script and its replica WAIT",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            append_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "manager_append_seconds",
                    "a conversation batch's log appends, enqueue to the last broker ack",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            lease_busy: prometheus::IntCounter::new(
                "manager_lease_busy_total",
                "numbering attempts refused because another holder had the lease",
            )?,
            messages_sent: prometheus::IntCounter::new(
                "manager_messages_sent_total",
                "messages numbered and appended to the log",
            )?,
            send_errors: prometheus::IntCounterVec::new(
                prometheus::Opts::new("manager_send_errors_total", "sends refused or failed"),
                &["reason"],
            )?,
            pending_replayed: prometheus::IntCounter::new(
                "manager_pending_replayed_total",
                "numbers a lease holder found pending (append in doubt) and appended again",
            )?,
            pending_stale: prometheus::IntCounter::new(
                "manager_pending_stale_total",
                "pending numbers found waiting for their append longer than a minute (an alarm: an append stays in doubt)",
            )?,
            counters_raised: prometheus::IntCounter::new(
                "manager_counters_raised_total",
                "sequence counters found behind the log after a Redis failover, and raised",
            )?,
            membership_fallbacks: prometheus::IntCounter::new(
                "manager_membership_fallbacks_total",
                "conversation batches whose senders the mirrored members could not vouch for \
                 (a cold mirror, or a sender not in it), checked against the source of truth",
            )?,
        };
        ops.register(&metrics.lock_wait_seconds);
        ops.register(&metrics.numbering_seconds);
        ops.register(&metrics.append_seconds);
        ops.register(&metrics.lease_busy);
        ops.register(&metrics.messages_sent);
        ops.register(&metrics.send_errors);
        ops.register(&metrics.pending_replayed);
        ops.register(&metrics.pending_stale);
        ops.register(&metrics.counters_raised);
        ops.register(&metrics.membership_fallbacks);
        ops.register(&kafka.produce_seconds);
        ops.register(&kafka.produce_errors);
        let quotas = quota::Quotas::new(redis.clone(), config.quotas)?;
        quotas.register(&ops);
        let signal_metrics = SignalMetrics {
            receipt_rounds: prometheus::IntCounter::new(
                "manager_receipt_rounds_total",
                "rounds of broker acknowledgements awaited for receipts: one per batch that \
                 records any, all of its receipts enqueued first",
            )?,
            receipts_recorded: prometheus::IntCounter::new(
                "manager_receipts_recorded_total",
                "receipts enqueued on the events topic",
            )?,
        };
        ops.register(&signal_metrics.receipt_rounds);
        ops.register(&signal_metrics.receipts_recorded);
        let redis_memory = RedisMemoryGauges::new(&ops)?;
        let ops = ops
            .with_check("redis", redis.readiness_check())
            .with_check("broker", kafka.readiness_check());
        let servers = switchboard_chat_state::presence::ServerMap::new(
            redis.clone(),
            config.user_mapping_ttl_ms,
            config.server_ttl_ms,
        );
        let config_origins = config.common.allowed_origins.clone();
        let mut workers = Workers::new();
        let state = web::Data::new(AppState {
            background: TaskTracker::new(),
            events: events::Checker::new(
                config.message_service_url.clone(),
                config.common.cluster.credential(ServiceRole::SocketManager),
            ),
            attachments: attachments::Verifier::new(
                config.message_service_url.clone(),
                config.common.cluster.credential(ServiceRole::SocketManager),
            ),
            quotas,
            signal_metrics,
            sequencer: sequencer::Sequencer {
                members: members::Members::new(
                    redis.clone(),
                    config.message_service_url.clone(),
                    config.common.cluster.credential(ServiceRole::SocketManager),
                ),
                numberer: numbering::NumberingBatcher::start(
                    (0..config.seq_flushes_in_flight)
                        .map(|_| SentinelRedis::new(config.common.redis.clone()))
                        .collect(),
                    sequencer::SEQUENCE_PREAMBLE,
                    &sequencer::SEQUENCE_FUNCTIONS,
                    config.seq_replica_acks,
                    config.seq_replica_ack_timeout,
                    &mut workers,
                ),
                redis,
                appender: batching::LogAppender::start(kafka.clone(), log_partitions, &mut workers),
                router: batching::Router::start(kafka.clone(), &mut workers),
                kafka,
                servers,
                route_broadcast_from: config.route_broadcast_from,
                log_partitions,
                replicas_required: config.seq_replica_acks,
                instance_id: config.manager_id.clone(),
                lock_ttl: config.lock_ttl,
                lock_wait: config.lock_wait,
                idempotency_ttl_secs: config.idempotency_ttl_secs,
                metrics,
            },
            config,
            runtime: tokio::runtime::Handle::current(),
        });
        let app_state = state.clone();
        let server = http::serve_json_api(
            ops,
            listener,
            16 * 1024 * 1024,
            &config_origins,
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
