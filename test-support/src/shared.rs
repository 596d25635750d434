//! Fixtures for the fast test tier (docs/testing-fast-tier.md): one Redis with Sentinels, one
//! PostgreSQL and one broker, each started at most **once per test binary**, on a thread of
//! its own, the first time a test asks for it. The services then run in-process
//! (`Application::build` on port 0, zero-to-production's `spawn_app`), so a test costs
//! milliseconds, not the seconds of starting processes.
//!
//! Tests share the fixtures without seeing each other:
//!
//! - Redis: every test has its own key prefix `sb:<id>:` ([`redis_vars`]); the services log
//!   in as their own ACL users, which are limited to `sb:*` keys, as in a deployment.
//! - PostgreSQL: every test gets a database of its own ([`fresh_database`], a `CREATE
//!   DATABASE` on the shared server).
//! - Broker: every test has its own topic names `sb.<id>.messages`, `sb.<id>.events` and
//!   `sb.<id>.handler.*` ([`kafka_vars`]; the services take every topic name from
//!   `KafkaConfig`).
//!
//! `<id>` comes from [`unique`]. The processes are started with `PR_SET_PDEATHSIG` from their
//! fixture thread, which never ends, so they live exactly as long as the test binary.
//!
//! A service under test is configured the way a deployment is, by environment variables: the
//! per-service functions (`registry_vars`, `message_service_vars`, `manager_vars`,
//! `socket_server_vars`, `health_checker_vars`) answer the variables ([`Vars`], by their
//! documented names), and the test builds the config with the service's own
//! `from_lookup` ([`Vars::config`]), so the real parsing and defaults run. This crate depends
//! on no service crate: the services dev-depend on it without a cycle.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchboard_config::env::EnvTable;
use switchboard_config::lookup::Lookup;
use switchboard_config::names::{
    SB_ASSIGN_BURST_PER_IP, SB_ASSIGN_RATE_PER_IP, SB_CLIENT_RATE_BURST, SB_CLIENT_RATE_PER_SEC,
    SB_CLIENT_TIMEOUT_MS, SB_CLUSTER_SECRET, SB_CONNECTS_BURST_PER_IP, SB_CONNECTS_PER_IP_PER_SEC,
    SB_DATABASE_URL, SB_DB_MAX_CONNECTIONS, SB_DELETE_HANDLER_TOPICS, SB_DEV_MODE,
    SB_DEV_TOKEN_TTL_SECS, SB_EVENTS_TOPIC, SB_FAILURE_THRESHOLD, SB_HANDLER_HEARTBEAT_MS,
    SB_HANDLER_TOPIC_PREFIX, SB_HANDLER_TTL_MS, SB_HEALTH_BIND, SB_HEARTBEAT_INTERVAL_MS,
    SB_IDEMPOTENCY_TTL_SECS, SB_INGEST_FETCH_WAIT_MS, SB_JWT_SECRET, SB_KAFKA_BROKERS,
    SB_KAFKA_IDEMPOTENCE, SB_KAFKA_LINGER_MS, SB_KAFKA_REPLICATION_FACTOR, SB_LOCK_TTL_MS,
    SB_LOCK_WAIT_MS, SB_MANAGER_BIND, SB_MANAGER_ID, SB_MANAGER_LANES, SB_MANAGER_LANE_BATCHES,
    SB_MANAGER_URLS, SB_MAPPING_RENEW_MS, SB_MAX_BODY_BYTES, SB_MAX_CONNECTIONS,
    SB_MAX_CONNECTIONS_PER_USER, SB_MAX_FRAME_BYTES, SB_MAX_GROUP_MEMBERS, SB_MESSAGE_BIND,
    SB_MESSAGE_PARTITIONS, SB_MESSAGE_SERVICE_URL, SB_MESSAGE_TOPIC, SB_MESSAGING_ENABLED,
    SB_OUTBOUND_QUEUE, SB_PRESENCE_MAX_GROUP, SB_PROBE_INTERVAL_MS, SB_PROBE_TIMEOUT_MS,
    SB_PRODUCE_TIMEOUT_MS, SB_RECONCILE_INTERVAL_MS, SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD,
    SB_REDIS_PREFIX, SB_REDIS_SENTINELS, SB_REDIS_SENTINEL_PASSWORD, SB_REDIS_SENTINEL_USERNAME,
    SB_REDIS_TIMEOUT_MS, SB_REDIS_USERNAME, SB_REGISTRY_BIND, SB_REGISTRY_URL,
    SB_RESERVATIONS_PER_IP, SB_RESERVATION_TTL_MS, SB_SEQ_REPLICA_ACKS,
    SB_SEQ_REPLICA_ACK_TIMEOUT_MS, SB_SERVER_ID, SB_SERVER_STALE_MS, SB_SHUTDOWN_GRACE_MS,
    SB_SOCKET_BIND, SB_USER_MAPPING_TTL_MS,
};
use switchboard_config::tables::COMMON;
use switchboard_kafka::KafkaConfig;
use switchboard_protocol::token::TokenKeys;
use switchboard_protocol::UserId;
use switchboard_redis::RedisConfig;

