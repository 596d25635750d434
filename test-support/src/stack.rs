//! [`Stack`]: the whole system on one machine, made of real processes: Redis + Sentinels,
//! registries behind nginx, socket servers and health checkers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use switchboard_config::names::{
    RUST_LOG, SB_ASSIGN_RATE_PER_IP, SB_CLIENT_TIMEOUT_MS, SB_CONNECTS_PER_IP_PER_SEC,
    SB_DATABASE_URL, SB_DELETE_HANDLER_TOPICS, SB_DEV_MODE, SB_FAILURE_THRESHOLD,
    SB_HANDLER_TTL_MS, SB_HANDSHAKES_PER_IP, SB_HEALTH_BIND, SB_HEARTBEAT_INTERVAL_MS,
    SB_JWT_SECRET, SB_KAFKA_BROKERS, SB_KAFKA_IDEMPOTENCE, SB_MANAGER_BIND, SB_MANAGER_URLS,
    SB_MAX_CONNECTIONS, SB_MAX_CONNECTIONS_PER_IP, SB_MESSAGE_BIND, SB_MESSAGE_SERVICE_URL,
    SB_MESSAGING_ENABLED, SB_PROBE_INTERVAL_MS, SB_PROBE_TIMEOUT_MS, SB_RECONCILE_INTERVAL_MS,
    SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD, SB_REDIS_PREFIX, SB_REDIS_SENTINELS, SB_REGISTRY_BIND,
    SB_REGISTRY_URL, SB_RESERVATIONS_PER_IP, SB_SERVER_ID, SB_SOCKET_BIND, SB_SOCKET_OPS_BIND,
    SB_SOCKET_PUBLIC_URL, SB_WEBHOOK_BIND, SB_WEBHOOK_DATABASE_URL,
};
use switchboard_credentials::cluster::{ClusterCredential, ServiceRole};
use switchboard_protocol::token::TokenKeys;

use crate::broker::Broker;
use crate::credentials::Credentials;
use crate::http::wait_ready;
use crate::nginx::Nginx;
use crate::paths::bin_path;
use crate::ports::free_port;
use crate::postgres::Postgres;
use crate::process::{ManagedProcess, RunAs};
use crate::redis_cluster::{service_redis_env, RedisPorts, RedisSentinelCluster, MASTER_NAME};

/// How long a service may take to answer `/ready` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The Redis key prefix of every stack (`SB_REDIS_PREFIX`).
pub const REDIS_PREFIX: &str = "sb:";

/// Fixed ports for the dev stack (tests use free ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedPorts {
    pub nginx: u16,
    /// Registry `i` listens on `registries[i]`; missing entries get a free port.
    pub registries: Vec<u16>,
    /// Socket server `i` listens on `socket_servers[i]`; missing entries get a free port.
    pub socket_servers: Vec<u16>,
    /// Health checker `i` listens on `health_checkers[i]`; missing entries get a free port.
    pub health_checkers: Vec<u16>,
    pub managers: Vec<u16>,
    pub message_service: u16,
    pub postgres: u16,
    pub broker: u16,
    pub redis: RedisPorts,
    /// The webhook dispatcher's (with [`StackOptions::webhook_dispatcher`]); not in
    /// [`Self::all`], which the dev stack checks only when it starts one.
    pub webhook_dispatcher: u16,
}

impl FixedPorts {
    /// The documented local layout: nginx 8080, registries 8101/8102, socket servers
    /// 9001-9003, health checkers 8301/8302, Redis 6379-6381, Sentinels 26379-26381.
    pub fn standard() -> Self {
        Self {
            nginx: 8080,
            registries: vec![8101, 8102],
            socket_servers: vec![9001, 9002, 9003],
            health_checkers: vec![8301, 8302],
            managers: vec![8201, 8202],
            message_service: 8401,
            postgres: 5432,
            broker: 9092,
            redis: RedisPorts::standard(),
            webhook_dispatcher: 8501,
        }
    }

    /// Every port, for a pre-flight check.
    pub fn all(&self) -> Vec<u16> {
        let mut ports = vec![self.nginx, self.redis.master];
        ports.extend(self.redis.replicas);
        ports.extend(self.redis.sentinels);
        ports.extend(&self.registries);
        ports.extend(&self.socket_servers);
        ports.extend(&self.health_checkers);
        ports.extend(&self.managers);
        ports.extend([self.message_service, self.postgres, self.broker]);
        ports
    }
}

