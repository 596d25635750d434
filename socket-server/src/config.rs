//! The socket server's settings, read from the environment (or any lookup of variables): [`ENV`]
//! names every variable it reads itself (beside the common and Kafka ones), `from_lookup` reads
//! them (`from_env` from the process environment).

use std::time::Duration;

use switchboard_service_kit::config::{
    lookup_bool, lookup_millis, lookup_optional, lookup_or, lookup_string, process_env,
    CommonConfig, ConfigError, Lookup, COMMON,
};
use switchboard_service_kit::env::{EnvTable, EnvVar};
use switchboard_service_kit::limits::Rate;

pub const SB_SOCKET_BIND: &str = "SB_SOCKET_BIND";
pub const SB_SOCKET_PUBLIC_URL: &str = "SB_SOCKET_PUBLIC_URL";
pub const SB_SOCKET_HEALTH_URL: &str = "SB_SOCKET_HEALTH_URL";
pub const SB_SOCKET_OPS_BIND: &str = "SB_SOCKET_OPS_BIND";
pub const SB_HANDSHAKE_TIMEOUT_MS: &str = "SB_HANDSHAKE_TIMEOUT_MS";
pub const SB_HANDSHAKES_PER_IP: &str = "SB_HANDSHAKES_PER_IP";
pub const SB_MAX_CONNECTIONS_PER_IP: &str = "SB_MAX_CONNECTIONS_PER_IP";
pub const SB_SERVER_ID: &str = "SB_SERVER_ID";
pub const SB_REGISTRY_URL: &str = "SB_REGISTRY_URL";
pub const SB_MAX_CONNECTIONS: &str = "SB_MAX_CONNECTIONS";
pub const SB_MAX_FRAME_BYTES: &str = "SB_MAX_FRAME_BYTES";
pub const SB_MAX_BODY_BYTES: &str = "SB_MAX_BODY_BYTES";
pub const SB_HEARTBEAT_INTERVAL_MS: &str = "SB_HEARTBEAT_INTERVAL_MS";
pub const SB_CLIENT_TIMEOUT_MS: &str = "SB_CLIENT_TIMEOUT_MS";
pub const SB_CLIENT_WRITE_TIMEOUT_MS: &str = "SB_CLIENT_WRITE_TIMEOUT_MS";
pub const SB_RECONCILE_INTERVAL_MS: &str = "SB_RECONCILE_INTERVAL_MS";
pub const SB_OUTBOUND_QUEUE: &str = "SB_OUTBOUND_QUEUE";
pub const SB_CLIENT_RATE_PER_SEC: &str = "SB_CLIENT_RATE_PER_SEC";
pub const SB_CLIENT_RATE_BURST: &str = "SB_CLIENT_RATE_BURST";
pub const SB_SHUTDOWN_GRACE_MS: &str = "SB_SHUTDOWN_GRACE_MS";
pub const SB_MESSAGING_ENABLED: &str = "SB_MESSAGING_ENABLED";
pub const SB_MANAGER_URLS: &str = "SB_MANAGER_URLS";
pub const SB_MANAGER_LANES: &str = "SB_MANAGER_LANES";
pub const SB_CONNECTS_PER_IP_PER_SEC: &str = "SB_CONNECTS_PER_IP_PER_SEC";
pub const SB_CONNECTS_BURST_PER_IP: &str = "SB_CONNECTS_BURST_PER_IP";
pub const SB_MAX_CONNECTIONS_PER_USER: &str = "SB_MAX_CONNECTIONS_PER_USER";
pub const SB_MANAGER_LANE_BATCHES: &str = "SB_MANAGER_LANE_BATCHES";
pub const SB_HANDLER_HEARTBEAT_MS: &str = "SB_HANDLER_HEARTBEAT_MS";
pub const SB_MAPPING_RENEW_MS: &str = "SB_MAPPING_RENEW_MS";
pub const SB_DELIVERY_FETCH_WAIT_MS: &str = "SB_DELIVERY_FETCH_WAIT_MS";
pub const SB_TOKEN_EXPIRY_NOTICE_MS: &str = "SB_TOKEN_EXPIRY_NOTICE_MS";
pub const SB_TOKEN_MAX_LIFETIME_SECS: &str = "SB_TOKEN_MAX_LIFETIME_SECS";