use crate::redis_cluster::{
    service_password, service_user, RedisSentinelCluster, REDIS_PASSWORD, SENTINEL_CLIENT_PASSWORD,
    SENTINEL_CLIENT_USER,
};
use crate::{free_port, Broker, Postgres};

/// The JWT secret of every service a fast test builds ([`common_vars`]).
pub const JWT_SECRET: &str = "a-jwt-secret-for-the-fast-tier-tests";
/// The cluster secret of every service a fast test builds ([`common_vars`]).
pub const CLUSTER_SECRET: &str = "a-cluster-secret-for-the-fast-tier!!";

/// How long a test waits for a fixture to start before it fails.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A fixture's outcome, filled in once by its thread.
type Slot<T> = Arc<(Mutex<Option<Result<T, String>>>, Condvar)>;

/// A value started once per test binary on a background thread that then parks for good (so
/// what it started, and the processes' death signal, stay with it).
struct Fixture<T> {
    slot: OnceLock<Slot<T>>,
}

impl<T: Clone + Send + 'static> Fixture<T> {
    const fn new() -> Self {
        Fixture {
            slot: OnceLock::new(),
        }
    }

    /// Starts the fixture unless it is started already; does not wait.
    fn start<F, Fut, K>(&self, name: &'static str, start: F) -> Slot<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, K)>>,
    {
        self.slot
            .get_or_init(|| {
                let slot: Slot<T> = Arc::new((Mutex::new(None), Condvar::new()));
                let filled = slot.clone();
                std::thread::Builder::new()
                    .name(format!("fixture-{name}"))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("fixture runtime");
                        runtime.block_on(async move {
                            let started = start().await;
                            let (outcome, keep) = match started {
                                Ok((value, keep)) => (Ok(value), Some(keep)),
                                Err(e) => {
                                    (Err(format!("the shared {name} did not start: {e:#}")), None)
                                }
                            };
                            *filled.0.lock().expect("fixture lock") = Some(outcome);
                            filled.1.notify_all();
                            // Whatever was started lives as long as this thread: the binary.
                            std::future::pending::<()>().await;
                            drop(keep);
                        });
                    })
                    .expect("fixture thread");
                slot
            })
            .clone()
    }

    /// Starts the fixture if needed and waits for it.
    fn get<F, Fut, K>(&self, name: &'static str, start: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, K)>>,
    {
        let slot = self.start(name, start);
        let (lock, ready) = &*slot;
        let guard = lock.lock().expect("fixture lock");
        let (guard, timeout) = ready
            .wait_timeout_while(guard, START_TIMEOUT, |v| v.is_none())
            .expect("fixture lock");
        if timeout.timed_out() {
            panic!("the shared {name} did not start within {START_TIMEOUT:?}");
        }
        match guard.as_ref().expect("filled") {
            Ok(value) => value.clone(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A fixture's directory, `sb-fast-<name>-<pid>-<random>` in the temp dir. The fixtures live
/// as long as the test binary, which ends without dropping them, so their directories are
/// swept here instead: any left by a process that is gone.
fn fixture_dir(name: &str) -> Result<tempfile::TempDir> {
    sweep_fixture_dirs();
    tempfile::Builder::new()
        .prefix(&format!("sb-fast-{name}-{}-", std::process::id()))
        .tempdir()
        .context("a temp dir")
}

/// Removes the fixture directories of test binaries that are no longer running.
fn sweep_fixture_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix("sb-fast-")) else {
            continue;
        };
        let owner = rest
            .split('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The shared Redis: a master, two replicas and three Sentinels.
#[derive(Clone, Debug)]
pub struct SharedRedis {
    /// `host:port` of each Sentinel.
    pub sentinels: Vec<String>,
    /// The default user's password (the Sentinels' too); the services use their ACL users.
    pub password: String,
}

static REDIS: Fixture<SharedRedis> = Fixture::new();

async fn start_redis() -> Result<(SharedRedis, (RedisSentinelCluster, tempfile::TempDir))> {
    let dir = fixture_dir("redis")?;
    let cluster = RedisSentinelCluster::start(dir.path()).await?;
    let shared = SharedRedis {
        sentinels: cluster
            .sentinels_env()
            .split(',')
            .map(str::to_owned)
            .collect(),
        password: REDIS_PASSWORD.to_owned(),
    };
    Ok((shared, (cluster, dir)))
}

/// The shared Redis with Sentinels (started on first use).
pub fn redis() -> SharedRedis {
    REDIS.get("Redis", start_redis)
}

/// The shared PostgreSQL server.
#[derive(Clone, Debug)]
pub struct SharedPostgres {
    pub port: u16,
}

static POSTGRES: Fixture<SharedPostgres> = Fixture::new();

async fn start_postgres() -> Result<(SharedPostgres, (Postgres, tempfile::TempDir))> {
    let dir = fixture_dir("postgres")?;
    let port = free_port();
    let pg = Postgres::start(&dir.path().join("pg"), port, &dir.path().join("logs")).await?;
    Ok((SharedPostgres { port }, (pg, dir)))
}

/// The shared PostgreSQL (started on first use).
pub fn postgres() -> SharedPostgres {
    POSTGRES.get("PostgreSQL", start_postgres)
}

/// A new, empty database on the shared PostgreSQL; returns its URL. `hint` goes into the name.
pub async fn fresh_database(hint: &str) -> String {
    // The getters block (until the fixture is up), which is fine here: the fixture runs on
    // its own thread and runtime.
    let port = postgres().port;
    let name = format!("t_{}", unique(hint).replace(['-', '.'], "_"));
    let output = tokio::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-U",
            "switchboard",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
        ])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .await
        .expect("running psql");
    assert!(
        output.status.success(),
        "CREATE DATABASE {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    format!("postgres://switchboard@127.0.0.1:{port}/{name}")
}

static BROKER: Fixture<String> = Fixture::new();

async fn start_broker() -> Result<(String, (Broker, tempfile::TempDir))> {
    let dir = fixture_dir("broker")?;
    let port = free_port();
    // No supervisor: a test binary lives seconds, and its probes would cost the two cores.
    let broker = Broker::start_with(
        &dir.path().join("data"),
        port,
        &dir.path().join("logs"),
        None,
    )
    .await?;
    Ok((broker.bootstrap(), (broker, dir)))
}

/// The shared broker's `host:port` (started on first use).
pub fn broker() -> String {
    BROKER.get("broker", start_broker)
}

/// Starts every shared fixture in the background without waiting, so they start side by side
/// rather than one after the other. Call it first thing in a test that needs several.
pub fn warm_up() {
    REDIS.start("Redis", start_redis);
    POSTGRES.start("PostgreSQL", start_postgres);
    BROKER.start("broker", start_broker);
}

/// An id unique within this test binary, usable in Redis keys, topic and database names:
/// `name` (lowercased, other characters than `[a-z0-9]` become `-`) and a counter.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{clean}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Environment variables for a service under test, by their documented names (the services'
/// `pub const`s and `docs/configuration.md`). A test builds the service's config from them with
/// [`Vars::config`] and the service's own `from_lookup`, so the fast tier runs the same parsing
/// and defaults as a deployment; only what a test sets differs from the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    pub fn new() -> Self {
        Vars::default()
    }

    /// Sets `name` to `value` (replacing an earlier value).
    pub fn set(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.0.insert(name.to_owned(), value.to_string());
        self
    }

    /// These variables with `name` set to `value`.
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.set(name, value);
        self
    }

    /// These variables with `other`'s added (`other` wins on a name set in both).
    pub fn merge(mut self, other: Vars) -> Self {
        self.0.extend(other.0);
        self
    }

    /// The value of `name`, `None` when unset: the lookup a `from_lookup` reads.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// Every variable, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Names set here that none of `tables` lists (a misspelt or foreign name, which the
    /// service would silently ignore).
    pub fn unknown_names(&self, tables: &[EnvTable]) -> Vec<String> {
        self.0
            .keys()
            .filter(|name| !tables.iter().flat_map(|t| t.vars).any(|v| v.name == *name))
            .cloned()
            .collect()
    }

    /// A service's config from these variables: `from_lookup` is its `XConfig::from_lookup`,
    /// `tables` its `config::HELP_TABLES` (every name set here must be one of them). Panics
    /// on an unknown name or a value the service refuses.
    pub fn config<C, E: std::fmt::Display>(
        &self,
        tables: &[EnvTable],
        from_lookup: impl FnOnce(Lookup<'_>) -> Result<C, E>,
    ) -> C {
        let unknown = self.unknown_names(tables);
        assert!(
            unknown.is_empty(),
            "variables the service does not read: {unknown:?}"
        );
        let lookup = |name: &str| self.get(name);
        match from_lookup(&lookup) {
            Ok(config) => config,
            Err(e) => panic!("the test's variables are refused: {e}"),
        }
    }
}

/// Redis variables for `service` (one of [`crate::redis_cluster::SERVICE_USERS`], whose ACL
/// user it logs in as) in the test `id`: the shared Sentinels, keys under `sb:<id>:`.
pub fn redis_vars(service: &str, id: &str) -> Vars {
    let shared = redis();
    Vars::new()
        .with(SB_REDIS_SENTINELS, shared.sentinels.join(","))
        .with(SB_REDIS_MASTER_NAME, crate::MASTER_NAME)
        .with(SB_REDIS_PREFIX, format!("sb:{id}:"))
        .with(SB_REDIS_TIMEOUT_MS, 1500)
        .with(SB_REDIS_USERNAME, service_user(service))
        .with(SB_REDIS_PASSWORD, service_password(service))
        .with(SB_REDIS_SENTINEL_USERNAME, SENTINEL_CLIENT_USER)
        .with(SB_REDIS_SENTINEL_PASSWORD, SENTINEL_CLIENT_PASSWORD)
}

/// What every service reads, for `service` in the test `id`: [`redis_vars`], the fast tier's
/// secrets, dev mode (no origin checks, the default token policy: left unset).
pub fn common_vars(service: &str, id: &str) -> Vars {
    redis_vars(service, id)
        .with(SB_JWT_SECRET, JWT_SECRET)
        .with(SB_CLUSTER_SECRET, CLUSTER_SECRET)
        .with(SB_DEV_MODE, true)
}

/// Broker variables for the test `id`: the shared broker and topics of its own.
pub fn kafka_vars(id: &str) -> Vars {
    Vars::new()
        .with(SB_KAFKA_BROKERS, broker())
        .with(SB_MESSAGE_TOPIC, format!("sb.{id}.messages"))
        .with(SB_EVENTS_TOPIC, format!("sb.{id}.events"))
        .with(SB_HANDLER_TOPIC_PREFIX, format!("sb.{id}.handler."))
        .with(SB_KAFKA_LINGER_MS, 1)
        .with(SB_KAFKA_IDEMPOTENCE, false)
        .with(SB_KAFKA_REPLICATION_FACTOR, 1)
}

/// Redis settings for `service` in the test `id` ([`redis_vars`]), e.g. for a test's own
/// `SentinelRedis`.
pub fn redis_config(service: &str, id: &str) -> RedisConfig {
    redis_vars(service, id).config(&COMMON[1..2], RedisConfig::from_lookup)
}

/// A Redis client as `service`, under the key prefix of a fresh test id named after `name`,
/// with the shared Redis started: for tests that drive a store module directly. Only Redis:
/// a binary whose tests need nothing else (chat-state's, server-directory's) does not pay
/// for a PostgreSQL and a broker it never uses.
pub fn fresh_redis(service: &str, name: &str) -> switchboard_redis::SentinelRedis {
    switchboard_redis::SentinelRedis::new(redis_config(service, &unique(name)))
}

/// Broker settings for the test `id` ([`kafka_vars`]).
pub fn kafka_config(id: &str) -> KafkaConfig {
    kafka_vars(id).config(
        &[switchboard_config::tables::kafka::TABLE],
        KafkaConfig::from_lookup,
    )
}

/// Creates `topics` (each with `partitions`) on the shared broker; existing ones are fine.
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            new.iter(),
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => bail!("creating {topic}: {e}"),
        }
    }
    Ok(())
}

