//! What a service adds to its Redis handle ([`SentinelRedis`], `switchboard-redis`): the
//! `/ready` check ([`readiness_check`]) and Redis's memory as gauges, read from `INFO memory`
//! on a timer ([`RedisMemoryGauges`]).

use std::time::Duration;

use switchboard_redis::SentinelRedis;

/// A `/ready` check that passes while the master answers `PING`.
pub fn readiness_check(redis: &SentinelRedis) -> crate::ops::ReadinessCheck {
    let redis = redis.clone();
    std::sync::Arc::new(move || {
        let redis = redis.clone();
        Box::pin(async move { redis.ping().await.map_err(|e| e.to_string()) })
    })
}

/// Redis memory as gauges (`redis_used_memory_bytes`, `redis_maxmemory_bytes`), so an operator
/// can alert before a full Redis (which refuses writes under `noeviction`) refuses sends.
pub struct RedisMemoryGauges {
    used: prometheus::IntGauge,
    max: prometheus::IntGauge,
}

impl RedisMemoryGauges {
    pub fn new(ops: &crate::ops::Ops) -> Result<Self, prometheus::Error> {
        let used = prometheus::IntGauge::new(
            "redis_used_memory_bytes",
            "memory the Redis master uses (INFO memory used_memory)",
        )?;
        let max = prometheus::IntGauge::new(
            "redis_maxmemory_bytes",
            "the Redis master's maxmemory (0: unlimited); at the limit it refuses writes",
        )?;
        ops.register(&used);
        ops.register(&max);
        Ok(RedisMemoryGauges { used, max })
    }

    /// Reads `INFO memory` every `every` until `stop`.
    pub async fn run(
        self,
        redis: SentinelRedis,
        every: Duration,
        stop: crate::shutdown::CancellationToken,
    ) {
        loop {
            if let Ok(info) = redis
                .query::<String>(redis::cmd("INFO").arg("memory"))
                .await
            {
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .and_then(|v| v.trim().parse::<i64>().ok())
                };
                if let Some(used) = field("used_memory") {
                    self.used.set(used);
                }
                if let Some(max) = field("maxmemory") {
                    self.max.set(max);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
