//! The sequence lease: a guard that owns its renewal task.

use std::time::Duration;

use redis::Script;
use switchboard_service_kit::redis_sentinel::SentinelRedis;
use switchboard_service_kit::supervise::OwnedTask;

pub(super) static RELEASE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

pub(super) static RENEW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// A sequence lease: taken by the first numbering script, renewed in the background from
/// then on until dropped, given up by the last finish script.
pub(super) struct Lease {
    pub key: String,
    pub token: String,
    /// Set once a script has taken the lease for this token; aborted when the lease drops.
    pub renewer: std::sync::Mutex<Option<OwnedTask>>,
    pub released: std::sync::atomic::AtomicBool,
}

impl Lease {
    pub(super) fn held_once(&self) -> bool {
        self.renewer.lock().expect("lease lock").is_some()
    }
}

/// Renews the lease every third of its lifetime while the holder works; stops once the token
/// no longer holds it (the holder's scripts then refuse it too).
pub(super) async fn renew(redis: SentinelRedis, key: String, token: String, ttl: Duration) {
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let mut inv = RENEW.prepare_invoke();
        inv.key(&key).arg(&token).arg(ttl_ms);
        match redis.invoke::<i64>(&inv).await {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(%key, "sequence lease lost before it was released");
                return;
            }
            Err(e) => tracing::warn!(error = %e, %key, "renewing the sequence lease failed"),
        }
    }
}
