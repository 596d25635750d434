//! Redis through Sentinel.
//!
//! Services never know the master's address: they know the Sentinels and the master's name.
//! [`SentinelRedis`] asks the Sentinels for the master, checks with `ROLE` that it really is a
//! master (a demoted one may still be listed for a moment during failover), and keeps one
//! multiplexed connection, which every caller shares by cloning (no per-command connection
//! setup). When a command fails in a way that means "this connection or this master is gone"
//! (I/O error, refused, timeout, `READONLY`), the connection is dropped and the next command
//! resolves the master again. So a failover costs the few seconds Sentinel needs to promote a
//! replica, and no service restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError};

use crate::config::{
    lookup_bool, lookup_millis, lookup_optional, lookup_string, process_env, ConfigError, Lookup,
};
use crate::env::EnvVar;

pub const SB_REDIS_SENTINELS: &str = "SB_REDIS_SENTINELS";
pub const SB_REDIS_MASTER_NAME: &str = "SB_REDIS_MASTER_NAME";
pub const SB_REDIS_PREFIX: &str = "SB_REDIS_PREFIX";
pub const SB_REDIS_TIMEOUT_MS: &str = "SB_REDIS_TIMEOUT_MS";
pub const SB_REDIS_USERNAME: &str = "SB_REDIS_USERNAME";
pub const SB_REDIS_PASSWORD: &str = "SB_REDIS_PASSWORD";
pub const SB_REDIS_SENTINEL_USERNAME: &str = "SB_REDIS_SENTINEL_USERNAME";
pub const SB_REDIS_SENTINEL_PASSWORD: &str = "SB_REDIS_SENTINEL_PASSWORD";
pub const SB_REDIS_TLS: &str = "SB_REDIS_TLS";
pub const SB_REDIS_SENTINEL_TLS: &str = "SB_REDIS_SENTINEL_TLS";
pub const SB_REDIS_TLS_CA_FILE: &str = "SB_REDIS_TLS_CA_FILE";

/// What [`RedisConfig::from_lookup`] (and so `from_env`) reads.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_REDIS_SENTINELS,
        default: Some("127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381"),
        doc: "host:port of each Sentinel, comma separated. The master is always found through \
              them (and found again after a failover); there is no direct Redis address.",
    },
    EnvVar {
        name: SB_REDIS_MASTER_NAME,
        default: Some("switchboard"),
        doc: "The name under which the Sentinels monitor the master.",
    },
    EnvVar {
        name: SB_REDIS_PREFIX,
        default: Some("sb:"),
        doc: "Prefix of every Redis key Switchboard writes.",
    },
    EnvVar {
        name: SB_REDIS_TIMEOUT_MS,
        default: Some("1500"),
        doc: "Upper bound on one Redis command, connecting included, in milliseconds.",
    },
    EnvVar {
        name: SB_REDIS_USERNAME,
        default: None,
        doc: "ACL user for the Redis servers. Unset: the default user.",
    },
    EnvVar {
        name: SB_REDIS_PASSWORD,
        default: None,
        doc: "Password for the Redis servers. Unset: no AUTH.",
    },
    EnvVar {
        name: SB_REDIS_SENTINEL_USERNAME,
        default: None,
        doc: "ACL user for the Sentinels. Unset: the default user.",
    },
    EnvVar {
        name: SB_REDIS_SENTINEL_PASSWORD,
        default: None,
        doc: "Password for the Sentinels. Unset: SB_REDIS_PASSWORD (Sentinels configured with \
              requirepass usually share it).",
    },
    EnvVar {
        name: SB_REDIS_TLS,
        default: Some("false"),
        doc: "true: the Redis servers are reached over TLS (their tls-port, which the \
              Sentinels then name), with the server's certificate verified for the address the \
              Sentinels give (an IP address needs an IP SAN).",
    },
    EnvVar {
        name: SB_REDIS_SENTINEL_TLS,
        default: None,
        doc: "true: the Sentinels are reached over TLS (the addresses of SB_REDIS_SENTINELS \
              are their tls-ports), certificates verified. Unset: SB_REDIS_TLS.",
    },
    EnvVar {
        name: SB_REDIS_TLS_CA_FILE,
        default: None,
        doc: "A PEM file of the CA certificates that verify the Redis servers and Sentinels, \
              trusted instead of the public web roots (a private CA). Unset: the public web \
              roots compiled into the binary.",
    },
];

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `host:port` of each Sentinel (`SB_REDIS_SENTINELS`, comma separated).
    pub sentinels: Vec<String>,
    /// The monitored master's name (`SB_REDIS_MASTER_NAME`).
    pub master_name: String,
    /// Prefix of every key this system writes (`SB_REDIS_PREFIX`).
    pub key_prefix: String,
    /// Upper bound on one command, connection included (`SB_REDIS_TIMEOUT_MS`).
    pub command_timeout: Duration,
    /// Credentials for the Redis servers: `SB_REDIS_USERNAME` (an ACL user; unset: the
    /// default user) and `SB_REDIS_PASSWORD` (unset: no `AUTH`).
    pub auth: RedisAuth,
    /// Credentials for the Sentinels (`SB_REDIS_SENTINEL_USERNAME`,
    /// `SB_REDIS_SENTINEL_PASSWORD`; unset: the Redis servers' password, as Sentinels
    /// configured with `requirepass` usually share it).
    pub sentinel_auth: RedisAuth,
    /// TLS to the servers and the Sentinels (`SB_REDIS_TLS`, `SB_REDIS_SENTINEL_TLS`,
    /// `SB_REDIS_TLS_CA_FILE`; off by default).
    pub tls: RedisTls,
}

