//! Sequence numbers and the message log.
//!
//! For each conversation, the sends of one batch are numbered under a *fenced lease* in Redis
//! (`lock:conv:{c}`, a token `"{manager}/{ulid}"` with a PX expiry, renewed while held). The
//! numbering script takes the lease when it is free and the finish script gives it up, so a
//! hold costs two round trips in the common case. One lease hold is:
//!
//! 1. **finish what a predecessor left.** Every number taken but not yet known to be in the
//!    log sits in `pending:{c}` (seq → the message). The holder appends those records again
//!    (an in-doubt append is resolved by appending the same record; the store keeps one copy)
//!    and clears them, so a number is never reused and never left a hole while traffic flows.
//! 2. **number the batch in one script.** For each send, a known `client_msg_id` answers with
//!    its recorded `seq`/`message_id`; a new one takes `INCR`, writes its idempotency record
//!    (one string `"{seq} {message_id} {created_at}"` with its expiry, no body) and its
//!    pending entry. The script refuses a token that is not the holder's, and before it
//!    touches anything it checks every sender against the conversation's mirrored members
//!    (`members:{c}`); when the mirror is cold or a sender is not in it, the members are read
//!    from the source of truth and the script called again with them. It runs in the
//!    numbering batcher's flush, which ends in `WAIT n`, so a number is only used once at
//!    least `n` replicas have it: a failover cannot roll a counter back under an acknowledged
//!    message.
//! 3. **append the batch's records together** and wait for the broker's acks. Where the
//!    members are connected came with the numbers (the numbering script looks it up), or, for
//!    a conversation large enough to broadcast to every handler, is read meanwhile.
//! 4. **route, then finish**: the appended records are routed, then a script (in the next
//!    flush) clears their pending entries and answers whether the token still holds the lease.
//!    Only then is `sent` answered; a manager that lost its lease (a pause, a partition)
//!    answers `unavailable` and the client's resend gets the same numbers from the
//!    idempotency record.
//!
//! Routing is enqueued inside the lease (without waiting for its ack), so one manager's records
//! reach each handler topic in `seq` order; when several managers take turns on a conversation
//! the handler's reorder buffer restores `seq` order. The store's primary key
//! `(conversation_id, seq)` stays the last fence, and a conflict there is an alarm.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Script;
use serde::{Deserialize, Serialize};
use switchboard_message_log::{HandlerRecord, LogRecord};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ClientMsgId, ConversationId, ErrorCode, HandlerId, Timestamp, UserId};
use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};

use crate::batching::{LogAppender, Router};
use crate::kafka::Kafka;
use crate::members::Members;
use crate::numbering::{NumberingBatcher, ScriptCall, ScriptFunction};
use switchboard_chat_state::presence::{group_by_handler, HandlerMap};

/// Handler id → the users on it who get a frame.
type RouteTargets = HashMap<String, Vec<String>>;

/// A send as the handler reported it, its ids checked.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub handler_id: HandlerId,
    pub connection_id: u64,
    pub sender_id: UserId,
    pub conversation_id: ConversationId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
}

/// A numbered message not yet known to be in the log: the value of a `pending:{c}` field
/// (the field is its `seq`). It carries the body only until the append is acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingMessage {
    message_id: String,
    sender_id: String,
    client_msg_id: String,
    body: String,
    created_at: Timestamp,
}

/// The numbering script's row for one send: seq, message_id, created_at, fresh (1 or 0).
type NumberedRow = (u64, String, String, u8);

/// The numbering script's reply: a row per send, the members, whether it looked the routes
/// up (1) and, if so, each member's handlers.
type NumberReply = (Vec<NumberedRow>, Vec<String>, u8, Vec<Vec<String>>);

/// A conversation batch as numbered.
struct NumberedBatch {
    numbered: Vec<Numbered>,
    members: Vec<String>,
    /// Where the members are connected, when the numbering script looked it up (fewer
    /// members than `SB_ROUTE_BROADCAST_FROM`).
    routes: Option<RouteTargets>,
}

/// What the numbering script answered for one send.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Numbered {
    seq: u64,
    message_id: String,
    created_at: Timestamp,
    /// Numbered now (its record must be appended); `false`: a resend of a message in the log.
    fresh: bool,
}

pub struct SequencerMetrics {
    pub lock_wait_seconds: prometheus::Histogram,
    /// One numbering script with its `WAIT` (the Redis part of a send).
    pub numbering_seconds: prometheus::Histogram,
    /// A conversation batch's log appends, from enqueue to the last broker ack.
    pub append_seconds: prometheus::Histogram,
    /// Numbering attempts refused because another holder had the lease.
    pub lease_busy: prometheus::IntCounter,
    pub messages_sent: prometheus::IntCounter,
    pub send_errors: prometheus::IntCounterVec,
    /// Numbers a lease holder found pending and appended again.
    pub pending_replayed: prometheus::IntCounter,
    /// Counters found behind the log (a failover lost numbers) and raised.
    pub counters_raised: prometheus::IntCounter,
    /// Conversation batches whose senders the mirror could not vouch for (cold, or a stranger
    /// among them), so the members were read from the source of truth.
    pub membership_fallbacks: prometheus::IntCounter,
}

pub struct Sequencer {
    pub redis: SentinelRedis,
    /// Numbering scripts, group-committed on their own connection (its `WAIT`s block it).
    pub numberer: NumberingBatcher,
    pub kafka: Kafka,
    /// Log appends, batched into envelopes across conversations and requests.
    pub appender: LogAppender,
    /// Handler-topic routing, batched into envelopes per handler.
    pub router: Router,
    pub members: Members,
    pub handlers: HandlerMap,
    /// Recipients from which a frame goes to every registered handler instead of the ones a
    /// lookup per recipient finds (`SB_ROUTE_BROADCAST_FROM`; see [`HandlerMap::route`]).
    pub route_broadcast_from: usize,
    pub lock_ttl: Duration,
    pub lock_wait: Duration,
    pub idempotency_ttl_secs: u64,
    /// Replicas that must hold a number before it is used (`WAIT n`, by the numberer); 0
    /// turns it off.
    pub replicas_required: u32,
    /// Names this manager in lease tokens (`SB_MANAGER_ID`), so an operator (or a fault test)
    /// can tell which manager holds a conversation.
    pub instance_id: String,
    pub metrics: SequencerMetrics,
}

