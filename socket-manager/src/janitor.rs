//! Reaps socket servers gone from the directory: their topic, their routes, and a presence
//! change for the users they held. The directory (`switchboard-server-directory`) is the one
//! owner of "this server is alive": a server registers there once, its reconcile is its one
//! heartbeat, and a health checker's eviction (or the server leaving on drain) removes it
//! there. The managers keep no liveness of their own; this janitor (one manager at a time,
//! under a lease) sweeps the servers linked to the managers but absent from the directory.
//! A deregistration takes the same [`reap`] at once.
//!
//! Absence alone is not proof: a Redis failover can lose the directory's entries while every
//! server is alive. So a server is reaped only if it is still absent one grace
//! (`SB_HANDLER_TTL_MS`) after this janitor first saw it absent; a live one notices on its
//! next reconcile (its entry is gone), registers again and so is present well within that.
//!
//! A server that was reaped while in fact alive (a pause longer than the grace) finds itself
//! missing from the directory when it resumes, registers again, then links to the managers
//! again and re-reports its local users, so its topic and routes come back. The claim that
//! starts a reap checks the absence in the same step as it marks the server as being reaped,
//! and a registration waits for that mark to go: a server never comes back half-way through
//! its own removal (`switchboard_chat_state::presence`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use actix_web::web;
use switchboard_redis::StoreError;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::state::AppState;

pub(crate) async fn run(state: web::Data<AppState>, shutdown: CancellationToken) {
    let owner = ulid::Ulid::new().to_string();
    let period = Duration::from_millis((state.config.server_ttl_ms / 2).max(500) as u64);
    let grace = Duration::from_millis(state.config.server_ttl_ms.max(0) as u64);
    let mut ticker = tokio::time::interval(period);
    let mut suspects = Suspects::new(grace, period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let servers = &state.sequencer.servers;
        match servers
            .try_janitor_lease(&owner, period.as_millis() as i64)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "janitor lease unavailable");
                continue;
            }
        }
        let missing = match missing_servers(&state).await {
            Ok(missing) => missing,
            Err(e) => {
                tracing::debug!(error = %e, "listing socket servers failed");
                continue;
            }
        };
        for server in suspects.confirm(missing, Instant::now()) {
            match reap(&state, &server, Reap::GoneFromDirectory).await {
                Ok(true) => tracing::warn!(
                    %server,
                    "socket server gone from the directory; removed its topic and routes"
                ),
                Ok(false) => tracing::info!(%server, "socket server came back; not reaped"),
                Err(e) => tracing::warn!(error = %e, %server, "reaping the socket server failed"),
            }
        }
    }
}

/// The socket servers linked to the managers (they have a topic) that the directory no longer
/// lists.
async fn missing_servers(state: &AppState) -> Result<Vec<String>, StoreError> {
    let linked = state.sequencer.servers.registered_servers().await?;
    let present = state.directory.present(&linked).await?;
    Ok(linked
        .into_iter()
        .zip(present)
        .filter(|(_, present)| !present)
        .map(|(server, _)| server)
        .collect())
}

/// Why a server is reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reap {
    /// The janitor found it absent from the directory for a grace: reaped only if it is still
    /// absent and still linked when the reap starts.
    GoneFromDirectory,
    /// It deregistered itself (it left the directory first, on drain).
    Deregistered,
}

/// The one removal of a socket server from the managers: claim it (unlinked, marked as being
/// reaped), delete its topic, remove its routes, clear the mark, and announce the users now
/// offline. `false` when there was nothing to reap (it came back, or another janitor reaped
/// it first).
pub(crate) async fn reap(
    state: &web::Data<AppState>,
    server: &str,
    why: Reap,
) -> Result<bool, StoreError> {
    let servers = &state.sequencer.servers;
    let absent_from = match why {
        Reap::GoneFromDirectory => Some(state.directory.servers_key()),
        Reap::Deregistered => None,
    };
    if !servers.claim(server, absent_from).await? {
        return Ok(false);
    }
    if state.config.delete_server_topics {
        let topic = state.sequencer.kafka.config.handler_topic(server);
        if let Err(e) = state.sequencer.kafka.delete_topic(&topic).await {
            tracing::warn!(error = %e, %topic, "deleting the socket server's topic failed");
        }
    }
    let offline = servers.forget(server).await?;
    crate::presence::announce(state.clone(), Vec::new(), offline);
    Ok(true)
}

/// The servers this janitor has found absent, and since when. Janitors take turns with the
/// lease, so a suspicion survives turns it did not sweep in; one not confirmed for a while
/// (the server may have come back meanwhile) starts over.
struct Suspects {
    grace: Duration,
    /// A suspicion not seen again for this long starts over.
    stale: Duration,
    /// Server → (when first found absent, when last found absent).
    seen: HashMap<String, (Instant, Instant)>,
}

impl Suspects {
    fn new(grace: Duration, period: Duration) -> Self {
        Suspects {
            grace,
            stale: grace + period * 2,
            seen: HashMap::new(),
        }
    }

    /// Records this sweep's absent servers; answers the ones absent for a grace (forgotten
    /// here: the reap follows).
    fn confirm(&mut self, missing: Vec<String>, now: Instant) -> Vec<String> {
        self.seen.retain(|server, _| missing.contains(server));
        let due: Vec<String> = missing
            .into_iter()
            .filter(|server| {
                let seen = self.seen.entry(server.clone()).or_insert((now, now));
                if now.duration_since(seen.1) > self.stale {
                    seen.0 = now;
                }
                seen.1 = now;
                now.duration_since(seen.0) >= self.grace
            })
            .collect();
        for server in &due {
            self.seen.remove(server);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server is due once absent for a grace; one that came back starts over; a suspicion
    /// not seen for a while (other janitors swept meanwhile) starts over too.
    #[test]
    fn a_server_is_due_once_absent_for_a_grace() {
        let grace = Duration::from_secs(6);
        let mut suspects = Suspects::new(grace, Duration::from_secs(3));
        let t0 = Instant::now();
        let s = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(suspects.confirm(s(&["a", "b"]), t0).is_empty());
        assert!(suspects
            .confirm(s(&["a"]), t0 + Duration::from_secs(3))
            .is_empty());
        // b came back at 3 s and is absent again at 6 s: its grace starts over.
        assert_eq!(
            suspects.confirm(s(&["a", "b"]), t0 + grace),
            ["a"],
            "a was absent a whole grace"
        );
        assert!(suspects
            .confirm(s(&["b"]), t0 + Duration::from_secs(9))
            .is_empty());
        // Not seen for longer than grace + two periods: b's suspicion starts over.
        let later = t0 + Duration::from_secs(30);
        assert!(suspects.confirm(s(&["b"]), later).is_empty());
        assert_eq!(suspects.confirm(s(&["b"]), later + grace), ["b"]);
    }
}
