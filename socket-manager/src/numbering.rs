//! Group commit for the sequence scripts (numbering and finishing).
//!
//! A number may only be used once `SB_SEQ_REPLICA_ACKS` replicas hold it (`WAIT`), and `WAIT`
//! blocks the connection it runs on until they answer. One `EVAL` + `WAIT` per conversation
//! batch therefore queued every conversation behind every other one's replica round trip (a
//! second connection per caller would multiply `WAIT`s instead). The [`NumberingBatcher`]
//! sends every call queued while the previous flush was in flight as **one `EVAL`** followed by
//! one `WAIT`: `WAIT` covers every write this connection made before it, so the replicas
//! acknowledge a whole flush at once. A flush that carries only finishes answers without a
//! `WAIT` ([`ScriptFunction::awaits_replicas`]): a finish's answer is read on the master, and
//! waiting cost every Redis process wakeups for nothing (at 400 group messages/s about half
//! the flushes are finishes alone; docs/performance.md run 18).
//!
//! The finish script (clear acknowledged pending entries, give the lease up) rides in the same
//! flushes: before, it was a round trip of its own on the shared connection for every
//! conversation batch, and at 5,000 msgs/s the numbering stage waited ~85 ms on average
//! instead of ~50 (docs/performance.md run 12). A flush is one script rather than a pipeline
//! of scripts so the script text travels once per flush; Redis spends the same per call
//! either way (its cost is the commands a call runs, not starting the script). The flush
//! script runs each call's function under `pcall`, in queue order, and answers one reply per
//! call: a call's refusal (`BUSY`, `PENDING`, ...) or runtime error is its own reply and does
//! not fail the others.
//!
//! **Flushes in flight.** A flush's `WAIT` holds its connection for a replica round trip,
//! and with one connection the next flush could not start before it ended: at 5,000 msgs/s a
//! call waited for about one and a half flush cycles. The batcher keeps one connection per
//! flush it lets be in flight (`SB_SEQ_FLUSHES_IN_FLIGHT`, 2 by default) and takes the queued
//! calls as soon as one is free. Each `WAIT` still covers every write before it, the other
//! connections' included (the replicas apply one stream in the master's order), and calls of
//! one conversation never share a flush in flight (a batch's finish follows its numbering,
//! and the lease refuses a second holder), so no ordering is lost. Measured in
//! docs/performance.md, run 16: two beat one at every rate, three lost to two (smaller flushes,
//! more `WAIT`s).
//!
//! The queue is bounded; a full queue makes callers wait.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use switchboard_redis::{SentinelRedis, StoreError};
use switchboard_service_kit::supervise::Workers;
use tokio::sync::{mpsc, oneshot};

/// Calls waiting for a flush, at most.
const QUEUE: usize = 16_384;
/// Calls in one flush, at most (each carries its messages' pending copies).
const MAX_CALLS_PER_FLUSH: usize = 256;

/// A Lua function a flush can call: `function(K, A, replid)`, where `K` and `A` are the call's
/// own keys and arguments and `replid` the replication id of the master it runs on. It must
/// return a value (`nil` would cut the flush's reply array short).
#[derive(Debug, Clone, Copy)]
pub struct ScriptFunction {
    /// Names the function in calls; a plain Lua identifier.
    pub name: &'static str,
    /// The function's parameter list and body, without `function` and `end`'s wrapper:
    /// `function(K, A, replid)` is added around it.
    pub body: &'static str,
    /// Whether its caller may use an answer only once the replicas hold the call's writes. A
    /// flush with a call of such a function ends in `WAIT`; a flush whose calls all need no
    /// `WAIT` answers without one, sparing a replica round trip (and its wakeups on every
    /// Redis process) per flush.
    pub awaits_replicas: bool,
}

/// One call of a [`ScriptFunction`] in the next flush.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    pub function: &'static str,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// What a flush answered for one call.
#[derive(Debug)]
pub struct ScriptReply {
    /// The call's reply; `Value::ServerError` when it refused or failed.
    pub value: Value,
    /// Replicas that acknowledged the whole flush (`WAIT`); `None` when none were asked for.
    pub replicas_acked: Option<i64>,
}

