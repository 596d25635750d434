//! [`RedisSentinelCluster`]: one Redis master, two replicas and three Sentinels (quorum 2) on
//! 127.0.0.1, the layout of `sentinel/` with ports chosen per test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use redis::aio::MultiplexedConnection;
use switchboard_config::names::{
    SB_REDIS_PASSWORD, SB_REDIS_SENTINEL_PASSWORD, SB_REDIS_SENTINEL_USERNAME, SB_REDIS_USERNAME,
};

use crate::ports::free_port;
use crate::process::ManagedProcess;

/// The Sentinel master name every service uses (`SB_REDIS_MASTER_NAME`).
pub const MASTER_NAME: &str = "switchboard";
/// Sentinel `down-after-milliseconds`.
pub const DOWN_AFTER_MS: u64 = 2000;
/// Sentinel `failover-timeout`.
pub const FAILOVER_TIMEOUT_MS: u64 = 10_000;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `min-replicas-to-write` of every server (see [`redis_conf`]).
pub const MIN_REPLICAS_TO_WRITE: usize = 1;
/// `min-replicas-max-lag` of every server, in seconds.
pub const MIN_REPLICAS_MAX_LAG_S: u64 = 1;

/// The password of every Redis server and Sentinel these stacks start (`requirepass`), which
/// the services get as `SB_REDIS_PASSWORD`: tests and the local stack run with Redis
/// authentication on, as a deployment must.
pub const REDIS_PASSWORD: &str = "switchboard-local-redis-password";

/// The services each get their own Redis ACL user (the lines docs/deploy.md recommends),
/// limited to the `sb:` keys and channels and without admin or dangerous commands, so every
/// test runs the services under those rules. Replication, the Sentinels and the harness use
/// the default user with [`REDIS_PASSWORD`].
pub const SERVICE_USERS: &[&str] = &[
    "registry",
    "socket-server",
    "socket-manager",
    "health-checker",
    "message-service",
    "webhook-dispatcher",
];

/// The Sentinels' user for the services: it may only ask where the master is, so no service's
/// credentials can repoint the cluster (`SENTINEL MONITOR/REMOVE/SET/FAILOVER`) at a server of
/// an attacker's, which would then receive every service's Redis password. The Sentinels and
/// the harness keep the default user.
pub const SENTINEL_CLIENT_USER: &str = "sb-client";

/// The commands of [`SENTINEL_CLIENT_USER`]: where the master is, and what a client needs
/// to log in (compose's Sentinels get the same rules: `crate::compose_acl`).
pub const SENTINEL_CLIENT_RULES: &str =
    "-@all +auth +hello +ping +client|setname +sentinel|get-master-addr-by-name";

/// The channels and commands of every service's Redis user (after its key patterns): its
/// `sb:` channels, and everything but admin and dangerous commands, plus `INFO` and `ROLE`
/// (master checks, memory gauges). Compose's users get the same (`crate::compose_acl`).
pub const SERVICE_COMMAND_RULES: &str = "&sb:* +@all -@admin -@dangerous +info +role";

/// The password of [`SENTINEL_CLIENT_USER`].
pub const SENTINEL_CLIENT_PASSWORD: &str = "switchboard-local-sentinel-client-password";

