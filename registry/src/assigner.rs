//! Group commit for assignments: concurrent requests share one assign script.
//!
//! An assignment costs the Redis master a script and its commands (a page of the servers' set,
//! the chosen server's hash, the reservation, the score), and most of that is per script, not
//! per assignment: with 64 requests in flight (S4) every one used to run its own. The
//! [`Assigner`]'s task takes every request queued while the previous script was in flight (at
//! most [`MAX_PER_SCRIPT`]) and makes all of their assignments in one
//! [`ServerDirectory::assign_many`], which gives each the server it would have got in a
//! script of its own, one after another. A lone request waits for nothing.
//!
//! Each HTTP worker starts its own assigner, with its own Redis connection, from the worker's
//! thread: a request, its script and its reply then never leave that thread. A shared
//! assigner on the main runtime cost two cross-thread wakeups per request, and the registry's
//! CPU per assignment fell from 45-53 µs to about 30 without them (docs/performance.md, run 16).
//!
//! The queue is bounded; a full queue makes requests wait.

use switchboard_protocol::registry::Assignment;
use switchboard_redis::StoreError;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::supervise::OwnedTask;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for a script, at most.
const QUEUE: usize = 4_096;
/// Assignments one script makes, at most.
pub const MAX_PER_SCRIPT: usize = 64;

type Reply = oneshot::Sender<Result<Option<Assignment>, String>>;

/// Hands out assignments in group-committed scripts; see the module docs.
#[derive(Clone)]
pub struct Assigner {
    tx: mpsc::Sender<Reply>,
    /// The assigning task: aborted with the last handle (it would end then anyway, its queue
    /// closed; the guard makes the ownership plain).
    _task: std::sync::Arc<OwnedTask>,
}

impl Assigner {
    /// Starts the assigning task; it ends when the last [`Assigner`] is dropped.
    pub fn start(directory: ServerDirectory, stale_after_ms: i64, reservation_ttl_ms: i64) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = OwnedTask::spawn(
            "assigner",
            run(directory, stale_after_ms, reservation_ttl_ms, rx),
        );
        Assigner {
            tx,
            _task: std::sync::Arc::new(task),
        }
    }

    /// The least-loaded live server with room, a slot reserved on it; `None` when every server
    /// is full (or there are none).
    pub async fn assign(&self) -> Result<Option<Assignment>, StoreError> {
        let (done, reply) = oneshot::channel();
        self.tx
            .send(done)
            .await
            .map_err(|_| StoreError::Unavailable("the assigner is not running".into()))?;
        reply
            .await
            .map_err(|_| StoreError::Unavailable("the assigner went away".into()))?
            .map_err(StoreError::Unavailable)
    }
}

async fn run(
    directory: ServerDirectory,
    stale_after_ms: i64,
    reservation_ttl_ms: i64,
    mut rx: mpsc::Receiver<Reply>,
) {
    let mut waiting = Vec::with_capacity(MAX_PER_SCRIPT);
    while rx.recv_many(&mut waiting, MAX_PER_SCRIPT).await > 0 {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let found = directory
            .assign_many(now_ms, stale_after_ms, reservation_ttl_ms, waiting.len())
            .await;
        match found {
            Ok(assignments) => {
                for (done, assignment) in waiting.drain(..).zip(assignments) {
                    let _ = done.send(Ok(assignment));
                }
            }
            Err(e) => {
                let message = match e {
                    StoreError::Unavailable(message) => message,
                    other => other.to_string(),
                };
                for done in waiting.drain(..) {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }
}
