//! One lease hold, steps 1 to 4 of the module doc: take the lease while numbering (finishing
//! what a predecessor left, or having the counter checked, first when the script asks), append
//! the fresh records together, route them, finish, and answer each send.

use std::time::Instant;

use switchboard_message_log::LogRecord;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ConversationId, ErrorCode};
use switchboard_redis::StoreError;

use super::lease::Lease;
use super::number::{Numbered, NumberedBatch};
use super::scripts::NumberingError;
use super::{error_frame, unavailable, RouteTargets, SendRequest, Sequencer};

/// What the append step left: which sends' records are in the log, and the seqs to clear.
struct Appended {
    /// Per send: its record is in the log (or it was a resend of one already there).
    in_log: Vec<bool>,
    /// The fresh numbers whose append the broker acknowledged.
    acked_seqs: Vec<u64>,
}

impl Sequencer {
    /// Takes the lease, numbers and appends `sends`, answers each.
    /// `None` when the numbering script could not vouch for the senders from the mirror and
    /// no `members` were given (nothing was numbered); see [`Self::send_all`].
    pub(super) async fn sequence(
        &self,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
        members: Option<&[String]>,
    ) -> Option<Vec<ServerFrame>> {
        let lease = Lease::new(self.keys.lease(conversation_id), &self.instance_id);
        let outcome = self
            .under_lease(&lease, conversation_id, sends, members)
            .await;
        lease.release(&self.redis).await;
        match outcome {
            Ok(answers) => Some(answers),
            Err(NumberingError::Members) if members.is_none() => None,
            Err(e) => Some(self.refused(&e, conversation_id, sends)),
        }
    }

    /// The answers to sends a hold could not number or append, counted by reason.
    fn refused(
        &self,
        e: &NumberingError,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
    ) -> Vec<ServerFrame> {
        let reason = match e {
            NumberingError::Busy => "lock",
            NumberingError::LeaseLost => "lease_lost",
            NumberingError::NotReplicated { .. } => "not_replicated",
            _ => "unavailable",
        };
        self.metrics
            .send_errors
            .with_label_values(&[reason])
            .inc_by(sends.len() as u64);
        if let NumberingError::Busy = e {
            tracing::warn!(%conversation_id, "sequence lease not acquired in time");
            return sends
                .iter()
                .map(|s| {
                    error_frame(
                        ErrorCode::Unavailable,
                        "the conversation is busy or the cluster is degraded, retry",
                        &s.client_msg_id,
                    )
                })
                .collect();
        }
        tracing::warn!(error = %e, %conversation_id, "sends not numbered");
        sends
            .iter()
            .map(|s| unavailable(&s.client_msg_id))
            .collect()
    }

    async fn under_lease(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
        given_members: Option<&[String]>,
    ) -> Result<Vec<ServerFrame>, NumberingError> {
        let mut batch = self
            .number_settled(lease, conversation_id, sends, given_members)
            .await?;
        let appended = self
            .append_and_route(conversation_id, sends, &mut batch)
            .await;
        if !self
            .finish(lease, conversation_id, &appended.acked_seqs, true)
            .await?
            .held
        {
            return Err(NumberingError::LeaseLost);
        }
        lease.mark_released();
        Ok(self.answers(sends, &batch.numbered, &appended.in_log))
    }