/// The key families (after the prefix) each service may touch, read-write unless marked `%R`
/// (read only): least privilege, so a compromised socket server can neither write the
/// membership mirror the managers authorize sends with, nor take a sequence lease. Each
/// family is allowed under `sb:` and under a test's `sb:<id>:`.
pub fn service_key_families(service: &str) -> &'static [&'static str] {
    const DIRECTORY: [&str; 4] = ["servers", "server:*", "reserved:*", "reservations:*"];
    match service {
        "registry" => &DIRECTORY,
        // The directory, and the sessions-ended marks it checks tokens against (read only).
        "socket-server" => &[
            "servers",
            "server:*",
            "reserved:*",
            "reservations:*",
            "%R sessions-ended:*",
        ],
        "health-checker" => &[
            "servers",
            "server:*",
            "reserved:*",
            "reservations:*",
            "checkers",
            "health:*",
        ],
        // The directory read only: the janitor reaps the servers gone from it.
        "socket-manager" => &[
            "handlers",
            "reaping:*",
            "userh:*",
            "handler_users:*",
            "lastseen:*",
            "janitor",
            "lock:conv:*",
            "seq:*",
            "seq-epoch:*",
            "pending:*",
            "idem:*",
            "quota:*",
            "typing:*",
            "sessions-ended:*",
            "flush-test-counter",
            "%R members:*",
            "%R members-version:*",
            "%R servers",
        ],
        "message-service" => &[
            "members:*",
            "members-version:*",
            "%R userh:*",
            "%R lastseen:*",
        ],
        // The push notifier reads presence (who has a live connection) and nothing else.
        "webhook-dispatcher" => &["%R userh:*", "%R lastseen:*"],
        _ => &[],
    }
}

/// The ACL key patterns of `service` ([`service_key_families`]).
fn key_patterns(service: &str) -> String {
    let mut patterns = Vec::new();
    for family in service_key_families(service) {
        let (access, family) = match family.strip_prefix("%R ") {
            Some(family) => ("%R", family),
            None => ("", *family),
        };
        patterns.push(format!("{access}~sb:{family}"));
        patterns.push(format!("{access}~sb:*:{family}"));
    }
    patterns.join(" ")
}

/// The ACL user of `service` (one of [`SERVICE_USERS`]).
pub fn service_user(service: &str) -> String {
    format!("sb-{service}")
}

/// The password of `service`'s ACL user.
pub fn service_password(service: &str) -> String {
    format!("switchboard-local-{service}-password")
}

/// The environment that makes `service` log in as its own ACL user, and to the Sentinels as
/// [`SENTINEL_CLIENT_USER`].
pub fn service_redis_env(service: &str) -> Vec<(String, String)> {
    vec![
        (SB_REDIS_USERNAME.to_owned(), service_user(service)),
        (SB_REDIS_PASSWORD.to_owned(), service_password(service)),
        (
            SB_REDIS_SENTINEL_USERNAME.to_owned(),
            SENTINEL_CLIENT_USER.to_owned(),
        ),
        (
            SB_REDIS_SENTINEL_PASSWORD.to_owned(),
            SENTINEL_CLIENT_PASSWORD.to_owned(),
        ),
    ]
}

/// The ports of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisPorts {
    pub master: u16,
    pub replicas: [u16; 2],
    pub sentinels: [u16; 3],
}

impl RedisPorts {
    /// Free ports (see [`free_port`]).
    pub fn free() -> Self {
        Self {
            master: free_port(),
            replicas: [free_port(), free_port()],
            sentinels: [free_port(), free_port(), free_port()],
        }
    }

    /// The fixed local layout: master 6379, replicas 6380/6381, Sentinels 26379-26381.
    pub fn standard() -> Self {
        Self {
            master: 6379,
            replicas: [6380, 6381],
            sentinels: [26379, 26380, 26381],
        }
    }
}

/// The config of one redis-server; `replica_of` is the master's port for a replica.
pub fn redis_conf(port: u16, dir: &Path, replica_of: Option<u16>) -> String {
    let mut conf = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         daemonize no\n\
         dir {dir}\n\
         logfile \"\"\n\
         loglevel notice\n\
         save \"\"\n\
         appendonly no\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n\
         maxmemory 256mb\n\
         maxmemory-policy noeviction\n\
         requirepass {REDIS_PASSWORD}\n\
         masterauth {REDIS_PASSWORD}\n",
        dir = dir.display()
    );
    // A master takes no write unless a replica acknowledged the replication stream within the
    // last second. A deposed master (cut off, or left without a replica after a failover) must
    // refuse a deposed lease holder's finish once it has no replica: the fencing argument in
    // docs/architecture.md ("The message path") rests on it. Every server gets it, since any
    // replica may be promoted.
    conf.push_str(&format!(
        "min-replicas-to-write {MIN_REPLICAS_TO_WRITE}\n\
         min-replicas-max-lag {MIN_REPLICAS_MAX_LAG_S}\n"
    ));
    for service in SERVICE_USERS {
        conf.push_str(&format!(
            "user {} on >{} {} {SERVICE_COMMAND_RULES}\n",
            service_user(service),
            service_password(service),
            key_patterns(service)
        ));
    }
    if let Some(master) = replica_of {
        conf.push_str(&format!("replicaof 127.0.0.1 {master}\n"));
    }
    conf
}

