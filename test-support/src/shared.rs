//! Fixtures for the fast test tier (docs/testing-fast-tier.md): one Redis with Sentinels, one
//! PostgreSQL and one broker, each started at most **once per test binary**, on a thread of
//! its own, the first time a test asks for it. The services then run in-process
//! (`Application::build` on port 0, zero-to-production's `spawn_app`), so a test costs
//! milliseconds, not the seconds of starting processes.
//!
//! Tests share the fixtures without seeing each other:
//!
//! - Redis: every test has its own key prefix `sb:<id>:` ([`redis_config`]); the services log
//!   in as their own ACL users, which are limited to `sb:*` keys, as in a deployment.
//! - PostgreSQL: every test gets a database of its own ([`fresh_database`], a `CREATE
//!   DATABASE` on the shared server).
//! - Broker: every test has its own topic names `sb.<id>.messages`, `sb.<id>.events` and
//!   `sb.<id>.handler.*` ([`kafka_config`]; the services take every topic name from
//!   `KafkaConfig`).
//!
//! `<id>` comes from [`unique`]. The processes are started with `PR_SET_PDEATHSIG` from their
//! fixture thread, which never ends, so they live exactly as long as the test binary.
//!
//! The per-service config builders (`registry_config`, `message_service_config`, ...) are
//! behind this crate's features of the same names, so a service's tests do not build the
//! other services.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchboard_kafka::KafkaConfig;
use switchboard_protocol::token::{TokenKeys, TokenPolicy};
use switchboard_service_kit::config::CommonConfig;
use switchboard_service_kit::redis_sentinel::{RedisAuth, RedisConfig};

use crate::redis_cluster::{service_password, service_user, RedisSentinelCluster, REDIS_PASSWORD};
use crate::{free_port, Broker, Postgres};

/// The JWT secret of every service a fast test builds ([`common_config`]).
pub const JWT_SECRET: &str = "a-jwt-secret-for-the-fast-tier-tests";
/// The cluster secret of every service a fast test builds ([`common_config`]).
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

fn fixture_dir(name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("sb-fast-{name}-"))
        .tempdir()
        .context("a temp dir")
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

/// Redis settings for `service` (one of [`crate::redis_cluster::SERVICE_USERS`], whose ACL
/// user it logs in as) in the test `id`: keys under `sb:<id>:`.
pub fn redis_config(service: &str, id: &str) -> RedisConfig {
    let shared = redis();
    RedisConfig {
        sentinels: shared.sentinels,
        master_name: crate::MASTER_NAME.into(),
        key_prefix: format!("sb:{id}:"),
        command_timeout: Duration::from_millis(1500),
        auth: RedisAuth {
            username: Some(service_user(service)),
            password: Some(service_password(service)),
        },
        sentinel_auth: RedisAuth {
            username: None,
            password: Some(shared.password),
        },
    }
}

/// What every service shares, for `service` in the test `id`: [`redis_config`], the fast
/// tier's secrets, dev mode, no origin checks.
pub fn common_config(service: &str, id: &str) -> CommonConfig {
    CommonConfig {
        redis: redis_config(service, id),
        jwt_secret: JWT_SECRET.into(),
        cluster_secret: CLUSTER_SECRET.into(),
        dev_mode: true,
        token_policy: TokenPolicy::default(),
        jwks: None,
        allowed_origins: Vec::new(),
    }
}

/// Broker settings for the test `id`: the shared broker and topics of its own.
pub fn kafka_config(id: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: broker(),
        message_topic: format!("sb.{id}.messages"),
        events_topic: format!("sb.{id}.events"),
        handler_topic_prefix: format!("sb.{id}.handler."),
        linger_ms: 1,
        idempotence: false,
        replication_factor: 1,
    }
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

/// A client token for `user_id`, signed with [`JWT_SECRET`], valid for an hour.
pub fn token(user_id: &str) -> String {
    TokenKeys::new(JWT_SECRET.as_bytes())
        .mint(user_id, chrono::Duration::hours(1))
        .expect("a valid user id")
        .0
}

