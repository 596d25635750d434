//! [`SentinelRedis`]: one multiplexed connection to the master, shared by cloning; a broken
//! connection is dropped so the next command resolves the master again, and a watcher drops it
//! as soon as the Sentinels name another master.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError};

use super::config::RedisConfig;
use super::discovery::{ask_sentinel, connect_master, master_addr, sentinel_connection};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No master could be reached, or the connection broke; retrying later may work.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (a bug or a bad value, not an outage).
    #[error("redis error: {0}")]
    Command(RedisError),
}

struct Inner {
    config: RedisConfig,
    /// The shared connection and the generation it belongs to. A std mutex, held only to clone
    /// or swap, never across an await.
    current: Mutex<Option<Live>>,
    generation: AtomicU64,
    /// The master address the current connection was made to.
    master: Mutex<Option<(String, u16)>>,
    /// Serialises re-resolution so a burst of failures triggers one lookup, not hundreds.
    resolving: tokio::sync::Mutex<()>,
    /// When "no master reachable" was last logged (at most one line per [`UNREACHABLE_LOG_EVERY`]).
    unreachable_logged: Mutex<Option<std::time::Instant>>,
}

/// How often a Redis that stays unreachable (or refuses our credentials) is logged.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The shared connection, the generation it belongs to, and the master's replication id.
#[derive(Clone)]
struct Live {
    generation: u64,
    conn: MultiplexedConnection,
    /// `master_replid` of the server this connection reaches, read when it connected. A
    /// master keeps it while it stays master; a promoted replica gets a new one, so it names
    /// the master's *epoch* (see [`SentinelRedis::query_pipe_on_master`]).
    replid: Arc<str>,
    /// Replies this connection has delivered (of commands sent through [`SentinelRedis`]):
    /// progress, which tells a slow connection from a dead one.
    replies: Arc<AtomicU64>,
}

/// A cloneable handle to the current Redis master.
#[derive(Clone)]
pub struct SentinelRedis {
    inner: Arc<Inner>,
}

