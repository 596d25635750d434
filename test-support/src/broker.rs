//! [`Broker`]: a Kafka-protocol broker for tests and the local stack: `tansu` (crates.io),
//! storing into SQLite so a restart keeps every acknowledged record.
//!
//! The binary is found at `$SWITCHBOARD_TANSU`, else in the cache `scripts/install-deps.sh`
//! installs into (`~/.cache/switchboard/tansu/bin/tansu`), else on `PATH`.
//! `$SWITCHBOARD_TANSU_STORAGE` replaces the storage engine URL, for experiments only (e.g.
//! `memory://tansu/`, which loses everything on a restart).
//!
//! # Supervision
//!
//! tansu 0.6 can die, and it can *wedge*: after a stall during which idempotent producers'
//! requests time out, its storage task panics and the process stays up answering every
//! produce with an error (docs/broker.md). Neither may leave the system down silently, so
//! [`Broker::start`] also starts a supervisor (a thread of its own, independent of the
//! caller's runtime) that probes the broker every [`Supervision::interval`]: produce one tiny
//! record to [`PROBE_TOPIC`] and fetch it back. It restarts the broker (SIGKILL, then start
//! again on the same port and storage, as [`Broker::restart`] does) when
//!
//! - the process has exited and [`Supervision::failures`] ticks in a row found it gone, or
//! - [`Supervision::failures`] probes in a row failed while it was running, and either its log
//!   shows a panic or the probes have been failing for [`Supervision::unhealthy_after`].
//!
//! A process stopped by SIGSTOP (state `T` in `/proc`) is never restarted and its failures do
//! not count: a test that stalls the broker on purpose gets it back by itself after SIGCONT
//! (unless it wedged, which is then restarted like any other failure). [`Broker::restart`]
//! and the supervisor take turns (one lock), so a test's own restart never races a
//! supervised one; [`Broker::supervise`] pauses supervision for a test that wants the broker
//! to stay down. Every supervised restart is printed to stderr and appended to
//! `<log dir>/broker-supervisor.log`, and counted in [`Broker::restarts`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::process::ManagedProcess;

/// The topic the supervisor's probe writes to (one partition; never deleted, since tansu 0.6
/// corrupts its state when a topic is deleted).
pub const PROBE_TOPIC: &str = "sb.probe";

pub fn tansu_path() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cached = PathBuf::from(home).join(".cache/switchboard/tansu/bin/tansu");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("tansu")
}