static RELEASE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

static RENEW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// The sequence functions the numbering batcher's flush script calls (group-committed, one
/// `EVAL` per flush; see `numbering`).
pub const SEQUENCE_FUNCTIONS: [ScriptFunction; 2] = [NUMBER, FINISH];

/// The Lua the sequence functions share: the route lookup of the presence key family's owner.
pub const SEQUENCE_PREAMBLE: &str = switchboard_chat_state::presence::HANDLERS_OF_LUA;

/// Checks that every sender is a member, takes the lease when it is free (one round trip for
/// "check, lock and number") and numbers a conversation's sends.
/// K: lease, counter, pending, counter epoch, the conversation's mirrored members
/// (`switchboard_chat_state::membership`), then one idempotency key per send.
/// A: token, idempotency ttl (s), lease ttl (ms), the members from which the routes are not
/// looked up here (`SB_ROUTE_BROADCAST_FROM`), now (ms), the key prefix, the count `g` of
/// members the caller read itself, those `g` members, then per send: sender, message_id,
/// created_at, pending JSON. `replid`: the replication id of the master it runs on.
/// Answers `{numbered, members, looked_up, found}`. With `g` = 0 the members are the mirror's;
/// when it is cold (no set) or a sender is not in it, nothing is touched and the script refuses
/// with `MEMBERS`: the caller then reads them from the source of truth and calls again with
/// them. Below the broadcast threshold it also looks up where each member is connected
/// (`looked_up` 1, `found[i]` the handlers of `members[i]`: the route lookup rides in the
/// flush instead of a round trip of its own).
const NUMBER: ScriptFunction = ScriptFunction {
    name: "number",
    // A number is used only once the replicas hold it: a failover must not roll a counter
    // back under an acknowledged message.
    awaits_replicas: true,
    body: r"
local given = tonumber(A[7])
local members
if given > 0 then
  members = {}
  for i = 1, given do members[i] = A[7 + i] end
else
  members = redis.call('SMEMBERS', K[5])
end
local is_member = {}
for _, m in ipairs(members) do is_member[m] = true end
local first_arg = 8 + given
for i = 6, #K do
  if not is_member[A[first_arg + (i - 6) * 4]] then
    return redis.error_reply('MEMBERS the senders are not all in the mirrored members')
  end
end
-- Takes the lease if it is free and reads its holder in one command (NX with GET: Redis 7).
local holder = redis.call('SET', K[1], A[1], 'NX', 'PX', A[3], 'GET')
if holder and holder ~= A[1] then
  return redis.error_reply('BUSY another holder numbers this conversation')
end
if redis.call('HLEN', K[3]) > 0 then
  return redis.error_reply('PENDING numbered messages await their append')
end
if redis.call('GET', K[4]) ~= replid then
  return redis.error_reply('UNVERIFIED the counter was not checked against the log on this master')
end
local out = {}
for i = 6, #K do
  local a = first_arg + (i - 6) * 4 + 1
  local known = redis.pcall('GET', K[i])
  if type(known) == 'table' then
    -- WRONGTYPE: a record from before they were strings, a hash of the same three fields.
    local fields = redis.call('HMGET', K[i], 'seq', 'message_id', 'created_at')
    known = fields[1] and table.concat(fields, ' ')
  end
  if known then
    local seq, message_id, created_at = string.match(known, '^(%d+) (%S+) (%S+)$')
    out[#out + 1] = {tonumber(seq), message_id, created_at, 0}
  else
    local seq = redis.call('INCR', K[2])
    redis.call('SET', K[i], seq .. ' ' .. A[a] .. ' ' .. A[a + 1], 'EX', A[2])
    redis.call('HSET', K[3], seq, A[a + 2])
    out[#out + 1] = {seq, A[a], A[a + 1], 1}
  end
end
if #members < tonumber(A[4]) then
  return {out, members, 1, handlers_of(A[6], members, A[5])}
end
return {out, members, 0, {}}",
};

/// K: lease, pending. A: token, release (1: give the lease up), lease ttl (ms), then the seqs
/// whose append the broker acknowledged. Clears those pending entries (always right: they are
/// in the log) and answers 1 while the token still holds the lease, else 0.
///
/// Its answer needs no `WAIT`: it is read on the master that runs the script, and the numbers
/// it vouches for were replicated by their own flush. Writes of a finish that a failover loses
/// cost no message: the cleared entries reappear and the next holder appends those records
/// again (the store keeps one copy), and a lease not given up lapses with its ttl.
const FINISH: ScriptFunction = ScriptFunction {
    name: "finish",
    awaits_replicas: false,
    body: r"
-- HDEL takes many fields; unpack takes a few thousand values at most, hence the chunks.
for i = 4, #A, 1000 do redis.call('HDEL', K[2], unpack(A, i, math.min(i + 999, #A))) end
if A[2] ~= '1' then return redis.call('GET', K[1]) == A[1] and 1 or 0 end
-- Giving the lease up reads and deletes it in one command. A lease found taken by another
-- holder (ours expired) goes back to it; its renewal sets the expiry again within a third of
-- the ttl, so at worst it lives one ttl longer than it would have.
local holder = redis.call('GETDEL', K[1])
if holder == A[1] then return 1 end
if holder then redis.call('SET', K[1], holder, 'PX', A[3]) end
return 0",
};

// A number is used only once the replicas hold it (the promise across a failover): the build
// fails if that is ever switched off.
const _: () = assert!(NUMBER.awaits_replicas);

/// KEYS: lease, counter, counter epoch, then the idempotency key of each message the log holds
/// above the counter. ARGV: token, the master's replication id, the highest `seq` in the log,
/// the counter the caller read, idempotency ttl (s), then per message: seq, message_id,
/// created_at. Raises the counter to that floor, restores the idempotency records lost with
/// those numbers, marks the counter checked on this master; answers the counter as it was.
const RESEED_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOLEASE the sequence lease is not held')
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[4]) then
  return redis.error_reply('UNVERIFIED the counter moved while it was checked')
end
local floor = tonumber(ARGV[3])
if floor > current then redis.call('SET', KEYS[2], floor) end
for i = 4, #KEYS do
  local a = 6 + (i - 4) * 3
  -- NX: a record that survived (in either format) stays as it is.
  redis.call('SET', KEYS[i], ARGV[a] .. ' ' .. ARGV[a + 1] .. ' ' .. ARGV[a + 2], 'EX', ARGV[5], 'NX')
end
redis.call('SET', KEYS[3], ARGV[2])
return current
";

/// Why numbering did not happen.
#[derive(Debug, thiserror::Error)]
enum NumberingError {
    #[error("numbers of an earlier hold await their append")]
    Pending,
    #[error("the counter has not been checked against the log on this master")]
    Unverified,
    #[error("the sequence lease was lost")]
    LeaseLost,
    #[error("another holder numbers this conversation")]
    Busy,
    /// The mirror could not vouch for every sender (cold, or one is not in it); nothing was
    /// touched.
    #[error("membership must be read from the source of truth")]
    Members,
    #[error("only {acked} of {wanted} replicas acknowledged the numbers")]
    NotReplicated { acked: i64, wanted: u32 },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for NumberingError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Command(err) = &e {
            match err.code() {
                Some("PENDING") => return NumberingError::Pending,
                Some("UNVERIFIED") => return NumberingError::Unverified,
                Some("NOLEASE") => return NumberingError::LeaseLost,
                Some("BUSY") => return NumberingError::Busy,
                Some("MEMBERS") => return NumberingError::Members,
                _ => {}
            }
        }
        NumberingError::Store(e)
    }
}

