//! The sequence lease (`lock:conv:{c}`): a guard that owns its renewal task. The first
//! numbering script takes the lease for the guard's token; from then on the guard renews it in
//! the background until it is dropped (the renewal task goes with it); the last finish script
//! gives it up, or [`Lease::release`] does when a hold ends any other way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::supervise::OwnedTask;

static RELEASE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

static RENEW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// One hold of a conversation's sequence lease, by one token.
pub(super) struct Lease {
    pub key: String,
    pub token: String,
    /// Set once a script has taken the lease for this token; aborted when the lease drops.
    renewer: Mutex<Option<OwnedTask>>,
    /// The finish script gave the lease up: nothing is left to release.
    released: AtomicBool,
}

impl Lease {
    /// A lease on `key` for a fresh token naming `holder` (`"{holder}/{ulid}"`), not taken yet.
    pub(super) fn new(key: String, holder: &str) -> Self {
        Lease {
            key,
            token: format!("{holder}/{}", ulid::Ulid::new()),
            renewer: Mutex::new(None),
            released: AtomicBool::new(false),
        }
    }

    /// Whether a script has taken the lease for this token (it may have been lost since).
    pub(super) fn held_once(&self) -> bool {
        self.renewer.lock().expect("lease lock").is_some()
    }

    /// Starts renewing the lease every third of `ttl`, unless it is renewed already; `true`
    /// when this call started it (the lease was just taken).
    pub(super) fn start_renewing(&self, redis: &SentinelRedis, ttl: Duration) -> bool {
        let mut renewer = self.renewer.lock().expect("lease lock");
        if renewer.is_some() {
            return false;
        }
        *renewer = Some(OwnedTask::spawn(
            "lease renewal",
            renew(redis.clone(), self.key.clone(), self.token.clone(), ttl),
        ));
        true
    }

    /// The finish script gave the lease up.
    pub(super) fn mark_released(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    /// Gives the lease up if this token took it and no finish script did already; a failure
    /// only leaves it to expire.
    pub(super) async fn release(&self, redis: &SentinelRedis) {
        if !self.held_once() || self.released.load(Ordering::Relaxed) {
            return;
        }
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&self.key).arg(&self.token);
        if let Err(e) = redis.invoke::<i64>(&inv).await {
            tracing::warn!(error = %e, "releasing the sequence lease failed; it will expire");
        }
    }
}

/// Renews the lease every third of its lifetime while the holder works; stops once the token
/// no longer holds it (the holder's scripts then refuse it too).
async fn renew(redis: SentinelRedis, key: String, token: String, ttl: Duration) {
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