struct Job {
    call: ScriptCall,
    done: oneshot::Sender<Result<ScriptReply, String>>,
}

/// Runs sequence scripts in group-committed flushes; see the module docs.
#[derive(Clone)]
pub struct NumberingBatcher {
    tx: mpsc::Sender<Job>,
}

impl NumberingBatcher {
    /// Starts the flushing task, able to call `functions` (which may use the Lua of
    /// `preamble`), with one flush in flight on each of `connections` (handles of their own,
    /// not shared: their `WAIT`s block them; at least one); supervised: the manager stops if
    /// it ever exits.
    pub fn start(
        connections: Vec<SentinelRedis>,
        preamble: &str,
        functions: &[ScriptFunction],
        replicas: u32,
        wait_timeout: Duration,
        workers: &mut Workers,
    ) -> Self {
        assert!(
            !connections.is_empty(),
            "the numbering batcher needs a connection"
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let script = flush_script(preamble, functions);
        let awaiting = functions
            .iter()
            .filter(|f| f.awaits_replicas)
            .map(|f| f.name)
            .collect();
        let replication = Replication {
            replicas,
            wait_timeout,
            awaiting,
        };
        workers.spawn("numbering", run(connections, script, replication, rx));
        NumberingBatcher { tx }
    }

    /// Runs one call in the next flush.
    pub async fn run(&self, call: ScriptCall) -> Result<ScriptReply, StoreError> {
        let (done, reply) = oneshot::channel();
        self.tx
            .send(Job { call, done })
            .await
            .map_err(|_| StoreError::Unavailable("the numbering batcher is not running".into()))?;
        reply
            .await
            .map_err(|_| StoreError::Unavailable("the numbering batcher went away".into()))?
            .map_err(StoreError::Unavailable)
    }
}

/// The flush script: KEYS are the calls' keys one after another; ARGV[1] is the master's
/// replication id, ARGV[2] the number of calls `n`, then `n` triples (function, key count,
/// argument count), then the calls' arguments one after another. Answers one reply per call.
fn flush_script(preamble: &str, functions: &[ScriptFunction]) -> String {
    let mut script = format!("{preamble}\nlocal functions = {{}}\n");
    for f in functions {
        script.push_str(&format!(
            "functions['{}'] = function(K, A, replid)\n{}\nend\n",
            f.name, f.body
        ));
    }
    script.push_str(
        r"
-- The master's replication id, read now (ARGV[1], what the connection read when it connected,
-- goes stale when a master restarted without data creates its backlog for its first replica,
-- which changes the id: counters checked under the new id would never match the old one).
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ARGV[1]
local n = tonumber(ARGV[2])
local next_key, next_arg = 1, 3 + 3 * n
local replies = {}
for c = 0, n - 1 do
  local f = functions[ARGV[3 + 3 * c]]
  local key_count = tonumber(ARGV[4 + 3 * c])
  local arg_count = tonumber(ARGV[5 + 3 * c])
  local k, a = {}, {}
  for i = 1, key_count do k[i] = KEYS[next_key + i - 1] end
  for i = 1, arg_count do a[i] = ARGV[next_arg + i - 1] end
  next_key = next_key + key_count
  next_arg = next_arg + arg_count
  if f == nil then
    replies[c + 1] = redis.error_reply('ERR no such sequence function')
  else
    local ok, reply = pcall(f, k, a, replid)
    if ok then
      replies[c + 1] = reply
    elseif type(reply) == 'table' and reply.err then
      replies[c + 1] = redis.error_reply(reply.err)
    else
      replies[c + 1] = redis.error_reply('ERR ' .. tostring(reply))
    end
  end
end
return replies
",
    );
    script
}