#[cfg(feature = "registry")]
/// The registry for the test `id`, on port 0, with limits off.
pub fn registry_config(id: &str) -> registry::RegistryConfig {
    registry::RegistryConfig {
        common: common_config("registry", id),
        bind: "127.0.0.1:0".into(),
        stale_after_ms: 10_000,
        reservation_ttl_ms: 10_000,
        dev_token_ttl_secs: 60,
        assign_rate_per_ip: switchboard_service_kit::limits::Rate {
            per_sec: 0.0,
            burst: 0.0,
        },
        reservations_per_ip: 0,
    }
}

#[cfg(feature = "message-service")]
/// The message service for the test `id`, on port 0, storing into `database_url` (see
/// [`fresh_database`]).
pub fn message_service_config(
    id: &str,
    database_url: &str,
) -> message_service::MessageServiceConfig {
    message_service::MessageServiceConfig {
        common: common_config("message-service", id),
        kafka: kafka_config(id),
        bind: "127.0.0.1:0".into(),
        database_url: database_url.into(),
        db_max_connections: 4,
        max_group_members: 50,
        ingest_fetch_wait_ms: 50,
    }
}

#[cfg(feature = "socket-manager")]
/// A socket manager for the test `id`, on port 0, asking `message_service_url` for members
/// and the settled log; one partition per topic, handler topics kept (tansu 0.6 must not
/// delete topics), no replica acks needed.
pub fn manager_config(id: &str, message_service_url: &str) -> socket_manager::ManagerConfig {
    socket_manager::ManagerConfig {
        common: common_config("socket-manager", id),
        kafka: kafka_config(id),
        bind: "127.0.0.1:0".into(),
        message_service_url: message_service_url.into(),
        lock_ttl: Duration::from_millis(5_000),
        lock_wait: Duration::from_millis(3_000),
        produce_timeout_ms: 5_000,
        idempotency_ttl_secs: 3_600,
        user_mapping_ttl_ms: 60_000,
        handler_ttl_ms: 10_000,
        message_partitions: 1,
        presence_max_group: 100,
        delete_handler_topics: false,
        seq_replica_acks: 1,
        seq_replica_ack_timeout: Duration::from_millis(500),
        manager_id: format!("manager-{id}"),
    }
}

#[cfg(feature = "socket-server")]
/// A socket server for the test `id`, on port 0, registering with `registry_url` and sending
/// to `manager_urls` (messaging off when empty).
pub fn socket_server_config(
    id: &str,
    registry_url: &str,
    manager_urls: &[String],
) -> socket_server::SocketServerConfig {
    socket_server::SocketServerConfig {
        common: common_config("socket-server", id),
        bind: "127.0.0.1:0".into(),
        public_url: None,
        health_url: None,
        server_id: Some(format!("socket-{id}")),
        registry_url: registry_url.into(),
        max_connections: 1_000,
        max_frame_bytes: 64 * 1024,
        max_body_bytes: 16 * 1024,
        heartbeat_interval: Duration::from_secs(5),
        client_timeout: Duration::from_secs(15),
        reconcile_interval: Duration::from_millis(200),
        outbound_queue: 256,
        client_rate_per_sec: 200,
        client_rate_burst: 400,
        shutdown_grace: Duration::from_secs(1),
        messaging_enabled: !manager_urls.is_empty(),
        manager_urls: manager_urls.to_vec(),
        manager_lanes: 2,
        connects_per_ip: switchboard_service_kit::limits::Rate {
            per_sec: 0.0,
            burst: 0.0,
        },
        max_connections_per_user: 10,
        manager_lane_batches: 1,
        handler_heartbeat: Duration::from_millis(500),
        mapping_renew: Duration::from_secs(300),
        delivery_fetch_wait_ms: 20,
        kafka: kafka_config(id),
    }
}

#[cfg(feature = "health-checker")]
/// A health checker for the test `id`, on port 0, probing every `interval` and evicting after
/// two misses.
pub fn health_checker_config(id: &str, interval: Duration) -> health_checker::HealthCheckerConfig {
    health_checker::HealthCheckerConfig {
        common: common_config("health-checker", id),
        bind: "127.0.0.1:0".into(),
        probe_interval: interval,
        probe_timeout: interval.min(Duration::from_millis(400)),
        failure_threshold: 2,
    }
}
