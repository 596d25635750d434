//! A batch's typing and receipt signals: checked (membership, read once per conversation of the
//! batch; a receipt's seq against the last one), receipts recorded on the events topic, then
//! fanned out to the conversation's other devices.

use std::collections::HashMap;

use switchboard_message_log::Event;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ConversationId, ErrorCode};

use crate::plan::Signal;
use crate::sequencer::Sequencer;
use crate::state::AppState;

/// Members of each conversation of the batch (`None`: unavailable), and the last seq of each
/// conversation a receipt names (or the refusal its receipts get).
struct SignalChecks {
    members: HashMap<ConversationId, Option<Vec<String>>>,
    last: HashMap<ConversationId, Result<u64, ServerFrame>>,
}

/// A batch's typing and receipt signals, each place with its refusal, if any.
///
/// Each is checked (membership, read once per conversation of the batch; a receipt's seq
/// against the last one), then every receipt is recorded on the events topic together: all
/// are enqueued in batch order (one connection's reach the partition in the order it sent
/// them) and their acknowledgements awaited at once, so a batch's receipts take one round of
/// `acks=all`, not one each. Then the frames are fanned out to the conversation's other
/// devices: one connection's in the order it sent them (a device's `delivered 5` then
/// `read 3` reach the other devices in that order), connections side by side.
pub(crate) async fn answer_signals(
    state: &AppState,
    server: &str,
    signals: Vec<Signal>,
) -> Vec<(usize, Option<ServerFrame>)> {
    if signals.is_empty() {
        return Vec::new();
    }
    let checks = read_checks(&state.sequencer, &signals).await;
    // Checked: the refusals, and the accepted signals with their recipients.
    let mut answers: Vec<(usize, Option<ServerFrame>)> = Vec::with_capacity(signals.len());
    let mut accepted: Vec<(Signal, Vec<String>)> = Vec::new();
    for signal in signals {
        match check_signal(&checks.members, &checks.last, &signal) {
            Ok(recipients) => accepted.push((signal, recipients)),
            Err(refused) => answers.push((signal.index, Some(refused))),
        }
    }
    let recorded = record_receipts(state, &accepted).await;
    let mut to_fan_out = Vec::with_capacity(accepted.len());
    for ((signal, recipients), recorded) in accepted.into_iter().zip(recorded) {
        if recorded {
            answers.push((signal.index, None));
            to_fan_out.push((signal, recipients));
        } else {
            answers.push((
                signal.index,
                Some(ServerFrame::error(
                    ErrorCode::Unavailable,
                    "the receipt could not be recorded, retry",
                )),
            ));
        }
    }
    fan_out_all(state, server, to_fan_out).await;
    answers
}

/// What the checks of `signals` read: each conversation's members, and the last seq of each
/// conversation a receipt names, all side by side.
async fn read_checks(sequencer: &Sequencer, signals: &[Signal]) -> SignalChecks {
    let mut conversations: Vec<ConversationId> =
        signals.iter().map(|s| s.conversation_id.clone()).collect();
    conversations.sort_unstable();
    conversations.dedup();
    let member_lists =
        futures_util::future::join_all(conversations.iter().map(|c| sequencer.members.of(c))).await;
    let members: HashMap<ConversationId, Option<Vec<String>>> = conversations
        .into_iter()
        .zip(member_lists.into_iter().map(Result::ok))
        .collect();
    let mut receipt_conversations: Vec<ConversationId> = signals
        .iter()
        .filter(|s| s.receipt.is_some())
        .map(|s| s.conversation_id.clone())
        .collect();
    receipt_conversations.sort_unstable();
    receipt_conversations.dedup();
    let lasts = futures_util::future::join_all(
        receipt_conversations.iter().map(|c| last_seq(sequencer, c)),
    )
    .await;
    let last: HashMap<ConversationId, Result<u64, ServerFrame>> =
        receipt_conversations.into_iter().zip(lasts).collect();
    SignalChecks { members, last }
}

/// Records every accepted receipt on the events topic: all enqueued now, in batch order, the
/// acks awaited together. Per accepted signal: recorded (typing always is).
async fn record_receipts(state: &AppState, accepted: &[(Signal, Vec<String>)]) -> Vec<bool> {
    let kafka = &state.sequencer.kafka;
    let topic = &kafka.config.events_topic;
    let mut acks = Vec::new();
    let mut recorded: Vec<bool> = vec![true; accepted.len()];
    for (i, (signal, _)) in accepted.iter().enumerate() {
        let Some((kind, seq)) = signal.receipt else {
            continue;
        };
        let event = Event::Receipt {
            conversation_id: signal.conversation_id.clone(),
            user_id: signal.user_id.clone(),
            kind,
            seq,
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        match kafka.enqueue(topic, &signal.conversation_id, &payload) {
            Ok(ack) => acks.push((i, ack)),
            Err(e) => {
                tracing::warn!(error = %e, "receipt not recorded");
                recorded[i] = false;
            }
        }
    }
    if acks.is_empty() {
        return recorded;
    }
    state.signal_metrics.receipt_rounds.inc();
    state
        .signal_metrics
        .receipts_recorded
        .inc_by(acks.len() as u64);
    let (places, waits): (Vec<usize>, Vec<_>) = acks.into_iter().unzip();
    for (i, outcome) in places
        .into_iter()
        .zip(futures_util::future::join_all(waits).await)
    {
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "receipt not recorded");
            recorded[i] = false;
        }
    }
    recorded
}