/// A client token for `user`, signed with [`JWT_SECRET`], valid for an hour. Tests name users
/// by literals: the one place their text is checked into a [`UserId`].
pub fn token(user: &str) -> String {
    let user_id = UserId::parse(user).expect("a valid user id");
    TokenKeys::new(JWT_SECRET.as_bytes())
        .mint(&user_id, chrono::Duration::hours(1))
        .expect("a valid user id")
        .0
}

/// The registry's variables for the test `id`: port 0, limits off, short dev tokens. Build
/// with `.config(registry::config::HELP_TABLES, RegistryConfig::from_lookup)`.
pub fn registry_vars(id: &str) -> Vars {
    common_vars("registry", id)
        .with(SB_REGISTRY_BIND, "127.0.0.1:0")
        .with(SB_SERVER_STALE_MS, 10_000)
        .with(SB_RESERVATION_TTL_MS, 10_000)
        .with(SB_DEV_TOKEN_TTL_SECS, 60)
        .with(SB_ASSIGN_RATE_PER_IP, 0)
        .with(SB_ASSIGN_BURST_PER_IP, 0)
        .with(SB_RESERVATIONS_PER_IP, 0)
}

/// The message service's variables for the test `id`: port 0, storing into `database_url`
/// (see [`fresh_database`]), a small pool and groups, quick log fetches.
pub fn message_service_vars(id: &str, database_url: &str) -> Vars {
    common_vars("message-service", id)
        .merge(kafka_vars(id))
        .with(SB_MESSAGE_BIND, "127.0.0.1:0")
        .with(SB_DATABASE_URL, database_url)
        .with(SB_DB_MAX_CONNECTIONS, 4)
        .with(SB_MAX_GROUP_MEMBERS, 50)
        .with(SB_INGEST_FETCH_WAIT_MS, 50)
}

