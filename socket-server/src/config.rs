//! The socket server's settings, read from the environment (or any lookup of variables): its table
//! ([`tables::socket_server`]) names every variable it reads itself (beside the common and Kafka
//! ones), `from_lookup` reads them (`from_env` from the process environment).

use std::time::Duration;

use switchboard_config::env::EnvTable;
use switchboard_config::lookup::{
    lookup_bool, lookup_millis, lookup_optional, lookup_or, lookup_string, process_env,
    ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_CLIENT_RATE_BURST, SB_CLIENT_RATE_PER_SEC, SB_CLIENT_TIMEOUT_MS, SB_CLIENT_WRITE_TIMEOUT_MS,
    SB_CONNECTS_BURST_PER_IP, SB_CONNECTS_PER_IP_PER_SEC, SB_DELIVERY_FETCH_WAIT_MS,
    SB_HANDLER_HEARTBEAT_MS, SB_HANDSHAKES_PER_IP, SB_HANDSHAKE_TIMEOUT_MS,
    SB_HEARTBEAT_INTERVAL_MS, SB_MANAGER_LANES, SB_MANAGER_LANE_BATCHES, SB_MANAGER_URLS,
    SB_MAPPING_RENEW_MS, SB_MAX_BODY_BYTES, SB_MAX_CONNECTIONS, SB_MAX_CONNECTIONS_PER_IP,
    SB_MAX_CONNECTIONS_PER_USER, SB_MAX_FRAME_BYTES, SB_MESSAGING_ENABLED, SB_OUTBOUND_QUEUE,
    SB_RECONCILE_INTERVAL_MS, SB_REGISTRY_URL, SB_SERVER_ID, SB_SHUTDOWN_GRACE_MS, SB_SOCKET_BIND,
    SB_SOCKET_HEALTH_URL, SB_SOCKET_OPS_BIND, SB_SOCKET_PUBLIC_URL, SB_TOKEN_EXPIRY_NOTICE_MS,
    SB_TOKEN_MAX_LIFETIME_SECS,
};
use switchboard_config::tables;
use switchboard_service_kit::config::CommonConfig;
use switchboard_service_kit::limits::Rate;

/// Everything the socket-server binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    tables::COMMON[0],
    tables::COMMON[1],
    tables::COMMON[2],
    tables::kafka::TABLE,
    tables::socket_server::TABLE,
];

#[derive(Debug, Clone)]
pub struct SocketServerConfig {
    pub common: CommonConfig,
    /// `SB_SOCKET_BIND`, default `127.0.0.1:9001`.
    pub bind: String,
    /// The URL clients are given (`SB_SOCKET_PUBLIC_URL`); default `ws://<bind>/ws`.
    pub public_url: Option<String>,
    /// The URL health checkers probe (`SB_SOCKET_HEALTH_URL`); default
    /// `http://<ops_bind>/live`.
    pub health_url: Option<String>,
    /// Where `/live`, `/ready` and `/metrics` listen (`SB_SOCKET_OPS_BIND`, default
    /// `127.0.0.1:0`), apart from the clients' port.
    pub ops_bind: String,
    /// How long a connection may take to send its request head (`SB_HANDSHAKE_TIMEOUT_MS`,
    /// default 3000).
    pub handshake_timeout: Duration,
    /// Heads being read per peer address (`SB_HANDSHAKES_PER_IP`, default 64; 0 off).
    pub handshakes_per_ip: usize,
    /// WebSocket connections per client address (`SB_MAX_CONNECTIONS_PER_IP`, default 1000;
    /// 0 off).
    pub max_connections_per_ip: usize,
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
    /// A write to a client not done within this long drops it as a slow consumer
    /// (`SB_CLIENT_WRITE_TIMEOUT_MS`, default 5000).
    pub client_write_timeout: Duration,
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
    /// How often the link to the managers is checked (`SB_HANDLER_HEARTBEAT_MS`, default 2000);
    /// the name stays from when it was a heartbeat to them.
    pub handler_heartbeat: Duration,
    /// Re-report every local user so mappings do not expire (`SB_MAPPING_RENEW_MS`, default
    /// 300000).
    pub mapping_renew: Duration,
    /// How long the delivery consumer's fetch waits for records before it is answered empty
    /// (`SB_DELIVERY_FETCH_WAIT_MS`, default 500, Kafka's own default). The broker answers a
    /// fetch as soon as records arrive (Apache Kafka, and tansu with our patch 0002), so the
    /// wait costs no latency; a shorter one only polls an idle broker more often.
    pub delivery_fetch_wait_ms: u64,
    /// How long before `exp` a connection is sent `token_expiring`
    /// (`SB_TOKEN_EXPIRY_NOTICE_MS`, default 60000; at most a tenth of the token's lifetime).
    pub token_expiry_notice: Duration,
    /// The longest token lifetime accepted (`SB_TOKEN_MAX_LIFETIME_SECS`, default 604800).
    pub token_max_lifetime_secs: i64,
    pub kafka: switchboard_kafka::KafkaConfig,
}

