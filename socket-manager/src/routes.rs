//! The cluster-internal API. Every route needs the cluster secret.

use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::internal::{
    RenewRequest, ServerBatch, ServerBatchReply, ServerItem, ServerRegistered, ServerRegistration,
    BATCH_ID_HEADER,
};
use switchboard_protocol::{ConversationId, ErrorCode, HandlerId};
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http::ApiError;
use tracing::Instrument;

use switchboard_message_log::Event;

use crate::sequencer::SendRequest;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/internal/v1/handlers", web::post().to(register))
        .route("/internal/v1/handlers/{id}", web::delete().to(deregister))
        .route("/internal/v1/handlers/{id}/batch", web::post().to(batch))
        .route(
            "/internal/v1/handlers/{id}/heartbeat",
            web::post().to(heartbeat),
        )
        .route("/internal/v1/handlers/{id}/renew", web::post().to(renew))
        .route(
            crate::end_sessions::PATH,
            web::post().to(crate::end_sessions::end_sessions),
        )
        .route(
            crate::server_send::PATH,
            web::post().to(crate::server_send::server_send),
        );
}

/// The id a handler names itself by: it becomes a Kafka topic name, so the rule is
/// [`HandlerId`]'s.
fn valid_server_id(id: &str) -> Result<HandlerId, ApiError> {
    HandlerId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ServerRegistration>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    valid_server_id(&body.server_id)?;
    let kafka = &state.sequencer.kafka;
    let topic = kafka.config.handler_topic(&body.server_id);
    kafka
        .ensure_topic(&topic, 1)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    state.sequencer.servers.register(&body.server_id).await?;
    tracing::info!(server = %body.server_id, %topic, "socket server registered");
    Ok(HttpResponse::Ok().json(ServerRegistered {
        server_id: body.server_id.clone(),
        topic,
    }))
}

async fn deregister(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    let server = path.into_inner();
    valid_server_id(&server)?;
    let topic = state.sequencer.kafka.config.handler_topic(&server);
    let offline = state.sequencer.servers.forget(&server).await?;
    crate::presence::announce(state.clone(), Vec::new(), offline);
    if state.config.delete_server_topics {
        if let Err(e) = state.sequencer.kafka.delete_topic(&topic).await {
            tracing::warn!(error = %e, %topic, "deleting the socket server's topic failed");
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn heartbeat(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    if state.sequencer.servers.heartbeat(&path).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            "handler unknown or expired: register again",
        ))
    }
}

async fn renew(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<RenewRequest>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    let users: Vec<&str> = body.users.iter().map(String::as_str).collect();
    let mut restored = Vec::new();
    for chunk in users.chunks(1000) {
        restored.extend(state.sequencer.servers.renew(&path, chunk).await?);
    }
    crate::presence::announce(state.clone(), restored, Vec::new());
    Ok(HttpResponse::Ok().json(serde_json::json!({ "renewed": users.len() })))
}