/// How the supervisor watches the broker (see the module docs).
#[derive(Clone, Debug)]
pub struct Supervision {
    /// Time between probes (default 1 s).
    pub interval: Duration,
    /// How long one probe (produce + fetch back) may take (default 3 s).
    pub probe_timeout: Duration,
    /// Consecutive failed probes (or ticks finding the process gone) before a restart
    /// (default 3).
    pub failures: u32,
    /// A running broker whose log shows no panic is restarted only once its probes have been
    /// failing this long (default 10 s), so a slow broker under load is not restarted.
    pub unhealthy_after: Duration,
    /// The first restart happens as soon as the rules above say so; if the new process never
    /// passes a probe, the next restart waits `backoff` (default 2 s), the one after twice
    /// that, and so on up to `max_backoff` (default 60 s). A passed probe resets it.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            failures: 3,
            unhealthy_after: Duration::from_secs(10),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// At most this many broker processes per [`Broker`] (the first and its restarts).
const MAX_PROCESSES: usize = 1024;

/// What the broker and its supervisor share.
struct Shared {
    /// Every process started, in order; `current` indexes the live one. Append-only, so a
    /// `&ManagedProcess` handed out stays valid (it may then be a process since replaced).
    processes: Box<[OnceLock<ManagedProcess>]>,
    current: AtomicUsize,
    /// Held for a whole restart (kill, pause, start, wait), by [`Broker::restart`] and by the
    /// supervisor alike.
    restart_lock: tokio::sync::Mutex<()>,
    /// Restarts done by the supervisor.
    supervised_restarts: AtomicU32,
    supervising: AtomicBool,
    /// Set once the [`Broker`] is dropped: nothing may start a process after that.
    closed: AtomicBool,
    port: u16,
    args: Vec<String>,
    log_dir: PathBuf,
}

impl Shared {
    fn generation(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    fn current(&self) -> &ManagedProcess {
        self.processes[self.generation()]
            .get()
            .expect("the current slot is always filled")
    }

    /// Kills the current process, waits `down_for`, starts a new one and waits until it
    /// listens. The caller holds `restart_lock`.
    async fn replace(&self, down_for: Duration) -> Result<()> {
        self.current().kill9();
        tokio::time::sleep(down_for).await;
        let n = self.generation() + 1;
        let Some(slot) = self.processes.get(n) else {
            bail!("the broker was restarted {MAX_PROCESSES} times; not again");
        };
        let process = spawn(&self.args, &self.log_dir, &format!("broker-{n}"))?;
        if slot.set(process).is_err() {
            bail!("broker slot {n} already taken");
        }
        self.current.store(n, Ordering::SeqCst);
        // `Drop for Broker` sets `closed`, then kills the current process: one of the two
        // sees the other's write, so the new process cannot outlive the broker.
        if self.closed.load(Ordering::SeqCst) {
            self.current().kill9();
            bail!("the broker was dropped");
        }
        self.wait_listening(Duration::from_secs(30)).await
    }

    async fn wait_listening(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            let process = self.current();
            if Instant::now() > deadline || !process.is_running() {
                bail!("broker did not start: {}", process.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A line to stderr and to `<log dir>/broker-supervisor.log`.
    fn note(&self, line: &str) {
        eprintln!("broker supervisor (127.0.0.1:{}): {line}", self.port);
        if let Ok(mut file) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join("broker-supervisor.log"))
        {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let _ = writeln!(file, "[{:.3}] {line}", since_epoch.as_secs_f64());
        }
    }
}

/// The broker's process: dereferences to the [`ManagedProcess`] running *now*, so
/// `broker.process.signal(libc::SIGSTOP)`, `broker.process.kill9()`, `broker.process.pid()`
/// and `&broker.process` as a `&ManagedProcess` all work. After a restart (by a test or the
/// supervisor) that is a new process (`broker-N`, with its own pid and log file); a reference
/// taken earlier still points at the old, dead one.
pub struct BrokerProcess {
    shared: Arc<Shared>,
}

impl std::ops::Deref for BrokerProcess {
    type Target = ManagedProcess;

    fn deref(&self) -> &ManagedProcess {
        self.shared.current()
    }
}

impl std::fmt::Debug for BrokerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BrokerProcess")
            .field(self.shared.current())
            .finish()
    }
}

pub struct Broker {
    /// The current process (see [`BrokerProcess`]): `broker.process.signal(libc::SIGSTOP)`,
    /// `broker.process.kill9()`, ...
    pub process: BrokerProcess,
    shared: Arc<Shared>,
    /// Tells the supervisor thread to stop (dropped or set with the broker).
    stop_supervisor: Option<tokio::sync::watch::Sender<bool>>,
}

impl Broker {
    /// Starts tansu on `127.0.0.1:port`, storing into `dir/tansu.db`, with the default
    /// [`Supervision`].
    pub async fn start(dir: &Path, port: u16, log_dir: &Path) -> Result<Self> {
        Self::start_with(dir, port, log_dir, Some(Supervision::default())).await
    }

