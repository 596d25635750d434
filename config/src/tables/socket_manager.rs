//! The socket manager's own variables. Parsed by `socket_manager::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_DELETE_HANDLER_TOPICS, SB_HANDLER_TTL_MS, SB_IDEMPOTENCY_TTL_SECS, SB_LOCK_TTL_MS,
    SB_LOCK_WAIT_MS, SB_MANAGER_BIND, SB_MANAGER_ID, SB_MAX_BODY_BYTES, SB_MESSAGE_PARTITIONS,
    SB_MESSAGE_SERVICE_URL, SB_PRESENCE_MAX_GROUP, SB_PRODUCE_TIMEOUT_MS, SB_ROUTE_BROADCAST_FROM,
    SB_SEQ_FLUSHES_IN_FLIGHT, SB_SEQ_REPLICA_ACKS, SB_SEQ_REPLICA_ACK_TIMEOUT_MS,
    SB_TOKEN_MAX_LIFETIME_SECS, SB_TYPING_INTERVAL_MS, SB_USER_BYTES_BURST, SB_USER_BYTES_PER_MIN,
    SB_USER_FRAMES_BURST, SB_USER_FRAMES_PER_MIN, SB_USER_MAPPING_TTL_MS, SB_USER_SENDS_PER_DAY,
};

