//! The socket server (the "socket handler"): the WebSocket endpoint clients connect to.
//!
//! - [`config`]: settings from the environment.
//! - `state`: what connection tasks and background jobs share (`ServerState`), and `/ready`'s
//!   check; `metrics`: its Prometheus instruments.
//! - `listener`: the public port's accept loop: `GET /ws` becomes a WebSocket session (the
//!   protocol itself is `websocket`), `GET /sse` and `POST /sse/{id}/frames` the same session
//!   over plain HTTP (`sse`), `GET /live` is answered there, anything else is 404. The
//!   operations endpoints (`/live`, `/ready`, `/metrics`) are actix-web's, on their own port
//!   (`SB_SOCKET_OPS_BIND`); per-address caps (`per_address`) keep one address from taking
//!   the port.
//! - `session`: admission before the upgrade (token, origin, limits), then one task per
//!   connection that selects over client frames, its bounded outbound queue, a heartbeat,
//!   its token's life and shutdown.
//! - `hub`: the connections this server holds, by id and by user; exact live count.
//! - `token_life`: a session's token expiry and in-band refresh, and ending every session of
//!   a user (a control on the handler topic, a mark in Redis).
//! - `membership`: registers with the registry, then keeps this server's score in the Redis
//!   sorted set exact (reconcile + heartbeat) and re-registers if it was evicted; links to
//!   the socket managers, whose routed frames `delivery` consumes from our topic.
//! - `lifecycle`: runs those loops until shutdown, then drains in order.
//! - [`Application`]: binds (port 0 in tests), runs, and shuts down in the order the contract
//!   asks: leave the sorted set first, then close every client with 1012, then stop.

pub mod config;
mod delivery;
pub mod hub;
mod lifecycle;
mod listener;
mod manager_client;
mod membership;
mod metrics;
mod per_address;
mod rate;
mod reorder;
mod session;
mod sse;
mod state;
mod token_life;
mod websocket;
mod wire;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use switchboard_service_kit::http;
use switchboard_service_kit::jwks::JwksRefresher;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::Workers;

pub use config::SocketServerConfig;

use state::{ServerState, Urls};

pub struct Application {
    port: u16,
    /// The public port, served by [`listener::serve`] once running.
    public: tokio::net::TcpListener,
    /// Where the operations server (actix-web) listens (`SB_SOCKET_OPS_BIND`).
    ops_addr: SocketAddr,
    server: actix_web::dev::Server,
    state: Arc<ServerState>,
    /// Keeps an identity provider's keys fresh, when one is configured.
    jwks: Option<JwksRefresher>,
}

impl Application {
    pub async fn build(config: SocketServerConfig) -> anyhow::Result<Self> {
        let public = listener::bind_public(&config.bind)?;
        let addr = public.local_addr()?;
        let port = addr.port();
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{}/ws", listener::reachable(addr)));
        // The operations endpoints on their own listener: a flood on the clients' port
        // cannot keep the health checkers' probes out, and clients cannot read /metrics.
        let ops_listener = TcpListener::bind(&config.ops_bind)?;
        let ops_addr = ops_listener.local_addr()?;
        let health_url = config
            .health_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/live", listener::reachable(ops_addr)));
        tracing::info!(%ops_addr, %health_url, "operations endpoints (/live, /ready, /metrics) listening");
        let ops = Ops::new("socket-server");
        let urls = Urls {
            public_url,
            health_url,
        };
        let (state, jwks) = ServerState::new(config, urls, &ops)?;
        let server = ops_server(ops, ops_listener, &state)?;
        Ok(Application {
            port,
            public,
            ops_addr,
            server,
            state,
            jwks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/live`, `/ready` and `/metrics` (`SB_SOCKET_OPS_BIND`).
    pub fn ops_port(&self) -> u16 {
        self.ops_addr.port()
    }

    pub fn server_id(&self) -> &str {
        self.state.server_id.as_str()
    }

    /// Serves until `shutdown` fires, then drains ([`lifecycle::drain`]): stop the membership
    /// loop, leave the sorted set, close every client with 1012 and wait (up to the grace
    /// period) for the last connection to end, then leave the managers. Runs under the same
    /// supervision as every service ([`Workers`]): a loop that ends on its own while the
    /// server runs stops it, so it is restarted rather than left half alive.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let grace = state.config.shutdown_grace + Duration::from_secs(10);
        let mut workers = Workers::new().with_grace(grace);
        if let Some(jwks) = self.jwks {
            workers.spawn("jwks", jwks.run(shutdown.clone()));
        }
        let accept_stop = CancellationToken::new();
        let (accept_state, stop) = (state.clone(), accept_stop.clone());
        let public = self.public;
        workers.spawn("accept", async move {
            tokio::select! {
                _ = listener::serve(public, accept_state) => {}
                _ = stop.cancelled() => {}
            }
        });
        workers.spawn(
            "membership and drain",
            lifecycle::drain(state, shutdown.clone(), accept_stop),
        );
        workers.serve(self.server, shutdown).await?;
        Ok(())
    }
}

/// The operations server (`/live`, `/ready` with [`ServerState::readiness`], `/metrics`) on
/// its own listener, one worker.
fn ops_server(
    ops: Ops,
    listener: TcpListener,
    state: &Arc<ServerState>,
) -> anyhow::Result<actix_web::dev::Server> {
    let ready_state = state.clone();
    let ops = ops.with_check(
        "registered",
        Arc::new(move || {
            let state = ready_state.clone();
            Box::pin(async move { state.readiness().await })
        }),
    );
    Ok(http::serve_ops(
        ops,
        listener,
        state.config.shutdown_grace.as_secs().max(1),
    )?)
}
