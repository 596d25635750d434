//! Socket server settings, from the environment (README lists them all).

use std::time::Duration;

use switchboard_service_kit::config::{env_millis, env_or, env_string, CommonConfig, ConfigError};
use switchboard_service_kit::limits::Rate;

#[derive(Debug, Clone)]
pub struct SocketServerConfig {
    pub common: CommonConfig,
    /// `SB_SOCKET_BIND`, default `127.0.0.1:9001`.
    pub bind: String,
    /// The URL clients are given (`SB_SOCKET_PUBLIC_URL`); default `ws://<bind>/ws`.
    pub public_url: Option<String>,
    /// The URL health checkers probe (`SB_SOCKET_HEALTH_URL`); default `http://<bind>/live`.
    pub health_url: Option<String>,
    /// `SB_SERVER_ID`; a fresh ULID-based id when unset.
    pub server_id: Option<String>,
    /// Where the registry answers (`SB_REGISTRY_URL`, default `http://127.0.0.1:8080`).
    pub registry_url: String,
    /// `SB_MAX_CONNECTIONS`, default 100000.
    pub max_connections: u64,
    /// Largest accepted client frame in bytes (`SB_MAX_FRAME_BYTES`, default 262144).
    pub max_frame_bytes: usize,
    /// Largest message body in bytes (`SB_MAX_BODY_BYTES`, default 65536).
    pub max_body_bytes: usize,
    /// Server pings every this often (`SB_HEARTBEAT_INTERVAL_MS`, default 5000).
    pub heartbeat_interval: Duration,
    /// A client silent this long is dropped (`SB_CLIENT_TIMEOUT_MS`, default 15000).
    pub client_timeout: Duration,
    /// Score reconcile + heartbeat period (`SB_RECONCILE_INTERVAL_MS`, default 1000).
    pub reconcile_interval: Duration,
    /// Frames queued per connection before it counts as a slow consumer
    /// (`SB_OUTBOUND_QUEUE`, default 1024).
    pub outbound_queue: usize,
    /// Sustained client frames per second per connection (`SB_CLIENT_RATE_PER_SEC`, default 200).
    pub client_rate_per_sec: u32,
    /// Burst allowance on top of the rate (`SB_CLIENT_RATE_BURST`, default 400).
    pub client_rate_burst: u32,
    /// How long shutdown waits for clients to close (`SB_SHUTDOWN_GRACE_MS`, default 5000).
    pub shutdown_grace: Duration,
    /// Whether chat frames go to socket managers (`SB_MESSAGING_ENABLED`, default true). Off,
    /// the server only does presence of connections (registry, heartbeat, ping).
    pub messaging_enabled: bool,
    /// Socket manager base URLs, tried in turn (`SB_MANAGER_URLS`, comma separated, default
    /// `http://127.0.0.1:8201,http://127.0.0.1:8202`).
    pub manager_urls: Vec<String>,
    /// Parallel ordered lanes to the managers (`SB_MANAGER_LANES`, default 64).
    pub manager_lanes: usize,
    /// WebSocket upgrades per client address (`SB_CONNECTS_PER_IP_PER_SEC`, default 20, and
    /// `SB_CONNECTS_BURST_PER_IP`, default 100; 0 turns it off), counted before the token is
    /// checked.
    pub connects_per_ip: Rate,
    /// Devices one user may connect to this server (`SB_MAX_CONNECTIONS_PER_USER`, default
    /// 10; 0 turns it off).
    pub max_connections_per_user: usize,
    /// Batches one lane may have in flight (`SB_MANAGER_LANE_BATCHES`, default 1); a
    /// connection's frames are never in two at once.
    pub manager_lane_batches: usize,
    /// Handler liveness heartbeat to the managers (`SB_HANDLER_HEARTBEAT_MS`, default 2000).
    pub handler_heartbeat: Duration,
    /// Re-report every local user so mappings do not expire (`SB_MAPPING_RENEW_MS`, default 300000).
    pub mapping_renew: Duration,
    /// How long the delivery consumer's fetch may wait for data (`SB_DELIVERY_FETCH_WAIT_MS`,
    /// default 10): shorter delivers sooner, longer spares the broker (tansu answers an empty
    /// fetch only when the wait is over, and queries its storage for each).
    pub delivery_fetch_wait_ms: u64,
    pub kafka: switchboard_kafka::KafkaConfig,
}

impl SocketServerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let optional = |name: &str| Some(env_string(name, "")).filter(|v| !v.is_empty());
        Ok(SocketServerConfig {
            common: CommonConfig::from_env()?,
            bind: env_string("SB_SOCKET_BIND", "127.0.0.1:9001"),
            public_url: optional("SB_SOCKET_PUBLIC_URL"),
            health_url: optional("SB_SOCKET_HEALTH_URL"),
            server_id: optional("SB_SERVER_ID"),
            registry_url: env_string("SB_REGISTRY_URL", "http://127.0.0.1:8080"),
            max_connections: env_or("SB_MAX_CONNECTIONS", 100_000)?,
            max_frame_bytes: env_or("SB_MAX_FRAME_BYTES", 256 * 1024)?,
            max_body_bytes: env_or("SB_MAX_BODY_BYTES", 64 * 1024)?,
            heartbeat_interval: env_millis("SB_HEARTBEAT_INTERVAL_MS", 5_000)?,
            client_timeout: env_millis("SB_CLIENT_TIMEOUT_MS", 15_000)?,
            reconcile_interval: env_millis("SB_RECONCILE_INTERVAL_MS", 1_000)?,
            outbound_queue: env_or("SB_OUTBOUND_QUEUE", 1024)?,
            client_rate_per_sec: env_or("SB_CLIENT_RATE_PER_SEC", 200)?,
            client_rate_burst: env_or("SB_CLIENT_RATE_BURST", 400)?,
            shutdown_grace: env_millis("SB_SHUTDOWN_GRACE_MS", 5_000)?,
            messaging_enabled: switchboard_service_kit::config::env_bool(
                "SB_MESSAGING_ENABLED",
                true,
            )?,
            manager_urls: env_string(
                "SB_MANAGER_URLS",
                "http://127.0.0.1:8201,http://127.0.0.1:8202",
            )
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
            manager_lanes: env_or("SB_MANAGER_LANES", 64)?,
            connects_per_ip: Rate {
                per_sec: env_or("SB_CONNECTS_PER_IP_PER_SEC", 20.0)?,
                burst: env_or("SB_CONNECTS_BURST_PER_IP", 100.0)?,
            },
            max_connections_per_user: env_or("SB_MAX_CONNECTIONS_PER_USER", 10)?,
            manager_lane_batches: env_or("SB_MANAGER_LANE_BATCHES", 1)?,
            handler_heartbeat: env_millis("SB_HANDLER_HEARTBEAT_MS", 2_000)?,
            mapping_renew: env_millis("SB_MAPPING_RENEW_MS", 300_000)?,
            delivery_fetch_wait_ms: env_or("SB_DELIVERY_FETCH_WAIT_MS", 10)?,
            kafka: switchboard_kafka::KafkaConfig::from_env()?,
        })
    }
}