/// A socket manager's variables for the test `id`: port 0, asking `message_service_url` for
/// members and the settled log; one partition per topic, handler topics kept (tansu 0.6 must
/// not delete topics), no replica acks needed beyond the one replica.
pub fn manager_vars(id: &str, message_service_url: &str) -> Vars {
    common_vars("socket-manager", id)
        .merge(kafka_vars(id))
        .with(SB_MANAGER_BIND, "127.0.0.1:0")
        .with(SB_MESSAGE_SERVICE_URL, message_service_url)
        .with(SB_LOCK_TTL_MS, 6_000)
        .with(SB_LOCK_WAIT_MS, 3_000)
        .with(SB_PRODUCE_TIMEOUT_MS, 5_000)
        .with(SB_IDEMPOTENCY_TTL_SECS, 3_600)
        .with(SB_USER_MAPPING_TTL_MS, 60_000)
        // The tests' socket servers are not in the directory: the janitor reaps them this long
        // after it first sees them, so it must outlast a test.
        .with(SB_HANDLER_TTL_MS, 60_000)
        .with(SB_MESSAGE_PARTITIONS, 1)
        .with(SB_PRESENCE_MAX_GROUP, 100)
        .with(SB_DELETE_HANDLER_TOPICS, false)
        .with(SB_SEQ_REPLICA_ACKS, 1)
        .with(SB_SEQ_REPLICA_ACK_TIMEOUT_MS, 500)
        .with(SB_MANAGER_ID, format!("manager-{id}"))
}