/// Fans the accepted signals out: one connection's in the order it sent them, connections
/// side by side; typing is dropped when its fan-out waits past [`TYPING_FAN_OUT_BUDGET`].
async fn fan_out_all(state: &AppState, server: &str, to_fan_out: Vec<(Signal, Vec<String>)>) {
    let sequencer = &state.sequencer;
    let by_connection = crate::plan::by_connection(to_fan_out, |(s, _)| s.connection_id);
    let typing_dropped = &state.quotas.typing_dropped;
    futures_util::future::join_all(by_connection.into_iter().map(|group| async move {
        for (signal, recipients) in group {
            if signal.receipt.is_some() {
                fan_out_signal(sequencer, server, signal, &recipients).await;
                continue;
            }
            // Typing goes first under pressure: when the route lookup or the router's full
            // queue holds it past its budget, it is dropped (the router's queue is cancel-safe)
            // while messages and receipts wait their turn.
            let fan_out = fan_out_signal(sequencer, server, signal, &recipients);
            if tokio::time::timeout(TYPING_FAN_OUT_BUDGET, fan_out)
                .await
                .is_err()
            {
                typing_dropped.with_label_values(&["busy"]).inc();
            }
        }
    }))
    .await;
}

/// The longest a typing frame's fan-out may wait (route lookup, a full router queue) before
/// it is dropped: typing is worth little a moment later.
const TYPING_FAN_OUT_BUDGET: std::time::Duration = std::time::Duration::from_millis(100);

/// A receipt is checked against the last seq: the counter, or, when the conversation has
/// none (never numbered, or idle past the counter's expiry), the message service's last
/// stored seq, then kept as the counter.
async fn last_seq(
    sequencer: &Sequencer,
    conversation_id: &ConversationId,
) -> Result<u64, ServerFrame> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "the last seq is unavailable");
        ServerFrame::error(
            ErrorCode::Unavailable,
            "the conversation's last seq is unavailable, retry",
        )
    };
    match sequencer.last_seq(conversation_id).await {
        Ok(Some(seq)) => Ok(seq),
        Ok(None) => {
            let stored = sequencer
                .members
                .last_stored_seq(conversation_id)
                .await
                .map_err(|e| unavailable(&e))?;
            // Kept as the counter until a send checks it, so a stream of receipts asks the
            // message service once, not once each.
            if let Err(e) = sequencer.remember_last_seq(conversation_id, stored).await {
                tracing::warn!(error = %e, "the stored last seq was not kept as the counter");
            }
            Ok(stored)
        }
        Err(e) => Err(unavailable(&e)),
    }
}

/// Checks one typing or receipt signal (membership; a receipt's seq against the last one).
/// Accepted: the members its frame goes to. Refused: the error frame for the sender.
// The refusal is the frame the sender gets, built once per refused signal: boxing it would
// only add an allocation.
#[allow(clippy::result_large_err)]
fn check_signal(
    members: &HashMap<ConversationId, Option<Vec<String>>>,
    last: &HashMap<ConversationId, Result<u64, ServerFrame>>,
    signal: &Signal,
) -> Result<Vec<String>, ServerFrame> {
    let Some(members) = members.get(&signal.conversation_id).cloned().flatten() else {
        return Err(ServerFrame::error(
            ErrorCode::Unavailable,
            "membership is unavailable, retry",
        ));
    };
    if !members.iter().any(|m| *m == signal.user_id) {
        return Err(ServerFrame::error(
            ErrorCode::NotAMember,
            "you are not a member of this conversation",
        ));
    }
    let Some((_, seq)) = signal.receipt else {
        return Ok(members
            .into_iter()
            .filter(|m| *m != signal.user_id)
            .collect());
    };
    // A receipt names a message that exists: one past the conversation's last seq is a
    // client bug, and stored it would hide every later message from the unread count.
    // The counter is the last seq; after a Redis failover it may lag the log until the
    // next send reseeds it, and a receipt above it is refused then too (the client can
    // resend it).
    let last = match last.get(&signal.conversation_id) {
        Some(Ok(last)) => *last,
        Some(Err(refused)) => return Err(refused.clone()),
        None => 0,
    };
    if seq > last {
        return Err(ServerFrame::error(
            ErrorCode::BadRequest,
            format!("seq {seq} is past the conversation's last message ({last})"),
        ));
    }
    Ok(members)
}

/// Sends an accepted signal's frame to `recipients`' devices, but the sending connection.
async fn fan_out_signal(
    sequencer: &Sequencer,
    server: &str,
    signal: Signal,
    recipients: &[String],
) {
    let Signal {
        connection_id,
        user_id,
        conversation_id,
        receipt,
        ..
    } = signal;
    let frame = match receipt {
        None => ServerFrame::Typing {
            conversation_id,
            user_id,
        },
        Some((kind, seq)) => ServerFrame::Receipt {
            conversation_id,
            user_id,
            kind,
            seq,
        },
    };
    sequencer
        .fan_out(&frame.to_json(), recipients, Some((server, connection_id)))
        .await;
}
