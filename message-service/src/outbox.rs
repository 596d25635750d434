//! The membership mirror's outbox, the membership events' outbox ([`publish_events`]), and
//! the housekeeping of quota events.
//!
//! A membership change commits in SQL together with a row in `mirror_outbox` (its
//! conversation and new `members_version`). The request that made the change then updates the
//! Redis mirror ([`MembershipMirror::invalidate_at`]); this sweeper applies every change that
//! request could not (Redis down, the process gone), and keeps re-applying each one for
//! [`RECHECK_SECS`] after it first reached Redis, because a Redis master that acknowledged the
//! write can die before replicating it and the failover then loses it. A re-application the
//! mirror already reflects is one script call that changes nothing, so a removed member keeps
//! access at most until Redis accepts writes again (and a second), never for the mirror's TTL.

use std::time::Duration;

use switchboard_chat_state::membership::MembershipMirror;
use switchboard_protocol::ConversationId;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::store::Store;

/// How long after it first reached Redis a change is re-applied: longer than a Sentinel
/// failover takes (down-after plus the election: seconds), so a write the old master lost is
/// applied again on the new one.
pub const RECHECK_SECS: u64 = 30;

/// How often the outbox is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most changes applied per sweep.
const BATCH: i64 = 500;

/// Applies the change `version` of `conversation_id` to the mirror and, when Redis took it,
/// notes that in the outbox. Errors are logged: the sweeper retries.
pub async fn apply(
    store: &Store,
    mirror: &MembershipMirror,
    conversation_id: &ConversationId,
    version: u64,
) {
    match mirror.invalidate_at(conversation_id, version).await {
        Ok(_) => {
            if let Err(e) = store.mirror_applied(conversation_id, version).await {
                tracing::warn!(error = %e, %conversation_id, "could not note a mirror update; the sweeper repeats it");
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            %conversation_id,
            version,
            "the membership mirror could not be updated now; the outbox sweeper applies it"
        ),
    }
}

/// Sweeps the outbox every [`SWEEP_EVERY`] until `shutdown`; prunes old quota events too.
pub async fn run(store: Store, mirror: MembershipMirror, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        sweeps += 1;
        match store.mirror_outbox(RECHECK_SECS, BATCH).await {
            Ok(due) => {
                for (conversation_id, version) in due {
                    apply(&store, &mirror, &conversation_id, version).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the membership outbox"),
        }
        if sweeps.is_multiple_of(10) {
            if let Err(e) = store.prune_mirror_outbox(RECHECK_SECS).await {
                tracing::warn!(error = %e, "could not prune the membership outbox");
            }
            if let Err(e) = store.prune_quota_events().await {
                tracing::warn!(error = %e, "could not prune quota events");
            }
        }
    }
}

/// How often the membership events are looked for.
pub const EVENTS_EVERY: Duration = Duration::from_millis(200);

/// Publishes the membership events (`event_outbox`, written in the transactions of the
/// changes) to the events topic, keyed by conversation, and deletes them once the broker has
/// acknowledged them; until `shutdown`. A broker or database error leaves them for the next
/// round: at least once, in order per conversation except that a round that failed part-way
/// sends its acknowledged events again (readers deduplicate by `event_id`).
pub async fn publish_events(
    store: Store,
    kafka: switchboard_kafka::KafkaConfig,
    shutdown: CancellationToken,
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = match kafka.producer_config(5_000).create() {
        Ok(producer) => producer,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the membership events' producer");
            return;
        }
    };
    let mut tick = tokio::time::interval(EVENTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = match store.events_to_publish(BATCH).await {
            Ok(due) if due.is_empty() => continue,
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the membership events");
                continue;
            }
        };
        let sends = due.iter().map(|(_, key, payload)| {
            producer.send(
                FutureRecord::to(&kafka.events_topic)
                    .key(key.as_str())
                    .payload(payload.as_str()),
                Duration::from_millis(100),
            )
        });
        let acks = futures_util::future::join_all(sends).await;
        let mut published = Vec::with_capacity(due.len());
        for ((id, _, _), ack) in due.iter().zip(acks) {
            match ack {
                Ok(_) => published.push(*id),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "a membership event was not published; retried");
                    break;
                }
            }
        }
        if let Err(e) = store.events_published(&published).await {
            tracing::warn!(error = %e, "could not forget published membership events; they go again");
        }
    }
}
