//! Probe rounds and eviction by agreement.
//!
//! Each round, the checker probes every server, turns its own count of consecutive failures
//! into a verdict (`up`, `miss`, or `down` at the threshold), and records all verdicts in one
//! script ([`HealthVotes`]), which answers the servers the live checkers agree are down; only
//! those are evicted. A checker cut off from a server, or too starved to probe in time, cannot
//! evict it while another checker still reaches it.

use std::collections::HashMap;

use futures_util::future::join_all;
use switchboard_protocol::ServerId;
use switchboard_server_directory::health::{HealthVotes, Verdict};
use switchboard_server_directory::{ServerDirectory, ServerRecord};
use switchboard_service_kit::shutdown::CancellationToken;

use crate::config::HealthCheckerConfig;
use crate::metrics::Metrics;

pub(crate) struct Prober {
    directory: ServerDirectory,
    config: HealthCheckerConfig,
    metrics: Metrics,
    http: reqwest::Client,
    /// Consecutive failures per server id.
    failures: HashMap<ServerId, u32>,
    votes: HealthVotes,
    /// This checker's id among the voters: a ULID per process, so scaled replicas (which share
    /// their settings) never vote as one.
    id: String,
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
            votes: HealthVotes::new(directory.redis().clone()),
            id: ulid::Ulid::new().to_string(),
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
        let mut verdicts = Vec::with_capacity(servers.len());
        for (server, healthy) in servers.iter().zip(results) {
            let outcome = if healthy { "ok" } else { "failed" };
            self.metrics.probes.with_label_values(&[outcome]).inc();
            let verdict = if healthy {
                self.failures.remove(&server.server_id);
                Verdict::Up
            } else {
                let misses = self.failures.entry(server.server_id.clone()).or_insert(0);
                *misses += 1;
                if *misses >= self.config.failure_threshold {
                    Verdict::Down
                } else {
                    Verdict::Miss
                }
            };
            verdicts.push((server.server_id.to_string(), verdict));
        }
        // Every round votes, all-`up` rounds included: a checker that sees a server keeps the
        // others from evicting it.
        let agreed = match self.votes.vote(&self.id, &verdicts, self.fresh()).await {
            Ok(agreed) => agreed,
            Err(e) => {
                // No agreement without Redis: evicting on our own is what this prevents.
                tracing::warn!(error = %e, "recording health verdicts failed; no eviction this round");
                return;
            }
        };
        for server in servers
            .iter()
            .filter(|s| agreed.iter().any(|a| *a == s.server_id))
        {
            self.evict(server).await;
        }
    }

    /// How long a verdict, and a checker's liveness, count: a few rounds.
    fn fresh(&self) -> std::time::Duration {
        self.config.probe_interval * 3 + self.config.probe_timeout
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

    /// Tells whoever listens (operators' tooling; the socket managers need no message: their
    /// janitor reaps the topic and routes of a server gone from the directory).
    async fn announce_eviction(&self, server_id: &ServerId) {
        let redis = self.directory.redis();
        let channel = redis.key("events:evicted");
        let published: Result<i64, _> = redis
            .query(redis::cmd("PUBLISH").arg(&channel).arg(server_id.as_str()))
            .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "announcing the eviction failed");
        }
    }
}