/// The flush's `EVAL` (sent in a pipeline with `WAIT`, which cannot carry `EVALSHA`'s
/// fallback; Redis caches the script by its hash either way).
fn flush_command(script: &str, replid: &str, calls: &[ScriptCall]) -> redis::Cmd {
    let key_count: usize = calls.iter().map(|c| c.keys.len()).sum();
    let mut eval = redis::cmd("EVAL");
    eval.arg(script).arg(key_count);
    for call in calls {
        eval.arg(&call.keys);
    }
    eval.arg(replid).arg(calls.len());
    for call in calls {
        eval.arg(call.function)
            .arg(call.keys.len())
            .arg(call.args.len());
    }
    for call in calls {
        eval.arg(&call.args);
    }
    eval
}

/// When a flush ends in `WAIT`, and for how many replicas.
struct Replication {
    /// Replicas a `WAIT` asks for (`SB_SEQ_REPLICA_ACKS`; 0: no `WAIT` at all).
    replicas: u32,
    wait_timeout: Duration,
    /// The functions whose calls need the `WAIT` ([`ScriptFunction::awaits_replicas`]).
    awaiting: Vec<&'static str>,
}

impl Replication {
    /// Whether a flush of `calls` ends in `WAIT`.
    fn waits_for(&self, calls: &[ScriptCall]) -> bool {
        self.replicas > 0 && calls.iter().any(|c| self.awaiting.contains(&c.function))
    }
}

async fn run(
    connections: Vec<SentinelRedis>,
    script: String,
    replication: Replication,
    mut rx: mpsc::Receiver<Job>,
) {
    let script = script.as_str();
    let replication = &replication;
    let mut idle = connections;
    let mut in_flight = FuturesUnordered::new();
    let mut jobs = Vec::with_capacity(MAX_CALLS_PER_FLUSH);
    loop {
        tokio::select! {
            Some(redis) = in_flight.next() => idle.push(redis),
            // Calls are taken only when a connection is free, so while every connection
            // waits on its flush the queue fills up for the next one (the group commit).
            // `recv_many` is cancel safe: a call it has not returned stays queued.
            taken = rx.recv_many(&mut jobs, MAX_CALLS_PER_FLUSH), if !idle.is_empty() => {
                if taken == 0 {
                    break;
                }
                let redis = idle.pop().expect("a free connection");
                let jobs = std::mem::replace(&mut jobs, Vec::with_capacity(MAX_CALLS_PER_FLUSH));
                in_flight.push(async move {
                    flush(&redis, script, replication, jobs).await;
                    redis
                });
            }
        }
    }
    // The last callers are gone; the flushes still in flight answer whoever waits on them.
    while in_flight.next().await.is_some() {}
}

