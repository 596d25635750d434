//! Redis through Sentinel, for every Switchboard service and the test harness.
//!
//! Services never know the master's address: they know the Sentinels and the master's name.
//! [`SentinelRedis`] asks the Sentinels for the master, checks with `ROLE` that it really is a
//! master (a demoted one may still be listed for a moment during failover), and keeps one
//! multiplexed connection, which every caller shares by cloning (no per-command connection
//! setup). When a command fails in a way that means "this connection or this master is gone"
//! (I/O error, refused, timeout, `READONLY`), the connection is dropped and the next command
//! resolves the master again. So a failover costs the few seconds Sentinel needs to promote a
//! replica, and no service restarts.
//!
//! The pieces: `config` reads the settings ([`RedisConfig`], `SB_REDIS_*`), `discovery` asks
//! the Sentinels for the master and connects to it, and `handle` is [`SentinelRedis`] itself
//! (the shared connection, its re-resolution and the master watcher). No web stack: the
//! service kit adds the `/ready` check and the memory gauges on top.

mod config;
mod discovery;
mod handle;

pub use config::{RedisAuth, RedisConfig, RedisTls};
pub use handle::{SentinelRedis, StoreError, MASTER_WATCH_INTERVAL};