/// What [`Stack::start`] starts.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub socket_servers: usize,
    pub registries: usize,
    pub health_checkers: usize,
    /// `SB_MAX_CONNECTIONS` of every socket server.
    pub max_connections: u64,
    /// Added to every service's environment, after everything else (so it overrides).
    pub extra_env: Vec<(String, String)>,
    /// `None`: free ports (tests). `Some`: the dev stack's layout.
    pub fixed_ports: Option<FixedPorts>,
    /// Where the one-log-per-process files go; default `<work dir>/logs`.
    pub log_dir: Option<PathBuf>,
    /// Configs and data of Redis and nginx; default a temp dir removed on drop (kept if
    /// `SWITCHBOARD_KEEP_TEST_DIRS` is set, e.g. to read the logs of a failed test).
    pub work_dir: Option<PathBuf>,
    /// nginx's listen address (the dev stack uses `0.0.0.0`).
    pub nginx_listen_addr: String,
    /// Socket-server timings for tests (heartbeat 1 s, client timeout 4 s, reconcile
    /// 500 ms). The dev stack turns this off and uses the services' defaults.
    pub fast_timings: bool,
    /// Start the chat path too: PostgreSQL, the broker, the message service and
    /// `managers` socket managers. Off, socket servers run with messaging disabled.
    pub messaging: bool,
    pub managers: usize,
    /// Start the webhook dispatcher too (needs `messaging`), behind nginx at
    /// `/server/v1/webhooks`. Off by default; its settings (API keys, `SB_WEBHOOK_*`) come
    /// from `extra_env`.
    pub webhook_dispatcher: bool,
    /// Start a real S3-compatible store (Garage, [`crate::object_store`]) and turn the
    /// message service's attachments on against it (needs `messaging`). Off by default.
    pub object_store: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            socket_servers: 3,
            registries: 2,
            health_checkers: 2,
            max_connections: 100_000,
            extra_env: Vec::new(),
            fixed_ports: None,
            log_dir: None,
            work_dir: None,
            nginx_listen_addr: "127.0.0.1".to_owned(),
            fast_timings: true,
            messaging: true,
            managers: 2,
            webhook_dispatcher: false,
            object_store: false,
        }
    }
}

impl StackOptions {
    /// Just the connection layer (Redis, registries, nginx, socket servers, health checkers).
    pub fn without_messaging() -> Self {
        Self {
            messaging: false,
            ..Self::default()
        }
    }
}

/// A registry or health checker.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub port: u16,
    pub process: ManagedProcess,
}

