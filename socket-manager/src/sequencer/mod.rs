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
//!    a conversation large enough to broadcast to every socket server, is read meanwhile.
//! 4. **route, then finish**: the appended records are routed, then a script (in the next
//!    flush) clears their pending entries and answers whether the token still holds the lease.
//!    Only then is `sent` answered; a manager that lost its lease (a pause, a partition)
//!    answers `unavailable` and the client's resend gets the same numbers from the
//!    idempotency record.
//!
//! Routing is enqueued inside the lease (without waiting for its ack), so one manager's records
//! reach each socket server topic in `seq` order; when several managers take turns on a conversation
//! the socket server's reorder buffer restores `seq` order. The store's primary key
//! `(conversation_id, seq)` stays the last fence, and a conflict there is an alarm.
//!
//! The steps live in their own files: [`hold`] (one lease hold, steps 1 to 4), [`number`]
//! (the numbering and finish calls), [`scripts`] (the Lua and its typed replies), [`lease`]
//! (the lease guard and its renewal), [`recovery`] (pending numbers and the check against the
//! log), [`fan_out`] (routing frames to the socket servers' topics), [`holds`] (a
//! conversation's sends split into bounded holds), [`counter`] (the counter outside a lease).
//! The keys are the sequence key family of `switchboard_chat_state::sequence`.

mod counter;
mod fan_out;
mod hold;
mod holds;
mod lease;
pub(crate) mod metrics;
mod number;
mod recovery;
mod scripts;
mod server_send;

use std::collections::HashMap;
use std::time::Duration;

use switchboard_chat_state::presence::ServerMap;
use switchboard_chat_state::sequence::SequenceKeys;
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ClientMsgId, ConversationId, ErrorCode, ServerId, UserId};
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::supervise::Workers;

use crate::batching::{LogAppender, Router};
use crate::config::ManagerConfig;
use crate::kafka::Kafka;
use crate::members::Members;
use crate::numbering::NumberingBatcher;

use holds::holds;
pub use metrics::SequencerMetrics;
pub use scripts::{SEQUENCE_FUNCTIONS, SEQUENCE_PREAMBLE};

/// Socket server id → the users on it who get a frame.
type RouteTargets = HashMap<String, Vec<String>>;

/// A send as the socket server reported it, its ids checked.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub server_id: ServerId,
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
    /// The W3C trace the send belongs to: the manager's step of its batch's trace
    /// (`routes::batch`), written into its log record and its socket servers' records so
    /// every process that handles it continues that trace. `None` outside a traced request.
    pub traceparent: Option<switchboard_protocol::trace_context::TraceParent>,
}

pub struct Sequencer {
    pub redis: SentinelRedis,
    /// Numbering scripts, group-committed on their own connection (its `WAIT`s block it).
    pub numberer: NumberingBatcher,
    pub kafka: Kafka,
    /// Log appends, batched into envelopes across conversations and requests.
    pub appender: LogAppender,
    /// Routing to the socket servers' topics, batched into envelopes per server.
    pub router: Router,
    pub members: Members,
    /// Which socket servers hold which users' devices (routing).
    pub servers: ServerMap,
    /// The sequence key family's names.
    pub keys: SequenceKeys,
    /// Recipients from which a frame goes to every registered socket server instead of the ones a
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
    /// The sequencer of `config`, its metrics (and the producer's) registered with `ops`; its
    /// tasks (numbering, appender, router) join `workers`.
    pub(crate) fn start(
        config: &ManagerConfig,
        redis: SentinelRedis,
        kafka: Kafka,
        log_partitions: i32,
        ops: &Ops,
        workers: &mut Workers,
    ) -> prometheus::Result<Self> {
        let metrics = SequencerMetrics::registered(ops)?;
        ops.register(&kafka.produce_seconds);
        ops.register(&kafka.produce_errors);
        let credential = config.common.cluster.credential(ServiceRole::SocketManager);
        Ok(Sequencer {
            members: Members::new(
                redis.clone(),
                config.message_service_url.clone(),
                credential,
            ),
            numberer: NumberingBatcher::start(
                (0..config.seq_flushes_in_flight)
                    .map(|_| SentinelRedis::new(config.common.redis.clone()))
                    .collect(),
                SEQUENCE_PREAMBLE,
                &SEQUENCE_FUNCTIONS,
                config.seq_replica_acks,
                config.seq_replica_ack_timeout,
                workers,
            ),
            appender: LogAppender::start(kafka.clone(), log_partitions, workers),
            router: Router::start(kafka.clone(), workers),
            servers: ServerMap::new(
                redis.clone(),
                config.user_mapping_ttl_ms,
                config.server_ttl_ms,
            ),
            keys: SequenceKeys::new(redis.clone()),
            redis,
            kafka,
            route_broadcast_from: config.route_broadcast_from,
            log_partitions,
            replicas_required: config.seq_replica_acks,
            instance_id: config.manager_id.clone(),
            lock_ttl: config.lock_ttl,
            lock_wait: config.lock_wait,
            idempotency_ttl_secs: config.idempotency_ttl_secs,
            metrics,
        })
    }

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
}