/// Which Redis connections use TLS, and the CA that verifies them (certificates are always
/// verified: there is no setting that turns verification off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The Redis servers (the master the Sentinels name).
    pub servers: bool,
    /// The Sentinels.
    pub sentinels: bool,
    /// Trusted instead of the public web roots when set.
    pub ca_file: Option<crate::tls::CaFile>,
}

impl RedisTls {
    /// A client for `host:port` as `auth`, over TLS when `tls` says so.
    fn client(
        &self,
        tls: bool,
        auth: &RedisAuth,
        host: &str,
        port: u16,
    ) -> Result<redis::Client, String> {
        let mut info = auth.connection_info(host, port);
        if !tls {
            return redis::Client::open(info).map_err(|e| e.to_string());
        }
        info.addr = redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: self.ca_file.as_ref().map(|ca| ca.pem.clone()),
            },
        )
        .map_err(|e| crate::tls::explain(&e.to_string(), &[SB_REDIS_TLS_CA_FILE]))
    }

    /// A connection error, naming the TLS settings when it is about TLS and TLS is on.
    fn explain(&self, tls: bool, error: String) -> String {
        if tls {
            crate::tls::explain(&error, &[SB_REDIS_TLS_CA_FILE])
        } else {
            error
        }
    }
}

/// A Redis username and password; the password never appears in `Debug` output.
#[derive(Clone, Default)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RedisAuth {
    /// Connection details for `host:port` with these credentials.
    fn connection_info(&self, host: &str, port: u16) -> redis::ConnectionInfo {
        redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host.to_owned(), port),
            redis: redis::RedisConnectionInfo {
                username: self.username.clone(),
                password: self.password.clone(),
                ..Default::default()
            },
        }
    }
}

/// `host:port` split, for a Sentinel address from the config.
fn host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{addr:?} has no valid port"))?;
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

