//! Step 2 of a lease hold: numbering a conversation's sends in one script (taking the lease
//! when it is free, waiting while another holder has it), and the finish script that clears
//! the appended numbers and gives the lease up.

use std::time::{Duration, Instant};

use switchboard_protocol::{ConversationId, MessageId, Timestamp};
use switchboard_redis::StoreError;

use crate::numbering::ScriptCall;
use switchboard_chat_state::presence::group_by_server;

use super::lease::Lease;
use super::recovery::PendingMessage;
use super::scripts::{FinishReply, NumberReply, NumberedRow, NumberingError, FINISH, NUMBER};
use super::{RouteTargets, SendRequest, Sequencer};

/// A conversation batch as numbered.
pub(super) struct NumberedBatch {
    pub numbered: Vec<Numbered>,
    pub members: Vec<String>,
    /// Where the members are connected, when the numbering script looked it up (fewer
    /// members than `SB_ROUTE_BROADCAST_FROM`).
    pub routes: Option<RouteTargets>,
    /// The log epoch the batch was numbered under: its records carry it.
    pub epoch: u64,
}

/// What the numbering script answered for one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Numbered {
    pub seq: u64,
    pub message_id: MessageId,
    pub created_at: Timestamp,
    /// Numbered now (its record must be appended); `false`: a resend of a message in the log.
    pub fresh: bool,
}

impl Numbered {
    fn of(row: NumberedRow) -> Numbered {
        Numbered {
            seq: row.seq,
            message_id: row.message_id,
            created_at: row.created_at,
            fresh: row.fresh,
        }
    }
}

impl Sequencer {
    /// [`Self::number`], waiting (up to `SB_LOCK_WAIT_MS`) while another holder has the
    /// lease; starts renewing it once a script has taken it.
    pub(super) async fn number_acquiring(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
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
            if lease.start_renewing(&self.redis, self.lock_ttl) {
                self.metrics
                    .lock_wait_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            return outcome;
        }
    }

    /// Numbers `sends` in one script (group-committed with other conversations' scripts) and
    /// waits for the replicas to hold the numbers.
    async fn number(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
        given_members: Option<&[String]>,
    ) -> Result<NumberedBatch, NumberingError> {
        let call = self.number_call(
            lease,
            conversation_id,
            sends,
            given_members.unwrap_or_default(),
        )?;
        let reply = self.numberer.run(call).await?;
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
        let numbered = rows.into_iter().map(Numbered::of).collect();
        let routes = found.map(|found| group_by_server(&members, found));
        Ok(NumberedBatch {
            epoch,
            numbered,
            members,
            routes,
        })
    }

    /// The numbering script's call for `sends` (see [`NUMBER`] for its keys and arguments):
    /// each send gets a fresh message id, and its pending entry is written with its number.
    fn number_call(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
        given_members: &[String],
    ) -> Result<ScriptCall, NumberingError> {
        let created_at = Timestamp::now();
        let mut keys = vec![
            lease.key.clone(),
            self.keys.counter(conversation_id),
            self.keys.pending(conversation_id),
            self.keys.epoch(conversation_id),
        ];
        keys.extend(sends.iter().map(|s| {
            self.keys
                .idempotency(&s.conversation_id, &s.sender_id, &s.client_msg_id)
        }));
        let mut args = Vec::with_capacity(8 + given_members.len() + sends.len() * 4);
        args.push(lease.token.clone());
        args.push(self.idempotency_ttl_secs.to_string());
        args.push(self.lock_ttl.as_millis().to_string());
        args.push(self.route_broadcast_from.to_string());
        args.push(switchboard_chat_state::presence::now_ms().to_string());
        args.push(self.redis.config().key_prefix.clone());
        args.push(given_members.len().to_string());
        args.extend(given_members.iter().cloned());
        for s in sends {
            let message_id = MessageId::parse(ulid::Ulid::new().to_string())
                .expect("a new ULID is a message id");
            let pending = pending_entry(s, &message_id, created_at)?;
            args.push(s.sender_id.to_string());
            args.push(message_id.into_string());
            args.push(created_at.to_string());
            args.push(pending);
        }
        args.push(self.members.mirror_key(conversation_id));
        Ok(ScriptCall {
            function: NUMBER.name,
            keys,
            args,
        })
    }

    /// Clears the acknowledged pending entries, and gives the lease up when `release`; the
    /// reply says whether the lease was still ours.
    pub(super) async fn finish(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
        acked_seqs: &[u64],
        release: bool,
    ) -> Result<FinishReply, NumberingError> {
        let mut args = Vec::with_capacity(3 + acked_seqs.len());
        args.push(lease.token.clone());
        args.push(if release { "1" } else { "0" }.to_owned());
        args.push(self.lock_ttl.as_millis().to_string());
        args.extend(acked_seqs.iter().map(u64::to_string));
        let reply = self
            .numberer
            .run(ScriptCall {
                function: FINISH.name,
                keys: vec![lease.key.clone(), self.keys.pending(conversation_id)],
                args,
            })
            .await?;
        let value = reply.value.extract_error().map_err(StoreError::Command)?;
        Ok(FinishReply::parse(value)?)
    }
}

/// A send's pending entry (the message as JSON, without its number or epoch).
fn pending_entry(
    s: &SendRequest,
    message_id: &MessageId,
    created_at: Timestamp,
) -> Result<String, StoreError> {
    let pending = PendingMessage {
        message_id: message_id.clone(),
        sender_id: s.sender_id.clone(),
        client_msg_id: s.client_msg_id.clone(),
        body: s.body.clone(),
        created_at,
        attachments: s.attachments.clone(),
        event: s.event.clone(),
    };
    serde_json::to_string(&pending)
        .map_err(|e| StoreError::Unavailable(format!("encoding a pending message: {e}")))
}
