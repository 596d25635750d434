//! The registry: the REST service clients ask for a socket server (SPEC section 3).
//!
//! - [`RegistryConfig`]: typed settings from the environment.
//! - [`Application`]: binds, exposes [`Application::port`], runs until the shutdown token fires;
//!   tests start it on port 0.
//! - `routes`: the handlers; the balancing itself lives in the `server-directory` crate's
//!   atomic assign script, shared with the socket servers and health checkers.
//! - `assigner`: concurrent assign requests share one assign script (group commit).
//! - `state`: what the handlers share.

mod assigner;
pub mod config;
mod routes;
mod state;

use std::net::TcpListener;

use actix_web::web;
use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::http;
use switchboard_service_kit::jwks::JwksRefresher;
use switchboard_service_kit::limits::{IpLeases, IpRateLimiter};
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::supervise::Workers;

pub use config::RegistryConfig;
use state::AppState;

/// The OpenAPI description of the registry's public routes; it lives in `protocol`
/// ([`switchboard_protocol::registry::public_openapi`]) with the bodies it names, so other
/// services can publish it without depending on this crate.
pub fn public_openapi() -> utoipa::openapi::OpenApi {
    switchboard_protocol::registry::public_openapi()
}

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    jwks: Option<JwksRefresher>,
}

impl Application {
    pub async fn build(config: RegistryConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.bind)?;
        let port = listener.local_addr()?.port();
        let redis = SentinelRedis::new(config.common.redis.clone());
        let directory = ServerDirectory::new(redis.clone());

        let assignments = prometheus::IntCounterVec::new(
            prometheus::Opts::new("registry_assignments_total", "assign requests by outcome"),
            &["outcome"],
        )?;
        let ops = Ops::new("registry").with_check(
            "redis",
            switchboard_service_kit::redis::readiness_check(&redis),
        );
        ops.register(&assignments);

        let config_origins = config.common.allowed_origins.clone();
        let workers = Some(config.http_workers);
        let redis_config = config.common.redis.clone();
        let (stale_after_ms, reservation_ttl_ms) =
            (config.stale_after_ms, config.reservation_ttl_ms);
        let (tokens, jwks) = config.common.token_keys();
        let state = web::Data::new(AppState {
            directory,
            tokens,
            assign_rate: IpRateLimiter::new(config.assign_rate_per_ip),
            reservations: IpLeases::new(
                config.reservations_per_ip,
                std::time::Duration::from_millis(config.reservation_ttl_ms.max(0) as u64),
            ),
            config,
            assignments,
        });
        let server = http::serve_json_api(
            ops,
            listener,
            64 * 1024,
            &config_origins,
            workers,
            move |cfg| {
                cfg.app_data(state.clone());
                // Each HTTP worker gets its own assigner and Redis connection, made here on the
                // worker's thread: see the `assigner` module docs.
                let directory = ServerDirectory::new(SentinelRedis::new(redis_config.clone()));
                cfg.app_data(web::Data::new(assigner::Assigner::start(
                    directory,
                    stale_after_ms,
                    reservation_ttl_ms,
                )));
                routes::configure(cfg);
            },
        )?;
        Ok(Application { port, server, jwks })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests (the same
    /// supervision as every service: [`Workers::serve`]).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut workers = Workers::new();
        if let Some(jwks) = self.jwks {
            workers.spawn("jwks", jwks.run(shutdown.clone()));
        }
        workers.serve(self.server, shutdown).await?;
        Ok(())
    }
}
