//! Cleans up after dead socket servers: a server whose liveness key expired (it was evicted by
//! the health checker, crashed, or was cut off) loses its topic and its user mappings.
//!
//! A missing key alone is not proof: a Redis failover longer than the key's lifetime lets
//! every live server's key lapse while nobody can renew it. So a server is removed only if its
//! key is still missing one lifetime after this janitor first saw it missing; a live one
//! notices (its heartbeat finds no key) and registers again well within that.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use actix_web::web;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::state::AppState;

pub(crate) async fn run(state: web::Data<AppState>, shutdown: CancellationToken) {
    let owner = ulid::Ulid::new().to_string();
    let period = Duration::from_millis((state.config.server_ttl_ms / 2).max(500) as u64);
    let grace = Duration::from_millis(state.config.server_ttl_ms.max(0) as u64);
    let mut ticker = tokio::time::interval(period);
    // Socket server → (when this janitor first found its key missing, when it last did). Janitors
    // take turns with the lease, so a suspicion survives turns it did not sweep in; one not
    // confirmed for a while (the key may have come back meanwhile) starts over.
    let mut suspects: HashMap<String, (Instant, Instant)> = HashMap::new();
    let stale = grace + period * 2;
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
        let dead = match servers.dead_servers().await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::debug!(error = %e, "listing socket servers failed");
                continue;
            }
        };
        let now = Instant::now();
        suspects.retain(|server, _| dead.contains(server));
        let dead: Vec<String> = dead
            .into_iter()
            .filter(|server| {
                let seen = suspects.entry(server.clone()).or_insert((now, now));
                if now.duration_since(seen.1) > stale {
                    seen.0 = now;
                }
                seen.1 = now;
                now.duration_since(seen.0) >= grace
            })
            .collect();
        for server in dead {
            suspects.remove(&server);
            tracing::warn!(%server, "socket server stopped renewing; removing its topic and mappings");
            if state.config.delete_server_topics {
                let topic = state.sequencer.kafka.config.handler_topic(&server);
                if let Err(e) = state.sequencer.kafka.delete_topic(&topic).await {
                    tracing::warn!(error = %e, %topic, "deleting the socket server's topic failed");
                }
            }
            match servers.forget(&server).await {
                Ok(offline) => crate::presence::announce(state.clone(), Vec::new(), offline),
                Err(e) => {
                    tracing::warn!(error = %e, %server, "forgetting the socket server failed")
                }
            }
        }
    }
}
