//! Every task a service runs has an owner; nothing is spawned bare (`tokio::spawn` is a
//! disallowed method, `clippy.toml`). Three kinds of owner:
//! - [`Workers`]: the tasks a service cannot live without (below);
//! - [`OwnedTask`]: a helper task that belongs to a value (a batcher's loop, a lease's renewal,
//!   a lane): aborted when its owner drops it, so it never outlives what it serves;
//! - [`TaskTracker`]: many short tasks of one kind (a socket server's connections), which a
//!   drain waits for by notification rather than by polling a counter.
//!
//! Background tasks a service cannot live without (a log appender, an ingest loop, a prober).
//!
//! Such a task ending while the service still answers HTTP is the worst failure: `/ready`
//! stays green while every request that needs it fails. So a service keeps their handles in
//! [`Workers`] and serves only until the first one exits; then it logs which task exited and
//! why (returned, panicked, cancelled), stops its HTTP server and returns an error, and the
//! process supervisor (compose's `restart`, Kubernetes) restarts it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
pub use tokio_util::task::TaskTracker;

use crate::shutdown::CancellationToken;

/// How long a clean shutdown waits for the tasks to finish their last work (an ingest
/// committing its offsets, an appender flushing) once the server has drained.
const TASKS_GRACE: Duration = Duration::from_secs(10);

/// Named tasks that must run as long as the service.
pub struct Workers {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    grace: Duration,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            grace: TASKS_GRACE,
        }
    }
}

/// Which task exited, and why.
#[derive(Debug, thiserror::Error)]
#[error("the {task} task exited ({why}) while the service was running")]
pub struct WorkerExited {
    pub task: &'static str,
    pub why: String,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a clean shutdown waits for the tasks (default [`TASKS_GRACE`]): a socket
    /// server's drain takes its own grace period plus the steps around it.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Spawns `task` under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Resolves when the next task exits (never, with no tasks).
    pub async fn first_exit(&mut self) -> WorkerExited {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, why) = match joined {
            Ok((id, ())) => (id, "it returned".to_owned()),
            Err(e) => (e.id(), why_failed(e)),
        };
        WorkerExited {
            task: self.names.remove(&id).unwrap_or("unnamed"),
            why,
        }
    }

    /// Runs `server` until `shutdown` (then drains it gracefully and gives the tasks
    /// [`TASKS_GRACE`] to finish) or until a task exits while the service is not shutting
    /// down: then logs which task and why, stops the server (in-flight requests would fail
    /// anyway) and answers the error. Tasks that end because of `shutdown` are not failures.
    pub async fn serve(
        mut self,
        server: actix_web::dev::Server,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let handle = server.handle();
        let mut server = server;
        loop {
            tokio::select! {
                served = &mut server => {
                    served.map_err(ServeError::Server)?;
                    break;
                }
                _ = shutdown.cancelled() => {
                    // The server future itself carries out the stop, so poll both.
                    let (_, served) = tokio::join!(handle.stop(true), &mut server);
                    served.map_err(ServeError::Server)?;
                    break;
                }
                exited = self.first_exit() => {
                    if shutdown.is_cancelled() {
                        continue;
                    }
                    tracing::error!(
                        task = exited.task,
                        why = %exited.why,
                        "a task the service needs exited; stopping so the process is restarted"
                    );
                    let _ = tokio::join!(handle.stop(false), &mut server);
                    return Err(ServeError::Worker(exited));
                }
            }
        }
        // Served to the end: let the tasks finish what they hold (bounded).
        let drained = tokio::time::timeout(self.grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                still_running = ?self.names.values().collect::<Vec<_>>(),
                "tasks did not finish within the shutdown grace; abandoning them"
            );
        }
        Ok(())
    }
}

/// A task that belongs to a value: aborted when the [`OwnedTask`] is dropped (a drop guard), or
/// awaited with [`OwnedTask::join`].
#[derive(Debug)]
pub struct OwnedTask {
    name: &'static str,
    handle: Option<JoinHandle<()>>,
}