    /// [`Self::start`] with the given supervision, or none.
    pub async fn start_with(
        dir: &Path,
        port: u16,
        log_dir: &Path,
        supervision: Option<Supervision>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let storage = std::env::var("SWITCHBOARD_TANSU_STORAGE")
            .ok()
            .filter(|s| !s.trim().is_empty())
            // tansu drops one leading slash of the path, so an absolute path needs four.
            .unwrap_or_else(|| format!("sqlite:///{}", dir.join("tansu.db").display()));
        let listener = format!("tcp://127.0.0.1:{port}");
        let args = vec![
            "broker".to_owned(),
            "--listener-url".to_owned(),
            listener.clone(),
            "--advertised-listener-url".to_owned(),
            listener,
            "--storage-engine".to_owned(),
            storage,
        ];
        let process = spawn(&args, log_dir, "broker")?;
        let processes: Box<[OnceLock<ManagedProcess>]> =
            (0..MAX_PROCESSES).map(|_| OnceLock::new()).collect();
        let _ = processes[0].set(process);
        let shared = Arc::new(Shared {
            processes,
            current: AtomicUsize::new(0),
            restart_lock: tokio::sync::Mutex::new(()),
            supervised_restarts: AtomicU32::new(0),
            supervising: AtomicBool::new(supervision.is_some()),
            closed: AtomicBool::new(false),
            port,
            args,
            log_dir: log_dir.to_path_buf(),
        });
        let mut broker = Broker {
            process: BrokerProcess {
                shared: shared.clone(),
            },
            shared,
            stop_supervisor: None,
        };
        broker
            .shared
            .wait_listening(Duration::from_secs(30))
            .await?;
        if let Some(supervision) = supervision {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let shared = broker.shared.clone();
            std::thread::Builder::new()
                .name("broker-supervisor".into())
                .spawn(move || supervise_thread(shared, supervision, rx))
                .context("starting the broker supervisor thread")?;
            broker.stop_supervisor = Some(tx);
        }
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    /// Stops the broker (SIGKILL) and starts it again on the same port and storage, after
    /// `down_for`. The supervisor waits meanwhile (it never restarts a broker that a test is
    /// restarting).
    pub async fn restart(&mut self, down_for: Duration) -> Result<()> {
        let _turn = self.shared.restart_lock.lock().await;
        self.shared.replace(down_for).await
    }

    /// Pauses (`false`) or resumes (`true`) supervision, e.g. around a test that keeps the
    /// broker down on purpose. Has no effect on a broker started without supervision.
    pub fn supervise(&self, on: bool) {
        self.shared.supervising.store(on, Ordering::SeqCst);
    }

    /// Whether the supervisor is watching (started with supervision and not paused).
    pub fn is_supervised(&self) -> bool {
        self.stop_supervisor.is_some() && self.shared.supervising.load(Ordering::SeqCst)
    }

    /// How many times the supervisor has restarted the broker (not counting
    /// [`Self::restart`]).
    pub fn restarts(&self) -> u32 {
        self.shared.supervised_restarts.load(Ordering::SeqCst)
    }

    /// One probe, as the supervisor does it: produce a record to [`PROBE_TOPIC`] and fetch it
    /// back, all within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        let mut probe = Probe::new(&self.bootstrap(), timeout)?;
        let result = probe.run().await;
        drop_off_runtime(probe);
        result
    }