impl RedisConfig {
    /// Reads [`ENV`] from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads [`ENV`] from `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(RedisConfig {
            sentinels: lookup_string(
                lookup,
                SB_REDIS_SENTINELS,
                "127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381",
            )
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
            master_name: lookup_string(lookup, SB_REDIS_MASTER_NAME, "switchboard"),
            key_prefix: lookup_string(lookup, SB_REDIS_PREFIX, "sb:"),
            command_timeout: lookup_millis(lookup, SB_REDIS_TIMEOUT_MS, 1500)?,
            auth: RedisAuth {
                username: lookup_optional(lookup, SB_REDIS_USERNAME),
                password: lookup_optional(lookup, SB_REDIS_PASSWORD),
            },
            sentinel_auth: RedisAuth {
                username: lookup_optional(lookup, SB_REDIS_SENTINEL_USERNAME),
                password: lookup_optional(lookup, SB_REDIS_SENTINEL_PASSWORD)
                    .or_else(|| lookup_optional(lookup, SB_REDIS_PASSWORD)),
            },
            tls: {
                let servers = lookup_bool(lookup, SB_REDIS_TLS, false)?;
                RedisTls {
                    servers,
                    sentinels: lookup_bool(lookup, SB_REDIS_SENTINEL_TLS, servers)?,
                    ca_file: crate::tls::CaFile::from_lookup(lookup, SB_REDIS_TLS_CA_FILE)?,
                }
            },
        })
    }
}

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
        let Live {
            generation,
            mut conn,
            ..
        } = self.connection().await?;
        let result = tokio::time::timeout(self.inner.config.command_timeout, async {
            cmd.query_async::<T>(&mut conn).await
        })
        .await;
        self.settle(generation, result)
    }

    /// Runs a pipeline (atomic when built with `.atomic()`).
    pub async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let Live {
            generation,
            mut conn,
            ..
        } = self.connection().await?;
        let result = tokio::time::timeout(self.inner.config.command_timeout, async {
            pipe.query_async::<T>(&mut conn).await
        })
        .await;
        self.settle(generation, result)
    }

    /// Runs a Lua script (EVALSHA, falling back to loading it).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let Live {
            generation,
            mut conn,
            ..
        } = self.connection().await?;
        let result = tokio::time::timeout(self.inner.config.command_timeout, async {
            invocation.invoke_async::<T>(&mut conn).await
        })
        .await;
        self.settle(generation, result)
    }

    /// Runs the pipeline `build` makes from the master's replication id, on the connection
    /// to that very master. A script can compare the id with one it stored earlier to learn
    /// that the master changed since (a failover may have lost the last writes before it).
    pub async fn query_pipe_on_master<T: FromRedisValue>(
        &self,
        build: impl FnOnce(&str) -> redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.on_master(build, |mut conn, pipe| async move {
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
        self.on_master(build, |mut conn, pipe| async move {
            use redis::aio::ConnectionLike;
            let count = pipe.cmd_iter().count();
            conn.req_packed_commands(&pipe, 0, count).await
        })
        .await
    }

    /// The master's connection and the pipeline `build` makes from its replication id, handed
    /// to `send` under the command timeout; a broken connection is dropped for re-resolution.
    async fn on_master<R, Fut>(
        &self,
        build: impl FnOnce(&str) -> redis::Pipeline,
        send: impl FnOnce(MultiplexedConnection, redis::Pipeline) -> Fut,
    ) -> Result<R, StoreError>
    where
        Fut: std::future::Future<Output = redis::RedisResult<R>>,
    {
        let Live {
            generation,
            conn,
            replid,
        } = self.connection().await?;
        let pipe = build(&replid);
        let result =
            tokio::time::timeout(self.inner.config.command_timeout, send(conn, pipe)).await;
        self.settle(generation, result)
    }

    /// `PING`, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    fn settle<T>(
        &self,
        generation: u64,
        result: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if connection_is_broken(&err) => {
                self.invalidate(generation);
                Err(StoreError::Unavailable(err.to_string()))
            }
            Ok(Err(err)) => Err(StoreError::Command(err)),
            Err(_) => {
                self.invalidate(generation);
                Err(StoreError::Unavailable("command timed out".into()))
            }
        }
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

async fn ask_sentinel(sentinel: &str, config: &RedisConfig) -> Result<(String, u16), String> {
    master_addr(
        sentinel_connection(sentinel, config).await?,
        &config.master_name,
    )
    .await
}

async fn sentinel_connection(
    sentinel: &str,
    config: &RedisConfig,
) -> Result<MultiplexedConnection, String> {
    let (host, port) = host_port(sentinel)?;
    let tls = config.tls.sentinels;
    config
        .tls
        .client(tls, &config.sentinel_auth, &host, port)?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| explain_auth_error(e, "the Sentinel", SB_REDIS_SENTINEL_PASSWORD))
        .map_err(|e| config.tls.explain(tls, e))
}

/// A connection error, with what to fix when it is about credentials.
fn explain_auth_error(e: RedisError, whom: &str, setting: &str) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("invalid password")
        || lower.contains("authentication")
    {
        format!("{whom} refused our credentials ({text}); check {setting}")
    } else {
        text
    }
}

/// The master `master_name` as this Sentinel knows it.
async fn master_addr(
    mut conn: MultiplexedConnection,
    master_name: &str,
) -> Result<(String, u16), String> {
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master_name)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    addr.ok_or_else(|| format!("does not know master {master_name}"))
}

async fn connect_master(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> Result<(MultiplexedConnection, String), String> {
    let tls = config.tls.servers;
    let client = config.tls.client(tls, &config.auth, host, port)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| explain_auth_error(e, "the Redis master", SB_REDIS_PASSWORD))
        .map_err(|e| config.tls.explain(tls, e))?;
    let role: redis::Value = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let is_master = match &role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
        ),
        _ => false,
    };
    if !is_master {
        return Err("not a master (yet)".into());
    }
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let replid = info
        .lines()
        .find_map(|l| l.strip_prefix("master_replid:"))
        .map(|id| id.trim().to_owned())
        .ok_or("INFO replication has no master_replid")?;
    Ok((conn, replid))
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

impl SentinelRedis {
    /// A `/ready` check that passes while the master answers `PING`.
    pub fn readiness_check(&self) -> crate::ops::ReadinessCheck {
        let redis = self.clone();
        std::sync::Arc::new(move || {
            let redis = redis.clone();
            Box::pin(async move { redis.ping().await.map_err(|e| e.to_string()) })
        })
    }
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