/// The socket server's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_SOCKET_BIND,
        default: Some("127.0.0.1:9001"),
        doc: "Address the WebSocket endpoint (/ws) listens on, for clients; it also answers \
              /live, and nothing else.",
    },
    EnvVar {
        name: SB_SOCKET_OPS_BIND,
        default: Some("127.0.0.1:0"),
        doc: "Address /live, /ready and /metrics listen on, for health checkers and \
              Prometheus; keep it off the clients' network. Port 0: a free port, named in the \
              log and in the default SB_SOCKET_HEALTH_URL.",
    },
    EnvVar {
        name: SB_SOCKET_PUBLIC_URL,
        default: None,
        doc: "The WebSocket URL the registry hands to clients for this server. Unset: \
              ws://<SB_SOCKET_BIND>/ws.",
    },
    EnvVar {
        name: SB_SOCKET_HEALTH_URL,
        default: None,
        doc: "The URL health checkers probe. Unset: http://<SB_SOCKET_OPS_BIND>/live (the \
              port actually bound).",
    },
    EnvVar {
        name: SB_SERVER_ID,
        default: None,
        doc: "This server's id in the directory and in its delivery topic's name. Unset: a \
              fresh ULID-based id on every start.",
    },
    EnvVar {
        name: SB_REGISTRY_URL,
        default: Some("http://127.0.0.1:8080"),
        doc: "Where the registry answers (the local stack's nginx, in front of the \
              registries).",
    },
    EnvVar {
        name: SB_MAX_CONNECTIONS,
        default: Some("100000"),
        doc: "Connections this server accepts; the capacity it advertises to the registry.",
    },
    EnvVar {
        name: SB_MAX_FRAME_BYTES,
        default: Some("262144"),
        doc: "Largest accepted client frame, in bytes.",
    },
    EnvVar {
        name: SB_MAX_BODY_BYTES,
        default: Some("65536"),
        doc: "Largest message body, in bytes.",
    },
    EnvVar {
        name: SB_HEARTBEAT_INTERVAL_MS,
        default: Some("5000"),
        doc: "The server pings every client this often, in milliseconds.",
    },
    EnvVar {
        name: SB_CLIENT_TIMEOUT_MS,
        default: Some("15000"),
        doc: "A client silent this long is dropped, in milliseconds.",
    },
    EnvVar {
        name: SB_CLIENT_WRITE_TIMEOUT_MS,
        default: Some("5000"),
        doc: "A frame the server cannot hand to a client's connection within this long (the \
              client stopped reading and its TCP window is full) ends the connection as a slow \
              consumer, in milliseconds.",
    },
    EnvVar {
        name: SB_RECONCILE_INTERVAL_MS,
        default: Some("1000"),
        doc: "Period of the directory heartbeat and the connection-count reconcile, in \
              milliseconds.",
    },
    EnvVar {
        name: SB_OUTBOUND_QUEUE,
        default: Some("1024"),
        doc: "Frames queued per connection; a client that lets it fill is a slow consumer and \
              is disconnected.",
    },
    EnvVar {
        name: SB_CLIENT_RATE_PER_SEC,
        default: Some("200"),
        doc: "Sustained client frames per second per connection; past it frames are answered \
              rate_limited.",
    },
    EnvVar {
        name: SB_CLIENT_RATE_BURST,
        default: Some("400"),
        doc: "Burst allowance on top of the rate.",
    },
    EnvVar {
        name: SB_SHUTDOWN_GRACE_MS,
        default: Some("5000"),
        doc: "How long a shutdown waits for clients to close, in milliseconds.",
    },
    EnvVar {
        name: SB_MESSAGING_ENABLED,
        default: Some("true"),
        doc: "false: chat frames are not forwarded to socket managers; the server only keeps \
              connections (registry, heartbeat, ping).",
    },
    EnvVar {
        name: SB_MANAGER_URLS,
        default: Some("http://127.0.0.1:8201,http://127.0.0.1:8202"),
        doc: "Socket manager base URLs, comma separated, tried in turn.",
    },
    EnvVar {
        name: SB_MANAGER_LANES,
        default: Some("64"),
        doc: "Parallel ordered lanes to the managers; a connection's frames always take the \
              same lane.",
    },
    EnvVar {
        name: SB_CONNECTS_PER_IP_PER_SEC,
        default: Some("20"),
        doc: "WebSocket upgrades per second per client address, counted before the token is \
              checked; 0 turns the limit off.",
    },
    EnvVar {
        name: SB_CONNECTS_BURST_PER_IP,
        default: Some("100"),
        doc: "Burst of upgrades one client address may make at once.",
    },
    EnvVar {
        name: SB_HANDSHAKE_TIMEOUT_MS,
        default: Some("3000"),
        doc: "A connection must send its whole HTTP request head within this long, in \
              milliseconds, or it is closed.",
    },
    EnvVar {
        name: SB_HANDSHAKES_PER_IP,
        default: Some("64"),
        doc: "Connections from one TCP peer address (IPv6: its /64) whose request head is \
              still being read; more are closed at accept. 0 turns the cap off.",
    },
    EnvVar {
        name: SB_MAX_CONNECTIONS_PER_IP,
        default: Some("1000"),
        doc: "WebSocket connections one client address (as the upgrade limits see it, \
              X-Forwarded-For from a trusted proxy) may hold on this server; more get 429 \
              rate_limited. 0 turns the cap off.",
    },
    EnvVar {
        name: SB_MAX_CONNECTIONS_PER_USER,
        default: Some("10"),
        doc: "Devices one user may connect to this server; 0 turns the limit off.",
    },
    EnvVar {
        name: SB_MANAGER_LANE_BATCHES,
        default: Some("1"),
        doc: "Batches one lane may have in flight; a connection's frames are never in two at \
              once.",
    },
    EnvVar {
        name: SB_HANDLER_HEARTBEAT_MS,
        default: Some("2000"),
        doc: "How often the link to the managers (the delivery consumer, the mapping renewal) \
              is checked, in milliseconds; no heartbeat is sent (liveness is the directory's).",
    },
    EnvVar {
        name: SB_MAPPING_RENEW_MS,
        default: Some("300000"),
        doc: "How often every local user is reported again so the managers' mappings do not \
              expire, in milliseconds (keep it below SB_USER_MAPPING_TTL_MS).",
    },
    EnvVar {
        name: SB_DELIVERY_FETCH_WAIT_MS,
        default: Some("500"),
        doc: "How long the delivery consumer's fetch waits for records before it is answered \
              empty, in milliseconds. Records are delivered as they arrive either way; a \
              shorter wait only polls the broker more often when there is nothing to read.",
    },
    EnvVar {
        name: SB_TOKEN_EXPIRY_NOTICE_MS,
        default: Some("60000"),
        doc: "How long before a connection's token expires it is sent token_expiring, in \
              milliseconds; at most a tenth of the token's lifetime (exp - iat).",
    },
    EnvVar {
        name: SB_TOKEN_MAX_LIFETIME_SECS,
        default: Some("604800"),
        doc: "The longest token lifetime (exp - iat) accepted at the upgrade and in a refresh, \
              in seconds: a user's sessions-ended mark lasts as long (the managers' setting of \
              the same name), so no token it refuses can outlive it.",
    },
];

/// The socket server's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Socket server",
    vars: ENV,
};

/// Everything the socket-server binary reads, for `--help`.
pub const HELP_TABLES: &[EnvTable] = &[
    COMMON[0],
    COMMON[1],
    COMMON[2],
    switchboard_kafka::TABLE,
    TABLE,
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
    /// Re-report every local user so mappings do not expire (`SB_MAPPING_RENEW_MS`, default 300000).
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