/// A socket server's variables for the test `id`: port 0, registering with `registry_url` and
/// sending to `manager_urls` (messaging off when empty), quick reconciles and heartbeats.
pub fn socket_server_vars(id: &str, registry_url: &str, manager_urls: &[String]) -> Vars {
    let vars = common_vars("socket-server", id)
        .merge(kafka_vars(id))
        .with(SB_SOCKET_BIND, "127.0.0.1:0")
        .with(SB_SERVER_ID, format!("socket-{id}"))
        .with(SB_REGISTRY_URL, registry_url)
        .with(SB_MAX_CONNECTIONS, 1_000)
        .with(SB_MAX_FRAME_BYTES, 64 * 1024)
        .with(SB_MAX_BODY_BYTES, 16 * 1024)
        .with(SB_HEARTBEAT_INTERVAL_MS, 5_000)
        .with(SB_CLIENT_TIMEOUT_MS, 15_000)
        .with(SB_RECONCILE_INTERVAL_MS, 200)
        .with(SB_OUTBOUND_QUEUE, 256)
        .with(SB_CLIENT_RATE_PER_SEC, 200)
        .with(SB_CLIENT_RATE_BURST, 400)
        .with(SB_SHUTDOWN_GRACE_MS, 1_000)
        .with(SB_MESSAGING_ENABLED, !manager_urls.is_empty())
        .with(SB_MANAGER_LANES, 2)
        .with(SB_CONNECTS_PER_IP_PER_SEC, 0)
        .with(SB_CONNECTS_BURST_PER_IP, 0)
        .with(SB_MAX_CONNECTIONS_PER_USER, 10)
        .with(SB_MANAGER_LANE_BATCHES, 1)
        .with(SB_HANDLER_HEARTBEAT_MS, 500)
        .with(SB_MAPPING_RENEW_MS, 300_000);
    if manager_urls.is_empty() {
        vars
    } else {
        vars.with(SB_MANAGER_URLS, manager_urls.join(","))
    }
}

/// A health checker's variables for the test `id`: port 0, probing every `interval` (whole
/// milliseconds) and evicting after two misses.
pub fn health_checker_vars(id: &str, interval: Duration) -> Vars {
    common_vars("health-checker", id)
        .with(SB_HEALTH_BIND, "127.0.0.1:0")
        .with(SB_PROBE_INTERVAL_MS, interval.as_millis())
        .with(
            SB_PROBE_TIMEOUT_MS,
            interval.min(Duration::from_millis(400)).as_millis(),
        )
        .with(SB_FAILURE_THRESHOLD, 2)
}
