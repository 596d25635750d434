//! Push notifications for users with no live connection (docs/push.md), delivered to a push
//! gateway the operator runs (Matrix-gateway style) as signed webhooks.
//!
//! Part of the dispatcher rather than a service of its own: it needs the same things (a
//! durable consumer of the message log, a queue in PostgreSQL that survives kill -9, Standard
//! Webhooks signing, retries with backoff, metrics) and the same single-instance deployment,
//! and the gateway is one more webhook endpoint. It runs only when `SB_PUSH_GATEWAY_URL` is
//! set, with its own consumer group, so webhooks and pushes never wait for each other.
//!
//! - [`plan`]: reads the message log; for each conversation's newest message of a batch, the
//!   members other than the sender that have a push device (one query, capped) and their
//!   presence (one Redis pipeline), and upserts one row per (user, conversation) in
//!   `push_queue`: due after the coalescing window when the user has no live connection,
//!   after the grace period when they have one. The offsets move on only once that commits.
//! - [`send`]: takes the due rows; drops those past the TTL, suppresses those the user has
//!   read (read cursor ≥ the message), and posts the rest to the gateway, signed, with the
//!   user's devices; removes the pushkeys the gateway rejects; retries with backoff.
//! - [`queue`]: the queries (the queue in the dispatcher's schema; members, receipts and
//!   `push_devices` in the message service's database).
//! - [`sink`]: the reference gateway (`push-gateway-sink`), which records what it receives.

pub mod metrics;
pub mod plan;
pub mod queue;
pub mod send;
pub mod sink;

use std::time::Duration;

use switchboard_config::lookup::{lookup_optional, lookup_or, ConfigError, Lookup};
use switchboard_config::names::{
    SB_PUSH_COALESCE_MS, SB_PUSH_DATABASE_URL, SB_PUSH_GATEWAY_SECRET, SB_PUSH_GATEWAY_URL,
    SB_PUSH_GRACE_MS, SB_PUSH_IN_FLIGHT, SB_PUSH_MAX_RECIPIENTS, SB_PUSH_PREVIEW_CHARS,
    SB_PUSH_RETRY_BASE_MS, SB_PUSH_RETRY_MAX_DELAY_MS, SB_PUSH_TIMEOUT_MS, SB_PUSH_TTL_SECS,
};

/// The notifier's settings; `None` in `DispatcherConfig::push` when
/// `SB_PUSH_GATEWAY_URL` is unset.
#[derive(Clone)]
pub struct PushConfig {
    pub gateway_url: String,
    pub gateway_secret: String,
    /// `None`: the dispatcher's own database URL.
    pub database_url: Option<String>,
    pub coalesce: Duration,
    pub grace: Duration,
    pub ttl: Duration,
    pub preview_chars: usize,
    pub max_recipients: i64,
    pub retry: crate::retry::RetryPolicy,
    pub timeout: Duration,
    pub in_flight: usize,
}

impl std::fmt::Debug for PushConfig {
    /// Every setting but the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("gateway_url", &self.gateway_url)
            .field("database_url", &self.database_url)
            .field("coalesce", &self.coalesce)
            .field("grace", &self.grace)
            .field("ttl", &self.ttl)
            .field("preview_chars", &self.preview_chars)
            .field("max_recipients", &self.max_recipients)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl PushConfig {
    /// The settings, or `None` when no gateway is configured.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Option<Self>, ConfigError> {
        let millis = |name, default| lookup_or(lookup, name, default).map(Duration::from_millis);
        // Read (and so checked) even without a gateway: a typo fails at startup either way.
        let coalesce = millis(SB_PUSH_COALESCE_MS, 2_000)?;
        let grace = millis(SB_PUSH_GRACE_MS, 30_000)?;
        let ttl = Duration::from_secs(lookup_or(lookup, SB_PUSH_TTL_SECS, 3_600)?);
        let preview_chars = lookup_or(lookup, SB_PUSH_PREVIEW_CHARS, 0)?;
        let max_recipients = lookup_or::<i64>(lookup, SB_PUSH_MAX_RECIPIENTS, 10_000)?.max(1);
        let retry = crate::retry::RetryPolicy {
            base: millis(SB_PUSH_RETRY_BASE_MS, 1_000)?,
            max_delay: millis(SB_PUSH_RETRY_MAX_DELAY_MS, 60_000)?,
            // Pushes end by their TTL, and the gateway is never disabled.
            retry_for: ttl,
            disable_after_failures: u32::MAX,
            disable_after: Duration::MAX,
        };
        let timeout = millis(SB_PUSH_TIMEOUT_MS, 10_000)?;
        let in_flight = lookup_or::<usize>(lookup, SB_PUSH_IN_FLIGHT, 32)?.max(1);
        let database_url = lookup_optional(lookup, SB_PUSH_DATABASE_URL);
        let Some(gateway_url) = lookup_optional(lookup, SB_PUSH_GATEWAY_URL) else {
            return Ok(None);
        };
        let parsed = url::Url::parse(&gateway_url).map_err(|e| ConfigError {
            name: SB_PUSH_GATEWAY_URL.into(),
            value: gateway_url.clone(),
            reason: format!("not a URL: {e}"),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError {
                name: SB_PUSH_GATEWAY_URL.into(),
                value: gateway_url,
                reason: "an http or https URL".into(),
            });
        }
        let gateway_secret =
            lookup_optional(lookup, SB_PUSH_GATEWAY_SECRET).ok_or_else(|| ConfigError {
                name: SB_PUSH_GATEWAY_SECRET.into(),
                value: String::new(),
                reason: format!("required with {SB_PUSH_GATEWAY_URL}: every push is signed"),
            })?;
        crate::signing::secret_key(&gateway_secret).map_err(|reason| ConfigError {
            name: SB_PUSH_GATEWAY_SECRET.into(),
            value: "(hidden)".into(),
            reason,
        })?;
        Ok(Some(PushConfig {
            gateway_url,
            gateway_secret,
            database_url,
            coalesce,
            grace,
            ttl,
            preview_chars,
            max_recipients,
            retry,
            timeout,
            in_flight,
        }))
    }
}
