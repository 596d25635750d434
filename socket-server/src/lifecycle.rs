//! A running server's background life and its drain: the directory membership and the
//! managers' link run until shutdown, then the server leaves in the order the contract asks
//! (leave the sorted set, close every client with 1012 and wait for the last connection,
//! leave the managers, stop accepting).

use std::sync::Arc;

use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::OwnedTask;

use crate::membership;
use crate::state::ServerState;

/// Runs the directory membership and the managers' link until `shutdown`, then drains in
/// order. Either loop ending before `shutdown` ends this task, which stops the service.
pub(crate) async fn drain(
    state: Arc<ServerState>,
    shutdown: CancellationToken,
    accept_stop: CancellationToken,
) {
    let membership_stop = CancellationToken::new();
    let link_stop = CancellationToken::new();
    let mut membership = OwnedTask::spawn(
        "membership",
        membership::run(state.clone(), membership_stop.clone()),
    );
    let mut link = state.manager.is_some().then(|| {
        OwnedTask::spawn(
            "manager link",
            membership::link_managers(state.clone(), link_stop.clone()),
        )
    });
    let link_ended = async {
        match link.as_mut() {
            Some(link) => link.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        ended = membership.wait() => {
            tracing::error!(?ended, "the directory membership loop ended on its own");
            return;
        }
        ended = link_ended => {
            tracing::error!(?ended, "the managers' link ended on its own");
            return;
        }
    }
    membership_stop.cancel();
    let _ = membership.wait().await;
    membership::leave(&state).await;
    state.shutdown.cancel();
    // Every connection is a tracked task: wait for the last one by notification.
    state.connections.close();
    let drained = tokio::time::timeout(state.config.shutdown_grace, state.connections.wait());
    if drained.await.is_err() {
        tracing::warn!(
            remaining = state.hub.live(),
            "clients still connected at the grace period's end"
        );
    }
    tracing::info!(remaining = state.hub.live(), "clients closed; stopping");
    link_stop.cancel();
    if let Some(link) = link.as_mut() {
        let _ = link.wait().await;
    }
    if let Some(manager) = &state.manager {
        manager.deregister().await;
    }
    accept_stop.cancel();
}
