//! The socket server (the "socket handler"): the WebSocket endpoint clients connect to.
//!
//! - [`config`]: settings from the environment.
//! - `listener`: the public port's accept loop: `GET /ws` becomes a WebSocket session (the
//!   protocol itself is `websocket`), `GET /live` is answered there, anything else is 404.
//!   The operations endpoints (`/live`, `/ready`, `/metrics`) are actix-web's, on their own
//!   port (`SB_SOCKET_OPS_BIND`); per-address caps keep one address from taking the port.
//! - `session`: admission before the upgrade (token, origin, limits), then one task per
//!   connection that selects over client frames, its bounded outbound queue, a heartbeat and
//!   shutdown.
//! - `hub`: the connections this server holds, by id and by user; exact live count.
//! - `token_life`: a session's token expiry and in-band refresh, and ending every session of
//!   a user (a control on the handler topic, a mark in Redis).
//! - `membership`: registers with the registry, then keeps this server's score in the Redis
//!   sorted set exact (reconcile + heartbeat) and re-registers if it was evicted.
//! - [`Application`]: binds (port 0 in tests), runs, and shuts down in the order the contract
//!   asks: leave the sorted set first, then close every client with 1012, then stop.

pub mod config;
mod delivery;
pub mod hub;
mod listener;
mod manager_client;
mod membership;
mod rate;
mod reorder;
mod session;
mod sse;
mod token_life;
mod websocket;
mod wire;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use switchboard_protocol::token::TokenKeys;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http;
use switchboard_service_kit::jwks::JwksRefresher;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::redis_sentinel::SentinelRedis;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::{OwnedTask, TaskTracker, Workers};

pub use config::SocketServerConfig;

/// Histogram buckets (seconds) for the stages of a frame.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Prometheus instruments of the socket server.
pub(crate) struct Metrics {
    pub connections: prometheus::IntGauge,
    pub connects: prometheus::IntCounter,
    pub frames_in: prometheus::IntCounter,
    pub frames_out: prometheus::IntCounter,
    pub auth_failures: prometheus::IntCounter,
    pub slow_consumer_kicks: prometheus::IntCounter,
    pub handshakes_refused: prometheus::IntCounter,
    pub write_timeouts: prometheus::IntCounter,
    pub deliveries: prometheus::IntCounter,
    pub delivery_latency: prometheus::Histogram,
    pub lanes: manager_client::LaneMetrics,
}

impl Metrics {
    fn new(ops: &Ops) -> anyhow::Result<Self> {
        let m = Metrics {
            connections: prometheus::IntGauge::new(
                "socket_connections",
                "live WebSocket connections",
            )?,
            connects: prometheus::IntCounter::new(
                "socket_connects_total",
                "accepted WebSocket connections",
            )?,
            frames_in: prometheus::IntCounter::new(
                "socket_frames_in_total",
                "client frames received",
            )?,
            frames_out: prometheus::IntCounter::new(
                "socket_frames_out_total",
                "frames sent to clients",
            )?,
            auth_failures: prometheus::IntCounter::new(
                "socket_auth_failures_total",
                "upgrades refused for a bad or missing token",
            )?,
            slow_consumer_kicks: prometheus::IntCounter::new(
                "socket_slow_consumer_kicks_total",
                "connections dropped as slow consumers: their outbound queue was full, or a \
                 write to them stalled past SB_CLIENT_WRITE_TIMEOUT_MS",
            )?,
            handshakes_refused: prometheus::IntCounter::new(
                "socket_handshakes_refused_total",
                "connections closed at accept: their address (SB_HANDSHAKES_PER_IP) or the \
                 server already had that many request heads being read",
            )?,
            write_timeouts: prometheus::IntCounter::new(
                "socket_write_timeouts_total",
                "connections dropped because a write to them stalled past \
                 SB_CLIENT_WRITE_TIMEOUT_MS (also counted in socket_slow_consumer_kicks_total)",
            )?,
            deliveries: prometheus::IntCounter::new(
                "socket_deliveries_total",
                "frames from the handler topic queued to local devices",
            )?,
            delivery_latency: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "socket_delivery_latency_seconds",
                    "from a message's acceptance by a manager to its queueing for local devices",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            lanes: manager_client::LaneMetrics {
                answer_seconds: prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "socket_manager_answer_seconds",
                        "from a frame's queueing on its manager lane to the manager's answer",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
                batch_seconds: prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "socket_manager_batch_seconds",
                        "one lane batch's HTTP round trip to a manager",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            },
        };
        ops.register(&m.lanes.answer_seconds);
        ops.register(&m.lanes.batch_seconds);
        ops.register(&m.deliveries);
        ops.register(&m.delivery_latency);
        ops.register(&m.connections);
        ops.register(&m.connects);
        ops.register(&m.frames_in);
        ops.register(&m.frames_out);
        ops.register(&m.auth_failures);
        ops.register(&m.slow_consumer_kicks);
        ops.register(&m.write_timeouts);
        ops.register(&m.handshakes_refused);
        Ok(m)
    }
}