/// A batch of reports and client frames from one handler. Connection reports are applied
/// first (so a device that connected and then sent in the same batch is routed to), then the
/// sends of each conversation run in order under that conversation's lock, conversations in
/// parallel.
async fn batch(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<ServerBatch>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    let server = valid_server_id(&path.into_inner())?;
    let batch_id = req
        .headers()
        .get(BATCH_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::debug_span!("batch", batch = %batch_id, %server);
    // Answered on the message path's runtime: every await in a batch (the numbering flush,
    // Redis replies, broker acks) is woken by a task of that runtime, and each wake that
    // crossed to this HTTP worker's thread cost a context switch. As a task of its own, a
    // batch also runs to its end when the socket server gives up waiting: its leases are
    // released and its pending numbers cleared rather than left for the next holder.
    let work = answer_batch(state.clone(), server, body.into_inner().items).instrument(span);
    let reply = state
        .runtime
        .spawn(work)
        .await
        .map_err(|e| ApiError::unavailable(format!("the batch's task failed: {e}")))??;
    Ok(HttpResponse::Ok().json(reply))
}

/// The work of [`batch`], inside its span (so every line it logs names the batch).
async fn answer_batch(
    state: web::Data<AppState>,
    server: HandlerId,
    items: Vec<ServerItem>,
) -> Result<ServerBatchReply, ApiError> {
    let crate::plan::BatchPlan {
        mut replies,
        online,
        offline,
        mut sends,
        mut signals,
    } = crate::plan::plan(
        &server,
        items,
        &crate::plan::SendLimits {
            max_body_bytes: state.config.max_body_bytes,
            max_record_bytes: switchboard_kafka::RECORD_MAX_BYTES,
        },
    );
    let online: Vec<&str> = online.iter().map(String::as_str).collect();
    let offline: Vec<&str> = offline.iter().map(String::as_str).collect();
    let servers = &state.sequencer.servers;
    // The quota check's round trip runs beside the presence reports' (the sends wait for both).
    let presence = async {
        let came_online = servers.connected(&server, &online).await?;
        let went_offline = servers.disconnected(&server, &offline).await?;
        Ok::<_, ApiError>((came_online, went_offline))
    };
    let (presence, verdicts) = futures_util::future::join(
        presence,
        check_quotas(&state.quotas, replies.len(), &sends, &signals),
    )
    .await;
    let (came_online, went_offline) = presence?;
    crate::presence::announce(state.clone(), came_online, went_offline);
    apply_verdicts(&verdicts, &mut replies, &mut sends, &mut signals);

    let sequencer = &state.sequencer;
    let mut send_groups = Vec::with_capacity(sends.len());
    for (conversation_id, group) in sends {
        send_groups.push(send_group(
            sequencer,
            &state.attachments,
            &state.events,
            conversation_id,
            group,
        ));
    }
    let (send_results, signal_results) = futures_util::future::join(
        futures_util::future::join_all(send_groups),
        answer_signals(&state, server.as_str(), signals),
    )
    .await;
    for (index, frame) in send_results.into_iter().flatten() {
        replies[index] = Some(frame);
    }
    for (index, frame) in signal_results {
        if frame.is_some() {
            replies[index] = frame;
        }
    }
    Ok(ServerBatchReply { replies })
}

/// The per-user quota verdict of every frame that reached a send or a signal, by its place in
/// the batch (`None`: answered already, e.g. `pong` or a malformed send). One script call for
/// the whole batch.
async fn check_quotas(
    quotas: &crate::quota::Quotas,
    places: usize,
    sends: &std::collections::HashMap<ConversationId, Vec<(usize, SendRequest)>>,
    signals: &[crate::plan::Signal],
) -> Vec<Option<crate::quota::Verdict>> {
    let mut frames: Vec<(usize, crate::quota::QuotaFrame<'_>)> = Vec::new();
    for (index, send) in sends.values().flatten() {
        frames.push((
            *index,
            crate::quota::QuotaFrame {
                user: send.sender_id.as_str(),
                bytes: send.body.len() as u64,
                typing_in: None,
                send: true,
            },
        ));
    }
    for signal in signals {
        frames.push((
            signal.index,
            crate::quota::QuotaFrame {
                user: &signal.user_id,
                bytes: 0,
                typing_in: signal
                    .receipt
                    .is_none()
                    .then_some(signal.conversation_id.as_str()),
                send: false,
            },
        ));
    }
    // Batch order: a user's earlier frames are the ones that fit.
    frames.sort_by_key(|(index, _)| *index);
    let (indices, frames): (Vec<usize>, Vec<_>) = frames.into_iter().unzip();
    let verdicts = quotas.check(&frames).await;
    let mut by_place = vec![None; places];
    for (index, verdict) in indices.into_iter().zip(verdicts) {
        by_place[index] = Some(verdict);
    }
    by_place
}

/// Takes refused and dropped frames out of the batch: a refused one is answered
/// `rate_limited` (a send with its `client_msg_id`), a dropped typing frame not at all.
fn apply_verdicts(
    verdicts: &[Option<crate::quota::Verdict>],
    replies: &mut [Option<ServerFrame>],
    sends: &mut std::collections::HashMap<ConversationId, Vec<(usize, SendRequest)>>,
    signals: &mut Vec<crate::plan::Signal>,
) {
    use crate::quota::Verdict;
    let admitted = |index: usize| matches!(verdicts[index], Some(Verdict::Admitted) | None);
    const OVER: &str = "over your per-user quota: slow down and retry";
    for group in sends.values_mut() {
        group.retain(|(index, send)| {
            if admitted(*index) {
                return true;
            }
            replies[*index] = Some(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: OVER.into(),
                client_msg_id: Some(send.client_msg_id.to_string()),
            });
            false
        });
    }
    sends.retain(|_, group| !group.is_empty());
    signals.retain(|signal| {
        if admitted(signal.index) {
            return true;
        }
        if verdicts[signal.index] == Some(Verdict::Refused) {
            replies[signal.index] = Some(ServerFrame::error(ErrorCode::RateLimited, OVER));
        }
        false
    });
}

/// One conversation's sends of a batch, answered with their places in the batch.
async fn send_group(
    sequencer: &crate::sequencer::Sequencer,
    attachments: &crate::attachments::Verifier,
    events: &crate::events::Checker,
    conversation_id: ConversationId,
    group: Vec<(usize, SendRequest)>,
) -> Vec<(usize, ServerFrame)> {
    // Sends that reference attachments are verified first (nothing is done for the others).
    let (group, mut refused) = attachments.admit(&conversation_id, group).await;
    // Edits, deletes, reactions and replies are checked next (plain messages pass untouched).
    let (group, refused_events) = events.admit(&conversation_id, group).await;
    refused.extend(refused_events);
    if group.is_empty() {
        return refused;
    }
    let requests: Vec<SendRequest> = group.iter().map(|(_, r)| r.clone()).collect();
    let answers = sequencer.send_all(&conversation_id, &requests).await;
    refused.extend(group.into_iter().map(|(i, _)| i).zip(answers));
    refused
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
async fn answer_signals(
    state: &AppState,
    server: &str,
    signals: Vec<crate::plan::Signal>,
) -> Vec<(usize, Option<ServerFrame>)> {
    use std::collections::HashMap;
    let sequencer = &state.sequencer;
    if signals.is_empty() {
        return Vec::new();
    }
    let mut conversations: Vec<String> =
        signals.iter().map(|s| s.conversation_id.clone()).collect();
    conversations.sort_unstable();
    conversations.dedup();
    let member_lists =
        futures_util::future::join_all(conversations.iter().map(|c| sequencer.members.of(c))).await;
    let members: HashMap<String, Option<Vec<String>>> = conversations
        .into_iter()
        .zip(member_lists.into_iter().map(Result::ok))
        .collect();
    let mut receipt_conversations: Vec<String> = signals
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
    let last: HashMap<String, Result<u64, ServerFrame>> =
        receipt_conversations.into_iter().zip(lasts).collect();

    // Checked: the refusals, and the accepted signals with their recipients.
    let mut answers: Vec<(usize, Option<ServerFrame>)> = Vec::with_capacity(signals.len());
    let mut accepted: Vec<(crate::plan::Signal, Vec<String>)> = Vec::new();
    for signal in signals {
        match check_signal(&members, &last, &signal) {
            Ok(recipients) => accepted.push((signal, recipients)),
            Err(refused) => answers.push((signal.index, Some(refused))),
        }
    }

    // Every receipt enqueued now, in batch order; the acks awaited together.
    let kafka = &sequencer.kafka;
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
    if !acks.is_empty() {
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
    }
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
    answers
}

/// The longest a typing frame's fan-out may wait (route lookup, a full router queue) before
/// it is dropped: typing is worth little a moment later.
const TYPING_FAN_OUT_BUDGET: std::time::Duration = std::time::Duration::from_millis(100);

/// A receipt is checked against the last seq: the counter, or, when the conversation has
/// none (never numbered, or idle past the counter's expiry), the message service's last
/// stored seq, then kept as the counter.
async fn last_seq(
    sequencer: &crate::sequencer::Sequencer,
    conversation_id: &str,
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
    members: &std::collections::HashMap<String, Option<Vec<String>>>,
    last: &std::collections::HashMap<String, Result<u64, ServerFrame>>,
    signal: &crate::plan::Signal,
) -> Result<Vec<String>, ServerFrame> {
    let Some(members) = members
        .get(signal.conversation_id.as_str())
        .cloned()
        .flatten()
    else {
        return Err(ServerFrame::error(
            ErrorCode::Unavailable,
            "membership is unavailable, retry",
        ));
    };
    if !members.contains(&signal.user_id) {
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
    let last = match last.get(signal.conversation_id.as_str()) {
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
    sequencer: &crate::sequencer::Sequencer,
    server: &str,
    signal: crate::plan::Signal,
    recipients: &[String],
) {
    let crate::plan::Signal {
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
