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
//!
//! The steps live in their own files: [`scripts`] (the Lua and its typed replies), [`lease`]
//! (the lease guard and its renewal), [`recovery`] (pending numbers and the check against the
//! log), [`fan_out`] (routing frames to the handler topics), [`keys`] (the key family).

mod fan_out;
mod keys;
mod lease;
mod recovery;
mod scripts;
mod server_send;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_message_log::LogRecord;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ClientMsgId, ConversationId, ErrorCode, HandlerId, Timestamp, UserId};
use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};
use switchboard_service_kit::supervise::OwnedTask;

use crate::batching::{LogAppender, Router};
use crate::kafka::Kafka;
use crate::members::Members;
use crate::numbering::{NumberingBatcher, ScriptCall};
use switchboard_chat_state::presence::{group_by_server, ServerMap};

use lease::{renew, Lease, RELEASE};
use scripts::{NumberReply, NumberingError, FINISH, NUMBER};
pub use scripts::{SEQUENCE_FUNCTIONS, SEQUENCE_PREAMBLE};

/// Handler id → the users on it who get a frame.
type RouteTargets = HashMap<String, Vec<String>>;

/// A send as the handler reported it, its ids checked.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub server_id: HandlerId,
    pub connection_id: u64,
    pub sender_id: UserId,
    pub conversation_id: ConversationId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Attachment ids, verified before numbering (`crate::attachments`); empty for most sends.
    pub attachments: Vec<String>,
    /// A reply's target, or an edit, delete or reaction (`crate::events`, checked before
    /// numbering); `None` for a plain message. Numbered like a message either way.
    pub event: Option<switchboard_message_log::RecordEvent>,
}

/// A conversation batch as numbered.
struct NumberedBatch {
    numbered: Vec<Numbered>,
    members: Vec<String>,
    /// Where the members are connected, when the numbering script looked it up (fewer
    /// members than `SB_ROUTE_BROADCAST_FROM`).
    routes: Option<RouteTargets>,
    /// The log epoch the batch was numbered under: its records carry it.
    epoch: u64,
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
    /// Pending numbers found older than a minute (their append stays in doubt): an alarm.
    pub pending_stale: prometheus::IntCounter,
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
    pub servers: ServerMap,
    /// Recipients from which a frame goes to every registered handler instead of the ones a
    /// lookup per recipient finds (`SB_ROUTE_BROADCAST_FROM`; see [`ServerMap::route`]).
    pub route_broadcast_from: usize,
    /// Partitions of the message log (`SB_MESSAGE_PARTITIONS`): a fence goes to the
    /// conversation's own.
    pub log_partitions: i32,
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
        let mut answers = Vec::with_capacity(sends.len());
        for hold in holds(sends) {
            answers.extend(self.send_hold(conversation_id, hold).await);
        }
        answers
    }

    /// The sends of one lease hold (see [`holds`]).
    async fn send_hold(
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
            epoch,
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
            .map(|(i, n)| (i, log_record(sends[i], n, epoch)))
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
                let skip = Some((sends[i].server_id.as_str(), sends[i].connection_id));
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
            let pending = recovery::PendingMessage {
                message_id: message_id.clone(),
                sender_id: s.sender_id.to_string(),
                client_msg_id: s.client_msg_id.to_string(),
                body: s.body.clone(),
                created_at,
                attachments: s.attachments.clone(),
                event: s.event.clone(),
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
        ];
        keys.extend(
            sends
                .iter()
                .map(|s| self.idempotency_key(&s.conversation_id, &s.sender_id, &s.client_msg_id)),
        );
        let given_members = given_members.unwrap_or_default();
        let mut args = Vec::with_capacity(8 + given_members.len() + per_send.len() * 4);
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
        args.push(self.members.mirror_key(conversation_id));
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
        let NumberReply {
            rows,
            members,
            found,
            epoch,
        } = NumberReply::parse(value)?;
        let numbered = rows
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
        let routes = found.map(|found| group_by_server(&members, found));
        Ok(NumberedBatch {
            epoch,
            numbered,
            members,
            routes,
        })
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
                *renewer = Some(OwnedTask::spawn(
                    "lease renewal",
                    renew(
                        self.redis.clone(),
                        lease.key.clone(),
                        lease.token.clone(),
                        self.lock_ttl,
                    ),
                ));
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
}

