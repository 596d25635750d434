//! Sends the due pushes (the decision rule's second half) to the gateway.
//!
//! For each due row: past the TTL → dropped; the user no longer a member, or without a device
//! → nothing to send; read cursor at or past the message → suppressed; otherwise one signed
//! POST to `SB_PUSH_GATEWAY_URL` with the user's devices. A 2xx settles it (and the pushkeys
//! in its `rejected` are removed); anything else is retried with backoff (Retry-After
//! honoured) until it is past the TTL. Each outcome is recorded in the queue before it is
//! counted, so kill -9 at worst sends a push again, under the same `webhook-id`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard_protocol::{ConversationId, MessageId, UserId};
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::Notify;

use super::metrics::PushMetrics;
use super::queue::{Queue, Waiting};
use super::PushConfig;
use crate::retry::{backoff, parse_retry_after};

/// The longest the sender sleeps with nothing due before looking again (the consumer wakes it
/// too, so this bounds only the lateness of a due time set earlier).
const IDLE: Duration = Duration::from_millis(250);
/// How often idle rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Sender {
    pub queue: Queue,
    pub http: reqwest::Client,
    pub config: PushConfig,
    pub metrics: PushMetrics,
    pub wake: Arc<Notify>,
}

/// What became of one due push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Sent {
        rejected: usize,
    },
    Suppressed,
    Dropped,
    NoTarget,
    /// The attempt failed: tried again after `wait`.
    Retry {
        error: String,
        wait: Duration,
    },
}

/// The gateway's answer body (anything else, or none, rejects nothing).
#[derive(Debug, Default, Deserialize)]
pub struct GatewayAnswer {
    #[serde(default)]
    pub rejected: Vec<String>,
}

