//! The registry: the REST service clients ask for a socket server (SPEC section 3).
//!
//! - [`RegistryConfig`]: typed settings from the environment.
//! - [`Application`]: binds, exposes [`Application::port`], runs until the shutdown token fires;
//!   tests start it on port 0.
//! - `routes`: the handlers; the balancing itself lives in the `server-directory` crate's
//!   atomic assign script, shared with the socket servers and health checkers.

mod routes;

use std::net::TcpListener;

use actix_web::web;
use switchboard_protocol::token::TokenKeys;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::config::{env_or, env_string, CommonConfig, ConfigError};
use switchboard_service_kit::http;
use switchboard_service_kit::limits::{IpLeases, IpRateLimiter, Rate};
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::redis_sentinel::SentinelRedis;
use switchboard_service_kit::shutdown::CancellationToken;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub common: CommonConfig,
    /// `SB_REGISTRY_BIND`, default `127.0.0.1:8101`.
    pub bind: String,
    /// A server whose last heartbeat is older than this is not handed out
    /// (`SB_SERVER_STALE_MS`, default 10000; 0 disables the check).
    pub stale_after_ms: i64,
    /// How long an assignment holds a slot before the client connects
    /// (`SB_RESERVATION_TTL_MS`, default 10000).
    pub reservation_ttl_ms: i64,
    /// Lifetime of dev tokens (`SB_DEV_TOKEN_TTL_SECS`, default 86400).
    pub dev_token_ttl_secs: i64,
    /// Assignments per client address (`SB_ASSIGN_RATE_PER_IP` per second, default 20, and
    /// `SB_ASSIGN_BURST_PER_IP`, default 100; 0 turns it off), per registry replica.
    pub assign_rate_per_ip: Rate,
    /// Unexpired slot reservations one client address may hold (`SB_RESERVATIONS_PER_IP`,
    /// default 100; 0 turns it off), per registry replica: past it, assignments answer 429
    /// instead of reserving, so one address cannot fill every server with reservations.
    pub reservations_per_ip: usize,
}

impl RegistryConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(RegistryConfig {
            common: CommonConfig::from_env()?,
            bind: env_string("SB_REGISTRY_BIND", "127.0.0.1:8101"),
            stale_after_ms: env_or("SB_SERVER_STALE_MS", 10_000)?,
            reservation_ttl_ms: env_or("SB_RESERVATION_TTL_MS", 10_000)?,
            dev_token_ttl_secs: env_or("SB_DEV_TOKEN_TTL_SECS", 86_400)?,
            assign_rate_per_ip: Rate {
                per_sec: env_or("SB_ASSIGN_RATE_PER_IP", 20.0)?,
                burst: env_or("SB_ASSIGN_BURST_PER_IP", 100.0)?,
            },
            reservations_per_ip: env_or("SB_RESERVATIONS_PER_IP", 100)?,
        })
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    pub directory: ServerDirectory,
    pub tokens: TokenKeys,
    pub config: RegistryConfig,
    pub assignments: prometheus::IntCounterVec,
    pub assign_rate: IpRateLimiter,
    pub reservations: IpLeases,
}

/// The OpenAPI description of the registry's public routes, generated from the handlers.
pub fn public_openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    routes::PublicApi::openapi()
}

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
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
        let ops = Ops::new("registry").with_check("redis", redis.readiness_check());
        ops.register(&assignments);

        let config_origins = config.common.allowed_origins.clone();
        let state = web::Data::new(AppState {
            directory,
            tokens: config.common.token_keys(),
            assign_rate: IpRateLimiter::new(config.assign_rate_per_ip),
            reservations: IpLeases::new(
                config.reservations_per_ip,
                std::time::Duration::from_millis(config.reservation_ttl_ms.max(0) as u64),
            ),
            config,
            assignments,
        });
        let server = http::serve_json_api(ops, listener, 64 * 1024, &config_origins, move |cfg| {
            cfg.app_data(state.clone());
            routes::configure(cfg);
        })?;
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        self.server.await?;
        Ok(())
    }
}
