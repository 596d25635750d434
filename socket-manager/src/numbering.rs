//! Group commit for the numbering scripts.
//!
//! A number may only be used once `SB_SEQ_REPLICA_ACKS` replicas hold it (`WAIT`), and `WAIT`
//! blocks the connection it runs on until they answer. One `EVAL` + `WAIT` per conversation
//! batch therefore queued every conversation behind every other one's replica round trip (a
//! second connection per caller would multiply `WAIT`s instead). The [`NumberingBatcher`]
//! sends every script queued while the previous flush was in flight as one pipeline that ends
//! in one `WAIT`: `WAIT` covers every write this connection made before it, so the replicas
//! acknowledge a whole flush at once. A script's refusal (`BUSY`, `PENDING`, ...) is its own
//! reply and does not fail the others.
//!
//! The queue is bounded; a full queue makes callers wait.

use std::time::Duration;

use redis::Value;
use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};
use switchboard_service_kit::supervise::Workers;
use tokio::sync::{mpsc, oneshot};

/// Scripts waiting for a flush, at most.
const QUEUE: usize = 16_384;
/// Scripts in one pipeline, at most (each carries its messages' pending copies).
const MAX_SCRIPTS_PER_FLUSH: usize = 256;

/// Builds one script call, given the replication id of the master it will run on.
pub type BuildScript = Box<dyn FnOnce(&str) -> redis::Cmd + Send>;

/// What a flush answered for one script.
#[derive(Debug)]
pub struct ScriptReply {
    /// The script's reply; `Value::ServerError` when it refused.
    pub value: Value,
    /// Replicas that acknowledged the whole flush (`WAIT`); `None` when none were asked for.
    pub replicas_acked: Option<i64>,
}

struct Job {
    build: BuildScript,
    done: oneshot::Sender<Result<ScriptReply, String>>,
}

/// Runs numbering scripts in group-committed pipelines; see the module docs.
#[derive(Clone)]
pub struct NumberingBatcher {
    tx: mpsc::Sender<Job>,
}

impl NumberingBatcher {
    /// Starts the flushing task on its own connection (`redis` should not be shared: its
    /// `WAIT`s block it); supervised: the manager stops if it ever exits.
    pub fn start(
        redis: SentinelRedis,
        replicas: u32,
        wait_timeout: Duration,
        workers: &mut Workers,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        workers.spawn("numbering", run(redis, replicas, wait_timeout, rx));
        NumberingBatcher { tx }
    }

    /// Runs one script in the next flush.
    pub async fn run(&self, build: BuildScript) -> Result<ScriptReply, StoreError> {
        let (done, reply) = oneshot::channel();
        self.tx
            .send(Job { build, done })
            .await
            .map_err(|_| StoreError::Unavailable("the numbering batcher is not running".into()))?;
        reply
            .await
            .map_err(|_| StoreError::Unavailable("the numbering batcher went away".into()))?
            .map_err(StoreError::Unavailable)
    }
}

async fn run(
    redis: SentinelRedis,
    replicas: u32,
    wait_timeout: Duration,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_SCRIPTS_PER_FLUSH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (builds, dones): (Vec<BuildScript>, Vec<_>) =
            jobs.into_iter().map(|j| (j.build, j.done)).unzip();
        let result = redis
            .pipe_replies_on_master(|replid| {
                let mut pipe = redis::pipe();
                for build in builds {
                    pipe.add_command(build(replid));
                }
                if replicas > 0 {
                    pipe.cmd("WAIT")
                        .arg(replicas)
                        .arg(wait_timeout.as_millis() as u64);
                }
                pipe
            })
            .await;
        match result {
            Ok(mut values) => {
                let replicas_acked = (replicas > 0).then(|| match values.pop() {
                    Some(Value::Int(n)) => n,
                    _ => 0,
                });
                for (done, value) in dones.into_iter().zip(values) {
                    let _ = done.send(Ok(ScriptReply {
                        value,
                        replicas_acked,
                    }));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for done in dones {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }
}
