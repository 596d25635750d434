//! The manager's app state: what every route and background task shares (settings, the
//! sequencer, quotas, the checks made before numbering, the signal counters), built once at
//! startup.

use switchboard_credentials::cluster::ServiceRole;
use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::supervise::{TaskTracker, Workers};

use crate::attachments;
use crate::config::ManagerConfig;
use crate::events;
use crate::kafka::Kafka;
use crate::quota;
use crate::sequencer::Sequencer;

pub(crate) struct AppState {
    pub config: ManagerConfig,
    pub sequencer: Sequencer,
    pub quotas: quota::Quotas,
    pub signal_metrics: SignalMetrics,
    /// The runtime the message path's tasks (Redis connections, batchers) run on; batches
    /// are answered there rather than on the HTTP worker's own runtime (see `routes::batch`).
    pub runtime: tokio::runtime::Handle,
    /// Verifies the attachments a send references before it is numbered.
    pub attachments: attachments::Verifier,
    /// Checks edits, deletes, reactions and replies before they are numbered.
    pub events: events::Checker,
    /// The socket servers' directory, read (never written) to know which servers are alive:
    /// the janitor reaps the ones linked here but gone from it.
    pub directory: ServerDirectory,
    /// Presence announcements in flight (`presence::announce`), waited for at shutdown.
    pub background: TaskTracker,
}

/// Counters of the typing and receipt path (`signals::answer_signals`).
pub(crate) struct SignalMetrics {
    /// `manager_receipt_rounds_total`: rounds of acknowledgements awaited for receipts, one
    /// per batch that records any (all of its receipts enqueued, then awaited together).
    pub receipt_rounds: prometheus::IntCounter,
    /// `manager_receipts_recorded_total`: receipts enqueued on the events topic.
    pub receipts_recorded: prometheus::IntCounter,
}

impl SignalMetrics {
    /// The counters, registered with `ops`.
    fn registered(ops: &Ops) -> prometheus::Result<Self> {
        let metrics = SignalMetrics {
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
        ops.register(&metrics.receipt_rounds);
        ops.register(&metrics.receipts_recorded);
        Ok(metrics)
    }
}

impl AppState {
    /// The state, its metrics registered with `ops`; the message path's tasks (appender,
    /// router, numbering) join `workers`.
    pub(crate) fn new(
        config: ManagerConfig,
        redis: SentinelRedis,
        kafka: Kafka,
        log_partitions: i32,
        ops: &Ops,
        workers: &mut Workers,
    ) -> anyhow::Result<Self> {
        let sequencer =
            Sequencer::start(&config, redis.clone(), kafka, log_partitions, ops, workers)?;
        let directory = ServerDirectory::new(redis.clone());
        let quotas = quota::Quotas::new(redis, config.quotas)?;
        quotas.register(ops);
        let credential = || config.common.cluster.credential(ServiceRole::SocketManager);
        Ok(AppState {
            background: TaskTracker::new(),
            directory,
            events: events::Checker::new(config.message_service_url.clone(), credential()),
            attachments: attachments::Verifier::new(
                config.message_service_url.clone(),
                credential(),
            ),
            quotas,
            signal_metrics: SignalMetrics::registered(ops)?,
            sequencer,
            runtime: tokio::runtime::Handle::current(),
            config,
        })
    }
}
