//! Delivering: one worker task per enabled endpoint, each reading its own queue from the
//! `deliveries` table, so a slow, failing or stalled endpoint holds up nobody but itself.
//!
//! **Order.** An endpoint's deliveries form streams (one per conversation for messages, one
//! per conversation for receipts and for membership, one per user for presence). A stream's
//! next delivery goes only once the one before it was delivered or dead-lettered, so an
//! endpoint sees each conversation's `message.created` in `seq` order. Different streams go
//! in parallel, up to `SB_WEBHOOK_IN_FLIGHT` requests at once.
//!
//! **Bounds.** A worker holds at most `SB_WEBHOOK_IN_FLIGHT` deliveries in memory; the
//! queue itself is the table, at most `SB_WEBHOOK_MAX_PENDING` rows per endpoint (the
//! consumer dead-letters past it). Every attempt is bounded by `SB_WEBHOOK_TIMEOUT_MS`.
//!
//! **Retries** ([`backoff`]): exponential with full jitter, `Retry-After` honoured on 429
//! and 503, each wait capped at `SB_WEBHOOK_RETRY_MAX_DELAY_MS`; a delivery still failing
//! `SB_WEBHOOK_RETRY_FOR_SECS` after it was recorded is dead-lettered. 410 Gone disables the
//! endpoint at once; `SB_WEBHOOK_DISABLE_AFTER_FAILURES` consecutive failures spanning at
//! least `SB_WEBHOOK_DISABLE_AFTER_SECS` disable it too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
pub use crate::retry::{backoff, parse_retry_after, RetryPolicy};
use crate::signing;
use crate::ssrf::{self, AllowNets};
use crate::store::{Due, Store};

/// The longest a worker with nothing due sleeps before looking again.
const IDLE: Duration = Duration::from_secs(1);

/// What the workers share.
pub struct Deliverer {
    pub store: Store,
    pub http: reqwest::Client,
    pub allow: AllowNets,
    pub retry: RetryPolicy,
    pub in_flight: usize,
    pub metrics: Metrics,
    /// Woken when the consumer recorded a batch or the API changed an endpoint.
    pub wake: Arc<Notify>,
}

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered(u16),
    /// 410: the endpoint asked to be disabled.
    Gone,
    /// Anything else, with the status if one came and the `Retry-After` of a 429 or 503.
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
}

impl Deliverer {
    /// Keeps one worker per enabled endpoint until `shutdown`: starts a worker for each new
    /// one (looked for every second and whenever woken); a worker ends by itself when its
    /// endpoint is deleted or disabled.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut workers: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut gauges_at: Option<Instant> = None;
        loop {
            while let Some(done) = workers.try_join_next_with_id() {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => {
                        tracing::error!(error = %e, "a webhook worker failed; it is started again");
                        e.id()
                    }
                };
                running.remove(&task);
            }
            match self.store.routes().await {
                Ok(routes) => {
                    for route in routes {
                        if running.values().any(|id| *id == route.id) {
                            continue;
                        }
                        let me = self.clone();
                        let stop = shutdown.clone();
                        let id = route.id.clone();
                        let handle =
                            workers.spawn(async move { me.endpoint_worker(&id, stop).await });
                        running.insert(handle.id(), route.id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not list the webhook endpoints"),
            }
            if gauges_at.is_none_or(|at| at.elapsed() >= IDLE) {
                self.refresh_gauges().await;
                gauges_at = Some(Instant::now());
            }
            let woken = self.wake.notified();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = woken => {}
                _ = tokio::time::sleep(IDLE) => {}
            }
        }
        while workers.join_next().await.is_some() {}
    }

    async fn refresh_gauges(&self) {
        if let Ok(backlog) = self.store.backlog().await {
            self.metrics.backlog.reset();
            self.metrics.lag_seconds.reset();
            for (endpoint, pending, oldest) in backlog {
                self.metrics
                    .backlog
                    .with_label_values(&[&endpoint])
                    .set(pending as f64);
                self.metrics
                    .lag_seconds
                    .with_label_values(&[&endpoint])
                    .set(oldest);
            }
        }
        if let Ok(disabled) = self.store.disabled_count().await {
            self.metrics.disabled.set(disabled);
        }
    }

    /// Delivers one endpoint's queue until it is deleted or disabled, or `shutdown`.
    async fn endpoint_worker(&self, id: &str, shutdown: CancellationToken) {
        tracing::info!(endpoint = id, "webhook worker started");
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let target = match self.store.target(id).await {
                Ok(Some(target)) => target,
                Ok(None) => {
                    tracing::info!(
                        endpoint = id,
                        "webhook worker stops: endpoint deleted or disabled"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(endpoint = id, error = %e, "could not read the endpoint");
                    self.pause(&shutdown, IDLE).await;
                    continue;
                }
            };
            let heads = match self
                .store
                .due_heads(id, i64::try_from(self.in_flight).unwrap_or(8))
                .await
            {
                Ok(heads) => heads,
                Err(e) => {
                    tracing::warn!(endpoint = id, error = %e, "could not read the endpoint's queue");
                    self.pause(&shutdown, IDLE).await;
                    continue;
                }
            };
            if heads.is_empty() {
                let wait = match self.store.next_due_in(id).await {
                    Ok(Some(due)) => due.min(IDLE),
                    _ => IDLE,
                };
                let notified = self.wake.notified();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = notified => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let secrets = match self.store.signing_secrets(id).await {
                Ok(secrets) if !secrets.is_empty() => secrets,
                Ok(_) => {
                    tracing::error!(endpoint = id, "the endpoint has no signing secret");
                    self.pause(&shutdown, IDLE).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = id, error = %e, "could not read the signing secrets");
                    self.pause(&shutdown, IDLE).await;
                    continue;
                }
            };
            let attempts = heads.iter().map(|due| self.attempt(&target, &secrets, due));
            let outcomes = tokio::select! {
                // A kill loses nothing either: an attempt in flight is simply made again.
                _ = shutdown.cancelled() => return,
                outcomes = futures_util::future::join_all(attempts) => outcomes,
            };
            for (due, outcome) in heads.iter().zip(outcomes) {
                if let Err(e) = self.settle(id, due, outcome).await {
                    tracing::warn!(endpoint = id, error = %e, "could not record an attempt; it is made again");
                }
            }
        }
    }

