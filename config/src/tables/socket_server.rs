//! The socket server's own variables. Parsed by `socket_server::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
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
