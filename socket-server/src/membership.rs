//! This server's place in the directory: register through the registry's REST API, then every
//! `reconcile_interval` set the score to the exact live count (so a lost increment or
//! decrement never leaves drift) and refresh the heartbeat. If the server finds itself gone
//! from the set (evicted while paused, or lost in a Redis failover), it registers again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::registry::{Registration, CLUSTER_SECRET_HEADER};
use switchboard_service_kit::shutdown::CancellationToken;

use crate::ServerState;

pub(crate) async fn run(state: Arc<ServerState>, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
    let mut backoff = Duration::from_millis(100);
    let mut ticker = tokio::time::interval(state.config.reconcile_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !state.registered.load(Ordering::Acquire) {
            match register(&state, &http).await {
                Ok(()) => {
                    state.registered.store(true, Ordering::Release);
                    backoff = Duration::from_millis(100);
                    tracing::info!(server_id = %state.server_id, "registered with the registry");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        match state
            .directory
            .reconcile(&state.server_id, state.hub.live() as u64, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("this server is missing from the directory; registering again");
                state.registered.store(false, Ordering::Release);
                continue;
            }
            Err(e) => tracing::warn!(error = %e, "reconcile failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
    }
}

async fn register(state: &ServerState, http: &reqwest::Client) -> Result<(), String> {
    let registration = Registration {
        server_id: state.server_id.clone(),
        url: state.public_url.clone(),
        health_url: state.health_url.clone(),
        max_connections: state.config.max_connections,
    };
    let url = format!(
        "{}/api/v1/socket-servers",
        state.config.registry_url.trim_end_matches('/')
    );
    let response = http
        .post(url)
        .header(CLUSTER_SECRET_HEADER, &state.config.common.cluster_secret)
        .json(&registration)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "registry answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    // Set the exact score straight away rather than waiting for the next tick.
    let now = chrono::Utc::now().timestamp_millis();
    state
        .directory
        .reconcile(&state.server_id, state.hub.live() as u64, now)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Leaves the sorted set (shutdown step one). Retries briefly: if Redis is failing over, the
/// health checker will evict us anyway once we stop answering.
pub(crate) async fn leave(state: &ServerState) {
    state.registered.store(false, Ordering::Release);
    for attempt in 0..5 {
        match state.directory.remove(&state.server_id).await {
            Ok(_) => {
                tracing::info!(server_id = %state.server_id, "left the directory");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "leaving the directory failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