    async fn pause(&self, shutdown: &CancellationToken, wait: Duration) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// One signed POST.
    async fn attempt(&self, url: &str, secrets: &[String], due: &Due) -> Outcome {
        let failed = |status, error: String| Outcome::Failed {
            status,
            error,
            retry_after: None,
        };
        let parsed = match reqwest::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(e) => return failed(None, format!("not a URL: {e}")),
        };
        if let Err(why) = ssrf::check_literal(&parsed, &self.allow) {
            return failed(None, why);
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match signing::signature_header(
            secrets,
            &due.webhook_id,
            timestamp,
            due.body.as_bytes(),
        ) {
            Ok(signature) => signature,
            Err(e) => return failed(None, e),
        };
        if due.attempts > 0 {
            self.metrics.retries.inc();
        }
        let started = Instant::now();
        let sent = self
            .http
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", &due.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(due.body.clone())
            .send()
            .await;
        self.metrics
            .attempt_seconds
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                if response.status().is_success() {
                    Outcome::Delivered(status)
                } else if status == 410 {
                    Outcome::Gone
                } else {
                    let retry_after = if status == 429 || status == 503 {
                        response
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_retry_after)
                    } else {
                        None
                    };
                    Outcome::Failed {
                        status: Some(status),
                        error: format!("answered {status}"),
                        retry_after,
                    }
                }
            }
            Err(e) => {
                // The chain (e.g. the resolver's refusal) says more than the top error.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why.push_str(": ");
                    why.push_str(&s.to_string());
                    source = s.source();
                }
                failed(None, why)
            }
        }
    }

    /// Records an attempt's outcome, and disables the endpoint when it asked or kept failing.
    async fn settle(&self, endpoint: &str, due: &Due, outcome: Outcome) -> Result<(), sqlx::Error> {
        match outcome {
            Outcome::Delivered(status) => {
                self.metrics
                    .attempts
                    .with_label_values(&["delivered"])
                    .inc();
                self.store.delivered(endpoint, due.id, status).await
            }
            Outcome::Gone => {
                self.metrics.attempts.with_label_values(&["gone"]).inc();
                self.store
                    .failed(
                        endpoint,
                        due.id,
                        Some(410),
                        "answered 410 Gone",
                        Some(Duration::ZERO),
                    )
                    .await?;
                if self.store.disable(endpoint, "gone").await? {
                    tracing::warn!(endpoint, "endpoint answered 410 Gone: disabled");
                    self.metrics
                        .disabled_total
                        .with_label_values(&["gone"])
                        .inc();
                }
                Ok(())
            }
            Outcome::Failed {
                status,
                error,
                retry_after,
            } => {
                let age = chrono::Utc::now() - due.created_at;
                let give_up = age.to_std().unwrap_or_default() >= self.retry.retry_for;
                let retry_in = (!give_up).then(|| {
                    let retry = u32::try_from(due.attempts)
                        .unwrap_or(u32::MAX)
                        .saturating_add(1);
                    backoff(&self.retry, retry, retry_after, &mut rand::thread_rng())
                });
                let outcome = if give_up { "dead" } else { "failed" };
                self.metrics.attempts.with_label_values(&[outcome]).inc();
                tracing::info!(
                    endpoint,
                    webhook_id = %due.webhook_id,
                    attempts = due.attempts + 1,
                    error = %error,
                    retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
                    "webhook attempt failed"
                );
                let (streak, for_secs) = self
                    .store
                    .failed(endpoint, due.id, status, &error, retry_in)
                    .await?;
                if streak >= i32::try_from(self.retry.disable_after_failures).unwrap_or(i32::MAX)
                    && for_secs >= self.retry.disable_after.as_secs_f64()
                    && self.store.disable(endpoint, "failing").await?
                {
                    tracing::warn!(endpoint, streak, "endpoint kept failing: disabled");
                    self.metrics
                        .disabled_total
                        .with_label_values(&["failing"])
                        .inc();
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(2),
            max_delay: Duration::from_secs(3600),
            retry_for: Duration::from_secs(86_400),
            disable_after_failures: 100,
            disable_after: Duration::from_secs(259_200),
        }
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling_and_capped() {
        let policy = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for retry in 1..40 {
            let ceiling =
                (policy.base * 2u32.saturating_pow((retry - 1).min(31))).min(policy.max_delay);
            for _ in 0..50 {
                let wait = backoff(&policy, retry, None, &mut rng);
                assert!(wait <= ceiling, "retry {retry}: {wait:?} > {ceiling:?}");
            }
        }
        // Jitter spreads the waits (not all equal).
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff(&policy, 5, None, &mut rng))
            .collect();
        assert!(waits.len() > 10);
        // Retry-After raises the wait, within the cap.
        let asked = Duration::from_secs(30);
        assert!(backoff(&policy, 1, Some(asked), &mut rng) >= asked);
        let huge = Duration::from_secs(1_000_000);
        assert_eq!(backoff(&policy, 1, Some(huge), &mut rng), policy.max_delay);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
