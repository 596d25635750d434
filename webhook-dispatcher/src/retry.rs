//! The retry schedule webhooks and pushes share: the [`RetryPolicy`] read from the settings,
//! the jittered exponential [`backoff`], and the `Retry-After` an endpoint or gateway may send.

use std::time::Duration;

use rand::Rng;

/// When to retry, give up on a delivery, and disable an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub retry_for: Duration,
    pub disable_after_failures: u32,
    pub disable_after: Duration,
}

/// The wait before retry number `retry` (1 for the first retry): a uniformly random time
/// up to `min(max_delay, base × 2^(retry-1))` (full jitter), raised to `retry_after` when the
/// endpoint asked for longer, and never more than `max_delay`.
pub fn backoff(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(31));
    let ceiling = policy.base.saturating_mul(factor).min(policy.max_delay);
    let jittered = Duration::from_millis(
        rng.gen_range(0..=u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX)),
    );
    jittered
        .max(retry_after.unwrap_or_default())
        .min(policy.max_delay)
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or_default())
}