/// The push's `webhook-id`: stable while its newest message is the same, so a retry (or a
/// send again after kill -9) is recognisable; a newer message makes a new push.
pub fn push_id(
    user_id: &UserId,
    conversation_id: &ConversationId,
    message_id: &MessageId,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        user_id.as_str(),
        conversation_id.as_str(),
        message_id.as_str(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest: String = hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("push_{digest}")
}

/// A client for the gateway: the operator's own service, so no SSRF guard; no redirects.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

impl Sender {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pruned_at = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = Utc::now();
            let limit = i64::try_from(self.config.in_flight).unwrap_or(32);
            let due = match self.queue.due(now, limit).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "push: could not read the queue");
                    self.pause(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if due.is_empty() {
                if pruned_at.elapsed() >= PRUNE_EVERY {
                    pruned_at = tokio::time::Instant::now();
                    self.housekeeping().await;
                }
                let wait = match self.queue.next_due_in(Utc::now()).await {
                    Ok(Some(wait)) => wait.min(IDLE),
                    _ => IDLE,
                };
                let woken = self.wake.notified();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = woken => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let handled = due.iter().map(|push| self.handle(push));
            let outcomes = tokio::select! {
                // An attempt in flight is simply made again after a restart.
                _ = shutdown.cancelled() => return,
                outcomes = futures_util::future::join_all(handled) => outcomes,
            };
            for (push, outcome) in due.iter().zip(outcomes) {
                if let Err(e) = self.settle(push, outcome).await {
                    tracing::warn!(error = %e, user = %push.user_id, "push: could not record an outcome; it is decided again");
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

    async fn housekeeping(&self) {
        let keep = self.config.ttl + Duration::from_secs(3600);
        let before = Utc::now() - chrono::Duration::from_std(keep).unwrap_or_default();
        if let Err(e) = self.queue.prune(before).await {
            tracing::warn!(error = %e, "push: pruning the queue failed");
        }
        if let Ok(waiting) = self.queue.waiting().await {
            self.metrics.waiting.set(waiting);
        }
    }

    /// Decides one due push and, if it is to go, makes one attempt.
    async fn handle(&self, push: &Waiting) -> Result<Settled, sqlx::Error> {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.config.ttl).unwrap_or(chrono::Duration::MAX);
        if now - push.message_at > ttl {
            return Ok(Settled::Dropped);
        }
        let (member, read_seq) = self
            .queue
            .cursor(&push.conversation_id, &push.user_id)
            .await?;
        if !member {
            return Ok(Settled::NoTarget);
        }
        if read_seq >= push.seq {
            return Ok(Settled::Suppressed);
        }
        let devices = self.queue.devices(&push.user_id).await?;
        if devices.is_empty() {
            return Ok(Settled::NoTarget);
        }
        let id = push_id(&push.user_id, &push.conversation_id, &push.message_id);
        let mut payload = json!({
            "id": id,
            "user_id": push.user_id,
            "conversation_id": push.conversation_id,
            "message_id": push.message_id,
            "seq": push.seq,
            "sender_id": push.sender_id,
            "created_at": push.message_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "counts": { "unread": (push.seq - read_seq).max(1) },
            "devices": devices,
        });
        if let Some(preview) = &push.preview {
            payload["body_preview"] = json!(preview);
        }
        let body = payload.to_string();
        if push.attempts > 0 {
            self.metrics.retries.inc();
        }
        match self.post(&id, &body).await {
            Ok(answer) => {
                let removed = self
                    .queue
                    .remove_pushkeys(&push.user_id, &answer.rejected)
                    .await?;
                Ok(Settled::Sent {
                    rejected: usize::try_from(removed).unwrap_or(0),
                })
            }
            Err((why, retry_after)) => {
                let retry = u32::try_from(push.attempts)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let wait = backoff(
                    &self.config.retry,
                    retry,
                    retry_after,
                    &mut rand::thread_rng(),
                );
                tracing::info!(
                    user = %push.user_id,
                    conversation = %push.conversation_id,
                    attempts = push.attempts + 1,
                    error = %why,
                    retry_in_ms = wait.as_millis() as u64,
                    "push: gateway attempt failed"
                );
                Ok(Settled::Retry { error: why, wait })
            }
        }
    }

    /// One signed POST; the answer, or why it failed and the gateway's Retry-After.
    async fn post(
        &self,
        id: &str,
        body: &str,
    ) -> Result<GatewayAnswer, (String, Option<Duration>)> {
        let timestamp = Utc::now().timestamp();
        let signature = crate::signing::signature_header(
            std::slice::from_ref(&self.config.gateway_secret),
            id,
            timestamp,
            body.as_bytes(),
        )
        .map_err(|e| (e, None))?;
        let sent = self
            .http
            .post(&self.config.gateway_url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        let response = sent.map_err(|e| (e.to_string(), None))?;
        let status = response.status();
        if status.is_success() {
            // A gateway that answers no JSON rejects nothing.
            let text = response.text().await.unwrap_or_default();
            return Ok(serde_json::from_str(&text).unwrap_or_default());
        }
        let retry_after = (status.as_u16() == 429 || status.as_u16() == 503)
            .then(|| {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
            })
            .flatten();
        Err((format!("answered {}", status.as_u16()), retry_after))
    }

    /// Records the outcome, then counts it.
    async fn settle(
        &self,
        push: &Waiting,
        outcome: Result<Settled, sqlx::Error>,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        match outcome? {
            Settled::Retry { error, wait } => {
                let at: DateTime<Utc> = now + chrono::Duration::from_std(wait).unwrap_or_default();
                self.queue.retry(push, at, &error).await?;
                self.metrics.failures.inc();
            }
            settled => {
                self.queue.finish(push, now, self.config.coalesce).await?;
                match settled {
                    Settled::Sent { rejected } => {
                        self.metrics.sent.inc();
                        if rejected > 0 {
                            tracing::info!(user = %push.user_id, rejected, "push: devices the gateway rejected were removed");
                            self.metrics.rejected_devices.inc_by(rejected as u64);
                        }
                    }
                    Settled::Suppressed => self.metrics.suppressed.inc(),
                    Settled::Dropped => {
                        tracing::info!(user = %push.user_id, conversation = %push.conversation_id, "push: dropped past SB_PUSH_TTL_SECS");
                        self.metrics.dropped.inc();
                    }
                    Settled::NoTarget => self.metrics.no_target.inc(),
                    Settled::Retry { .. } => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ids_are_stable_per_newest_message() {
        let user = |u: &str| UserId::parse(u).unwrap();
        let conv = |c: &str| ConversationId::parse(c).unwrap();
        let msg = |m: &str| MessageId::parse(m).unwrap();
        let (c1, m1, m2) = (
            conv("01HZY0000000000000000000C1"),
            msg("01HZY0000000000000000000M1"),
            msg("01HZY0000000000000000000M2"),
        );
        let a = push_id(&user("bob"), &c1, &m1);
        assert_eq!(a, push_id(&user("bob"), &c1, &m1));
        assert!(a.starts_with("push_"));
        assert_ne!(a, push_id(&user("bob"), &c1, &m2));
        assert_ne!(a, push_id(&user("carol"), &c1, &m1));
        // The separator keeps the parts apart: the same bytes cut elsewhere are another push.
        let shifted = push_id(&user("bob0"), &conv("1HZY0000000000000000000C1M"), &m1);
        assert_ne!(a, shifted);
    }

    #[test]
    fn a_gateway_answer_without_json_rejects_nothing() {
        let answer: GatewayAnswer = serde_json::from_str(r#"{"rejected":["k1"]}"#).unwrap();
        assert_eq!(answer.rejected, vec!["k1"]);
        let answer: GatewayAnswer = serde_json::from_str("{}").unwrap();
        assert!(answer.rejected.is_empty());
    }
}