impl OwnedTask {
    /// Spawns `task` under `name` (the name is in the log line of a panic).
    #[allow(clippy::disallowed_methods)] // the one place tasks are spawned for an owner
    pub fn spawn(name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> Self {
        OwnedTask {
            name,
            handle: Some(tokio::spawn(task)),
        }
    }

    /// Waits for the task to end; answers why when it did not return (panicked, aborted).
    pub async fn join(mut self) -> Result<(), String> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        handle.await.map_err(|e| {
            let why = why_failed(e);
            tracing::warn!(task = self.name, why = %why, "an owned task failed");
            why
        })
    }

    /// Waits for the task to end without giving it up (`&mut`, so a `select!` can watch it);
    /// answers why when it did not return. Resolves at once once it has ended before.
    pub async fn wait(&mut self) -> Result<(), String> {
        let Some(handle) = self.handle.as_mut() else {
            return Ok(());
        };
        let ended = handle.await.map_err(why_failed);
        self.handle = None;
        ended
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// A failed task's panic message, or that it was cancelled.
fn why_failed(e: JoinError) -> String {
    if !e.is_panic() {
        return "it was cancelled".to_owned();
    }
    let payload = e.into_panic();
    let message = payload.downcast_ref::<String>().cloned().or_else(|| {
        payload
            .downcast_ref::<&'static str>()
            .map(|m| (*m).to_owned())
    });
    match message {
        Some(message) => format!("it panicked: {message}"),
        None => "it panicked".to_owned(),
    }
}

/// Why [`Workers::serve`] ended with an error: the server failed, or a needed task exited.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the HTTP server failed: {0}")]
    Server(#[from] std::io::Error),
    #[error(transparent)]
    Worker(#[from] WorkerExited),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_owned_task_is_aborted_when_dropped_and_joined_otherwise() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = OwnedTask::spawn("holder", async move {
            let _tx = tx; // dropped only when the task ends
            std::future::pending::<()>().await;
        });
        drop(task);
        assert!(rx.await.is_err(), "the aborted task dropped its sender");
        let done = OwnedTask::spawn("short", async {});
        assert_eq!(done.join().await, Ok(()));
        let failing = OwnedTask::spawn("failing", async { panic!("boom") });
        assert_eq!(failing.join().await, Err("it panicked: boom".to_owned()));
    }

    #[tokio::test]
    async fn the_first_task_to_exit_is_named_with_its_panic() {
        let mut workers = Workers::new();
        workers.spawn("steady", std::future::pending());
        workers.spawn("appender", async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            panic!("the broker client is gone");
        });
        let exited = workers.first_exit().await;
        assert_eq!(exited.task, "appender");
        assert_eq!(exited.why, "it panicked: the broker client is gone");
    }

    #[tokio::test]
    async fn a_task_that_returns_counts_as_an_exit() {
        let mut workers = Workers::new();
        workers.spawn("steady", std::future::pending());
        workers.spawn("router", async {});
        let exited = workers.first_exit().await;
        assert_eq!(
            (exited.task, exited.why.as_str()),
            ("router", "it returned")
        );
    }

    fn empty_server() -> actix_web::dev::Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        actix_web::HttpServer::new(actix_web::App::new)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run()
    }

    #[tokio::test]
    async fn tasks_ending_on_shutdown_are_not_failures() {
        let server = empty_server();
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new();
        let stop = shutdown.clone();
        workers.spawn("janitor", async move { stop.cancelled().await });
        shutdown.cancel();
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            workers.serve(server, shutdown),
        )
        .await
        .expect("serve returns after shutdown");
        assert!(ended.is_ok(), "{ended:?}");
    }

    #[tokio::test]
    async fn a_clean_shutdown_lets_the_tasks_finish() {
        let shutdown = CancellationToken::new();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Workers::new();
        let (stop, done) = (shutdown.clone(), finished.clone());
        workers.spawn("ingest", async move {
            stop.cancelled().await;
            // The last commit after the stop.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        shutdown.cancel();
        workers
            .serve(empty_server(), shutdown)
            .await
            .expect("a clean shutdown");
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn the_server_is_stopped_when_a_task_exits() {
        let server = empty_server();
        let mut workers = Workers::new();
        workers.spawn("ingest", async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            workers.serve(server, CancellationToken::new()),
        )
        .await
        .expect("serve returns once the task exited");
        match ended {
            Err(ServeError::Worker(exited)) => assert_eq!(exited.task, "ingest"),
            other => panic!("expected the worker's exit, got {other:?}"),
        }
    }
}