impl SentinelRedis {
    /// Creates the handle; it connects lazily, so a service can start while Redis is down and
    /// report not-ready until it comes up. Inside a Tokio runtime it also starts a watcher
    /// that asks the Sentinels for the master every [`MASTER_WATCH_INTERVAL`] and drops a
    /// connection to a master that is no longer the master, so the first request after a
    /// failover goes to the new master instead of failing on the old one.
    pub fn new(config: RedisConfig) -> Self {
        let redis = SentinelRedis {
            inner: Arc::new(Inner {
                config,
                current: Mutex::new(None),
                generation: AtomicU64::new(0),
                master: Mutex::new(None),
                resolving: tokio::sync::Mutex::new(()),
                unreachable_logged: Mutex::new(None),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch_master(Arc::downgrade(&redis.inner)));
        }
        redis
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// `prefix + suffix`: every key this system writes goes through here.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.inner.config.key_prefix, suffix)
    }

    /// Runs one command against the master.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.run(
            |_| (),
            |mut conn, ()| async move { cmd.query_async::<T>(&mut conn).await },
        )
        .await
    }

    /// Runs a pipeline (atomic when built with `.atomic()`).
    pub async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.run(
            |_| (),
            |mut conn, ()| async move { pipe.query_async::<T>(&mut conn).await },
        )
        .await
    }

    /// Runs a Lua script (EVALSHA, falling back to loading it).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.run(
            |_| (),
            |mut conn, ()| async move { invocation.invoke_async::<T>(&mut conn).await },
        )
        .await
    }

    /// Runs the pipeline `build` makes from the master's replication id, on the connection
    /// to that very master. A script can compare the id with one it stored earlier to learn
    /// that the master changed since (a failover may have lost the last writes before it).
    pub async fn query_pipe_on_master<T: FromRedisValue>(
        &self,
        build: impl FnOnce(&str) -> redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.run(build, |mut conn, pipe| async move {
            pipe.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// Like [`Self::query_pipe_on_master`], but answers every command's reply on its own: an
    /// error reply of one command (a script's `error_reply`) is its `Value::ServerError`, not
    /// a failure of the whole pipeline. For callers that batch independent commands.
    pub async fn pipe_replies_on_master(
        &self,
        build: impl FnOnce(&str) -> redis::Pipeline,
    ) -> Result<Vec<redis::Value>, StoreError> {
        self.run(build, |mut conn, pipe| async move {
            use redis::aio::ConnectionLike;
            let count = pipe.cmd_iter().count();
            conn.req_packed_commands(&pipe, 0, count).await
        })
        .await
    }

    /// The one way a command reaches the master: the current connection (resolved if there
    /// is none), what `prepare` makes from the master's replication id, handed to `send`
    /// under the command timeout. A broken connection is dropped so the next command resolves
    /// the master again; so is one that timed out without answering anything else meanwhile.
    async fn run<P, R, Fut>(
        &self,
        prepare: impl FnOnce(&str) -> P,
        send: impl FnOnce(MultiplexedConnection, P) -> Fut,
    ) -> Result<R, StoreError>
    where
        Fut: std::future::Future<Output = redis::RedisResult<R>>,
    {
        let Live {
            generation,
            conn,
            replid,
            replies,
        } = self.connection().await?;
        let prepared = prepare(&replid);
        let replies_before = replies.load(Ordering::Relaxed);
        let result =
            tokio::time::timeout(self.inner.config.command_timeout, send(conn, prepared)).await;
        match result {
            Ok(Ok(value)) => {
                replies.fetch_add(1, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(err)) if connection_is_broken(&err) => {
                self.invalidate(generation);
                Err(StoreError::Unavailable(err.to_string()))
            }
            Ok(Err(err)) => {
                replies.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Command(err))
            }
            // Replies come back in order on one connection: one that arrived after this
            // command was sent proves the connection alive, only behind (a busy master, a
            // starved process). Dropping it would not make this reply come sooner, and would
            // send every command after it through a fresh resolution through the Sentinels.
            Err(_) if replies.load(Ordering::Relaxed) != replies_before => Err(
                StoreError::Unavailable("command timed out (the connection is alive)".into()),
            ),
            Err(_) => {
                self.invalidate(generation);
                Err(StoreError::Unavailable("command timed out".into()))
            }
        }
    }

    /// `PING`, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Drops the connection of `generation` (if it is still the current one) so the next
    /// command resolves the master again.
    fn invalidate(&self, generation: u64) {
        let mut current = self.inner.current.lock().expect("redis handle lock");
        if current
            .as_ref()
            .is_some_and(|live| live.generation == generation)
        {
            tracing::warn!("redis connection dropped; will re-resolve the master via sentinel");
            *current = None;
        }
    }

    async fn connection(&self) -> Result<Live, StoreError> {
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let _guard = self.inner.resolving.lock().await;
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let resolved = tokio::time::timeout(self.inner.config.command_timeout * 2, self.resolve())
            .await
            .map_err(|_| StoreError::Unavailable("resolving the master timed out".into()))
            .and_then(|r| r);
        let (conn, replid) = match resolved {
            Ok(found) => found,
            Err(e) => {
                self.log_unreachable(&e);
                return Err(e);
            }
        };
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Live {
            generation,
            conn,
            replid: replid.into(),
            replies: Arc::new(AtomicU64::new(0)),
        };
        *self.inner.current.lock().expect("redis handle lock") = Some(live.clone());
        Ok(live)
    }

    fn log_unreachable(&self, error: &StoreError) {
        let mut last = self
            .inner
            .unreachable_logged
            .lock()
            .expect("redis handle lock");
        if last.is_some_and(|at| at.elapsed() < UNREACHABLE_LOG_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        tracing::error!(
            error = %error,
            sentinels = ?self.inner.config.sentinels,
            master_name = %self.inner.config.master_name,
            "no Redis master reachable"
        );
    }

    fn cached(&self) -> Option<Live> {
        self.inner
            .current
            .lock()
            .expect("redis handle lock")
            .clone()
    }

    /// Asks each Sentinel in turn for the master and connects to the first address that
    /// confirms it is a master.
    async fn resolve(&self) -> Result<(MultiplexedConnection, String), StoreError> {
        let mut last_error = String::from("no sentinels configured");
        for sentinel in &self.inner.config.sentinels {
            match self.ask_sentinel(sentinel).await {
                Ok((host, port)) => match connect_master(&self.inner.config, &host, port).await {
                    Ok((conn, replid)) => {
                        tracing::info!(%host, port, %replid, "connected to redis master");
                        *self.inner.master.lock().expect("redis handle lock") = Some((host, port));
                        return Ok((conn, replid));
                    }
                    Err(e) => last_error = format!("master {host}:{port}: {e}"),
                },
                Err(e) => last_error = format!("sentinel {sentinel}: {e}"),
            }
        }
        Err(StoreError::Unavailable(last_error))
    }

    async fn ask_sentinel(&self, sentinel: &str) -> Result<(String, u16), String> {
        ask_sentinel(sentinel, &self.inner.config).await
    }
}

/// How often the watcher asks the Sentinels who the master is.
pub const MASTER_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Drops the connection once the Sentinels name another master; ends with the last handle.
async fn watch_master(inner: std::sync::Weak<Inner>) {
    // One connection per Sentinel, kept across polls (dropped when it fails).
    let mut sentinels: std::collections::HashMap<String, MultiplexedConnection> =
        std::collections::HashMap::new();
    loop {
        tokio::time::sleep(MASTER_WATCH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let connected_to = inner.master.lock().expect("redis handle lock").clone();
        let Some(connected_to) = connected_to else {
            continue;
        };
        for sentinel in &inner.config.sentinels {
            let asked = tokio::time::timeout(inner.config.command_timeout, async {
                let conn = match sentinels.get(sentinel) {
                    Some(conn) => conn.clone(),
                    None => {
                        let conn = sentinel_connection(sentinel, &inner.config).await?;
                        sentinels.insert(sentinel.clone(), conn.clone());
                        conn
                    }
                };
                master_addr(conn, &inner.config.master_name).await
            })
            .await;
            let Ok(Ok(named)) = asked else {
                sentinels.remove(sentinel);
                continue;
            };
            if named != connected_to {
                tracing::warn!(
                    old = ?connected_to,
                    new = ?named,
                    "sentinel names a new redis master; reconnecting"
                );
                let redis = SentinelRedis {
                    inner: inner.clone(),
                };
                if let Some(live) = redis.cached() {
                    redis.invalidate(live.generation);
                }
                *inner.master.lock().expect("redis handle lock") = None;
            }
            break;
        }
    }
}

fn connection_is_broken(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.kind() == redis::ErrorKind::ReadOnly
        || err.kind() == redis::ErrorKind::MasterDown
        || err.kind() == redis::ErrorKind::TryAgain
}
