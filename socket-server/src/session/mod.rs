//! One client connection, whichever transport carries it (a WebSocket, or SSE where upgrades
//! are blocked): admitted before the upgrade, then one task that joins the hub (and, for a
//! user's first device, the managers' routing), runs the socket loop, and leaves.
//!
//! - `admission`: the checks before the upgrade (rate, token, origin, caps, ended sessions).
//! - `socket_loop`: the loop that selects over the client's frames, the connection's bounded
//!   outbound queue, a heartbeat, shutdown, a kick and its token's life.
//! - `inbound`: the client's frames: rate limit, validation, answers, forwarding to the
//!   managers.
//! - `outbound`: writes to the client, each bounded by the write timeout, and the queue.
//! - `heartbeat`: pings and the client timeout (1001).
//! - `token`: `token_expiring` before `exp`, 4401 at it, a `refresh` frame that moves `exp`
//!   (and 4403 when the user's sessions are ended).
//! - `closing`: the close frame each way of ending gets.

mod admission;
mod closing;
mod heartbeat;
mod inbound;
mod outbound;
mod socket_loop;
mod token;

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use switchboard_protocol::internal::ServerItem;
use switchboard_protocol::UserId;
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::{mpsc, oneshot};

pub(crate) use admission::{admit, bearer_token, origin_allowed};

use crate::hub::{ConnHandle, Outbound};
use crate::manager_client::Pending;
use crate::state::ServerState;
use crate::token_life::Admitted;
use crate::wire::{Incoming, Outlet, ReadError};
use socket_loop::{run_session, SessionContext, SessionLimits};
use token::TokenContext;

/// One accepted connection: joins the hub (and, for a user's first device, the managers'
/// routing), runs [`run_session`] over the client's frames and outlet, then leaves.
pub(crate) async fn run<S, T, K>(
    state: Arc<ServerState>,
    admitted: Admitted,
    incoming: S,
    outlet: K,
) where
    S: Stream<Item = Result<Incoming<T>, ReadError>> + Unpin,
    T: AsRef<str>,
    K: Outlet,
{
    let user_id = admitted.user_id;
    // The hub's and the sessions index's key: shared, as every delivery clones it.
    let user_key: Arc<str> = Arc::from(user_id.as_str());
    let (tx, rx) = mpsc::channel::<Outbound>(state.config.outbound_queue);
    let kick = CancellationToken::new();
    let (conn_id, first_device) = state.hub.insert(ConnHandle {
        user_id: user_key.clone(),
        outbound: tx.clone(),
        kick: kick.clone(),
    });
    // Right after it joined the hub, before any await: a control that ends the user's
    // sessions from here on finds it, and one that went by already is remembered.
    let registration = state.sessions.register(&user_key, conn_id, admitted.iat);
    state.metrics.connections.set(state.hub.live() as i64);
    state.metrics.connects.inc();
    state.directory_connected().await;
    if first_device {
        // Wait until the managers route to this handler for the user, so nothing sent after
        // `hello` can miss this device.
        report_presence(&state, conn_id, &user_id, true).await;
    }

    let ctx = SessionContext {
        conn_id,
        user_id: &user_id,
        server_id: &state.server_id,
        limits: SessionLimits::of(&state.config),
        metrics: &state.metrics,
        manager: state.manager.as_ref(),
        shutdown: &state.shutdown,
        kick: &kick,
        own_queue: tx,
        outbound: rx,
        token: TokenContext {
            keys: &state.tokens,
            marks: Some(state.sessions.marks()),
            exp: admitted.exp,
            iat: &registration.iat,
            notice: state.config.token_expiry_notice,
            max_lifetime_secs: state.config.token_max_lifetime_secs,
            ended: &registration.ended,
            metrics: &state.sessions.metrics,
        },
    };
    let leave = async {
        state.sessions.unregister(&user_key, conn_id);
        let last_device = state.hub.remove(conn_id);
        state.metrics.connections.set(state.hub.live() as i64);
        if last_device {
            report_presence(&state, conn_id, &user_id, false).await;
        }
    };
    run_session(incoming, outlet, ctx, leave).await;
    state.directory_disconnected().await;
}

/// Reports a user's first device arriving (waiting for the manager) or last device leaving
/// (not waiting) on this handler.
async fn report_presence(state: &ServerState, conn_id: u64, user_id: &UserId, connected: bool) {
    let Some(manager) = &state.manager else {
        return;
    };
    let item = if connected {
        ServerItem::Connected {
            connection_id: conn_id,
            user_id: user_id.clone(),
        }
    } else {
        ServerItem::Disconnected {
            connection_id: conn_id,
            user_id: user_id.clone(),
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    let pending = Pending {
        item,
        reply_to: None,
        done: Some(done_tx),
    };
    if manager.submit(conn_id, pending).is_err() {
        tracing::warn!(
            user_id = user_id.as_str(),
            "manager lane full; presence report dropped"
        );
        return;
    }
    if connected {
        match tokio::time::timeout(Duration::from_secs(5), done_rx).await {
            Ok(Ok(true)) => {}
            _ => tracing::warn!(
                user_id = user_id.as_str(),
                "connection report not confirmed by a manager"
            ),
        }
    }
}