/// The pending entries of one lease hold carry at most about this many bytes of bodies (as
/// JSON: a control character takes 6 bytes escaped). A conversation's sends beyond it are
/// numbered in further holds, in order, so no one conversation's pending numbers can hold
/// more than this of Redis while their append is in doubt.
const MAX_PENDING_BYTES_PER_HOLD: usize = 1024 * 1024;

/// Splits a conversation's sends into lease holds of at most [`MAX_PENDING_BYTES_PER_HOLD`]
/// encoded body bytes (at least one send each), in order.
fn holds(sends: &[SendRequest]) -> Vec<&[SendRequest]> {
    let mut holds = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, send) in sends.iter().enumerate() {
        let size = json_escaped_len(&send.body) + 200;
        if i > start && bytes + size > MAX_PENDING_BYTES_PER_HOLD {
            holds.push(&sends[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sends.len() {
        holds.push(&sends[start..]);
    }
    holds
}

/// The length of `text` as a JSON string's contents, escapes included (serde_json's escapes).
fn json_escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn log_record(s: &SendRequest, n: &Numbered, epoch: u64) -> LogRecord {
    LogRecord {
        conversation_id: s.conversation_id.to_string(),
        seq: n.seq,
        message_id: n.message_id.clone(),
        sender_id: s.sender_id.to_string(),
        client_msg_id: s.client_msg_id.to_string(),
        body: s.body.clone(),
        created_at: n.created_at,
        epoch,
        attachments: s.attachments.clone(),
        event: s.event.clone(),
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

    fn send(body: String) -> SendRequest {
        SendRequest {
            server_id: HandlerId::parse("h1").unwrap(),
            connection_id: 1,
            sender_id: UserId::parse("alice").unwrap(),
            conversation_id: ConversationId::parse("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap(),
            client_msg_id: ClientMsgId::parse("m1").unwrap(),
            body,
            attachments: Vec::new(),
            event: None,
        }
    }

    #[test]
    fn escaped_lengths_match_serde_json() {
        for text in [
            "plain",
            "\u{1}\u{1f}",
            "\"quoted\" \\ \n\t\r",
            "\u{8}\u{c}é😀",
            "",
        ] {
            let encoded = serde_json::to_string(text).unwrap();
            assert_eq!(json_escaped_len(text), encoded.len() - 2, "{text:?}");
        }
    }

    #[test]
    fn a_conversations_sends_are_held_in_bounded_pending_bytes_in_order() {
        // Six bodies of 43,000 U+0001: 258 KB each as JSON, so four to a hold at most.
        let poison: Vec<SendRequest> = (0..6).map(|_| send("\u{1}".repeat(43_000))).collect();
        let sizes: Vec<usize> = holds(&poison).iter().map(|h| h.len()).collect();
        assert_eq!(sizes, [4, 2]);
        for hold in holds(&poison) {
            let bytes: usize = hold.iter().map(|s| json_escaped_len(&s.body)).sum();
            assert!(bytes <= MAX_PENDING_BYTES_PER_HOLD);
        }
        let small: Vec<SendRequest> = (0..256).map(|i| send(format!("hi {i}"))).collect();
        assert_eq!(holds(&small).len(), 1, "the common case is one hold");
        // One send larger than a hold still goes, on its own.
        let huge = vec![
            send("x".repeat(2 * MAX_PENDING_BYTES_PER_HOLD)),
            send("y".into()),
        ];
        assert_eq!(
            holds(&huge).iter().map(|h| h.len()).collect::<Vec<_>>(),
            [1, 1]
        );
        assert!(holds(&[]).is_empty());
    }
}
