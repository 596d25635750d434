//! The cluster-internal API. Every route needs the cluster secret.

use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::internal::{
    HandlerBatch, HandlerBatchReply, HandlerItem, HandlerRegistered, HandlerRegistration,
    RenewRequest, BATCH_ID_HEADER,
};
use switchboard_protocol::{ConversationId, ErrorCode, HandlerId};
use switchboard_service_kit::http::{require_cluster_secret, ApiError};
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
        .route("/internal/v1/handlers/{id}/renew", web::post().to(renew));
}

/// The id a handler names itself by: it becomes a Kafka topic name, so the rule is
/// [`HandlerId`]'s.
fn valid_handler_id(id: &str) -> Result<HandlerId, ApiError> {
    HandlerId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<HandlerRegistration>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    valid_handler_id(&body.handler_id)?;
    let kafka = &state.sequencer.kafka;
    let topic = kafka.config.handler_topic(&body.handler_id);
    kafka
        .ensure_topic(&topic, 1)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    state.sequencer.handlers.register(&body.handler_id).await?;
    tracing::info!(handler = %body.handler_id, %topic, "handler registered");
    Ok(HttpResponse::Ok().json(HandlerRegistered {
        handler_id: body.handler_id.clone(),
        topic,
    }))
}

async fn deregister(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    let handler = path.into_inner();
    valid_handler_id(&handler)?;
    let topic = state.sequencer.kafka.config.handler_topic(&handler);
    let offline = state.sequencer.handlers.forget(&handler).await?;
    crate::presence::announce(state.clone(), Vec::new(), offline);
    if state.config.delete_handler_topics {
        if let Err(e) = state.sequencer.kafka.delete_topic(&topic).await {
            tracing::warn!(error = %e, %topic, "deleting the handler topic failed");
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn heartbeat(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    if state.sequencer.handlers.heartbeat(&path).await? {
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
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    let users: Vec<&str> = body.users.iter().map(String::as_str).collect();
    let mut restored = Vec::new();
    for chunk in users.chunks(1000) {
        restored.extend(state.sequencer.handlers.renew(&path, chunk).await?);
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
    body: web::Json<HandlerBatch>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    let handler = valid_handler_id(&path.into_inner())?;
    let batch_id = req
        .headers()
        .get(BATCH_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::debug_span!("batch", batch = %batch_id, %handler);
    // Answered on the message path's runtime: every await in a batch (the numbering flush,
    // Redis replies, broker acks) is woken by a task of that runtime, and each wake that
    // crossed to this HTTP worker's thread cost a context switch. As a task of its own, a
    // batch also runs to its end when the socket server gives up waiting: its leases are
    // released and its pending numbers cleared rather than left for the next holder.
    let work = answer_batch(state.clone(), handler, body.into_inner().items).instrument(span);
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
    handler: HandlerId,
    items: Vec<HandlerItem>,
) -> Result<HandlerBatchReply, ApiError> {
    let crate::plan::BatchPlan {
        mut replies,
        online,
        offline,
        sends,
        signals,
    } = crate::plan::plan(
        &handler,
        items,
        &crate::plan::SendLimits {
            max_body_bytes: state.config.max_body_bytes,
            max_record_bytes: switchboard_kafka::RECORD_MAX_BYTES,
        },
    );
    let online: Vec<&str> = online.iter().map(String::as_str).collect();
    let offline: Vec<&str> = offline.iter().map(String::as_str).collect();
    let handlers = &state.sequencer.handlers;
    let came_online = handlers.connected(&handler, &online).await?;
    let went_offline = handlers.disconnected(&handler, &offline).await?;
    crate::presence::announce(state.clone(), came_online, went_offline);

    let sequencer = &state.sequencer;
    let mut send_groups = Vec::with_capacity(sends.len());
    for (conversation_id, group) in sends {
        send_groups.push(send_group(sequencer, conversation_id, group));
    }
    // One connection's signals in the order it sent them (a device's `delivered 5` then
    // `read 3` reach the other devices in that order); connections side by side.
    let mut signal_work = Vec::new();
    for group in crate::plan::by_connection(signals) {
        signal_work.push(signal_group(sequencer, handler.as_str(), group));
    }
    let (send_results, signal_results) = futures_util::future::join(
        futures_util::future::join_all(send_groups),
        futures_util::future::join_all(signal_work),
    )
    .await;
    for (index, frame) in send_results.into_iter().flatten() {
        replies[index] = Some(frame);
    }
    for (index, frame) in signal_results.into_iter().flatten() {
        if frame.is_some() {
            replies[index] = frame;
        }
    }
    Ok(HandlerBatchReply { replies })
}

/// One conversation's sends of a batch, answered with their places in the batch.
async fn send_group(
    sequencer: &crate::sequencer::Sequencer,
    conversation_id: ConversationId,
    group: Vec<(usize, SendRequest)>,
) -> Vec<(usize, ServerFrame)> {
    let requests: Vec<SendRequest> = group.iter().map(|(_, r)| r.clone()).collect();
    let answers = sequencer.send_all(&conversation_id, &requests).await;
    group.into_iter().map(|(i, _)| i).zip(answers).collect()
}

/// One connection's signals, in order; each place with its refusal, if any.
async fn signal_group(
    sequencer: &crate::sequencer::Sequencer,
    handler: &str,
    group: Vec<crate::plan::Signal>,
) -> Vec<(usize, Option<ServerFrame>)> {
    let mut answers = Vec::with_capacity(group.len());
    for signal in group {
        let index = signal.index;
        let refused = relay_signal(sequencer, handler, signal).await.err();
        answers.push((index, refused));
    }
    answers
}

/// Checks one typing or receipt signal (membership; a receipt's seq against the last one),
/// records a receipt on the events topic, and fans the frame out to the conversation's other
/// devices. Refused: the error frame for the sender.
async fn relay_signal(
    sequencer: &crate::sequencer::Sequencer,
    handler: &str,
    signal: crate::plan::Signal,
) -> Result<(), ServerFrame> {
    let crate::plan::Signal {
        connection_id,
        user_id,
        conversation_id,
        receipt,
        ..
    } = signal;
    let members = sequencer.members.of(&conversation_id).await.map_err(|_| {
        ServerFrame::error(ErrorCode::Unavailable, "membership is unavailable, retry")
    })?;
    if !members.contains(&user_id) {
        return Err(ServerFrame::error(
            ErrorCode::NotAMember,
            "you are not a member of this conversation",
        ));
    }
    if let Some((kind, seq)) = receipt {
        // A receipt names a message that exists: one past the conversation's last seq is a
        // client bug, and stored it would hide every later message from the unread count.
        // The counter is the last seq; after a Redis failover it may lag the log until the
        // next send reseeds it, and a receipt above it is refused then too (the client can
        // resend it).
        let last = sequencer.last_seq(&conversation_id).await.map_err(|e| {
            tracing::warn!(error = %e, "the last seq is unavailable");
            ServerFrame::error(
                ErrorCode::Unavailable,
                "the conversation's last seq is unavailable, retry",
            )
        })?;
        if seq > last {
            return Err(ServerFrame::error(
                ErrorCode::BadRequest,
                format!("seq {seq} is past the conversation's last message ({last})"),
            ));
        }
        let event = Event::Receipt {
            conversation_id: conversation_id.clone(),
            user_id: user_id.clone(),
            kind,
            seq,
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let topic = &sequencer.kafka.config.events_topic;
        sequencer
            .kafka
            .produce(topic, &conversation_id, &payload)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "receipt not recorded");
                ServerFrame::error(
                    ErrorCode::Unavailable,
                    "the receipt could not be recorded, retry",
                )
            })?;
    }
    let (frame, recipients): (ServerFrame, Vec<String>) = match receipt {
        None => (
            ServerFrame::Typing {
                conversation_id: conversation_id.clone(),
                user_id: user_id.clone(),
            },
            members.into_iter().filter(|m| *m != user_id).collect(),
        ),
        Some((kind, seq)) => (
            ServerFrame::Receipt {
                conversation_id,
                user_id,
                kind,
                seq,
            },
            members,
        ),
    };
    sequencer
        .fan_out(
            &frame.to_json(),
            &recipients,
            Some((handler, connection_id)),
        )
        .await;
    Ok(())
}