/// A sequence lease: taken by the first numbering script, renewed in the background from
/// then on until dropped, given up by the last finish script.
struct Lease {
    key: String,
    token: String,
    /// Set once a script has taken the lease for this token.
    renewer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    released: std::sync::atomic::AtomicBool,
}

impl Lease {
    fn held_once(&self) -> bool {
        self.renewer.lock().expect("lease lock").is_some()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.lock().expect("lease lock").take() {
            renewer.abort();
        }
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>, client_msg_id: &str) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.into(),
        client_msg_id: Some(client_msg_id.to_owned()),
    }
}

fn unavailable(client_msg_id: &str) -> ServerFrame {
    error_frame(
        ErrorCode::Unavailable,
        "the message could not be stored durably, retry with the same client_msg_id",
        client_msg_id,
    )
}

impl Sequencer {
    /// Handles the sends of one conversation from one batch, in order, under one lease.
    /// The numbering script checks the senders against the mirrored members itself; only when
    /// it cannot vouch for all of them (a cold mirror, a sender not in it) are the members read
    /// here, from the mirror or the message service, and the refused sends answered.
    #[tracing::instrument(level = "debug", skip_all, fields(conversation_id = %conversation_id))]
    pub async fn send_all(
        &self,
        conversation_id: &ConversationId,
        sends: &[SendRequest],
    ) -> Vec<ServerFrame> {
        let all: Vec<&SendRequest> = sends.iter().collect();
        if let Some(answers) = self.sequence(conversation_id, &all, None).await {
            return answers;
        }
        self.metrics.membership_fallbacks.inc();
        let members = match self.members.of(conversation_id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "membership lookup failed");
                return sends
                    .iter()
                    .map(|s| {
                        error_frame(
                            ErrorCode::Unavailable,
                            "membership is unavailable, retry",
                            &s.client_msg_id,
                        )
                    })
                    .collect();
            }
        };
        let (allowed, refused): (Vec<_>, Vec<_>) = sends
            .iter()
            .enumerate()
            .partition(|(_, s)| members.iter().any(|m| *m == *s.sender_id));
        let mut replies: Vec<Option<ServerFrame>> = vec![None; sends.len()];
        for (i, s) in refused {
            self.metrics
                .send_errors
                .with_label_values(&["not_a_member"])
                .inc();
            replies[i] = Some(error_frame(
                ErrorCode::NotAMember,
                "you are not a member of this conversation",
                &s.client_msg_id,
            ));
        }
        if !allowed.is_empty() {
            let requests: Vec<&SendRequest> = allowed.iter().map(|(_, s)| *s).collect();
            let answers = self
                .sequence(conversation_id, &requests, Some(&members))
                .await
                .unwrap_or_else(|| {
                    requests
                        .iter()
                        .map(|s| unavailable(&s.client_msg_id))
                        .collect()
                });
            for ((i, _), answer) in allowed.into_iter().zip(answers) {
                replies[i] = Some(answer);
            }
        }
        replies
            .into_iter()
            .map(|r| r.expect("every send answered"))
            .collect()
    }

    fn lock_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("lock:conv:{conversation_id}"))
    }

    fn pending_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("pending:{conversation_id}"))
    }

    fn counter_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("seq:{conversation_id}"))
    }

    /// The highest `seq` numbered in `conversation_id` (0 when none): the counter, read on the
    /// master. After a failover it may lag the log until the next send's lease reseeds it.
    pub async fn last_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        let counter: Option<u64> = self
            .redis
            .query(redis::cmd("GET").arg(self.counter_key(conversation_id)))
            .await?;
        Ok(counter.unwrap_or(0))
    }

    /// The replication id of the master on which the counter was last checked against the
    /// log: a counter is only used on the master that checked it.
    fn epoch_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("seq-epoch:{conversation_id}"))
    }

    fn idempotency_key(
        &self,
        conversation_id: &str,
        sender_id: &str,
        client_msg_id: &str,
    ) -> String {
        self.redis.key(&format!(
            "idem:{conversation_id}:{sender_id}:{client_msg_id}"
        ))
    }

    /// Takes the lease, numbers and appends `sends`, answers each.
    /// `None` when the numbering script could not vouch for the senders from the mirror and
    /// no `members` were given (nothing was numbered); see [`Self::send_all`].
    async fn sequence(
        &self,
        conversation_id: &str,
        sends: &[&SendRequest],
        members: Option<&[String]>,
    ) -> Option<Vec<ServerFrame>> {
        let lease = Lease {
            key: self.lock_key(conversation_id),
            token: format!("{}/{}", self.instance_id, ulid::Ulid::new()),
            renewer: std::sync::Mutex::new(None),
            released: std::sync::atomic::AtomicBool::new(false),
        };
        let answers = match self
            .under_lease(&lease, conversation_id, sends, members)
            .await
        {
            Ok(answers) => Some(answers),
            Err(NumberingError::Members) if members.is_none() => None,
            Err(NumberingError::Busy) => {
                tracing::warn!(conversation_id, "sequence lease not acquired in time");
                self.metrics
                    .send_errors
                    .with_label_values(&["lock"])
                    .inc_by(sends.len() as u64);
                Some(
                    sends
                        .iter()
                        .map(|s| {
                            error_frame(
                                ErrorCode::Unavailable,
                                "the conversation is busy or the cluster is degraded, retry",
                                &s.client_msg_id,
                            )
                        })
                        .collect(),
                )
            }
            Err(e) => {
                let reason = match &e {
                    NumberingError::LeaseLost => "lease_lost",
                    NumberingError::NotReplicated { .. } => "not_replicated",
                    _ => "unavailable",
                };
                tracing::warn!(error = %e, conversation_id, "sends not numbered");
                self.metrics
                    .send_errors
                    .with_label_values(&[reason])
                    .inc_by(sends.len() as u64);
                Some(
                    sends
                        .iter()
                        .map(|s| unavailable(&s.client_msg_id))
                        .collect(),
                )
            }
        };
        if lease.held_once() && !lease.released.load(std::sync::atomic::Ordering::Relaxed) {
            self.release(&lease).await;
        }
        answers
    }

    async fn under_lease(
        &self,
        lease: &Lease,
        conversation_id: &str,
        sends: &[&SendRequest],
        given_members: Option<&[String]>,
    ) -> Result<Vec<ServerFrame>, NumberingError> {
        let mut numbered = None;
        for _ in 0..3 {
            match self
                .number_acquiring(lease, conversation_id, sends, given_members)
                .await
            {
                Ok(n) => {
                    numbered = Some(n);
                    break;
                }
                Err(NumberingError::Pending) => {
                    // Rare (an append left in doubt): the replayed records' recipients.
                    let members = match given_members {
                        Some(members) => members.to_vec(),
                        None => self.members.of(conversation_id).await.map_err(|e| {
                            NumberingError::Store(StoreError::Unavailable(e.to_string()))
                        })?,
                    };
                    self.finish_pending(lease, conversation_id, &members)
                        .await?;
                }
                Err(NumberingError::Unverified) => self.reseed(lease, conversation_id).await?,
                Err(e) => return Err(e),
            }
        }
        let NumberedBatch {
            numbered,
            members,
            routes,
        } = numbered.ok_or_else(|| {
            NumberingError::Store(StoreError::Unavailable(
                "numbering did not settle after three tries".into(),
            ))
        })?;
        let members = &members;

        // Append every new record together.
        let fresh: Vec<(usize, LogRecord)> = numbered
            .iter()
            .enumerate()
            .filter(|(_, n)| n.fresh)
            .map(|(i, n)| (i, log_record(sends[i], n)))
            .collect();
        let appending = Instant::now();
        let records: Vec<&LogRecord> = fresh.iter().map(|(_, r)| r).collect();
        // Where the recipients are: looked up by the numbering script, or (a broadcast) read
        // while the broker appends, not after, where its round trip was on the delivery path.
        // Either way it is read after the sends arrived, so it sees every device whose
        // connection was confirmed before `hello`.
        let route_targets = async {
            match routes {
                Some(routes) => routes,
                None if fresh.is_empty() => RouteTargets::new(),
                None => self.route_targets(members).await,
            }
        };
        let (outcomes, targets) = tokio::join!(self.appender.append_all(records), route_targets);
        self.metrics
            .append_seconds
            .observe(appending.elapsed().as_secs_f64());
        let mut appended = vec![true; numbered.len()];
        let mut acked_seqs = Vec::new();
        for ((i, record), outcome) in fresh.iter().zip(outcomes) {
            match outcome {
                Ok(()) => acked_seqs.push(record.seq),
                Err(e) => {
                    // In doubt: the number stays pending and is appended again by the next
                    // holder (or this client's resend); it is never given to another message.
                    tracing::warn!(error = %e, seq = record.seq, conversation_id, "append not acknowledged");
                    appended[*i] = false;
                }
            }
        }
        // Routed before the lease is given up, so this holder's frames reach each handler in
        // `seq` order ahead of the next holder's. A record in the log is real even if the lease
        // was lost meanwhile (the next holder appends the very same record), so routing it
        // never shows a device a message that is not stored.
        let routable: Vec<(usize, &LogRecord)> = fresh
            .iter()
            .filter(|(i, _)| appended[*i])
            .map(|(i, r)| (*i, r))
            .collect();
        if !routable.is_empty() {
            for (i, record) in routable {
                let skip = Some((sends[i].handler_id.as_str(), sends[i].connection_id));
                self.route(&targets, record, skip).await;
            }
        }
        if !self
            .finish(lease, conversation_id, &acked_seqs, true)
            .await?
        {
            return Err(NumberingError::LeaseLost);
        }
        lease
            .released
            .store(true, std::sync::atomic::Ordering::Relaxed);

        let mut answers = Vec::with_capacity(sends.len());
        for (i, (s, n)) in sends.iter().zip(&numbered).enumerate() {
            tracing::debug!(
                client_msg_id = %s.client_msg_id,
                message_id = %n.message_id,
                seq = n.seq,
                fresh = n.fresh,
                appended = appended[i],
                "numbered"
            );
            if !appended[i] {
                self.metrics
                    .send_errors
                    .with_label_values(&["unavailable"])
                    .inc();
                answers.push(unavailable(&s.client_msg_id));
                continue;
            }
            if n.fresh {
                self.metrics.messages_sent.inc();
            }
            answers.push(sent_frame(s, n));
        }
        Ok(answers)
    }

    /// Numbers `sends` in one script (group-committed with other conversations' scripts) and
    /// waits for the replicas to hold the numbers.
    async fn number(
        &self,
        lease: &Lease,
        conversation_id: &str,
        sends: &[&SendRequest],
        given_members: Option<&[String]>,
    ) -> Result<NumberedBatch, NumberingError> {
        let created_at = Timestamp::now();
        let mut per_send = Vec::with_capacity(sends.len());
        for s in sends {
            let message_id = ulid::Ulid::new().to_string();
            let pending = PendingMessage {
                message_id: message_id.clone(),
                sender_id: s.sender_id.to_string(),
                client_msg_id: s.client_msg_id.to_string(),
                body: s.body.clone(),
                created_at,
            };
            let pending = serde_json::to_string(&pending)
                .map_err(|e| StoreError::Unavailable(format!("encoding a pending message: {e}")))?;
            per_send.push((message_id, pending));
        }
        let mut keys = vec![
            lease.key.clone(),
            self.counter_key(conversation_id),
            self.pending_key(conversation_id),
            self.epoch_key(conversation_id),
            self.members.mirror_key(conversation_id),
        ];
        keys.extend(
            sends
                .iter()
                .map(|s| self.idempotency_key(&s.conversation_id, &s.sender_id, &s.client_msg_id)),
        );
        let given_members = given_members.unwrap_or_default();
        let mut args = Vec::with_capacity(7 + given_members.len() + per_send.len() * 4);
        args.push(lease.token.clone());
        args.push(self.idempotency_ttl_secs.to_string());
        args.push(self.lock_ttl.as_millis().to_string());
        args.push(self.route_broadcast_from.to_string());
        args.push(switchboard_chat_state::presence::now_ms().to_string());
        args.push(self.redis.config().key_prefix.clone());
        args.push(given_members.len().to_string());
        args.extend(given_members.iter().cloned());
        let created_at = created_at.to_string();
        for (s, (message_id, pending)) in sends.iter().zip(per_send) {
            args.push(s.sender_id.to_string());
            args.push(message_id);
            args.push(created_at.clone());
            args.push(pending);
        }
        let reply = self
            .numberer
            .run(ScriptCall {
                function: NUMBER.name,
                keys,
                args,
            })
            .await?;
        let value = reply.value.extract_error().map_err(StoreError::Command)?;
        let wanted = self.replicas_required;
        if let Some(acked) = reply.replicas_acked {
            if acked < i64::from(wanted) {
                // The numbers stay pending on this master: if it survives, the next holder
                // appends them and the resends get the same numbers; if it dies, no record of
                // them ever reached the log, so the new master may hand them out again.
                return Err(NumberingError::NotReplicated { acked, wanted });
            }
        }
        let (answer, members, looked_up, found): NumberReply = redis::from_owned_redis_value(value)
            .map_err(|e| StoreError::Unavailable(format!("the numbering script answered: {e}")))?;
        let numbered = answer
            .into_iter()
            .map(|(seq, message_id, created_at, fresh)| {
                let created_at = Timestamp::parse(&created_at).map_err(|e| {
                    StoreError::Unavailable(format!("an idempotency record's created_at: {e}"))
                })?;
                Ok(Numbered {
                    seq,
                    message_id,
                    created_at,
                    fresh: fresh == 1,
                })
            })
            .collect::<Result<Vec<_>, NumberingError>>()?;
        let routes = (looked_up == 1).then(|| group_by_handler(&members, found));
        Ok(NumberedBatch {
            numbered,
            members,
            routes,
        })
    }

    /// Appends again every number a holder took but never saw acknowledged, then clears them.
    async fn finish_pending(
        &self,
        lease: &Lease,
        conversation_id: &str,
        members: &[String],
    ) -> Result<(), NumberingError> {
        let entries: HashMap<u64, String> = self
            .redis
            .query(redis::cmd("HGETALL").arg(self.pending_key(conversation_id)))
            .await?;
        let mut records: Vec<LogRecord> = Vec::with_capacity(entries.len());
        let mut unreadable = Vec::new();
        for (seq, json) in entries {
            match serde_json::from_str::<PendingMessage>(&json) {
                Ok(p) => records.push(LogRecord {
                    conversation_id: conversation_id.to_owned(),
                    seq,
                    message_id: p.message_id,
                    sender_id: p.sender_id,
                    client_msg_id: p.client_msg_id,
                    body: p.body,
                    created_at: p.created_at,
                }),
                Err(e) => {
                    tracing::error!(error = %e, seq, conversation_id, "unreadable pending message dropped");
                    unreadable.push(seq);
                }
            }
        }
        records.sort_by_key(|r| r.seq);
        let outcomes = self.appender.append_all(&records).await;
        let mut acked: Vec<u64> = unreadable;
        let mut failed = None;
        for (record, outcome) in records.iter().zip(outcomes) {
            match outcome {
                Ok(()) => acked.push(record.seq),
                Err(e) => failed = Some(e),
            }
        }
        let targets = self.route_targets(members).await;
        for record in records.iter().filter(|r| acked.contains(&r.seq)) {
            self.route(&targets, record, None).await;
        }
        if !self.finish(lease, conversation_id, &acked, false).await? {
            return Err(NumberingError::LeaseLost);
        }
        self.metrics.pending_replayed.inc_by(records.len() as u64);
        tracing::info!(
            conversation_id,
            replayed = records.len(),
            "appended the numbers a previous lease left pending"
        );
        match failed {
            Some(e) => Err(NumberingError::Store(StoreError::Unavailable(
                e.to_string(),
            ))),
            None => Ok(()),
        }
    }

    /// Checks the counter against the log on this master: a new conversation, a master that
    /// took over (asynchronous replication may have lost its last numbers), or a counter Redis
    /// lost. The floor is the highest `seq` stored once ingest has caught up with the log, and
    /// every acknowledged number was in the log before its `sent`. The idempotency records of
    /// the numbers above the counter were lost with them (they were written in the same
    /// script as the `INCR`, and replication keeps order), so they are restored from the log
    /// too: a resend of such a message gets its original answer, not a second number.
    async fn reseed(&self, lease: &Lease, conversation_id: &str) -> Result<(), NumberingError> {
        let counter: Option<u64> = self
            .redis
            .query(redis::cmd("GET").arg(self.counter_key(conversation_id)))
            .await?;
        let counter = counter.unwrap_or(0);
        let settled = self
            .members
            .settled_log(conversation_id, counter)
            .await
            .map_err(|e| StoreError::Unavailable(format!("the settled log: {e}")))?;
        let floor = settled.last_seq;
        let build = |replid: &str| {
            let mut eval = redis::cmd("EVAL");
            eval.arg(RESEED_LUA)
                .arg(3 + settled.messages.len())
                .arg(&lease.key)
                .arg(self.counter_key(conversation_id))
                .arg(self.epoch_key(conversation_id));
            for m in &settled.messages {
                eval.arg(self.idempotency_key(conversation_id, &m.sender_id, &m.client_msg_id));
            }
            eval.arg(&lease.token)
                .arg(replid)
                .arg(floor)
                .arg(counter)
                .arg(self.idempotency_ttl_secs);
            for m in &settled.messages {
                eval.arg(m.seq)
                    .arg(&m.message_id)
                    .arg(m.created_at.to_string());
            }
            let mut pipe = redis::pipe();
            pipe.add_command(eval);
            pipe
        };
        let (was,): (u64,) = self.redis.query_pipe_on_master(build).await?;
        if floor > was && was > 0 {
            self.metrics.counters_raised.inc();
            tracing::warn!(
                conversation_id,
                counter = was,
                log = floor,
                restored_idempotency_records = settled.messages.len(),
                "the sequence counter was behind the log (lost in a Redis failover); raised it"
            );
        }
        Ok(())
    }

    /// Clears the acknowledged pending entries; `true` while the lease is still ours.
    async fn finish(
        &self,
        lease: &Lease,
        conversation_id: &str,
        acked_seqs: &[u64],
        release: bool,
    ) -> Result<bool, NumberingError> {
        let mut args = Vec::with_capacity(3 + acked_seqs.len());
        args.push(lease.token.clone());
        args.push(if release { "1" } else { "0" }.to_owned());
        args.push(self.lock_ttl.as_millis().to_string());
        args.extend(acked_seqs.iter().map(u64::to_string));
        let reply = self
            .numberer
            .run(ScriptCall {
                function: FINISH.name,
                keys: vec![lease.key.clone(), self.pending_key(conversation_id)],
                args,
            })
            .await?;
        let value = reply.value.extract_error().map_err(StoreError::Command)?;
        let held: i64 = redis::from_owned_redis_value(value)
            .map_err(|e| StoreError::Unavailable(format!("the finish script answered: {e}")))?;
        Ok(held == 1)
    }

    /// [`Self::number`], waiting (up to `SB_LOCK_WAIT_MS`) while another holder has the
    /// lease; starts renewing it once a script has taken it.
    async fn number_acquiring(
        &self,
        lease: &Lease,
        conversation_id: &str,
        sends: &[&SendRequest],
        given_members: Option<&[String]>,
    ) -> Result<NumberedBatch, NumberingError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let numbering = Instant::now();
            let outcome = self
                .number(lease, conversation_id, sends, given_members)
                .await;
            self.metrics
                .numbering_seconds
                .observe(numbering.elapsed().as_secs_f64());
            match &outcome {
                // Held before and taken since: the lease expired under us.
                Err(NumberingError::Busy) if lease.held_once() => {
                    return Err(NumberingError::LeaseLost)
                }
                Err(NumberingError::Busy) => {
                    self.metrics.lease_busy.inc();
                    if started.elapsed() > self.lock_wait {
                        return outcome;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                    continue;
                }
                // The script did not run, or refused before the lease: nothing was taken.
                Err(NumberingError::Store(_))
                | Err(NumberingError::LeaseLost)
                | Err(NumberingError::Members) => return outcome,
                _ => {}
            }
            let mut renewer = lease.renewer.lock().expect("lease lock");
            if renewer.is_none() {
                self.metrics
                    .lock_wait_seconds
                    .observe(started.elapsed().as_secs_f64());
                *renewer = Some(tokio::spawn(renew(
                    self.redis.clone(),
                    lease.key.clone(),
                    lease.token.clone(),
                    self.lock_ttl,
                )));
            }
            return outcome;
        }
    }

    async fn release(&self, lease: &Lease) {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&lease.key).arg(&lease.token);
        if let Err(e) = self.redis.invoke::<i64>(&inv).await {
            tracing::warn!(error = %e, "releasing the sequence lease failed; it will expire");
        }
    }

    /// One record per handler holding a member's device; the sending device is skipped (it
    /// gets `sent`). A failure here loses no message: it is in the log, and devices fill gaps
    /// from history.
    async fn route(&self, targets: &RouteTargets, record: &LogRecord, skip: Option<(&str, u64)>) {
        let frame = ServerFrame::Message {
            conversation_id: record.conversation_id.clone(),
            message_id: record.message_id.clone(),
            seq: record.seq,
            sender_id: record.sender_id.clone(),
            body: record.body.clone(),
            created_at: record.created_at.to_string(),
        }
        .to_json();
        self.route_frame(targets, &frame, skip, Some(record)).await;
    }

    /// Which handlers get a frame for `users` (one Redis round trip); an empty map when the
    /// lookup fails (devices then catch up from history).
    async fn route_targets(&self, users: &[String]) -> RouteTargets {
        match self.handlers.route(users, self.route_broadcast_from).await {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(error = %e, "recipient lookup failed; devices will catch up from history");
                HashMap::new()
            }
        }
    }

    /// Produces `frame` to every handler holding a device of `users`, skipping one connection.
    pub async fn fan_out(&self, frame: &str, users: &[String], skip: Option<(&str, u64)>) {
        let targets = self.route_targets(users).await;
        self.route_frame(&targets, frame, skip, None).await;
    }

    /// Queues one record per target handler on the [`Router`] without waiting for the
    /// broker's ack: the router keeps this manager's routing order per handler topic, and
    /// handlers restore `seq` order across managers (`order`), so the lease is not held for a
    /// second round trip.
    /// A record that fails only costs live delivery: the message is in the log, and devices
    /// fill gaps from history. `message`: the log record a `message` frame carries (its
    /// order, acceptance time and id travel beside the frame).
    async fn route_frame(
        &self,
        targets: &RouteTargets,
        frame: &str,
        skip: Option<(&str, u64)>,
        message: Option<&LogRecord>,
    ) {
        for (handler, recipients) in targets {
            let record = HandlerRecord {
                recipients: recipients.clone(),
                skip_connection: skip.filter(|(h, _)| h == handler).map(|(_, c)| c),
                frame: frame.to_owned(),
                accepted_at_ms: message.map(|m| m.created_at.millis()),
                order: message.map(|m| (m.conversation_id.clone(), m.seq)),
                message_id: message.map(|m| m.message_id.clone()),
            };
            self.router
                .route(self.kafka.config.handler_topic(handler), record)
                .await;
        }
    }
}