/// What connection tasks and background jobs share.
pub(crate) struct ServerState {
    pub config: SocketServerConfig,
    pub server_id: String,
    pub public_url: String,
    pub health_url: String,
    pub tokens: TokenKeys,
    /// WebSocket upgrades per client address.
    pub connects: switchboard_service_kit::limits::IpRateLimiter,
    /// Request heads being read, per peer address.
    pub handshakes_per_ip: Arc<listener::PerAddress>,
    /// WebSocket sessions, per client address.
    pub connections_per_ip: Arc<listener::PerAddress>,
    pub hub: Arc<hub::Hub>,
    /// Live sessions by user with their tokens' `iat`, for ending a user's sessions.
    pub sessions: token_life::Sessions,
    pub directory: ServerDirectory,
    /// Cancelled once this server has left the sorted set: every session closes with 1012.
    pub shutdown: CancellationToken,
    /// Every accepted connection's task (request head, refusal or session): the drain waits
    /// for the last one to end.
    pub connections: TaskTracker,
    pub registered: AtomicBool,
    pub metrics: Metrics,
    /// The link to the socket managers; `None` when messaging is disabled.
    pub manager: Option<manager_client::ManagerClient>,
    /// Registered with a manager (which created our topic).
    pub manager_ready: AtomicBool,
    /// A latch: the delivery consumer has been given our topic's partitions by the broker,
    /// so frames routed here reach devices live. Cleared when the consumer stops.
    pub delivery_assigned: AtomicBool,
}

impl ServerState {
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

pub struct Application {
    port: u16,
    /// The public port, served by [`listener::serve`] once running.
    public: tokio::net::TcpListener,
    /// Where the operations server (actix-web) listens (`SB_SOCKET_OPS_BIND`).
    ops_addr: SocketAddr,
    server: actix_web::dev::Server,
    state: Arc<ServerState>,
    /// Keeps an identity provider's keys fresh, when one is configured.
    jwks: Option<JwksRefresher>,
}

/// Connections waiting to be accepted on the public port.
const ACCEPT_BACKLOG: u32 = 4096;

/// `addr` as another process on this host reaches it (an unspecified address as loopback).
fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// Binds the public port (`SO_REUSEADDR`, so a restarted server can take it back at once).
fn bind_public(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr} resolves to no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(ACCEPT_BACKLOG)?)
}