    /// Numbers `sends`, first finishing what a predecessor left pending or having the counter
    /// checked against the log when the script asks for it (three tries).
    async fn number_settled(
        &self,
        lease: &Lease,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
        given_members: Option<&[String]>,
    ) -> Result<NumberedBatch, NumberingError> {
        for _ in 0..3 {
            match self
                .number_acquiring(lease, conversation_id, sends, given_members)
                .await
            {
                Ok(batch) => return Ok(batch),
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
        Err(NumberingError::Store(StoreError::Unavailable(
            "numbering did not settle after three tries".into(),
        )))
    }

    /// Appends every fresh record of the batch together, then routes the ones in the log.
    async fn append_and_route(
        &self,
        conversation_id: &ConversationId,
        sends: &[&SendRequest],
        batch: &mut NumberedBatch,
    ) -> Appended {
        let fresh: Vec<(usize, LogRecord)> = batch
            .numbered
            .iter()
            .enumerate()
            .filter(|(_, n)| n.fresh)
            .map(|(i, n)| (i, log_record(sends[i], n, batch.epoch)))
            .collect();
        let appending = Instant::now();
        let records: Vec<&LogRecord> = fresh.iter().map(|(_, r)| r).collect();
        // Where the recipients are: looked up by the numbering script, or (a broadcast) read
        // while the broker appends, not after, where its round trip was on the delivery path.
        // Either way it is read after the sends arrived, so it sees every device whose
        // connection was confirmed before `hello`.
        let routes = batch.routes.take();
        let route_targets = async {
            match routes {
                Some(routes) => routes,
                None if fresh.is_empty() => RouteTargets::new(),
                None => self.route_targets(&batch.members).await,
            }
        };
        let (outcomes, targets) = tokio::join!(self.appender.append_all(records), route_targets);
        self.metrics
            .append_seconds
            .observe(appending.elapsed().as_secs_f64());
        let mut appended = Appended {
            in_log: vec![true; batch.numbered.len()],
            acked_seqs: Vec::new(),
        };
        for ((i, record), outcome) in fresh.iter().zip(outcomes) {
            match outcome {
                Ok(()) => appended.acked_seqs.push(record.seq),
                Err(e) => {
                    // In doubt: the number stays pending and is appended again by the next
                    // holder (or this client's resend); it is never given to another message.
                    tracing::warn!(error = %e, seq = record.seq, %conversation_id, "append not acknowledged");
                    appended.in_log[*i] = false;
                }
            }
        }
        // Routed before the lease is given up, so this holder's frames reach each socket
        // server in `seq` order ahead of the next holder's. A record in the log is real even if
        // the lease was lost meanwhile (the next holder appends the very same record), so
        // routing it never shows a device a message that is not stored.
        for (i, record) in fresh.iter().filter(|(i, _)| appended.in_log[*i]) {
            let skip = Some((sends[*i].server_id.as_str(), sends[*i].connection_id));
            self.route(&targets, record, skip).await;
        }
        appended
    }

    /// Each send's answer: `sent` when its record is in the log, else `unavailable` (the
    /// client's resend gets the same number from the idempotency record).
    fn answers(
        &self,
        sends: &[&SendRequest],
        numbered: &[Numbered],
        in_log: &[bool],
    ) -> Vec<ServerFrame> {
        let mut answers = Vec::with_capacity(sends.len());
        for ((s, n), in_log) in sends.iter().zip(numbered).zip(in_log) {
            tracing::debug!(
                trace_id = s.traceparent.map(|t| tracing::field::display(t.trace_id)),
                client_msg_id = %s.client_msg_id,
                message_id = %n.message_id,
                seq = n.seq,
                fresh = n.fresh,
                appended = in_log,
                "numbered"
            );
            if !in_log {
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
        answers
    }
}

fn log_record(s: &SendRequest, n: &Numbered, epoch: u64) -> LogRecord {
    LogRecord {
        conversation_id: s.conversation_id.clone(),
        seq: n.seq,
        message_id: n.message_id.clone(),
        sender_id: s.sender_id.clone(),
        client_msg_id: s.client_msg_id.to_string(),
        body: s.body.clone(),
        created_at: n.created_at,
        epoch,
        attachments: s.attachments.clone(),
        event: s.event.clone(),
        traceparent: s.traceparent,
    }
}

fn sent_frame(s: &SendRequest, n: &Numbered) -> ServerFrame {
    ServerFrame::Sent {
        client_msg_id: s.client_msg_id.to_string(),
        conversation_id: s.conversation_id.clone(),
        message_id: n.message_id.clone(),
        seq: n.seq,
        created_at: n.created_at,
    }
}