impl SocketServerConfig {
    /// Reads the settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings from `lookup` (a variable's value by name): the same parsing and
    /// defaults as `from_env`, from a map of one's own (tests).
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(SocketServerConfig {
            common: CommonConfig::from_lookup(lookup)?,
            bind: lookup_string(lookup, SB_SOCKET_BIND, "127.0.0.1:9001"),
            public_url: lookup_optional(lookup, SB_SOCKET_PUBLIC_URL),
            health_url: lookup_optional(lookup, SB_SOCKET_HEALTH_URL),
            ops_bind: lookup_string(lookup, SB_SOCKET_OPS_BIND, "127.0.0.1:0"),
            handshake_timeout: lookup_millis(lookup, SB_HANDSHAKE_TIMEOUT_MS, 3_000)?,
            handshakes_per_ip: lookup_or(lookup, SB_HANDSHAKES_PER_IP, 64)?,
            max_connections_per_ip: lookup_or(lookup, SB_MAX_CONNECTIONS_PER_IP, 1000)?,
            server_id: lookup_optional(lookup, SB_SERVER_ID),
            registry_url: lookup_string(lookup, SB_REGISTRY_URL, "http://127.0.0.1:8080"),
            max_connections: lookup_or(lookup, SB_MAX_CONNECTIONS, 100_000)?,
            max_frame_bytes: lookup_or(lookup, SB_MAX_FRAME_BYTES, 256 * 1024)?,
            max_body_bytes: lookup_or(lookup, SB_MAX_BODY_BYTES, 64 * 1024)?,
            heartbeat_interval: lookup_millis(lookup, SB_HEARTBEAT_INTERVAL_MS, 5_000)?,
            client_timeout: lookup_millis(lookup, SB_CLIENT_TIMEOUT_MS, 15_000)?,
            client_write_timeout: lookup_millis(lookup, SB_CLIENT_WRITE_TIMEOUT_MS, 5_000)?,
            reconcile_interval: lookup_millis(lookup, SB_RECONCILE_INTERVAL_MS, 1_000)?,
            outbound_queue: lookup_or(lookup, SB_OUTBOUND_QUEUE, 1024)?,
            client_rate_per_sec: lookup_or(lookup, SB_CLIENT_RATE_PER_SEC, 200)?,
            client_rate_burst: lookup_or(lookup, SB_CLIENT_RATE_BURST, 400)?,
            shutdown_grace: lookup_millis(lookup, SB_SHUTDOWN_GRACE_MS, 5_000)?,
            messaging_enabled: lookup_bool(lookup, SB_MESSAGING_ENABLED, true)?,
            manager_urls: lookup_string(
                lookup,
                SB_MANAGER_URLS,
                "http://127.0.0.1:8201,http://127.0.0.1:8202",
            )
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
            manager_lanes: lookup_or(lookup, SB_MANAGER_LANES, 64)?,
            connects_per_ip: Rate {
                per_sec: lookup_or(lookup, SB_CONNECTS_PER_IP_PER_SEC, 20.0)?,
                burst: lookup_or(lookup, SB_CONNECTS_BURST_PER_IP, 100.0)?,
            },
            max_connections_per_user: lookup_or(lookup, SB_MAX_CONNECTIONS_PER_USER, 10)?,
            manager_lane_batches: lookup_or(lookup, SB_MANAGER_LANE_BATCHES, 1)?,
            handler_heartbeat: lookup_millis(lookup, SB_HANDLER_HEARTBEAT_MS, 2_000)?,
            mapping_renew: lookup_millis(lookup, SB_MAPPING_RENEW_MS, 300_000)?,
            delivery_fetch_wait_ms: lookup_or(lookup, SB_DELIVERY_FETCH_WAIT_MS, 500)?,
            token_expiry_notice: lookup_millis(lookup, SB_TOKEN_EXPIRY_NOTICE_MS, 60_000)?,
            token_max_lifetime_secs: lookup_or(lookup, SB_TOKEN_MAX_LIFETIME_SECS, 604_800)?,
            kafka: switchboard_kafka::KafkaConfig::from_lookup(lookup)?,
        })
    }
}
