//! The message service's own variables and its API-key table. Parsed by
//! `message_service::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_CONVERSATIONS_PER_MINUTE, SB_DATABASE_URL, SB_DB_MAX_CONNECTIONS,
    SB_DB_REST_MAX_CONNECTIONS, SB_DB_REST_STATEMENT_TIMEOUT_MS, SB_GROUP_ADD_POLICY,
    SB_INGEST_FETCH_WAIT_MS, SB_INGEST_REWIND_RECORDS, SB_MANAGER_URLS, SB_MAX_GROUP_MEMBERS,
    SB_MEMBERS_ADDED_PER_MINUTE, SB_MESSAGE_BIND, SB_PRESENCE_POLICY,
};

/// The message service's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_MESSAGE_BIND,
        default: Some("127.0.0.1:8401"),
        doc: "Address the REST API (and the cluster-only membership lookup) listens on.",
    },
    EnvVar {
        name: SB_DATABASE_URL,
        default: Some("postgres://switchboard@127.0.0.1:5432/switchboard"),
        doc: "PostgreSQL connection URL; migrations run at startup.",
    },
    EnvVar {
        name: SB_DB_MAX_CONNECTIONS,
        default: Some("10"),
        doc: "Size of the ingest pool: ingest, the settled check and log fences, and the \
              cluster-only routes the socket managers call. The public REST API has a pool of \
              its own, so slow client requests cannot hold up ingest (or sends).",
    },
    EnvVar {
        name: SB_DB_REST_MAX_CONNECTIONS,
        default: Some("10"),
        doc: "Size of the public REST API's database pool.",
    },
    EnvVar {
        name: SB_DB_REST_STATEMENT_TIMEOUT_MS,
        default: Some("5000"),
        doc: "PostgreSQL `statement_timeout` of the REST pool, in milliseconds: a slower \
              statement is cancelled and its request answered 503 `unavailable`. 0 turns it \
              off.",
    },
    EnvVar {
        name: SB_CONVERSATIONS_PER_MINUTE,
        default: Some("60"),
        doc: "Conversations one user may create per minute (direct and group; asking again \
              for an existing direct conversation is free); beyond it 429 `rate_limited` \
              with `Retry-After`.",
    },
    EnvVar {
        name: SB_MEMBERS_ADDED_PER_MINUTE,
        default: Some("300"),
        doc: "Members (or invites) one user may add to groups per minute through \
              `POST /api/v1/conversations/{id}/members`; beyond it 429 `rate_limited` with \
              `Retry-After`.",
    },
    EnvVar {
        name: SB_GROUP_ADD_POLICY,
        default: Some("open"),
        doc: "`open`: a group's owner and admins add members directly (the original \
              contract), except a user who left the group, who is invited instead. `invite`: \
              everyone named when a group is created or added later is invited and becomes a \
              member only on accepting (`POST /api/v1/conversations/{id}/accept`).",
    },
    EnvVar {
        name: SB_PRESENCE_POLICY,
        default: Some("shared"),
        doc: "`shared`: users see the presence of everyone they share a conversation with \
              (the original contract). `accepted`: only through a conversation both have \
              accepted (created, accepted, or sent a message in). Blocks apply under both.",
    },
    EnvVar {
        name: SB_MAX_GROUP_MEMBERS,
        default: Some("1000"),
        doc: "Largest conversation: creating a larger one, or adding a member past it, is \
              refused.",
    },
    EnvVar {
        name: SB_INGEST_FETCH_WAIT_MS,
        default: Some("100"),
        doc: "How long ingest's fetch from the message log lets records accumulate (up to a \
              MiB), in milliseconds.",
    },
    EnvVar {
        name: SB_INGEST_REWIND_RECORDS,
        default: Some("1000"),
        doc: "On start, ingest re-reads this many message-log records (Kafka records: \
              envelopes of many messages) before each partition's committed offset, so rows a \
              restored database lost are written again; 0 turns it off.",
    },
    EnvVar {
        name: SB_MANAGER_URLS,
        default: Some("http://127.0.0.1:8201,http://127.0.0.1:8202"),
        doc: "Socket manager base URLs, comma separated: the server API's messages are \
              numbered by a manager (tried in turn; a failed one is skipped).",
    },
];

/// The message service's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Message service",
    vars: ENV,
};

/// The server API's keys (service-kit's `api_keys`).
pub const API_KEYS_TABLE: EnvTable = EnvTable {
    title: "Server API keys (message service)",
    vars: super::api_keys::ENV,
};
