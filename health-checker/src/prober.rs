//! Probe rounds and eviction.

use std::collections::HashMap;

use futures_util::future::join_all;
use switchboard_server_directory::{ServerDirectory, ServerRecord};
use switchboard_service_kit::shutdown::CancellationToken;

use crate::{HealthCheckerConfig, Metrics};

pub(crate) struct Prober {
    directory: ServerDirectory,
    config: HealthCheckerConfig,
    metrics: Metrics,
    http: reqwest::Client,
    /// Consecutive failures per server id.
    failures: HashMap<String, u32>,
}

impl Prober {
    pub fn new(
        directory: ServerDirectory,
        config: HealthCheckerConfig,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.probe_timeout)
            .connect_timeout(config.probe_timeout)
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(Prober {
            directory,
            config,
            metrics,
            http,
            failures: HashMap::new(),
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.probe_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.directory.list().await {
                Ok(servers) => self.round(servers).await,
                Err(e) => tracing::warn!(error = %e, "cannot list socket servers"),
            }
        }
    }

    async fn round(&mut self, servers: Vec<ServerRecord>) {
        self.metrics.servers.set(servers.len() as i64);
        self.failures
            .retain(|id, _| servers.iter().any(|s| &s.server_id == id));
        let probes = servers.iter().map(|s| self.probe(s));
        let results = join_all(probes).await;
        for (server, healthy) in servers.iter().zip(results) {
            let outcome = if healthy { "ok" } else { "failed" };
            self.metrics.probes.with_label_values(&[outcome]).inc();
            if healthy {
                self.failures.remove(&server.server_id);
                continue;
            }
            let misses = self.failures.entry(server.server_id.clone()).or_insert(0);
            *misses += 1;
            if *misses >= self.config.failure_threshold {
                self.evict(server).await;
            }
        }
    }

    async fn probe(&self, server: &ServerRecord) -> bool {
        if server.health_url.is_empty() {
            return false;
        }
        matches!(
            self.http.get(&server.health_url).send().await,
            Ok(resp) if resp.status().is_success()
        )
    }

    async fn evict(&mut self, server: &ServerRecord) {
        match self.directory.remove(&server.server_id).await {
            Ok(true) => {
                self.metrics.evictions.inc();
                self.failures.remove(&server.server_id);
                tracing::warn!(server_id = %server.server_id, url = %server.url, "evicted a socket server that stopped answering");
                self.announce_eviction(&server.server_id).await;
            }
            Ok(false) => {
                // Another checker (or the server itself) removed it first.
                self.failures.remove(&server.server_id);
            }
            Err(e) => {
                tracing::warn!(error = %e, server_id = %server.server_id, "eviction failed; will retry")
            }
        }
    }

    /// Tells whoever listens (the socket managers clean up the handler's topic and mappings).
    async fn announce_eviction(&self, server_id: &str) {
        let redis = self.directory.redis();
        let channel = redis.key("events:evicted");
        let published: Result<i64, _> = redis
            .query(redis::cmd("PUBLISH").arg(&channel).arg(server_id))
            .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "announcing the eviction failed");
        }
    }
}