impl Application {
    pub async fn build(config: SocketServerConfig) -> anyhow::Result<Self> {
        let public = bind_public(&config.bind)?;
        let addr = public.local_addr()?;
        let port = addr.port();
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{}/ws", reachable(addr)));
        // The operations endpoints on their own listener: a flood on the clients' port
        // cannot keep the health checkers' probes out, and clients cannot read /metrics.
        let ops_listener = TcpListener::bind(&config.ops_bind)?;
        let ops_addr = ops_listener.local_addr()?;
        let health_url = config
            .health_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/live", reachable(ops_addr)));
        tracing::info!(%ops_addr, %health_url, "operations endpoints (/live, /ready, /metrics) listening");
        let server_id = config
            .server_id
            .clone()
            .unwrap_or_else(|| format!("socket-{}", ulid::Ulid::new()));

        let redis = SentinelRedis::new(config.common.redis.clone());
        let ops = Ops::new("socket-server");
        let metrics = Metrics::new(&ops)?;
        let manager = config.messaging_enabled.then(|| {
            manager_client::ManagerClient::start(
                config.manager_urls.clone(),
                config.common.cluster.credential(ServiceRole::SocketServer),
                server_id.clone(),
                manager_client::Lanes {
                    count: config.manager_lanes,
                    batches_in_flight: config.manager_lane_batches,
                },
                metrics.lanes.clone(),
            )
        });
        let (tokens, jwks) = config.common.token_keys();
        let state = Arc::new(ServerState {
            connections: TaskTracker::new(),
            manager,
            manager_ready: AtomicBool::new(false),
            delivery_assigned: AtomicBool::new(false),
            tokens,
            connects: switchboard_service_kit::limits::IpRateLimiter::new(config.connects_per_ip),
            handshakes_per_ip: listener::PerAddress::new(config.handshakes_per_ip),
            connections_per_ip: listener::PerAddress::new(config.max_connections_per_ip),
            hub: hub::Hub::new(),
            sessions: token_life::Sessions::new(redis.clone(), &ops)?,
            directory: ServerDirectory::new(redis.clone()),
            shutdown: CancellationToken::new(),
            registered: AtomicBool::new(false),
            metrics,
            server_id,
            public_url,
            health_url,
            config,
        });

        let ready_state = state.clone();
        let ops = ops.with_check(
            "registered",
            Arc::new(move || {
                let state = ready_state.clone();
                Box::pin(async move {
                    if state.manager.is_some() && !state.manager_ready.load(Ordering::Acquire) {
                        return Err("not linked to a socket manager yet".into());
                    }
                    if state.manager.is_some() && !state.delivery_assigned.load(Ordering::Acquire) {
                        return Err(
                            "the delivery consumer has no partition of our topic yet".into()
                        );
                    }
                    if !state.registered.load(Ordering::Acquire) {
                        return Err("not registered with the registry yet".into());
                    }
                    if state.shutdown.is_cancelled() {
                        return Err("shutting down".into());
                    }
                    state
                        .directory
                        .redis()
                        .ping()
                        .await
                        .map_err(|e| e.to_string())
                })
            }),
        );

        let server = HttpServer::new(move || {
            App::new()
                .app_data(http::query_config())
                .configure(ops.clone().configure())
                .default_service(web::to(http::not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(state.config.shutdown_grace.as_secs().max(1))
        .listen(ops_listener)?
        .run();
        Ok(Application {
            port,
            public,
            ops_addr,
            server,
            state,
            jwks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/live`, `/ready` and `/metrics` (`SB_SOCKET_OPS_BIND`).
    pub fn ops_port(&self) -> u16 {
        self.ops_addr.port()
    }

    pub fn server_id(&self) -> &str {
        &self.state.server_id
    }

    /// Serves until `shutdown` fires, then drains ([`drain`]): stop the membership loop,
    /// leave the sorted set, close every client with 1012 and wait (up to the grace period)
    /// for the last connection to end, then leave the managers. Runs under the same
    /// supervision as every service ([`Workers`]): a loop that ends on its own while the
    /// server runs stops it, so it is restarted rather than left half alive.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let grace = state.config.shutdown_grace + Duration::from_secs(10);
        let mut workers = Workers::new().with_grace(grace);
        if let Some(jwks) = self.jwks {
            workers.spawn("jwks", jwks.run(shutdown.clone()));
        }
        let accept_stop = CancellationToken::new();
        let (accept_state, stop) = (state.clone(), accept_stop.clone());
        let public = self.public;
        workers.spawn("accept", async move {
            tokio::select! {
                _ = listener::serve(public, accept_state) => {}
                _ = stop.cancelled() => {}
            }
        });
        workers.spawn(
            "membership and drain",
            drain(state, shutdown.clone(), accept_stop),
        );
        workers.serve(self.server, shutdown).await?;
        Ok(())
    }
}

/// Runs the directory membership and the managers' link until `shutdown`, then drains in
/// order. Either loop ending before `shutdown` ends this task, which stops the service.
async fn drain(
    state: Arc<ServerState>,
    shutdown: CancellationToken,
    accept_stop: CancellationToken,
) {
    let membership_stop = CancellationToken::new();
    let link_stop = CancellationToken::new();
    let mut membership = OwnedTask::spawn(
        "membership",
        membership::run(state.clone(), membership_stop.clone()),
    );
    let mut link = state.manager.is_some().then(|| {
        OwnedTask::spawn(
            "manager link",
            membership::link_managers(state.clone(), link_stop.clone()),
        )
    });
    let link_ended = async {
        match link.as_mut() {
            Some(link) => link.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        ended = membership.wait() => {
            tracing::error!(?ended, "the directory membership loop ended on its own");
            return;
        }
        ended = link_ended => {
            tracing::error!(?ended, "the managers' link ended on its own");
            return;
        }
    }
    membership_stop.cancel();
    let _ = membership.wait().await;
    membership::leave(&state).await;
    state.shutdown.cancel();
    // Every connection is a tracked task: wait for the last one by notification.
    state.connections.close();
    let drained = tokio::time::timeout(state.config.shutdown_grace, state.connections.wait());
    if drained.await.is_err() {
        tracing::warn!(
            remaining = state.hub.live(),
            "clients still connected at the grace period's end"
        );
    }
    tracing::info!(remaining = state.hub.live(), "clients closed; stopping");
    link_stop.cancel();
    if let Some(link) = link.as_mut() {
        let _ = link.wait().await;
    }
    if let Some(manager) = &state.manager {
        manager.deregister().await;
    }
    accept_stop.cancel();
}