/// The socket manager's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_MANAGER_BIND,
        default: Some("127.0.0.1:8201"),
        doc: "Address the cluster-internal API listens on.",
    },
    EnvVar {
        name: SB_MESSAGE_SERVICE_URL,
        default: Some("http://127.0.0.1:8401"),
        doc: "Where the message service answers; asked for a conversation's members when the \
              Redis mirror of them is cold.",
    },
    EnvVar {
        name: SB_LOCK_TTL_MS,
        default: Some("5000"),
        doc: "Lease of a conversation's sequence lock, in milliseconds; at least \
              SB_PRODUCE_TIMEOUT_MS + 1000 (the manager refuses to start otherwise).",
    },
    EnvVar {
        name: SB_LOCK_WAIT_MS,
        default: Some("3000"),
        doc: "Longest wait for a sequence lock, in milliseconds.",
    },
    EnvVar {
        name: SB_PRODUCE_TIMEOUT_MS,
        default: Some("3000"),
        doc: "How long an append to the log may take before the send fails, in milliseconds.",
    },
    EnvVar {
        name: SB_IDEMPOTENCY_TTL_SECS,
        default: Some("86400"),
        doc: "How long a client_msg_id is remembered to deduplicate retried sends, in seconds.",
    },
    EnvVar {
        name: SB_USER_MAPPING_TTL_MS,
        default: Some("900000"),
        doc: "Lifetime of a user-to-socket-server mapping, in milliseconds; servers renew \
              theirs (SB_MAPPING_RENEW_MS).",
    },
    EnvVar {
        name: SB_HANDLER_TTL_MS,
        default: Some("6000"),
        doc: "How long a socket server may be missing from the directory, in milliseconds, \
              before the janitor removes its topic and mappings (a server lost in a Redis \
              failover registers again well within it).",
    },
    EnvVar {
        name: SB_MESSAGE_PARTITIONS,
        default: Some("1"),
        doc: "Partitions of the message and events topics when a manager creates them; an \
              existing topic keeps its own count, which every manager then uses. One suits \
              the local broker (tansu pays per partition for every produce and fetch); with \
              Apache Kafka and several ingesting message services, raise it.",
    },
    EnvVar {
        name: SB_PRESENCE_MAX_GROUP,
        default: Some("100"),
        doc: "Presence frames go to the members of a user's conversations up to this size.",
    },
    EnvVar {
        name: SB_DELETE_HANDLER_TOPICS,
        default: Some("true"),
        doc: "Whether the janitor deletes a dead socket server's topic. The local stack turns \
              it off: tansu 0.6's SQLite engine corrupts its state on topic deletion.",
    },
    EnvVar {
        name: SB_SEQ_REPLICA_ACKS,
        default: Some("1"),
        doc: "Redis replicas that must hold a sequence number before it is used (WAIT), so a \
              failover cannot roll a counter back under an acknowledged message; 0 for a \
              Redis without replicas.",
    },
    EnvVar {
        name: SB_SEQ_REPLICA_ACK_TIMEOUT_MS,
        default: Some("500"),
        doc: "How long numbering waits for those replicas, in milliseconds (keep it below \
              SB_REDIS_TIMEOUT_MS); past it the sends are answered `unavailable`.",
    },
    EnvVar {
        name: SB_SEQ_FLUSHES_IN_FLIGHT,
        default: Some("2"),
        doc: "Numbering flushes (one script for every queued conversation batch, then WAIT) in \
              flight at once, each on a Redis connection of its own: while one waits for the \
              replicas, the next takes the batches queued meanwhile. At least 1.",
    },
    EnvVar {
        name: SB_ROUTE_BROADCAST_FROM,
        default: Some("16"),
        doc: "Recipients from which a message (or a typing or presence frame) goes to every \
              registered socket server, each delivering to the recipients it holds, instead \
              of looking up where each recipient is connected (one Redis read per \
              recipient). Keep it above about twice the socket server count; above \
              SB_MAX_GROUP_MEMBERS it never applies.",
    },
    EnvVar {
        name: SB_MAX_BODY_BYTES,
        default: Some("65536"),
        doc: "Largest message body, in bytes: the socket servers' limit, checked again before a \
              send is numbered (keep it the same everywhere). The manager refuses to start when \
              7 x this + 4096 does not fit one Kafka record (message.max.bytes, 1,000,000, less \
              16 KiB), i.e. above 139,931.",
    },
    EnvVar {
        name: SB_USER_FRAMES_PER_MIN,
        default: Some("12000"),
        doc: "Frames (sends, typing, receipts) one user may have handled per minute across the \
              whole cluster, sustained (a token bucket per user in Redis, checked once per \
              batch; every manager shares it, however many connections and servers the user \
              spreads over). Beyond it: `rate_limited`. 0 turns the per-user quotas off.",
    },
    EnvVar {
        name: SB_USER_FRAMES_BURST,
        default: Some("2000"),
        doc: "The most frames one user may send at once when their bucket is full. Below a \
              quarter of it, the user's typing frames are dropped first.",
    },
    EnvVar {
        name: SB_USER_BYTES_PER_MIN,
        default: Some("67108864"),
        doc: "Bytes of message bodies one user may send per minute across the cluster, \
              sustained (64 MiB). Beyond it: `rate_limited`.",
    },
    EnvVar {
        name: SB_USER_BYTES_BURST,
        default: Some("100663296"),
        doc: "The most body bytes one user may send at once when their bucket is full (96 \
              MiB); at least SB_MAX_BODY_BYTES (the manager refuses to start otherwise).",
    },
    EnvVar {
        name: SB_USER_SENDS_PER_DAY,
        default: Some("20000"),
        doc: "Messages one user may send per day across the cluster (a bucket of this many, \
              refilled over a day); beyond it: `rate_limited`. It bounds the idempotency \
              records one user keeps in Redis (each lives SB_IDEMPOTENCY_TTL_SECS) to about \
              twice this. 0: no daily bound.",
    },
    EnvVar {
        name: SB_TYPING_INTERVAL_MS,
        default: Some("1000"),
        doc: "At most one typing frame per conversation and sender is passed on per this many \
              milliseconds, cluster-wide; the others are dropped and counted.",
    },
    EnvVar {
        name: SB_MANAGER_ID,
        default: None,
        doc: "This manager's name in sequence lease tokens. Unset: SB_MANAGER_BIND.",
    },
    EnvVar {
        name: SB_TOKEN_MAX_LIFETIME_SECS,
        default: Some("604800"),
        doc: "How long a user's sessions-ended mark is kept, in seconds: the longest token \
              lifetime (exp - iat) the socket servers accept (set it as theirs).",
    },
];

/// The socket manager's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Socket manager",
    vars: ENV,
};