    /// Probes until one succeeds or `timeout` passes; returns how long it took.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let mut probe = Probe::new(&self.bootstrap(), Duration::from_secs(2))?;
        let result = loop {
            match probe.run().await {
                Ok(()) => break Ok(started.elapsed()),
                Err(e) if started.elapsed() >= timeout => {
                    break Err(e.context(format!("broker not healthy after {timeout:?}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        drop_off_runtime(probe);
        result
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap())
            .field("process", &self.process)
            .field("supervised", &self.is_supervised())
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_supervisor.take() {
            let _ = tx.send(true);
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.current().kill9();
    }
}

/// Tokio's variable for a runtime's worker threads, which tansu's runtime reads.
const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

fn spawn(args: &[String], log_dir: &Path, name: &str) -> Result<ManagedProcess> {
    let program = tansu_path();
    ManagedProcess::spawn(
        name,
        program,
        args,
        &[
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            // Plain log files (tracing-subscriber honours NO_COLOR).
            ("NO_COLOR".to_owned(), "1".to_owned()),
            // Every storage operation runs on one task anyway; with one worker thread the
            // connections hand requests to it without waking another thread, which was a
            // quarter of the broker's CPU (docs/performance.md, run 15).
            (TOKIO_WORKER_THREADS.to_owned(), "1".to_owned()),
        ],
        log_dir,
    )
}

/// True if `pid` is stopped (SIGSTOP; state `T` or `t` in `/proc/<pid>/stat`).
fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may contain spaces and parentheses.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

/// Dropping rdkafka clients can block briefly (flush, close), so it happens off the runtime.
fn drop_off_runtime<T: Send + 'static>(value: T) {
    std::thread::spawn(move || drop(value));
}

/// A producer, an admin client and a consumer for [`PROBE_TOPIC`].
struct Probe {
    producer: FutureProducer,
    consumer: StreamConsumer,
    admin: AdminClient<DefaultClientContext>,
    topic_created: bool,
    timeout: Duration,
    counter: u64,
}

impl Probe {
    fn new(bootstrap: &str, timeout: Duration) -> Result<Self> {
        let ms = timeout.as_millis().max(100).to_string();
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", bootstrap)
            // Never idempotent: the probe must not be what wedges tansu.
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", &ms)
            .set("request.timeout.ms", &ms)
            .set("socket.timeout.ms", &ms)
            .set("reconnect.backoff.max.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "2000");
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sb.probe.supervisor")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "100")
            .set("socket.timeout.ms", &ms)
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .context("creating the probe consumer")?;
        Ok(Probe {
            producer: producer.create().context("creating the probe producer")?,
            admin: producer
                .create()
                .context("creating the probe admin client")?,
            consumer,
            topic_created: false,
            timeout,
            counter: 0,
        })
    }

    /// Produce one record and fetch it back, within `self.timeout`.
    async fn run(&mut self) -> Result<()> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.run_inner()).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!("probe timed out after {timeout:?}")),
        }
    }

    async fn run_inner(&mut self) -> Result<()> {
        if !self.topic_created {
            let results = self
                .admin
                .create_topics(
                    [&NewTopic::new(PROBE_TOPIC, 1, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(self.timeout)),
                )
                .await
                .context("creating the probe topic")?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => bail!("creating {topic}: {code}"),
                }
            }
            self.topic_created = true;
        }
        self.counter += 1;
        let payload = format!("probe-{}-{}", std::process::id(), self.counter);
        let delivery = self
            .producer
            .send(
                FutureRecord::<(), _>::to(PROBE_TOPIC)
                    .partition(0)
                    .payload(&payload),
                self.timeout,
            )
            .await
            .map_err(|(e, _)| anyhow!("probe produce: {e}"))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(PROBE_TOPIC, 0, Offset::Offset(delivery.offset))?;
        self.consumer.assign(&assignment)?;
        loop {
            match self.consumer.recv().await {
                Ok(message) if message.payload() == Some(payload.as_bytes()) => return Ok(()),
                Ok(_) => {}
                // Transport errors are reported here while the client reconnects.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Reads a log file incrementally, remembering whether a panic was seen.
struct PanicWatch {
    path: PathBuf,
    offset: u64,
    panicked: bool,
}

impl PanicWatch {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            panicked: false,
        }
    }

    fn panicked(&mut self) -> bool {
        if !self.panicked {
            let _ = self.scan();
        }
        self.panicked
    }

    fn scan(&mut self) -> std::io::Result<()> {
        let mut file = File::open(&self.path)?;
        // Back up a little so a marker split across two reads is still found.
        let from = self.offset.saturating_sub(32);
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset = from + bytes.len() as u64;
        self.panicked = String::from_utf8_lossy(&bytes).contains("panicked at");
        Ok(())
    }
}

fn supervise_thread(
    shared: Arc<Shared>,
    supervision: Supervision,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            shared.note(&format!(
                "cannot start (no runtime: {e}); the broker is NOT supervised"
            ));
            return;
        }
    };
    runtime.block_on(supervise(shared, supervision, stop));
}

async fn supervise(
    shared: Arc<Shared>,
    supervision: Supervision,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let bootstrap = format!("127.0.0.1:{}", shared.port);
    let mut probe: Option<Probe> = None;
    let mut watched = usize::MAX;
    let mut watch = PanicWatch::new(PathBuf::new());
    let mut failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    // Restarts since the last passed probe, and when the next may happen.
    let mut unhealthy_restarts = 0u32;
    let mut not_before = Instant::now();
    let mut held_off = false;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(supervision.interval) => {}
        }
        if *stop.borrow() || shared.closed.load(Ordering::SeqCst) {
            break;
        }
        let generation = shared.generation();
        let process = shared.current();
        if generation != watched {
            // A new process (first tick, or restarted): fresh clients, fresh counts.
            watched = generation;
            watch = PanicWatch::new(process.log_path().to_owned());
            failures = 0;
            failing_since = None;
            if let Some(old) = probe.take() {
                drop_off_runtime(old);
            }
        }
        if !shared.supervising.load(Ordering::SeqCst) || is_stopped(process.pid()) {
            failures = 0;
            failing_since = None;
            continue;
        }
        let reason = if let Some(status) = process.exit_status() {
            failures += 1;
            (failures >= supervision.failures).then(|| format!("the process exited ({status})"))
        } else {
            let result = match &mut probe {
                Some(probe) => probe.run().await,
                None => match Probe::new(&bootstrap, supervision.probe_timeout) {
                    Ok(new) => probe.insert(new).run().await,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    failures = 0;
                    failing_since = None;
                    unhealthy_restarts = 0;
                    None
                }
                Err(e) => {
                    failures += 1;
                    let last_error = format!("{e:#}");
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if failures < supervision.failures {
                        None
                    } else if watch.panicked() {
                        Some(format!(
                            "it panicked (see its log) and {failures} probes in a row failed \
                             (last: {last_error})"
                        ))
                    } else if since.elapsed() >= supervision.unhealthy_after {
                        Some(format!(
                            "{failures} probes in a row failed over {:.1} s (last: {last_error})",
                            since.elapsed().as_secs_f64()
                        ))
                    } else {
                        None
                    }
                }
            }
        };
        let Some(mut reason) = reason else { continue };
        if Instant::now() < not_before {
            if !held_off {
                held_off = true;
                shared.note(&format!(
                    "holding off a restart for {:.1} s ({unhealthy_restarts} restarts in a row \
                     without a passed probe): {reason}",
                    not_before
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                ));
            }
            continue;
        }
        if unhealthy_restarts > 0 && watch.panicked() {
            reason.push_str(
                "; it panicked again after the last restart, so a client is probably wedging \
                 it again (with tansu 0.6, an idempotent producer after a timeout: \
                 SB_KAFKA_IDEMPOTENCE must stay off, docs/broker.md)",
            );
        }
        // Take turns with `Broker::restart`; skip if someone replaced the process meanwhile,
        // or if it was stopped or supervision paused while we waited.
        let _turn = shared.restart_lock.lock().await;
        if shared.generation() != generation
            || shared.closed.load(Ordering::SeqCst)
            || !shared.supervising.load(Ordering::SeqCst)
            || is_stopped(process.pid())
        {
            continue;
        }
        let n = shared.supervised_restarts.fetch_add(1, Ordering::SeqCst) + 1;
        let backoff = supervision
            .backoff
            .saturating_mul(1 << unhealthy_restarts.min(16))
            .min(supervision.max_backoff);
        unhealthy_restarts += 1;
        not_before = Instant::now() + backoff;
        held_off = false;
        shared.note(&format!(
            "restarting the broker (supervised restart #{n}): {reason}; log of the old process: {}",
            process.log_path().display()
        ));
        match shared.replace(Duration::ZERO).await {
            Ok(()) => shared.note(&format!(
                "restarted: now pid {}, log {}",
                shared.current().pid(),
                shared.current().log_path().display()
            )),
            Err(e) => shared.note(&format!("restart #{n} failed: {e:#}")),
        }
    }
    if let Some(old) = probe.take() {
        drop_off_runtime(old);
    }
}