/// The config of one Sentinel watching the master at `127.0.0.1:master_port`. Sentinel
/// rewrites this file at runtime, so it must be a writable file of its own.
pub fn sentinel_conf(port: u16, dir: &Path, master_port: u16) -> String {
    format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         daemonize no\n\
         dir {dir}\n\
         logfile \"\"\n\
         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n\
         sentinel auth-pass {MASTER_NAME} {REDIS_PASSWORD}\n\
         requirepass {REDIS_PASSWORD}\n\
         sentinel sentinel-pass {REDIS_PASSWORD}\n\
         user {SENTINEL_CLIENT_USER} on >{SENTINEL_CLIENT_PASSWORD} {SENTINEL_CLIENT_RULES}\n",
        dir = dir.display()
    )
}

/// A running master + 2 replicas + 3 Sentinels. Dropping it kills them all.
#[derive(Debug)]
pub struct RedisSentinelCluster {
    // Sentinels first: they are dropped (killed) before the servers they watch.
    sentinels: Vec<(u16, ManagedProcess)>,
    servers: Vec<(u16, ManagedProcess)>,
    /// Where each server's `redis-{port}` directory (config, data) lives.
    dir: PathBuf,
    log_dir: PathBuf,
    /// Servers started again so far (each restart logs under a name of its own).
    restarts: u32,
    /// The TLS ports of the Sentinels, when started with [`Self::start_tls`].
    tls_sentinels: Vec<u16>,
}

/// A cluster's TLS ([`RedisSentinelCluster::start_tls`]): the server certificate and key every
/// server and Sentinel presents, and the CA they verify each other with.
#[derive(Debug, Clone)]
pub struct RedisTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The lines that give a server or a Sentinel a `tls-port` with `files`, and make it use TLS
/// toward the other servers and Sentinels (`tls-replication yes`). Clients need no
/// certificate of their own (`tls-auth-clients no`): they authenticate with ACL passwords.
pub fn tls_conf(tls_port: u16, files: &RedisTlsFiles) -> String {
    format!(
        "tls-port {tls_port}\n\
         tls-cert-file {cert}\n\
         tls-key-file {key}\n\
         tls-ca-cert-file {ca}\n\
         tls-auth-clients no\n\
         tls-replication yes\n",
        cert = files.cert.display(),
        key = files.key.display(),
        ca = files.ca.display(),
    )
}