/// One flush on `redis`: every call of `jobs` in one `EVAL`, then `WAIT` when a call needs it;
/// answers each job.
async fn flush(redis: &SentinelRedis, script: &str, replication: &Replication, jobs: Vec<Job>) {
    let (calls, dones): (Vec<ScriptCall>, Vec<_>) =
        jobs.into_iter().map(|j| (j.call, j.done)).unzip();
    let waits = replication.waits_for(&calls);
    let result = redis
        .pipe_replies_on_master(|replid| {
            let mut pipe = redis::pipe();
            pipe.add_command(flush_command(script, replid, &calls));
            if waits {
                pipe.cmd("WAIT")
                    .arg(replication.replicas)
                    .arg(replication.wait_timeout.as_millis() as u64);
            }
            pipe
        })
        .await;
    let replies = result.and_then(|mut values| {
        let replicas_acked = waits.then(|| match values.pop() {
            Some(Value::Int(n)) => n,
            _ => 0,
        });
        match values.pop() {
            Some(Value::Array(replies)) if replies.len() == dones.len() => {
                Ok((replies, replicas_acked))
            }
            // The script as a whole was refused (`READONLY`, `BUSY`, ...): every call
            // gets that refusal as its own reply, as if it had run alone.
            Some(refusal @ Value::ServerError(_)) => {
                Ok((vec![refusal; dones.len()], replicas_acked))
            }
            other => Err(StoreError::Unavailable(format!(
                "the flush script answered {other:?} for {} calls",
                dones.len()
            ))),
        }
    });
    match replies {
        Ok((values, replicas_acked)) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_lays_out_every_calls_keys_and_arguments_in_order() {
        let calls = vec![
            ScriptCall {
                function: "number",
                keys: vec!["k1".into(), "k2".into()],
                args: vec!["a1".into()],
            },
            ScriptCall {
                function: "finish",
                keys: vec!["k3".into()],
                args: vec!["a2".into(), "a3".into()],
            },
        ];
        let cmd = flush_command("SCRIPT", "replid-1", &calls);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                redis::Arg::Cursor => "<cursor>".into(),
            })
            .collect();
        assert_eq!(
            args,
            [
                "EVAL", "SCRIPT", "3", "k1", "k2", "k3", "replid-1", "2", "number", "2", "1",
                "finish", "1", "2", "a1", "a2", "a3"
            ]
        );
    }

    #[test]
    fn the_flush_script_defines_every_function_once() {
        let script = flush_script(
            "",
            &[
                ScriptFunction {
                    name: "number",
                    body: "return 1",
                    awaits_replicas: true,
                },
                ScriptFunction {
                    name: "finish",
                    body: "return 0",
                    awaits_replicas: false,
                },
            ],
        );
        assert_eq!(
            script
                .matches("functions['number'] = function(K, A, replid)")
                .count(),
            1
        );
        assert_eq!(
            script
                .matches("functions['finish'] = function(K, A, replid)")
                .count(),
            1
        );
    }

    /// With two connections a second flush starts while the first one still waits for its
    /// replicas: here every `WAIT` asks for more replicas than exist, so each flush takes its
    /// whole timeout, and the second call, queued after the first flush started, is answered
    /// after one timeout instead of two.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_starts_while_another_waits_for_its_replicas() {
        // Below the tests' Redis command timeout (1.5 s), which a flush's WAIT must not reach.
        const WAIT: Duration = Duration::from_millis(1_000);
        let redis =
            |name: &str| switchboard_test_support::shared::fresh_redis("socket-manager", name);
        let mut workers = Workers::new();
        let batcher = NumberingBatcher::start(
            vec![redis("flushes-in-flight"), redis("flushes-in-flight")],
            "",
            &[ScriptFunction {
                name: "one",
                body: "return 1",
                awaits_replicas: true,
            }],
            10,
            WAIT,
            &mut workers,
        );
        let call = || ScriptCall {
            function: "one",
            keys: vec![],
            args: vec![],
        };
        let started = std::time::Instant::now();
        let first = batcher.run(call());
        let second = async {
            // Setup, not a wait for the result: the batcher takes the first call within
            // milliseconds of `join!` polling it, so by now that flush holds a connection and
            // this call cannot join it (the assertion on its own wait below checks that).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let queued = std::time::Instant::now();
            let reply = batcher.run(call()).await;
            (reply, queued.elapsed(), started.elapsed())
        };
        let (first, (second, second_waited, second_answered)) = tokio::join!(first, second);
        for reply in [
            first.expect("the flush ran"),
            second.expect("the flush ran"),
        ] {
            assert_eq!(reply.value, Value::Int(1));
            assert!(matches!(reply.replicas_acked, Some(n) if n < 10));
        }
        assert!(
            second_waited >= WAIT,
            "the second call rode in the first flush ({second_waited:?}): nothing was shown"
        );
        assert!(
            second_answered < WAIT * 2,
            "the second flush waited for the first: answered after {second_answered:?}"
        );
    }

    /// A flush whose calls all need no replicas answers without `WAIT`; one call that needs
    /// them makes its whole flush wait. Here every `WAIT` asks for more replicas than exist,
    /// so a flush that waits takes its whole timeout.
    #[tokio::test(flavor = "current_thread")]
    async fn only_a_flush_with_a_call_that_awaits_replicas_waits_for_them() {
        const WAIT: Duration = Duration::from_millis(1_000);
        let redis =
            switchboard_test_support::shared::fresh_redis("socket-manager", "flush-without-wait");
        let mut workers = Workers::new();
        let batcher = NumberingBatcher::start(
            vec![redis],
            "",
            &[
                ScriptFunction {
                    name: "replicated",
                    body: "return 1",
                    awaits_replicas: true,
                },
                ScriptFunction {
                    name: "local",
                    body: "return 2",
                    awaits_replicas: false,
                },
            ],
            10,
            WAIT,
            &mut workers,
        );
        let call = |function: &'static str| ScriptCall {
            function,
            keys: vec![],
            args: vec![],
        };

        let started = std::time::Instant::now();
        let alone = batcher.run(call("local")).await.expect("the flush ran");
        assert_eq!(alone.value, Value::Int(2));
        assert_eq!(alone.replicas_acked, None, "no WAIT was sent");
        assert!(
            started.elapsed() < WAIT,
            "answered without waiting for replicas ({:?})",
            started.elapsed()
        );

        // Queued together before the batcher's task runs (one thread): one flush.
        let started = std::time::Instant::now();
        let (local, replicated) =
            tokio::join!(batcher.run(call("local")), batcher.run(call("replicated")));
        let (local, replicated) = (
            local.expect("the flush ran"),
            replicated.expect("the flush ran"),
        );
        assert_eq!(
            (local.value, replicated.value),
            (Value::Int(2), Value::Int(1))
        );
        for acked in [local.replicas_acked, replicated.replicas_acked] {
            assert!(
                matches!(acked, Some(n) if n < 10),
                "WAIT answered {acked:?}"
            );
        }
        assert!(
            started.elapsed() >= WAIT,
            "the flush waited for its replicas ({:?})",
            started.elapsed()
        );
    }

    /// One flush, three calls: each answers on its own, a refusal and a runtime error
    /// included, against the test binary's real Redis (with a replica for `WAIT`).
    #[tokio::test(flavor = "current_thread")]
    async fn every_call_of_a_flush_gets_its_own_reply() {
        let redis =
            switchboard_test_support::shared::fresh_redis("socket-manager", "numbering-flush");
        let mut workers = Workers::new();
        let batcher = NumberingBatcher::start(
            vec![redis.clone()],
            "",
            &[
                ScriptFunction {
                    name: "count",
                    body: "return redis.call('INCRBY', K[1], A[1])",
                    awaits_replicas: true,
                },
                ScriptFunction {
                    name: "refuse",
                    body: "return redis.error_reply('BUSY ' .. A[1])",
                    awaits_replicas: true,
                },
                ScriptFunction {
                    name: "wrong_type",
                    body: "return redis.call('HGET', K[1], 'field')",
                    awaits_replicas: true,
                },
            ],
            1,
            Duration::from_secs(2),
            &mut workers,
        );
        let counter = redis.key("flush-test-counter");
        let call = |function: &'static str, keys: Vec<String>, args: Vec<&str>| ScriptCall {
            function,
            keys,
            args: args.into_iter().map(str::to_owned).collect(),
        };
        // Queued together before the batcher's task runs (one thread): one flush.
        let (counted, refused, failed, counted_again) = tokio::join!(
            batcher.run(call("count", vec![counter.clone()], vec!["5"])),
            batcher.run(call("refuse", vec![], vec!["held elsewhere"])),
            batcher.run(call("wrong_type", vec![counter.clone()], vec![])),
            batcher.run(call("count", vec![counter.clone()], vec!["2"])),
        );
        let counted = counted.expect("the flush ran");
        assert_eq!(counted.value, Value::Int(5));
        assert!(
            matches!(counted.replicas_acked, Some(n) if n >= 1),
            "WAIT covered the flush: {:?}",
            counted.replicas_acked
        );
        match refused.expect("the flush ran").value {
            Value::ServerError(e) => {
                assert_eq!(e.code(), "BUSY");
                assert_eq!(e.details(), Some("held elsewhere"));
            }
            other => panic!("a refusal answered {other:?}"),
        }
        match failed.expect("the flush ran").value {
            Value::ServerError(e) => assert!(
                e.details().unwrap_or_default().contains("WRONGTYPE") || e.code() == "WRONGTYPE",
                "{e:?}"
            ),
            other => panic!("a runtime error answered {other:?}"),
        }
        assert_eq!(
            counted_again.expect("the flush ran").value,
            Value::Int(7),
            "a call after a failed one still runs, in queue order"
        );
    }
}
