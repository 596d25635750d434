//! This server's membership, one registration and one heartbeat: register in the directory
//! through the registry's REST API, then every `reconcile_interval` set the score to the exact
//! live count (so a lost increment or decrement never leaves drift) and refresh the heartbeat.
//! The directory is the one record of "this server is alive": the health checkers evict a
//! server from it, and the managers' janitor reaps the topic and routes of a server gone from
//! it (socket-manager's `janitor`). If the server finds itself gone from the set (evicted while
//! paused, or lost in a Redis failover), it registers again, and after every registration it
//! links to the managers again (its topic, its users re-reported), so whatever a reap removed
//! comes back. [`link_managers`] starts the delivery consumer and renews the user mappings; it
//! sends no heartbeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::registry::Registration;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::OwnedTask;

use crate::state::ServerState;

pub(crate) async fn run(state: Arc<ServerState>, stop: CancellationToken) {
    // Only become assignable once messages can reach our clients.
    if state.manager.is_some() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.manager_ready.wait_set() => {}
        }
    }
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

/// One registration: in the directory, then with the managers again (see the module docs).
async fn register(state: &ServerState, http: &reqwest::Client) -> Result<(), String> {
    register_in_directory(state, http).await?;
    relink(state).await
}

/// Links to the managers again after a registration in the directory: a reap that removed this
/// server's topic and routes (it was missing from the directory for a while) is undone, and one
/// still under way is waited out (the managers refuse the link until it is over). Nothing to do
/// before the first link ([`link_managers`] makes it) or without messaging.
async fn relink(state: &ServerState) -> Result<(), String> {
    let Some(manager) = state.manager.as_ref() else {
        return Ok(());
    };
    if !state.manager_ready.is_set() {
        return Ok(());
    }
    manager.register().await.map_err(|e| e.to_string())?;
    let users: Vec<String> = state.hub.users().iter().map(|u| u.to_string()).collect();
    if !users.is_empty() {
        manager.renew(users).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn register_in_directory(state: &ServerState, http: &reqwest::Client) -> Result<(), String> {
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
    let response = state
        .config
        .common
        .cluster
        .credential(ServiceRole::SocketServer)
        .apply(http.post(url))
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

/// Keeps this server linked to the socket managers: register (which creates our topic), start
/// consuming it, and re-report every local user every `mapping_renew` so user-to-server
/// mappings never expire under live devices. Checked every `handler_heartbeat`; no heartbeat
/// is sent (liveness is the directory's): a link lost to a reap is made again by [`run`] after
/// it registers in the directory again.
pub(crate) async fn link_managers(state: Arc<ServerState>, stop: CancellationToken) {
    let Some(manager) = state.manager.clone() else {
        return;
    };
    let consumer_stop = stop.child_token();
    let mut consumer: Option<OwnedTask> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_renew = tokio::time::Instant::now();
    loop {
        if consumer.as_ref().is_some_and(|task| task.is_finished()) {
            // The delivery consumer ended without being asked to: this handler's devices get
            // nothing live until it runs again, so /ready fails and it is started afresh.
            tracing::error!("the delivery consumer stopped; restarting it");
            consumer = None;
            state.manager_ready.clear();
        }
        if !state.manager_ready.is_set() {
            match manager.register().await {
                Ok(topic) => {
                    if consumer.is_none() {
                        consumer = Some(OwnedTask::spawn(
                            "delivery consumer",
                            crate::delivery::run(
                                state.clone(),
                                state.config.kafka.clone(),
                                topic,
                                consumer_stop.clone(),
                            ),
                        ));
                    }
                    // Re-report local users (after a re-registration the mappings are gone).
                    let users: Vec<String> =
                        state.hub.users().iter().map(|u| u.to_string()).collect();
                    if !users.is_empty() {
                        let _ = manager.renew(users).await;
                    }
                    state.manager_ready.set();
                    backoff = Duration::from_millis(100);
                    tracing::info!("linked to the socket managers");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "manager registration failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(state.config.handler_heartbeat) => {}
        }
        if last_renew.elapsed() >= state.config.mapping_renew {
            last_renew = tokio::time::Instant::now();
            let users: Vec<String> = state.hub.users().iter().map(|u| u.to_string()).collect();
            if let Err(e) = manager.renew(users).await {
                tracing::warn!(error = %e, "renewing user mappings failed");
            }
        }
    }
    consumer_stop.cancel();
    if let Some(task) = consumer {
        let _ = task.join().await;
    }
}