impl RedisSentinelCluster {
    /// Starts a cluster on free ports with configs, data and logs under `dir`.
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, &RedisPorts::free(), dir).await
    }

    /// Starts a cluster on the given ports; configs and data under `dir`, one log file per
    /// process in `log_dir`. Returns once the master has both replicas and every Sentinel
    /// sees both replicas and the two other Sentinels (a failover needs that).
    pub async fn start_with(dir: &Path, ports: &RedisPorts, log_dir: &Path) -> Result<Self> {
        Self::start_configured(dir, ports, log_dir, None).await
    }

    /// A cluster on free ports whose servers and Sentinels also listen with TLS on ports of
    /// their own ([`tls_conf`]) and talk to each other only over TLS: replicas replicate from
    /// the master's TLS port and the Sentinels monitor it and each other there, so the
    /// Sentinels name TLS ports ([`Self::tls_sentinels_env`] is what a client configures).
    /// The plain ports stay open for the harness's own checks and are not for clients.
    pub async fn start_tls(dir: &Path, files: &RedisTlsFiles) -> Result<Self> {
        let tls = RedisPorts::free();
        Self::start_configured(dir, &RedisPorts::free(), dir, Some((&tls, files))).await
    }

    /// `127.0.0.1:p1,...` of the Sentinels' TLS ports ([`Self::start_tls`]), for
    /// `SB_REDIS_SENTINELS`.
    pub fn tls_sentinels_env(&self) -> String {
        self.tls_sentinels
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn start_configured(
        dir: &Path,
        ports: &RedisPorts,
        log_dir: &Path,
        tls: Option<(&RedisPorts, &RedisTlsFiles)>,
    ) -> Result<Self> {
        let mut cluster = Self {
            sentinels: Vec::new(),
            servers: Vec::new(),
            dir: dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            restarts: 0,
            tls_sentinels: tls.map(|(t, _)| t.sentinels.to_vec()).unwrap_or_default(),
        };
        // With TLS, servers replicate from (and Sentinels monitor) the master's TLS port.
        let master_port = tls.map_or(ports.master, |(t, _)| t.master);
        let tls_port_of = |plain: u16| -> Option<(u16, &RedisTlsFiles)> {
            let (t, files) = tls?;
            let plain_ports = [ports.master, ports.replicas[0], ports.replicas[1]];
            let tls_ports = [t.master, t.replicas[0], t.replicas[1]];
            let sentinel = ports.sentinels.iter().position(|p| *p == plain);
            let index = plain_ports.iter().position(|p| *p == plain);
            match (index, sentinel) {
                (Some(i), _) => Some((tls_ports[i], files)),
                (None, Some(i)) => Some((t.sentinels[i], files)),
                _ => None,
            }
        };
        let roles =
            std::iter::once(("redis-master".to_owned(), ports.master, None)).chain(
                ports.replicas.iter().enumerate().map(|(i, &port)| {
                    (format!("redis-replica-{}", i + 1), port, Some(master_port))
                }),
            );
        for (name, port, replica_of) in roles {
            let data = dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&data)?;
            let conf = data.join("redis.conf");
            let mut text = redis_conf(port, &data, replica_of);
            if let Some((tls_port, files)) = tls_port_of(port) {
                text.push_str(&tls_conf(tls_port, files));
            }
            std::fs::write(&conf, text)?;
            let process = ManagedProcess::spawn(&name, "redis-server", &[&conf], &[], log_dir)?;
            cluster.servers.push((port, process));
        }
        for (port, process) in &cluster.servers {
            wait_ping(*port, process).await?;
        }
        cluster
            .wait_replicas_online(ports.master, 2, READY_TIMEOUT)
            .await?;

        for (i, &port) in ports.sentinels.iter().enumerate() {
            let data = dir.join(format!("sentinel-{port}"));
            std::fs::create_dir_all(&data)?;
            let conf = data.join("sentinel.conf");
            let mut text = sentinel_conf(port, &data, master_port);
            if let Some((tls_port, files)) = tls_port_of(port) {
                text.push_str(&tls_conf(tls_port, files));
            }
            std::fs::write(&conf, text)?;
            let name = format!("sentinel-{}", i + 1);
            let process = ManagedProcess::spawn(&name, "redis-sentinel", &[&conf], &[], log_dir)?;
            cluster.sentinels.push((port, process));
        }
        for (port, process) in &cluster.sentinels {
            wait_ping(*port, process).await?;
        }
        cluster.wait_sentinels_agree().await?;
        Ok(cluster)
    }

    /// Waits until the master on `master` has at least `count` replicas in state `online`
    /// (synced and streaming). With [`MIN_REPLICAS_TO_WRITE`] a master takes writes only then.
    pub async fn wait_replicas_online(
        &self,
        master: u16,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match replication_info(master).await {
                Ok(info) if online_replicas(&info) >= count => return Ok(()),
                Ok(info) => last = info,
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the master :{master} did not get {count} online replicas within {timeout:?}: {last}")
    }

    async fn wait_sentinels_agree(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for (port, process) in &self.sentinels {
            loop {
                let state = sentinel_master_state(*port).await;
                let ok = state.as_ref().is_ok_and(|fields| {
                    field(fields, "num-other-sentinels") == Some("2")
                        && field(fields, "num-slaves") == Some("2")
                });
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "sentinel :{port} did not see 2 replicas and 2 other sentinels within \
                         {READY_TIMEOUT:?} (last: {state:?}); log tail:\n{}",
                        process.log_tail(30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`: the value of `SB_REDIS_SENTINELS`.
    pub fn sentinels_env(&self) -> String {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Sentinel master name, `switchboard`.
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// Ports of the three redis-server processes (first the initial master).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|(port, _)| *port).collect()
    }

    /// Ports of the three Sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(port, _)| *port).collect()
    }

    /// The redis-server process listening on `port`, if it is one of ours.
    pub fn server_process(&self, port: u16) -> Option<&ManagedProcess> {
        self.servers
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, process)| process)
    }

    /// The master's port as the Sentinels report it. Right after a failover they may briefly
    /// disagree; then the named server that answers `ROLE` as master wins (ties go to the
    /// port most Sentinels name).
    pub async fn current_master_port(&self) -> Result<u16> {
        let mut votes: Vec<(u16, usize)> = Vec::new();
        let mut errors = Vec::new();
        for (port, _) in &self.sentinels {
            match master_addr(*port).await {
                Ok(master) => match votes.iter_mut().find(|(p, _)| *p == master) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((master, 1)),
                },
                Err(e) => errors.push(format!(":{port}: {e:#}")),
            }
        }
        votes.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        match votes.as_slice() {
            [] => bail!("no sentinel named the master: {}", errors.join("; ")),
            [(only, _)] => Ok(*only),
            [(most, _), ..] => {
                for (candidate, _) in &votes {
                    if is_master(*candidate).await.unwrap_or(false) {
                        return Ok(*candidate);
                    }
                }
                Ok(*most)
            }
        }
    }

    /// SIGKILLs the redis-server that is master now; returns its port.
    pub async fn kill_master(&self) -> Result<u16> {
        let port = self.current_master_port().await?;
        let process = self
            .server_process(port)
            .ok_or_else(|| anyhow!("sentinel names :{port} as master, not one of ours"))?;
        process.kill9();
        Ok(port)
    }

    /// Waits until every Sentinel names the same master, other than `old_port`, that server
    /// answers `ROLE` as master, and it takes writes (it has [`MIN_REPLICAS_TO_WRITE`] online
    /// replicas: Sentinel points the surviving replicas at it); returns its port. A master
    /// left with no live replica never takes writes: restart one with
    /// [`Self::restart_as_replica`] after [`Self::wait_for_promotion`] instead.
    pub async fn wait_for_failover(&self, old_port: u16, timeout: Duration) -> Result<u16> {
        let started = Instant::now();
        let port = self.wait_for_promotion(old_port, timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        self.wait_replicas_online(
            port,
            MIN_REPLICAS_TO_WRITE,
            left.max(Duration::from_secs(5)),
        )
        .await?;
        Ok(port)
    }

    /// Waits until every Sentinel names the same master, other than `old_port`, and that
    /// server answers `ROLE` as master; returns its port. It may not take writes yet (no
    /// replica online).
    pub async fn wait_for_promotion(&self, old_port: u16, timeout: Duration) -> Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.agreed_master().await {
                Ok(port) if port == old_port => format!("sentinels still name :{old_port}"),
                Ok(port) => match is_master(port).await {
                    Ok(true) => return Ok(port),
                    Ok(false) => format!(":{port} is named but not master yet"),
                    Err(e) => format!(":{port}: {e:#}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("no failover away from :{old_port} within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts the (dead or killed) server on `port` again as a replica of `master`, with no
    /// data (it syncs from `master`), and waits until it answers. What an operator does with
    /// a node that died in a failover: it rejoins under the new master, never as a second,
    /// empty master.
    pub async fn restart_as_replica(&mut self, port: u16, master: u16) -> Result<()> {
        self.restart(port, Some(master)).await
    }

    /// kill -9 of the server on `port` and an immediate start again on the same port with the
    /// same config and **no data** (its dump removed): a container runtime restarting a Redis
    /// without persistence (`restart: unless-stopped`, no volume). The server comes back as a
    /// master with an empty dataset and a new replication id; its replicas reconnect and,
    /// unable to continue the old stream, resync to the empty dataset. Returns once it
    /// answers `PING`, typically well inside Sentinel's `down-after-milliseconds`, so no
    /// failover happens.
    pub async fn restart_empty(&mut self, port: u16) -> Result<Duration> {
        let started = Instant::now();
        self.restart(port, None).await?;
        Ok(started.elapsed())
    }

    async fn restart(&mut self, port: u16, replica_of: Option<u16>) -> Result<()> {
        let index = self
            .servers
            .iter()
            .position(|(p, _)| *p == port)
            .ok_or_else(|| anyhow!(":{port} is not one of this cluster's servers"))?;
        {
            let old = &self.servers[index].1;
            old.kill9();
            if old.wait_exit(Duration::from_secs(5)).await.is_none() {
                bail!("{} (:{port}) did not die", old.name());
            }
        }
        let data = self.dir.join(format!("redis-{port}"));
        // Nothing may survive the restart: no persistence is configured, but a replica that
        // synced wrote the master's snapshot to disk (diskless load is off) and would load it.
        for leftover in ["dump.rdb", "appendonlydir"] {
            let path = data.join(leftover);
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else if path.exists() {
                std::fs::remove_file(&path)?;
            }
        }
        let conf = data.join("redis.conf");
        std::fs::write(&conf, redis_conf(port, &data, replica_of))?;
        self.restarts += 1;
        let name = format!("redis-{port}-restart-{}", self.restarts);
        let process = ManagedProcess::spawn(&name, "redis-server", &[&conf], &[], &self.log_dir)?;
        wait_ping(port, &process).await?;
        self.servers[index].1 = process;
        Ok(())
    }

    /// Waits until every Sentinel reports the replica on `port` with `slave-priority`
    /// `priority` (Sentinels read it from the replica's `INFO`, every 10 s): after a
    /// `CONFIG SET replica-priority 0`, the replica is out of the next election only then.
    pub async fn wait_sentinels_see_priority(
        &self,
        port: u16,
        priority: u32,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for (sentinel, _) in &self.sentinels {
            loop {
                let seen = sentinel_replica_field(*sentinel, port, "slave-priority").await;
                if seen.as_ref().is_ok_and(|p| *p == priority.to_string()) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "sentinel :{sentinel} did not see :{port} with priority {priority} \
                         within {timeout:?} (last: {seen:?})"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The master port if all Sentinels name the same one.
    async fn agreed_master(&self) -> Result<u16> {
        let mut named = Vec::new();
        for (sentinel, _) in &self.sentinels {
            named.push(
                master_addr(*sentinel)
                    .await
                    .with_context(|| format!("sentinel :{sentinel}"))?,
            );
        }
        named.dedup();
        match named.as_slice() {
            [port] => Ok(*port),
            _ => bail!("sentinels disagree: {named:?}"),
        }
    }

    /// A connection to the current master (as Sentinel reports it, checked with `ROLE`).
    /// Retries for up to 20 s (e.g. during a failover).
    pub async fn try_master_connection(&self) -> Result<MultiplexedConnection> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = async {
                let port = self.current_master_port().await?;
                let mut conn = connect(port).await?;
                if role(&mut conn).await? == "master" {
                    Ok(conn)
                } else {
                    Err(anyhow!(":{port} is not master (yet)"))
                }
            };
            match attempt.await {
                Ok(conn) => return Ok(conn),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context("no connection to the Redis master within 20 s"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Like [`Self::try_master_connection`], for tests: panics when there is no master.
    pub async fn master_connection(&self) -> MultiplexedConnection {
        self.try_master_connection()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// A connection to `127.0.0.1:port` (a server or a Sentinel, with [`REDIS_PASSWORD`]) with
/// 2 s connect and response timeouts.
pub async fn connect(port: u16) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/"))?;
    let conn = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(Duration::from_secs(2)),
        )
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    Ok(conn)
}

async fn wait_ping(port: u16, process: &ManagedProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut conn) = connect(port).await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() {
                return Ok(());
            }
        }
        if !process.is_running() || Instant::now() >= deadline {
            bail!(
                "{} (:{port}) did not answer PING (running: {}); log tail:\n{}",
                process.name(),
                process.is_running(),
                process.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `INFO replication` of the server on `port`.
pub async fn replication_info(port: u16) -> Result<String> {
    let mut conn = connect(port).await?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await?;
    Ok(info)
}

/// How many replicas a master's `INFO replication` lists in state `online`.
fn online_replicas(info: &str) -> usize {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

/// One field of the replica on `port` as `sentinel` reports it (`SENTINEL REPLICAS`).
async fn sentinel_replica_field(sentinel: u16, port: u16, name: &str) -> Result<String> {
    let mut conn = connect(sentinel).await?;
    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("replicas")
        .arg(MASTER_NAME)
        .query_async(&mut conn)
        .await?;
    let port = port.to_string();
    let replica = replicas
        .iter()
        .find(|fields| field(fields, "port") == Some(port.as_str()))
        .ok_or_else(|| anyhow!("sentinel :{sentinel} does not list :{port} as a replica"))?;
    field(replica, name)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("sentinel :{sentinel} reports no {name} for :{port}"))
}

async fn sentinel_master_state(sentinel: u16) -> Result<Vec<String>> {
    let mut conn = connect(sentinel).await?;
    let fields: Vec<String> = redis::cmd("SENTINEL")
        .arg("master")
        .arg(MASTER_NAME)
        .query_async(&mut conn)
        .await?;
    Ok(fields)
}

/// The value after `name` in a flat `[name, value, name, value...]` reply.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair.get(1))
        .map(String::as_str)
}

async fn master_addr(sentinel: u16) -> Result<u16> {
    let mut conn = connect(sentinel).await?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query_async(&mut conn)
        .await?;
    let (_, port) = addr.ok_or_else(|| anyhow!("sentinel does not know {MASTER_NAME}"))?;
    Ok(port.parse()?)
}

async fn role(conn: &mut MultiplexedConnection) -> Result<String> {
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
    let first = reply.first().ok_or_else(|| anyhow!("empty ROLE reply"))?;
    Ok(redis::from_redis_value(first)?)
}

async fn is_master(port: u16) -> Result<bool> {
    let mut conn = connect(port).await?;
    Ok(role(&mut conn).await? == "master")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_conf_points_at_the_master() {
        let conf = redis_conf(7001, Path::new("/tmp/r"), Some(7000));
        assert!(conf.contains("port 7001\n"));
        assert!(conf.contains("replicaof 127.0.0.1 7000\n"));
        assert!(conf.contains("save \"\"\n"));
        assert!(conf.contains("appendonly no\n"));
        assert!(!redis_conf(7000, Path::new("/tmp/r"), None).contains("replicaof"));
        for conf in [conf, redis_conf(7000, Path::new("/tmp/r"), None)] {
            assert!(conf.contains("min-replicas-to-write 1\n"));
            assert!(conf.contains("min-replicas-max-lag 1\n"));
        }
    }

    #[test]
    fn online_replicas_are_counted() {
        let info = "role:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=7001,state=online,offset=10,lag=0\r\n\
                    slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n";
        assert_eq!(online_replicas(info), 1);
    }

    #[test]
    fn sentinel_conf_has_quorum_two_and_fast_timings() {
        let conf = sentinel_conf(27000, Path::new("/tmp/s"), 7000);
        assert!(conf.contains("sentinel monitor switchboard 127.0.0.1 7000 2\n"));
        assert!(conf.contains("down-after-milliseconds switchboard 2000\n"));
        assert!(conf.contains("failover-timeout switchboard 10000\n"));
        assert!(conf.contains("parallel-syncs switchboard 1\n"));
    }

    #[test]
    fn flat_fields() {
        let fields: Vec<String> = ["name", "switchboard", "num-slaves", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(field(&fields, "num-slaves"), Some("2"));
        assert_eq!(field(&fields, "flags"), None);
    }
}