/// Renews the lease every third of its lifetime while the holder works; stops once the token
/// no longer holds it (the holder's scripts then refuse it too).
async fn renew(redis: SentinelRedis, key: String, token: String, ttl: Duration) {
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let mut inv = RENEW.prepare_invoke();
        inv.key(&key).arg(&token).arg(ttl_ms);
        match redis.invoke::<i64>(&inv).await {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(%key, "sequence lease lost before it was released");
                return;
            }
            Err(e) => tracing::warn!(error = %e, %key, "renewing the sequence lease failed"),
        }
    }
}

fn log_record(s: &SendRequest, n: &Numbered) -> LogRecord {
    LogRecord {
        conversation_id: s.conversation_id.to_string(),
        seq: n.seq,
        message_id: n.message_id.clone(),
        sender_id: s.sender_id.to_string(),
        client_msg_id: s.client_msg_id.to_string(),
        body: s.body.clone(),
        created_at: n.created_at,
    }
}

fn sent_frame(s: &SendRequest, n: &Numbered) -> ServerFrame {
    ServerFrame::Sent {
        client_msg_id: s.client_msg_id.to_string(),
        conversation_id: s.conversation_id.to_string(),
        message_id: n.message_id.clone(),
        seq: n.seq,
        created_at: n.created_at.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numbering::ScriptReply;
    use redis::Value;
    use switchboard_service_kit::supervise::Workers;

    /// A fresh key space on the test binary's real Redis and a batcher running the sequence
    /// functions on it (no replicas asked for); keep the workers for as long as the batcher.
    fn sequence_scripts(name: &str) -> (SentinelRedis, NumberingBatcher, Workers) {
        let redis = switchboard_test_support::shared::fresh_redis("socket-manager", name);
        let mut workers = Workers::new();
        let batcher = NumberingBatcher::start(
            vec![redis.clone()],
            SEQUENCE_PREAMBLE,
            &SEQUENCE_FUNCTIONS,
            0,
            Duration::from_secs(2),
            &mut workers,
        );
        (redis, batcher, workers)
    }

    /// The finish script against the test binary's real Redis: giving the lease up deletes it
    /// only for its holder; a lease another holder took in the meantime stays theirs.
    #[tokio::test(flavor = "current_thread")]
    async fn finishing_gives_up_only_its_own_lease() {
        let (redis, batcher, _workers) = sequence_scripts("finish-lease");
        let lease = redis.key("lock:conv:c1");
        let pending = redis.key("pending:c1");
        let finish = |token: &str, release: bool| ScriptCall {
            function: FINISH.name,
            keys: vec![lease.clone(), pending.clone()],
            args: vec![
                token.to_owned(),
                if release { "1" } else { "0" }.to_owned(),
                "30000".to_owned(),
                "7".to_owned(),
            ],
        };
        let set = |value: &str| {
            redis::cmd("SET")
                .arg(&lease)
                .arg(value)
                .arg("PX")
                .arg(30_000)
                .clone()
        };

        let _: () = redis.query(&set("theirs")).await.unwrap();
        let _: i64 = redis
            .query(redis::cmd("HSET").arg(&pending).arg(7).arg("{}"))
            .await
            .unwrap();
        let lost = batcher.run(finish("mine", true)).await.unwrap();
        assert_eq!(lost.value, Value::Int(0), "a lease another holder took");
        let holder: Option<String> = redis.query(redis::cmd("GET").arg(&lease)).await.unwrap();
        assert_eq!(holder.as_deref(), Some("theirs"), "stays theirs");
        let expiry: i64 = redis.query(redis::cmd("PTTL").arg(&lease)).await.unwrap();
        assert!(expiry > 0, "with an expiry ({expiry} ms)");
        let left: i64 = redis.query(redis::cmd("HLEN").arg(&pending)).await.unwrap();
        assert_eq!(left, 0, "the acknowledged seq is cleared either way");

        let _: () = redis.query(&set("mine")).await.unwrap();
        let kept = batcher.run(finish("mine", false)).await.unwrap();
        assert_eq!(kept.value, Value::Int(1));
        let released = batcher.run(finish("mine", true)).await.unwrap();
        assert_eq!(released.value, Value::Int(1));
        let holder: Option<String> = redis.query(redis::cmd("GET").arg(&lease)).await.unwrap();
        assert_eq!(holder, None, "its own lease is given up");
        let gone = batcher.run(finish("mine", true)).await.unwrap();
        assert_eq!(gone.value, Value::Int(0), "a lease that expired is lost");
    }

    /// The numbering script checks the senders against the mirrored members itself: a cold
    /// mirror or a sender not in it is refused with `MEMBERS` before anything is touched;
    /// members in the mirror, or given by the caller, are numbered and answered with them.
    #[tokio::test(flavor = "current_thread")]
    async fn numbering_checks_the_senders_against_the_mirrored_members() {
        let (redis, batcher, _workers) = sequence_scripts("number-members");
        let key = |suffix: &str| redis.key(suffix);
        let info: String = redis
            .query(redis::cmd("INFO").arg("replication"))
            .await
            .unwrap();
        let replid = info
            .lines()
            .find_map(|l| l.strip_prefix("master_replid:"))
            .unwrap()
            .trim()
            .to_owned();
        let _: () = redis
            .query(redis::cmd("SET").arg(key("seq-epoch:c1")).arg(&replid))
            .await
            .unwrap();
        let number = |token: &str, given: &[&str], senders: &[&str]| {
            let mut keys = vec![
                key("lock:conv:c1"),
                key("seq:c1"),
                key("pending:c1"),
                key("seq-epoch:c1"),
                key("members:c1"),
            ];
            let mut args = vec![
                token.to_owned(),
                "60".to_owned(),
                "30000".to_owned(),
                // Routes looked up below three members.
                "3".to_owned(),
                switchboard_chat_state::presence::now_ms().to_string(),
                redis.config().key_prefix.clone(),
                given.len().to_string(),
            ];
            args.extend(given.iter().map(|m| m.to_string()));
            for (i, sender) in senders.iter().enumerate() {
                keys.push(key(&format!("idem:c1:{sender}:m{i}")));
                args.extend([
                    sender.to_string(),
                    format!("message-{token}-{i}"),
                    "2026-12-02T00:00:00.000Z".to_owned(),
                    "{}".to_owned(),
                ]);
            }
            ScriptCall {
                function: NUMBER.name,
                keys,
                args,
            }
        };
        let refused = |reply: ScriptReply| match reply.value {
            Value::ServerError(e) => e.code() == "MEMBERS",
            _ => false,
        };
        let untouched = || async {
            let lease: Option<String> = redis
                .query(redis::cmd("GET").arg(key("lock:conv:c1")))
                .await
                .unwrap();
            let counter: Option<u64> = redis
                .query(redis::cmd("GET").arg(key("seq:c1")))
                .await
                .unwrap();
            lease.is_none() && counter.is_none()
        };

        let cold = batcher.run(number("t1", &[], &["alice"])).await.unwrap();
        assert!(refused(cold), "a cold mirror vouches for nobody");
        assert!(untouched().await);

        let _: i64 = redis
            .query(
                redis::cmd("SADD")
                    .arg(key("members:c1"))
                    .arg("alice")
                    .arg("bob"),
            )
            .await
            .unwrap();
        let stranger = batcher
            .run(number("t1", &[], &["alice", "carol"]))
            .await
            .unwrap();
        assert!(refused(stranger), "carol is not a member");
        assert!(untouched().await);

        let handlers = HandlerMap::new(redis.clone(), 60_000, 60_000);
        handlers.connected("h1", &["alice"]).await.unwrap();
        let reply = batcher
            .run(number("t1", &[], &["alice", "bob"]))
            .await
            .unwrap();
        let (rows, members, looked_up, found): NumberReply =
            redis::from_owned_redis_value(reply.value).unwrap();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, ["alice", "bob"]);
        assert_eq!(looked_up, 1, "two members: the routes are looked up too");
        assert_eq!(
            group_by_handler(&members, found),
            RouteTargets::from([("h1".to_owned(), vec!["alice".to_owned()])])
        );
        assert_eq!(
            rows.iter().map(|r| (r.0, r.3)).collect::<Vec<_>>(),
            [(1, 1), (2, 1)]
        );
        // Given by the caller, the members need no mirror.
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("members:c1")))
            .await
            .unwrap();
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();
        let given = batcher
            .run(number("t1", &["carol", "dave"], &["carol"]))
            .await
            .unwrap();
        let (rows, members, looked_up, _): NumberReply =
            redis::from_owned_redis_value(given.value).unwrap();
        assert_eq!(members, ["carol", "dave"]);
        assert_eq!(rows[0].0, 3);
        assert_eq!(looked_up, 1);
        // From three members on, the routes are left to the caller (a broadcast).
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();
        let many = batcher
            .run(number("t1", &["carol", "dave", "erin"], &["carol"]))
            .await
            .unwrap();
        let (_, _, looked_up, found): NumberReply =
            redis::from_owned_redis_value(many.value).unwrap();
        assert_eq!((looked_up, found.len()), (0, 0));
    }
}
