//! The push notifier's variables (in the webhook dispatcher). Parsed by
//! `webhook_dispatcher::push`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_PUSH_COALESCE_MS, SB_PUSH_DATABASE_URL, SB_PUSH_GATEWAY_SECRET, SB_PUSH_GATEWAY_URL,
    SB_PUSH_GRACE_MS, SB_PUSH_IN_FLIGHT, SB_PUSH_MAX_RECIPIENTS, SB_PUSH_PREVIEW_CHARS,
    SB_PUSH_RETRY_BASE_MS, SB_PUSH_RETRY_MAX_DELAY_MS, SB_PUSH_TIMEOUT_MS, SB_PUSH_TTL_SECS,
};

/// The notifier's variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_PUSH_GATEWAY_URL,
        default: None,
        doc: "The push gateway every push is posted to (docs/push.md has the contract). Unset: \
              no push notifications (the notifier does not run).",
    },
    EnvVar {
        name: SB_PUSH_GATEWAY_SECRET,
        default: None,
        doc: "The Standard Webhooks secret (`whsec_<base64>`) that signs every push; required \
              with SB_PUSH_GATEWAY_URL. The gateway verifies with it.",
    },
    EnvVar {
        name: SB_PUSH_DATABASE_URL,
        default: None,
        doc: "The message service's database (members, read cursors, `push_devices`). Unset: \
              SB_WEBHOOK_DATABASE_URL (the usual deployment shares one database).",
    },
    EnvVar {
        name: SB_PUSH_COALESCE_MS,
        default: Some("2000"),
        doc: "A user with no live connection is pushed this long after the first unpushed \
              message of a conversation; later messages in the window join the same push \
              (one push per user, conversation and window).",
    },
    EnvVar {
        name: SB_PUSH_GRACE_MS,
        default: Some("30000"),
        doc: "A user connected somewhere is checked again this long after the message, and \
              pushed only if their read cursor is still below it.",
    },
    EnvVar {
        name: SB_PUSH_TTL_SECS,
        default: Some("3600"),
        doc: "A push whose newest message is older than this is dropped (counted once in \
              `push_dropped_total`), however often the gateway failed before.",
    },
    EnvVar {
        name: SB_PUSH_PREVIEW_CHARS,
        default: Some("0"),
        doc: "How many characters of the message body a push carries as `body_preview`. 0: \
              id-only pushes (no content reaches the gateway, nor Apple or Google).",
    },
    EnvVar {
        name: SB_PUSH_MAX_RECIPIENTS,
        default: Some("10000"),
        doc: "Most recipients with a push device considered per conversation and batch of \
              the log (bounded work for huge groups); the rest are skipped and counted.",
    },
    EnvVar {
        name: SB_PUSH_RETRY_BASE_MS,
        default: Some("1000"),
        doc: "Retry schedule while the gateway fails: the n-th retry waits a random time up to \
              min(SB_PUSH_RETRY_MAX_DELAY_MS, this × 2^(n-1)), or Retry-After if longer.",
    },
    EnvVar {
        name: SB_PUSH_RETRY_MAX_DELAY_MS,
        default: Some("60000"),
        doc: "The longest wait between two attempts of one push.",
    },
    EnvVar {
        name: SB_PUSH_TIMEOUT_MS,
        default: Some("10000"),
        doc: "Longest one request to the gateway may take; a slower one is retried.",
    },
    EnvVar {
        name: SB_PUSH_IN_FLIGHT,
        default: Some("32"),
        doc: "Most pushes handled at once (each for a different user and conversation).",
    },
];

/// The notifier's table.
pub const TABLE: EnvTable = EnvTable {
    title: "Push notifications (webhook dispatcher)",
    vars: ENV,
};