impl Service {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A socket server.
#[derive(Debug)]
pub struct SocketServer {
    pub server_id: String,
    pub port: u16,
    /// Its operations port (`SB_SOCKET_OPS_BIND`): `/live`, `/ready`, `/metrics`.
    pub ops_port: u16,
    pub process: ManagedProcess,
}

impl SocketServer {
    /// `ws://127.0.0.1:PORT/ws`: where clients connect (also its `SB_SOCKET_PUBLIC_URL`).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// `http://127.0.0.1:OPS_PORT` (`/live`, `/ready`, `/metrics`; the clients' port
    /// answers only `/ws` and `/live`).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }
}

/// The running system. Dropping it SIGKILLs everything (services first, Redis last) and
/// removes the temp dir; [`Stack::shutdown`] stops the services gracefully first.
#[derive(Debug)]
pub struct Stack {
    // Field order is drop order: services, then nginx, then the stores, then the dir.
    pub health_checkers: Vec<Service>,
    pub socket_servers: Vec<SocketServer>,
    pub registries: Vec<Service>,
    pub managers: Vec<Service>,
    pub message_service: Option<Service>,
    /// With [`StackOptions::webhook_dispatcher`].
    pub webhook_dispatcher: Option<Service>,
    pub nginx: Nginx,
    /// With [`StackOptions::object_store`].
    pub object_store: Option<crate::object_store::ObjectStore>,
    pub broker: Option<Broker>,
    pub postgres: Option<Postgres>,
    pub redis: RedisSentinelCluster,
    messaging: bool,
    common_env: Vec<(String, String)>,
    message_service_env: Vec<(String, String)>,
    webhook_dispatcher_env: Vec<(String, String)>,
    credentials: Credentials,
    max_connections: u64,
    fast_timings: bool,
    extra_env: Vec<(String, String)>,
    fixed_socket_ports: Vec<u16>,
    socket_servers_started: usize,
    log_dir: PathBuf,
    work_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

fn env_override(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn kv(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

impl Stack {
    /// Starts Redis + Sentinels, the registries, nginx over them, the socket servers and the
    /// health checkers, each kind only once the previous one is ready (`/ready` is 200).
    pub async fn start(opts: StackOptions) -> Result<Stack> {
        let temp = match &opts.work_dir {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("switchboard-stack-")
                    .disable_cleanup(std::env::var_os("SWITCHBOARD_KEEP_TEST_DIRS").is_some())
                    .tempdir()?,
            ),
        };
        let work_dir = match (&opts.work_dir, &temp) {
            (Some(dir), _) => dir.clone(),
            (None, Some(temp)) => temp.path().to_owned(),
            (None, None) => unreachable!("a temp dir is made when no work dir is given"),
        };
        std::fs::create_dir_all(&work_dir)?;
        let log_dir = opts
            .log_dir
            .clone()
            .unwrap_or_else(|| work_dir.join("logs"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        eprintln!("switchboard stack: logs in {}", log_dir.display());

        let fixed = opts.fixed_ports.clone();
        let pick = |list: Option<&Vec<u16>>, i: usize| {
            list.and_then(|l| l.get(i).copied())
                .unwrap_or_else(free_port)
        };

        let redis_ports = fixed
            .as_ref()
            .map_or_else(RedisPorts::free, |f| f.redis.clone());
        let redis =
            RedisSentinelCluster::start_with(&work_dir.join("redis"), &redis_ports, &log_dir)
                .await
                .context("starting Redis + Sentinels")?;

        let credentials = Credentials::generate(
            &work_dir.join("credentials"),
            env_override(&opts.extra_env, SB_JWT_SECRET),
        )?;
        let mut common = common_env(&redis.sentinels_env());

        // The chat path: database, broker, message service, managers.
        let mut postgres = None;
        let mut broker = None;
        let mut message_service = None;
        let mut managers = Vec::new();
        let mut message_service_env = Vec::new();
        let mut webhook_dispatcher = None;
        let mut webhook_dispatcher_env = Vec::new();
        let mut object_store = None;
        if opts.object_store && !opts.messaging {
            anyhow::bail!("the object store serves the chat path (StackOptions::messaging)");
        }
        if opts.webhook_dispatcher && !opts.messaging {
            anyhow::bail!("the webhook dispatcher needs the chat path (StackOptions::messaging)");
        }
        if opts.messaging {
            let pg_port = fixed.as_ref().map_or_else(free_port, |f| f.postgres);
            let pg = Postgres::start(&work_dir.join("postgres"), pg_port, &log_dir)
                .await
                .context("starting PostgreSQL")?;
            let broker_port = fixed.as_ref().map_or_else(free_port, |f| f.broker);
            let kafka = Broker::start(&work_dir.join("broker"), broker_port, &log_dir)
                .await
                .context("starting the broker")?;
            common.push(kv(SB_KAFKA_BROKERS, kafka.bootstrap()));
            // tansu 0.6 (SQLite engine) corrupts its state when a topic is deleted; real Kafka
            // (docker-compose) keeps the default and deletes dead handlers' topics.
            common.push(kv(SB_DELETE_HANDLER_TOPICS, "false"));
            // tansu 0.6 cannot serve idempotent producers: after a produce timeout librdkafka
            // bumps the producer epoch locally, and tansu (SQLite engine) then panics in its
            // storage task and answers nothing until restarted (docs/broker.md). Off is also
            // the default; set here so the local stack stays safe if the default changes.
            common.push(kv(SB_KAFKA_IDEMPOTENCE, "false"));
            let ms_port = fixed.as_ref().map_or_else(free_port, |f| f.message_service);
            common.push(kv(
                SB_MESSAGE_SERVICE_URL,
                format!("http://127.0.0.1:{ms_port}"),
            ));
            // The managers' ports are known before they start: the message service numbers
            // server-API messages through them (SB_MANAGER_URLS).
            let manager_ports: Vec<u16> = (0..opts.managers)
                .map(|i| pick(fixed.as_ref().map(|f| &f.managers), i))
                .collect();
            let mut env = common.clone();
            env.push(kv(SB_MESSAGE_BIND, format!("127.0.0.1:{ms_port}")));
            env.push(kv(
                SB_MANAGER_URLS,
                manager_ports
                    .iter()
                    .map(|p| format!("http://127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ));
            env.push(kv(SB_DATABASE_URL, pg.url()));
            if opts.object_store {
                let store = crate::object_store::ObjectStore::start(
                    &work_dir.join("object-store"),
                    &log_dir,
                )
                .await
                .context("starting the object store")?;
                env.extend(store.env());
                object_store = Some(store);
            }
            env.extend(service_redis_env("message-service"));
            env.extend(credentials.env(ServiceRole::MessageService));
            env.extend(opts.extra_env.iter().cloned());
            let process = ManagedProcess::spawn(
                "message-service",
                bin_path("message-service"),
                &[] as &[&str],
                &env,
                &log_dir,
            )?;
            message_service_env = env;
            let ms = Service {
                name: "message-service".into(),
                port: ms_port,
                process,
            };
            let mut manager_urls = Vec::new();
            for (i, &port) in manager_ports.iter().enumerate() {
                let mut env = common.clone();
                env.push(kv(SB_MANAGER_BIND, format!("127.0.0.1:{port}")));
                env.extend(service_redis_env("socket-manager"));
                env.extend(credentials.env(ServiceRole::SocketManager));
                if opts.fast_timings {
                    env.push(kv(SB_HANDLER_TTL_MS, "3000"));
                }
                env.extend(opts.extra_env.iter().cloned());
                let name = format!("socket-manager-{}", i + 1);
                let process = ManagedProcess::spawn(
                    &name,
                    bin_path("socket-manager"),
                    &[] as &[&str],
                    &env,
                    &log_dir,
                )?;
                manager_urls.push(format!("http://127.0.0.1:{port}"));
                managers.push(Service {
                    name,
                    port,
                    process,
                });
            }
            wait_ready(&ms.process, &format!("{}/ready", ms.url()), READY_TIMEOUT).await?;
            for m in &managers {
                wait_ready(&m.process, &format!("{}/ready", m.url()), READY_TIMEOUT).await?;
            }
            common.push(kv(SB_MANAGER_URLS, manager_urls.join(",")));
            if opts.webhook_dispatcher {
                let port = fixed
                    .as_ref()
                    .map_or_else(free_port, |f| f.webhook_dispatcher);
                let mut env = common.clone();
                env.push(kv(SB_WEBHOOK_BIND, format!("127.0.0.1:{port}")));
                env.push(kv(SB_WEBHOOK_DATABASE_URL, pg.url()));
                // Its own Redis user: the notifier reads presence, nothing else.
                env.extend(service_redis_env("webhook-dispatcher"));
                env.extend(opts.extra_env.iter().cloned());
                let process = ManagedProcess::spawn(
                    "webhook-dispatcher",
                    bin_path("webhook-dispatcher"),
                    &[] as &[&str],
                    &env,
                    &log_dir,
                )?;
                let dispatcher = Service {
                    name: "webhook-dispatcher".into(),
                    port,
                    process,
                };
                wait_ready(
                    &dispatcher.process,
                    &format!("{}/ready", dispatcher.url()),
                    READY_TIMEOUT,
                )
                .await?;
                webhook_dispatcher = Some(dispatcher);
                webhook_dispatcher_env = env;
            }
            postgres = Some(pg);
            broker = Some(kafka);
            message_service = Some(ms);
        } else {
            common.push(kv(SB_MESSAGING_ENABLED, "false"));
        }

        // Registries.
        let mut registries = Vec::new();
        for i in 0..opts.registries {
            let port = pick(fixed.as_ref().map(|f| &f.registries), i);
            let mut env = common.clone();
            env.push(kv(SB_REGISTRY_BIND, format!("127.0.0.1:{port}")));
            env.extend(service_redis_env("registry"));
            env.extend(credentials.env(ServiceRole::Registry));
            env.extend(opts.extra_env.iter().cloned());
            let name = format!("registry-{}", i + 1);
            let process =
                ManagedProcess::spawn(&name, bin_path("registry"), &[] as &[&str], &env, &log_dir)?;
            registries.push(Service {
                name,
                port,
                process,
            });
        }
        for r in &registries {
            wait_ready(&r.process, &format!("{}/ready", r.url()), READY_TIMEOUT).await?;
        }

        // nginx over the registries.
        let registry_ports: Vec<u16> = registries.iter().map(|r| r.port).collect();
        let nginx_port = fixed.as_ref().map_or_else(free_port, |f| f.nginx);
        let message_service_ports: Vec<u16> = message_service.iter().map(|m| m.port).collect();
        let webhook_dispatcher_ports: Vec<u16> =
            webhook_dispatcher.iter().map(|d| d.port).collect();
        let nginx = Nginx::start_with_dispatcher(
            &work_dir.join("nginx"),
            &opts.nginx_listen_addr,
            nginx_port,
            &registry_ports,
            &message_service_ports,
            &webhook_dispatcher_ports,
            &log_dir,
        )
        .await
        .context("starting nginx")?;
        // The page nginx serves uploads to the store cross-origin: the bucket's CORS rule.
        if let Some(store) = &object_store {
            let origins = crate::object_store::page_origins(&nginx.url(), &opts.extra_env);
            store
                .allow_page_origins(&origins)
                .await
                .context("setting the bucket's CORS rule")?;
        }

        let mut stack = Stack {
            health_checkers: Vec::new(),
            socket_servers: Vec::new(),
            registries,
            managers,
            message_service,
            webhook_dispatcher,
            nginx,
            object_store,
            broker,
            postgres,
            redis,
            messaging: opts.messaging,
            common_env: common,
            message_service_env,
            webhook_dispatcher_env,
            credentials,
            max_connections: opts.max_connections,
            fast_timings: opts.fast_timings,
            extra_env: opts.extra_env.clone(),
            fixed_socket_ports: fixed
                .as_ref()
                .map(|f| f.socket_servers.clone())
                .unwrap_or_default(),
            socket_servers_started: 0,
            log_dir,
            work_dir,
            _temp: temp,
        };

        // Socket servers: start all, then wait for each.
        let mut pending = Vec::new();
        for _ in 0..opts.socket_servers {
            pending.push(stack.spawn_socket_server(&[])?);
        }
        for server in &pending {
            wait_ready(
                &server.process,
                &format!("{}/ready", server.http_url()),
                READY_TIMEOUT,
            )
            .await?;
        }
        stack.socket_servers.extend(pending);

        // Health checkers.
        for i in 0..opts.health_checkers {
            let port = pick(fixed.as_ref().map(|f| &f.health_checkers), i);
            let mut env = stack.service_env();
            env.extend([
                kv(SB_HEALTH_BIND, format!("127.0.0.1:{port}")),
                kv(SB_PROBE_INTERVAL_MS, "500"),
                kv(SB_PROBE_TIMEOUT_MS, "400"),
                kv(SB_FAILURE_THRESHOLD, "2"),
            ]);
            env.extend(service_redis_env("health-checker"));
            env.extend(stack.credentials.env(ServiceRole::HealthChecker));
            env.extend(stack.extra_env.iter().cloned());
            let name = format!("health-checker-{}", i + 1);
            let process = ManagedProcess::spawn(
                &name,
                bin_path("health-checker"),
                &[] as &[&str],
                &env,
                &stack.log_dir,
            )?;
            stack.health_checkers.push(Service {
                name,
                port,
                process,
            });
        }
        for h in &stack.health_checkers {
            wait_ready(&h.process, &format!("{}/ready", h.url()), READY_TIMEOUT).await?;
        }
        Ok(stack)
    }

    /// Starts one more socket server (`extra_env` applied last), waits for its `/ready`,
    /// and returns its index in [`Stack::socket_servers`].
    pub async fn start_socket_server(&mut self, extra_env: &[(String, String)]) -> Result<usize> {
        self.start_socket_server_with(extra_env, None).await
    }

    /// [`Self::start_socket_server`], the server running as another Unix user (`run_as`;
    /// needs root), e.g. to cut it off from the network with [`crate::NetCut`]. The binary
    /// must be readable and executable by that user.
    pub async fn start_socket_server_as(
        &mut self,
        run_as: RunAs,
        extra_env: &[(String, String)],
    ) -> Result<usize> {
        self.start_socket_server_with(extra_env, Some(run_as)).await
    }

    async fn start_socket_server_with(
        &mut self,
        extra_env: &[(String, String)],
        run_as: Option<RunAs>,
    ) -> Result<usize> {
        let server = self.spawn_socket_server_as(extra_env, run_as)?;
        wait_ready(
            &server.process,
            &format!("{}/ready", server.http_url()),
            READY_TIMEOUT,
        )
        .await?;
        self.socket_servers.push(server);
        Ok(self.socket_servers.len() - 1)
    }

    fn spawn_socket_server(&mut self, extra_env: &[(String, String)]) -> Result<SocketServer> {
        self.spawn_socket_server_as(extra_env, None)
    }

    fn spawn_socket_server_as(
        &mut self,
        extra_env: &[(String, String)],
        run_as: Option<RunAs>,
    ) -> Result<SocketServer> {
        let index = self.socket_servers_started;
        self.socket_servers_started += 1;
        let port = self
            .fixed_socket_ports
            .get(index)
            .copied()
            .unwrap_or_else(free_port);
        let n = index + 1;
        let server_id = format!("socket-{n}-{port}");
        let ops_port = free_port();
        let mut env = self.service_env();
        env.extend([
            kv(SB_SOCKET_BIND, format!("127.0.0.1:{port}")),
            kv(SB_SOCKET_OPS_BIND, format!("127.0.0.1:{ops_port}")),
            kv(SB_SOCKET_PUBLIC_URL, format!("ws://127.0.0.1:{port}/ws")),
            kv(SB_SERVER_ID, server_id.clone()),
            kv(SB_REGISTRY_URL, self.nginx_url()),
            kv(SB_MAX_CONNECTIONS, self.max_connections.to_string()),
        ]);
        env.extend(service_redis_env("socket-server"));
        env.extend(self.credentials.env(ServiceRole::SocketServer));
        if self.fast_timings {
            env.extend([
                kv(SB_HEARTBEAT_INTERVAL_MS, "1000"),
                kv(SB_CLIENT_TIMEOUT_MS, "4000"),
                kv(SB_RECONCILE_INTERVAL_MS, "500"),
            ]);
        }
        env.extend(self.extra_env.iter().cloned());
        env.extend(extra_env.iter().cloned());
        let process = ManagedProcess::spawn_as(
            &format!("socket-server-{n}"),
            bin_path("socket-server"),
            &[] as &[&str],
            &env,
            &self.log_dir,
            run_as,
        )?;
        Ok(SocketServer {
            server_id,
            port,
            ops_port,
            process,
        })
    }

    /// The environment every service gets (Redis via Sentinel, prefix, secrets, dev mode,
    /// `RUST_LOG=info`, `NO_COLOR=1`), before the per-service variables and the extra env.
    pub fn service_env(&self) -> Vec<(String, String)> {
        self.common_env.clone()
    }

    /// Starts the message service again (same port, database and settings) after it was
    /// stopped, and waits until it is ready.
    pub async fn restart_message_service(&mut self) -> Result<()> {
        let ms = self
            .message_service
            .as_mut()
            .context("this stack runs without messaging")?;
        ms.process.kill9();
        ms.process = ManagedProcess::spawn(
            "message-service-restarted",
            bin_path("message-service"),
            &[] as &[&str],
            &self.message_service_env,
            &self.log_dir,
        )?;
        wait_ready(&ms.process, &format!("{}/ready", ms.url()), READY_TIMEOUT).await
    }

    /// Starts the webhook dispatcher again (same port, database and settings) after it was
    /// stopped or killed (SIGKILLed first if it still runs), and waits until it is ready.
    pub async fn restart_webhook_dispatcher(&mut self) -> Result<()> {
        let dispatcher = self
            .webhook_dispatcher
            .as_mut()
            .context("this stack runs without the webhook dispatcher")?;
        dispatcher.process.kill9();
        dispatcher.process = ManagedProcess::spawn(
            "webhook-dispatcher-restarted",
            bin_path("webhook-dispatcher"),
            &[] as &[&str],
            &self.webhook_dispatcher_env,
            &self.log_dir,
        )?;
        wait_ready(
            &dispatcher.process,
            &format!("{}/ready", dispatcher.url()),
            READY_TIMEOUT,
        )
        .await
    }

    /// Whether the chat path (managers, broker, database, message service) runs.
    pub fn messaging(&self) -> bool {
        self.messaging
    }

    /// `http://127.0.0.1:PORT` of nginx, the public entry point.
    pub fn nginx_url(&self) -> String {
        self.nginx.url()
    }

    /// The stack's credentials: per-service secrets and the client-token keys.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Keys that mint client tokens this stack accepts.
    pub fn token_keys(&self) -> TokenKeys {
        self.credentials.token_keys()
    }

    /// What a service of `role` presents on cluster-only calls.
    pub fn credential(&self, role: ServiceRole) -> ClusterCredential {
        self.credentials.credential(role)
    }

    /// `SB_REDIS_PREFIX`, `sb:`.
    pub fn redis_prefix(&self) -> &'static str {
        REDIS_PREFIX
    }

    /// The directory holding one log file per process.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The directory holding Redis and nginx configs and data.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Every service process with its name, in start order (for monitoring).
    pub fn processes(&self) -> Vec<&ManagedProcess> {
        let mut all: Vec<&ManagedProcess> = self.registries.iter().map(|s| &s.process).collect();
        all.extend(self.managers.iter().map(|s| &s.process));
        all.extend(self.message_service.iter().map(|s| &s.process));
        all.extend(self.webhook_dispatcher.iter().map(|s| &s.process));
        all.push(&self.nginx.process);
        all.extend(self.socket_servers.iter().map(|s| &s.process));
        all.extend(self.health_checkers.iter().map(|s| &s.process));
        all
    }

    /// Graceful stop: SIGTERM to health checkers, socket servers, then registries (each
    /// given up to `grace`, then SIGKILLed), then nginx and Redis are killed.
    pub async fn shutdown(self, grace: Duration) {
        for group in [
            self.health_checkers
                .iter()
                .map(|s| &s.process)
                .collect::<Vec<_>>(),
            self.socket_servers.iter().map(|s| &s.process).collect(),
            self.registries.iter().map(|s| &s.process).collect(),
            self.managers.iter().map(|s| &s.process).collect(),
            self.webhook_dispatcher.iter().map(|s| &s.process).collect(),
            self.message_service.iter().map(|s| &s.process).collect(),
        ] {
            for process in &group {
                process.sigterm();
            }
            for process in group {
                process.stop(grace).await;
            }
        }
        self.nginx.process.stop(Duration::from_secs(2)).await;
        drop(self);
    }
}

fn common_env(sentinels: &str) -> Vec<(String, String)> {
    vec![
        kv(SB_REDIS_SENTINELS, sentinels),
        kv(SB_REDIS_MASTER_NAME, MASTER_NAME),
        kv(SB_REDIS_PREFIX, REDIS_PREFIX),
        kv(SB_REDIS_PASSWORD, crate::redis_cluster::REDIS_PASSWORD),
        kv(SB_DEV_MODE, "true"),
        // Every test client (and the benchmark's thousands) comes from loopback, which real
        // per-address limits would refuse; the abuse test sets real ones (extra_env).
        kv(SB_ASSIGN_RATE_PER_IP, "0"),
        kv(SB_RESERVATIONS_PER_IP, "0"),
        kv(SB_CONNECTS_PER_IP_PER_SEC, "0"),
        kv(SB_HANDSHAKES_PER_IP, "0"),
        kv(SB_MAX_CONNECTIONS_PER_IP, "0"),
        kv(RUST_LOG, "info"),
        // Plain log files (tracing-subscriber honours NO_COLOR).
        kv("NO_COLOR", "1"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_env_entries_win() {
        let env = vec![kv("A", "1"), kv("B", "2"), kv("A", "3")];
        assert_eq!(env_override(&env, "A").as_deref(), Some("3"));
        assert_eq!(env_override(&env, "C"), None);
    }

    #[test]
    fn standard_ports_are_distinct() {
        let all = FixedPorts::standard().all();
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }
}
