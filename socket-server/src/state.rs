//! What connection tasks and background jobs share: the [`ServerState`] of one socket server,
//! how it is made from the config, what `/ready` asks of it, and its score bumps in the
//! directory as connections come and go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use switchboard_config::names::SB_SERVER_ID;
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::token::TokenKeys;
use switchboard_protocol::ServerId;
use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::jwks::JwksRefresher;
use switchboard_service_kit::latch::Latch;
use switchboard_service_kit::limits::IpRateLimiter;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::TaskTracker;

use crate::config::SocketServerConfig;
use crate::hub::Hub;
use crate::manager_client::{Lanes, ManagerClient};
use crate::metrics::Metrics;
use crate::per_address::PerAddress;
use crate::token_life::Sessions;

/// What connection tasks and background jobs share.
pub(crate) struct ServerState {
    pub config: SocketServerConfig,
    /// This server's id in the directory, to the managers (its handler id) and in its
    /// topic's name: `SB_SERVER_ID`, checked once at start.
    pub server_id: ServerId,
    pub public_url: String,
    pub health_url: String,
    pub tokens: TokenKeys,
    /// WebSocket upgrades per client address.
    pub connects: IpRateLimiter,
    /// Request heads being read, per peer address.
    pub handshakes_per_ip: Arc<PerAddress>,
    /// WebSocket sessions, per client address.
    pub connections_per_ip: Arc<PerAddress>,
    pub hub: Arc<Hub>,
    /// Live sessions by user with their tokens' `iat`, for ending a user's sessions.
    pub sessions: Sessions,
    pub directory: ServerDirectory,
    /// Cancelled once this server has left the sorted set: every session closes with 1012.
    pub shutdown: CancellationToken,
    /// Every accepted connection's task (request head, refusal or session): the drain waits
    /// for the last one to end.
    pub connections: TaskTracker,
    pub registered: AtomicBool,
    pub metrics: Metrics,
    /// The link to the socket managers; `None` when messaging is disabled.
    pub manager: Option<ManagerClient>,
    /// Linked to the managers (which made our topic): set by the link loop, cleared when the
    /// delivery consumer must start again.
    pub manager_ready: Latch,
    /// The delivery consumer has been given our topic's partitions by the broker, so frames
    /// routed here reach devices live. Cleared when the consumer stops.
    pub delivery_assigned: Latch,
}

/// Where this server is reached: by clients (its WebSocket URL) and by health checkers.
pub(crate) struct Urls {
    pub public_url: String,
    pub health_url: String,
}

/// `SB_SERVER_ID`, or a fresh ULID-based id; refused at start when it cannot name a topic.
fn server_id(config: &SocketServerConfig) -> anyhow::Result<ServerId> {
    let id = config
        .server_id
        .clone()
        .unwrap_or_else(|| format!("socket-{}", ulid::Ulid::new()));
    ServerId::parse(id).map_err(|e| anyhow::anyhow!("{SB_SERVER_ID}: {e}"))
}

impl ServerState {
    /// The state of a server about to serve: its metrics registered with `ops`, its link to
    /// the managers started (when messaging is on), and the identity provider's key refresher
    /// when one is configured (the caller runs it).
    pub(crate) fn new(
        config: SocketServerConfig,
        urls: Urls,
        ops: &Ops,
    ) -> anyhow::Result<(Arc<Self>, Option<JwksRefresher>)> {
        let server_id = server_id(&config)?;
        let redis = SentinelRedis::new(config.common.redis.clone());
        let metrics = Metrics::new(ops)?;
        let manager = config.messaging_enabled.then(|| {
            ManagerClient::start(
                config.manager_urls.clone(),
                config.common.cluster.credential(ServiceRole::SocketServer),
                server_id.clone(),
                Lanes {
                    count: config.manager_lanes,
                    batches_in_flight: config.manager_lane_batches,
                },
                metrics.lanes.clone(),
            )
        });
        let (tokens, jwks) = config.common.token_keys();
        let state = ServerState {
            connections: TaskTracker::new(),
            manager,
            manager_ready: Latch::new("manager link"),
            delivery_assigned: Latch::new("delivery assignment"),
            tokens,
            connects: IpRateLimiter::new(config.connects_per_ip),
            handshakes_per_ip: PerAddress::new(config.handshakes_per_ip),
            connections_per_ip: PerAddress::new(config.max_connections_per_ip),
            hub: Hub::new(),
            sessions: Sessions::new(redis.clone(), ops)?,
            directory: ServerDirectory::new(redis),
            shutdown: CancellationToken::new(),
            registered: AtomicBool::new(false),
            metrics,
            server_id,
            public_url: urls.public_url,
            health_url: urls.health_url,
            config,
        };
        Ok((Arc::new(state), jwks))
    }

    /// `/ready`'s check: linked to a manager whose topic we consume, registered, not shutting
    /// down, and Redis answering. `Err` says what is missing.
    pub(crate) async fn readiness(&self) -> Result<(), String> {
        if self.manager.is_some() && !self.manager_ready.is_set() {
            return Err("not linked to a socket manager yet".into());
        }
        if self.manager.is_some() && !self.delivery_assigned.is_set() {
            return Err("the delivery consumer has no partition of our topic yet".into());
        }
        if !self.registered.load(Ordering::Acquire) {
            return Err("not registered with the registry yet".into());
        }
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        self.directory
            .redis()
            .ping()
            .await
            .map_err(|e| e.to_string())
    }

    pub(crate) async fn directory_connected(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(e) = self.directory.connected(&self.server_id, now).await {
            tracing::debug!(error = %e, "score bump failed; the reconcile loop will correct it");
        }
    }

    pub(crate) async fn directory_disconnected(&self) {
        if self.shutdown.is_cancelled() {
            return; // already out of the set; nothing to decrement
        }
        if let Err(e) = self.directory.disconnected(&self.server_id).await {
            tracing::debug!(error = %e, "score drop failed; the reconcile loop will correct it");
        }
    }
}
