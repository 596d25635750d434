//! [`ManagedProcess`]: a child process whose output goes to a log file and which can never
//! outlive the harness.
//!
//! On Linux every child gets `PR_SET_PDEATHSIG(SIGKILL)` before `exec`, so the kernel kills it
//! when the harness dies, however it dies (even SIGKILL). The death signal is tied to the
//! *thread* that forked, so all children are forked by one dedicated spawner thread that
//! lives as long as the process (a child forked from a tokio worker or blocking-pool thread
//! would be killed when that thread exits). Each child also gets its own process group, so a
//! terminal's Ctrl-C reaches only the harness, which then stops the children in order.

// `pre_exec` (prctl/setpgid/getppid between fork and exec) and `kill(2)` are FFI calls that
// need `unsafe`; this module is the only place the crate allows it.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use switchboard_config::names::PREFIX;

/// The Unix user and group a child runs as ([`ManagedProcess::spawn_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A running child process; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    log_path: PathBuf,
}

impl ManagedProcess {
    /// Starts `program args...` with stdout and stderr appended to `<log_dir>/<name>.log`.
    ///
    /// The environment is the harness's own minus every `SB_*` variable (so a developer's
    /// shell cannot leak configuration into tests), plus `envs`, applied in order (later
    /// entries win).
    pub fn spawn<S: AsRef<OsStr>>(
        name: &str,
        program: impl AsRef<Path>,
        args: &[S],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        Self::spawn_as(name, program, args, envs, log_dir, None)
    }

    /// [`Self::spawn`], running the child as `run_as` (user and group; supplementary groups
    /// dropped) when given. The log file is still opened by the harness, so the user needs no
    /// write access to it, only read and execute access to `program` (and its directories).
    /// The child keeps the harness's working directory. Changing user needs root.
    pub fn spawn_as<S: AsRef<OsStr>>(
        name: &str,
        program: impl AsRef<Path>,
        args: &[S],
        envs: &[(String, String)],
        log_dir: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self> {
        let program = program.as_ref();
        if program.components().count() > 1 && !program.exists() {
            bail!(
                "{name}: binary {} not found (build it first: cargo build --workspace --bins, \
                 or point SWITCHBOARD_BIN_DIR at the directory holding it)",
                program.display()
            );
        }
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating log dir {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let rendered_args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        writeln!(
            log,
            "=== {name}: starting {} {}",
            program.display(),
            rendered_args.join(" ")
        )?;

        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(PREFIX) {
                cmd.env_remove(key);
            }
        }
        for (key, value) in envs {
            cmd.env(key, value);
        }
        if let Some(RunAs { uid, gid }) = run_as {
            // std applies these in the child before the `pre_exec` closure below, so the
            // parent-death signal is set after the change of user (which would clear it).
            cmd.uid(uid).gid(gid);
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid, setpgid) without allocating.
        unsafe {
            cmd.pre_exec(move || {
                #[cfg(target_os = "linux")]
                {
                    if libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) == -1
                    {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died between fork and prctl: then nobody would
                    // ever send the death signal.
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                }
                let _ = parent;
                if libc::setpgid(0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_from_spawner_thread(cmd)
            .with_context(|| format!("{name}: spawning {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Mutex::new(child),
            log_path,
        })
    }

    /// The name given at spawn (also the log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The file stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// True while the child has not exited.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// SIGKILL and reap, as a crash would. A no-op if it already exited.
    pub fn kill9(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM (graceful shutdown) without waiting; see [`Self::wait_exit`].
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` unless the child has already been reaped (its pid may be reused then).
    pub fn signal(&self, signal: libc::c_int) {
        let mut child = self.child();
        if let Ok(None) = child.try_wait() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child; the lock held
            // prevents a concurrent reap between the check and the call.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub async fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.sigterm();
        if let Some(status) = self.wait_exit(grace).await {
            return Some(status);
        }
        self.kill9();
        self.exit_status()
    }

    /// The last `lines` lines of the log file (at most the last 64 KiB are read).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of a text file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Forks `cmd` on the process-lifetime spawner thread (see the module docs for why).
fn spawn_from_spawner_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-support-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}
