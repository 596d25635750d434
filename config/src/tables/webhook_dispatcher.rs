//! The webhook dispatcher's own variables and its API-key table. Parsed by
//! `webhook_dispatcher::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_WEBHOOK_ALLOW_NETS, SB_WEBHOOK_BIND, SB_WEBHOOK_CONNECT_TIMEOUT_MS, SB_WEBHOOK_DATABASE_URL,
    SB_WEBHOOK_DB_MAX_CONNECTIONS, SB_WEBHOOK_DB_SCHEMA, SB_WEBHOOK_DISABLE_AFTER_FAILURES,
    SB_WEBHOOK_DISABLE_AFTER_SECS, SB_WEBHOOK_IN_FLIGHT, SB_WEBHOOK_MAX_ENDPOINTS,
    SB_WEBHOOK_MAX_PENDING, SB_WEBHOOK_RETENTION_SECS, SB_WEBHOOK_RETRY_BASE_MS,
    SB_WEBHOOK_RETRY_FOR_SECS, SB_WEBHOOK_RETRY_MAX_DELAY_MS, SB_WEBHOOK_SECRET_OVERLAP_SECS,
    SB_WEBHOOK_TIMEOUT_MS,
};

/// The dispatcher's own variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_WEBHOOK_BIND,
        default: Some("127.0.0.1:8501"),
        doc: "Address the endpoint API (`/server/v1/webhooks`) and `/live` `/ready` `/metrics` \
              listen on.",
    },
    EnvVar {
        name: SB_WEBHOOK_DATABASE_URL,
        default: Some("postgres://switchboard@127.0.0.1:5432/switchboard"),
        doc: "PostgreSQL connection URL (the message service's database may be shared: the \
              dispatcher keeps its tables and its migration history in a schema of its own, \
              SB_WEBHOOK_DB_SCHEMA).",
    },
    EnvVar {
        name: SB_WEBHOOK_DB_SCHEMA,
        default: Some("webhooks"),
        doc: "The PostgreSQL schema the dispatcher's tables and `_sqlx_migrations` live in: \
              created at startup, and the only schema on its connections' `search_path`, so \
              its migrations never meet another service's.",
    },
    EnvVar {
        name: SB_WEBHOOK_DB_MAX_CONNECTIONS,
        default: Some("10"),
        doc: "Size of the dispatcher's database pool.",
    },
    EnvVar {
        name: SB_WEBHOOK_ALLOW_NETS,
        default: None,
        doc: "Networks (comma separated, e.g. 10.1.0.0/16,127.0.0.1/32) that endpoints may \
              reach although they are loopback, link-local, private, unique-local, \
              unspecified or multicast. Unset: none; such destinations are refused at \
              registration and at every delivery.",
    },
    EnvVar {
        name: SB_WEBHOOK_TIMEOUT_MS,
        default: Some("10000"),
        doc: "Longest one delivery attempt may take, connect to last byte of the answer; a \
              slower endpoint counts as failed and is retried.",
    },
    EnvVar {
        name: SB_WEBHOOK_CONNECT_TIMEOUT_MS,
        default: Some("3000"),
        doc: "Longest the TCP and TLS connect of one attempt may take.",
    },
    EnvVar {
        name: SB_WEBHOOK_RETRY_BASE_MS,
        default: Some("2000"),
        doc: "Retry schedule: the n-th retry waits a random time up to \
              min(SB_WEBHOOK_RETRY_MAX_DELAY_MS, this × 2^(n-1)) (full jitter), or the \
              endpoint's Retry-After if longer (capped the same way).",
    },
    EnvVar {
        name: SB_WEBHOOK_RETRY_MAX_DELAY_MS,
        default: Some("3600000"),
        doc: "The longest wait between two attempts of one delivery (the cap of the backoff \
              and of Retry-After).",
    },
    EnvVar {
        name: SB_WEBHOOK_RETRY_FOR_SECS,
        default: Some("86400"),
        doc: "How long a delivery is retried: one still failing this long after it was \
              recorded is dead-lettered (kept with state `dead`, counted) and the next one of \
              its conversation goes.",
    },
    EnvVar {
        name: SB_WEBHOOK_DISABLE_AFTER_FAILURES,
        default: Some("100"),
        doc: "An endpoint is disabled after this many consecutive failed attempts that also \
              span SB_WEBHOOK_DISABLE_AFTER_SECS (both must hold). 410 Gone disables at once.",
    },
    EnvVar {
        name: SB_WEBHOOK_DISABLE_AFTER_SECS,
        default: Some("259200"),
        doc: "The time the consecutive failures must span before an endpoint is disabled \
              (3 days), so a short outage never disables one.",
    },
    EnvVar {
        name: SB_WEBHOOK_MAX_PENDING,
        default: Some("100000"),
        doc: "Most undelivered deliveries stored per endpoint: past it, new events for that \
              endpoint are dead-lettered at once (counted), so a dead endpoint cannot fill \
              the database while it waits to be disabled.",
    },
    EnvVar {
        name: SB_WEBHOOK_IN_FLIGHT,
        default: Some("8"),
        doc: "Most requests in flight per endpoint (each to a different conversation: one \
              conversation's deliveries go one at a time, in order).",
    },
    EnvVar {
        name: SB_WEBHOOK_SECRET_OVERLAP_SECS,
        default: Some("86400"),
        doc: "After a secret rotation, how long the old secret keeps signing beside the new \
              one (several `v1,` signatures in `webhook-signature`).",
    },
    EnvVar {
        name: SB_WEBHOOK_RETENTION_SECS,
        default: Some("604800"),
        doc: "How long delivered and dead-lettered deliveries are kept (their ids deduplicate \
              a re-read of the topics).",
    },
    EnvVar {
        name: SB_WEBHOOK_MAX_ENDPOINTS,
        default: Some("100"),
        doc: "Most endpoints that may be registered; past it `POST /server/v1/webhooks` is \
              refused.",
    },
];

/// The dispatcher's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Webhook dispatcher",
    vars: ENV,
};

/// The API keys table (service-kit's): the endpoint API takes keys with `webhooks:manage`.
pub const API_KEYS_TABLE: EnvTable = EnvTable {
    title: "API keys (webhook dispatcher)",
    vars: super::api_keys::ENV,
};
