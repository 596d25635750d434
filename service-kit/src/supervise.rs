//! Background tasks a service cannot live without (a log appender, an ingest loop, a prober).
//!
//! Such a task ending while the service still answers HTTP is the worst failure: `/ready`
//! stays green while every request that needs it fails. So a service keeps their handles in
//! [`Workers`] and serves only until the first one exits; then it logs which task exited and
//! why (returned, panicked, cancelled), stops its HTTP server and returns an error, and the
//! process supervisor (compose's `restart`, Kubernetes) restarts it.

use std::future::Future;

use tokio::task::JoinHandle;

use crate::shutdown::CancellationToken;

/// Named tasks that must run as long as the service.
#[derive(Default)]
pub struct Workers {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
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

    /// Adds a running task under `name`.
    pub fn add(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    /// Spawns `task` and adds it.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.add(name, tokio::spawn(task));
    }

    /// Resolves when the first task exits (never, with no tasks).
    pub async fn first_exit(self) -> WorkerExited {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let named = self.tasks.into_iter().map(|(task, handle)| {
            Box::pin(async move {
                let why = match handle.await {
                    Ok(()) => "it returned".to_owned(),
                    Err(e) if e.is_panic() => match e.into_panic().downcast::<String>() {
                        Ok(message) => format!("it panicked: {message}"),
                        Err(payload) => match payload.downcast::<&'static str>() {
                            Ok(message) => format!("it panicked: {message}"),
                            Err(_) => "it panicked".to_owned(),
                        },
                    },
                    Err(_) => "it was cancelled".to_owned(),
                };
                WorkerExited { task, why }
            })
        });
        futures_util::future::select_all(named).await.0
    }

    /// Runs `server` until `shutdown` (then drains it gracefully) or until the first task
    /// exits while the service is not shutting down: then logs which task and why, stops the
    /// server (in-flight requests would fail anyway) and answers the error. Tasks that end
    /// because of `shutdown` are not failures.
    pub async fn serve(
        self,
        server: actix_web::dev::Server,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let handle = server.handle();
        let drain = {
            let (handle, shutdown) = (handle.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            })
        };
        let mut server = server;
        let outcome = tokio::select! {
            served = &mut server => served.map_err(ServeError::Server),
            exited = self.first_exit() => {
                if shutdown.is_cancelled() {
                    (&mut server).await.map_err(ServeError::Server)
                } else {
                    tracing::error!(
                        task = exited.task,
                        why = %exited.why,
                        "a task the service needs exited; stopping so the process is restarted"
                    );
                    // The server future itself carries out the stop, so poll both.
                    let _ = tokio::join!(handle.stop(false), &mut server);
                    Err(ServeError::Worker(exited))
                }
            }
        };
        drain.abort();
        outcome
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
