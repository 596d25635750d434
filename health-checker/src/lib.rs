//! The health checker: probes every registered socket server's health URL and evicts the ones
//! that stop answering.
//!
//! - [`HealthCheckerConfig`]: interval, timeout and failure threshold; the defaults (500 ms,
//!   400 ms, 3 misses) evict a dead server in about 1.5-2 s.
//! - `prober`: one round = list the directory, probe every server concurrently, count
//!   consecutive failures, evict at the threshold.
//! - `metrics`: the prober's counters (`health_probes_total`, `health_evictions_total`,
//!   `health_registered_servers`).
//! - [`Application`]: serves `/live`, `/ready`, `/metrics` and runs the prober until shutdown.
//!
//! Two or more instances may run at once: eviction is one atomic script that removes the
//! server, its hash and its reservations, and reports whether it did; so a server is evicted
//! once, and a second checker's eviction of the same server is a no-op. A server wrongly
//! evicted (say, paused for a moment) notices on its next reconcile and registers again.
//!
//! The eviction is the one removal of a socket server: the directory is the one record of
//! "this server is alive", and the socket managers' janitor reaps the topic and routes of a
//! server gone from it (docs/architecture.md, "One membership").

pub mod config;
mod metrics;
mod prober;

use std::net::TcpListener;

use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::http;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;

pub use config::HealthCheckerConfig;
use metrics::Metrics;

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    prober: prober::Prober,
}

impl Application {
    pub async fn build(config: HealthCheckerConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.bind)?;
        let port = listener.local_addr()?.port();
        let redis = SentinelRedis::new(config.common.redis.clone());
        let ops = Ops::new("health-checker").with_check(
            "redis",
            switchboard_service_kit::redis::readiness_check(&redis),
        );
        let metrics = Metrics::new(&ops)?;
        let prober = prober::Prober::new(ServerDirectory::new(redis), config, metrics)?;
        let server = http::serve_ops(ops, listener, 5)?;
        Ok(Application {
            port,
            server,
            prober,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`, or until the prober exits (logged by name and returned as an
    /// error: a checker that no longer probes must not look healthy).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut workers = switchboard_service_kit::supervise::Workers::new();
        workers.spawn("prober", self.prober.run(shutdown.clone()));
        workers.serve(self.server, shutdown).await?;
        Ok(())
    }
}
