//! The membership mirror's outbox, and the housekeeping of quota events.
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
pub async fn apply(store: &Store, mirror: &MembershipMirror, conversation_id: &str, version: u64) {
    match mirror.invalidate_at(conversation_id, version).await {
        Ok(_) => {
            if let Err(e) = store.mirror_applied(conversation_id, version).await {
                tracing::warn!(error = %e, conversation_id, "could not note a mirror update; the sweeper repeats it");
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            conversation_id,
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
