//! [`Postgres`]: a throwaway PostgreSQL server (Debian's binaries) on a loopback port, with a
//! `switchboard` role (trust auth) and database.
//!
//! PostgreSQL refuses to run as root, so when the harness is root the server runs as the
//! `postgres` system user through `setpriv`. The kernel clears a process's parent-death signal
//! when its user changes, so `setpriv` sets it again after the change (`--pdeathsig`): without
//! that, every test binary's shared server outlived it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::ManagedProcess;

#[derive(Debug)]
pub struct Postgres {
    pub process: ManagedProcess,
    port: u16,
    dir: PathBuf,
    log_dir: PathBuf,
    restarts: u32,
    /// Extra `-c name=value` settings of the server ([`Self::start_tls`]), kept for restarts.
    settings: Vec<String>,
}

/// The directory holding `initdb` and `postgres` (newest installed major version).
pub fn postgres_bin_dir() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run scripts/install-deps.sh)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/lib/postgresql/*/bin/postgres found")
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
}

/// `program args` as the postgres user when we are root.
fn as_postgres(program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    if is_root() {
        let mut full = vec![
            "--reuid=postgres".to_owned(),
            "--regid=postgres".to_owned(),
            "--init-groups".to_owned(),
            "--pdeathsig=SIGKILL".to_owned(),
            program.display().to_string(),
        ];
        full.extend(args.iter().cloned());
        (PathBuf::from("setpriv"), full)
    } else {
        (program.to_path_buf(), args.to_vec())
    }
}

impl Postgres {
    pub async fn start(dir: &Path, port: u16, log_dir: &Path) -> Result<Self> {
        Self::start_named(dir, port, log_dir, "postgres", &[]).await
    }

    /// [`Self::start`] with TLS on (`ssl=on`) and the server certificate `cert` and key `key`
    /// (copied next to the data directory, readable by the server only, as PostgreSQL
    /// demands). Plain connections are still accepted (the harness's `psql` checks use
    /// `sslmode=prefer`); whether a client verifies is the client's `sslmode`.
    pub async fn start_tls(
        dir: &Path,
        port: u16,
        log_dir: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self> {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        let (server_cert, server_key) = (tls_dir.join("server.pem"), tls_dir.join("server.key"));
        std::fs::copy(cert, &server_cert).context("copying the server certificate")?;
        std::fs::copy(key, &server_key).context("copying the server key")?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600))?;
        }
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&tls_dir)
                .status()?;
            if !status.success() {
                bail!("chown of {} failed", tls_dir.display());
            }
        }
        let settings = [
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", server_cert.display()),
            format!("ssl_key_file={}", server_key.display()),
        ];
        Self::start_named(dir, port, log_dir, "postgres-tls", &settings).await
    }

    /// Kills the server (SIGKILL, as a crash would), waits `down_for`, and starts it again on
    /// the same port and data directory (crash recovery included).
    pub async fn restart(&mut self, down_for: Duration) -> Result<()> {
        self.process.kill9();
        let _ = self.process.wait_exit(Duration::from_secs(5)).await;
        tokio::time::sleep(down_for).await;
        self.restarts += 1;
        let name = format!("postgres-{}", self.restarts);
        let restarted =
            Self::start_named(&self.dir, self.port, &self.log_dir, &name, &self.settings).await?;
        let Postgres { process, .. } = restarted;
        self.process = process;
        Ok(())
    }

    async fn start_named(
        dir: &Path,
        port: u16,
        log_dir: &Path,
        name: &str,
        settings: &[String],
    ) -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(dir)?;
        if is_root() {
            // The server user must reach its data directory through every parent.
            let mut p = Some(dir);
            while let Some(path) = p {
                if path == Path::new("/") {
                    break;
                }
                let _ = std::process::Command::new("chmod")
                    .arg("o+x")
                    .arg(path)
                    .status();
                p = path.parent();
            }
            std::fs::create_dir_all(&data)?;
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()?;
            if !status.success() {
                bail!("chown of {} failed", data.display());
            }
        }
        if !data.join("PG_VERSION").exists() {
            let (program, args) = as_postgres(
                &bin.join("initdb"),
                &[
                    "-D".into(),
                    data.display().to_string(),
                    "-U".into(),
                    "switchboard".into(),
                    "--auth=trust".into(),
                    "-E".into(),
                    "UTF8".into(),
                    "--no-sync".into(),
                ],
            );
            let output = std::process::Command::new(&program)
                .args(&args)
                .output()
                .context("running initdb")?;
            if !output.status.success() {
                bail!(
                    "initdb failed: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        let mut server_args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "max_connections=200".into(),
            // A killed server loses nothing the OS holds, so fsync can stay off here (no
            // test crashes the OS); but a COMMIT must not return before its WAL reaches
            // the OS: with synchronous_commit=off a kill -9 loses the last commits, and
            // the message service has already committed their log offsets (the nemesis
            // suite's PostgreSQL kill found exactly that).
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "synchronous_commit=on".into(),
        ];
        for setting in settings {
            server_args.push("-c".into());
            server_args.push(setting.clone());
        }
        let (program, args) = as_postgres(&bin.join("postgres"), &server_args);
        let process = ManagedProcess::spawn(name, program, &args, &[], log_dir)?;
        let pg = Postgres {
            process,
            port,
            dir: dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            restarts: 0,
            settings: settings.to_vec(),
        };
        pg.wait_ready(Duration::from_secs(30)).await?;
        Ok(pg)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = tokio::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "switchboard", "-d", "postgres", "-tAc"])
                .arg("SELECT 1 FROM pg_database WHERE datname = 'switchboard'")
                .output()
                .await?;
            if output.status.success() {
                if String::from_utf8_lossy(&output.stdout).trim() != "1" {
                    let created = tokio::process::Command::new("psql")
                        .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                        .args(["-U", "switchboard", "-d", "postgres", "-c"])
                        .arg("CREATE DATABASE switchboard")
                        .output()
                        .await?;
                    if !created.status.success() {
                        bail!(
                            "creating the database failed: {}",
                            String::from_utf8_lossy(&created.stderr)
                        );
                    }
                }
                return Ok(());
            }
            if Instant::now() > deadline || !self.process.is_running() {
                bail!(
                    "postgres did not become ready: {}",
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://switchboard@127.0.0.1:{}/switchboard", self.port)
    }

    /// Runs `sql` in the `switchboard` database with `psql` and returns its output unaligned,
    /// without headers (`-tA`), trimmed: for tests that read what the services stored, e.g. a
    /// `SELECT json_agg(...)` answered as one line of JSON.
    pub async fn query(&self, sql: &str) -> Result<String> {
        let output = tokio::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "switchboard", "-d", "switchboard"])
            .args(["-v", "ON_ERROR_STOP=1", "-tAc"])
            .arg(sql)
            .output()
            .await
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server run as the `postgres` user dies with the process that started it, as every
    /// other child of the harness does (only root switches users, so elsewhere this passes).
    #[test]
    fn a_server_run_as_postgres_dies_with_its_parent() {
        if !is_root() {
            return;
        }
        let (program, args) = as_postgres(Path::new("/bin/sleep"), &["300".to_owned()]);
        // A shell starts it in the background, waits (up to 5 s) until setpriv has exec'd
        // `sleep` (the death signal is set by then), and exits: its parent dies.
        let output = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(
                r#""$0" "$@" >/dev/null 2>&1 & echo $!
                   for _ in $(seq 500); do [ "$(cat /proc/$!/comm 2>/dev/null)" = sleep ] && break; sleep 0.01; done"#,
            )
            .arg(&program)
            .args(&args)
            .output()
            .expect("running sh");
        let pid: u32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("the background pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Gone, or a zombie nobody reaps (a container's init may not): either way dead.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(')').next().map(str::to_owned))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_owned));
            if matches!(state.as_deref(), None | Some("Z" | "X")) {
                return;
            }
            if Instant::now() > deadline {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                panic!("the process run as postgres outlived its parent (state {state:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
