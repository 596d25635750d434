//! [`Broker`]: a Kafka-protocol broker for tests and the local stack: `tansu` (crates.io),
//! storing into SQLite so a restart keeps every acknowledged record.
//!
//! The binary is found at `$SWITCHBOARD_TANSU`, else in the cache `scripts/install-deps.sh`
//! installs into (`~/.cache/switchboard/tansu/bin/tansu`), else on `PATH`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::ManagedProcess;

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

#[derive(Debug)]
pub struct Broker {
    pub process: ManagedProcess,
    port: u16,
    args: Vec<String>,
    log_dir: PathBuf,
    restarts: u32,
}

impl Broker {
    pub async fn start(dir: &Path, port: u16, log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let listener = format!("tcp://127.0.0.1:{port}");
        let args = vec![
            "broker".to_owned(),
            "--listener-url".to_owned(),
            listener.clone(),
            "--advertised-listener-url".to_owned(),
            listener,
            "--storage-engine".to_owned(),
            // tansu drops one leading slash of the path, so an absolute path needs four.
            format!("sqlite:///{}", dir.join("tansu.db").display()),
        ];
        let process = spawn(&args, log_dir, "broker")?;
        let broker = Broker {
            process,
            port,
            args,
            log_dir: log_dir.to_path_buf(),
            restarts: 0,
        };
        broker.wait_listening(Duration::from_secs(30)).await?;
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGKILL) and starts it again on the same port and storage.
    pub async fn restart(&mut self, down_for: Duration) -> Result<()> {
        self.process.kill9();
        tokio::time::sleep(down_for).await;
        self.restarts += 1;
        self.process = spawn(
            &self.args,
            &self.log_dir,
            &format!("broker-{}", self.restarts),
        )?;
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
            if Instant::now() > deadline || !self.process.is_running() {
                bail!("broker did not start: {}", self.process.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn(args: &[String], log_dir: &Path, name: &str) -> Result<ManagedProcess> {
    let program = tansu_path();
    ManagedProcess::spawn(
        name,
        program,
        args,
        &[("RUST_LOG".to_owned(), "warn".to_owned())],
        log_dir,
    )
}
