//! One batch from a socket server, answered: planned (`plan`), presence reports applied beside
//! the per-user quota check, refused frames taken out, then each conversation's sends numbered
//! (`sequencer`) beside the batch's typing and receipt signals (`signals`).

use std::collections::HashMap;

use actix_web::web;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::internal::{ServerBatchReply, ServerItem};
use switchboard_protocol::trace_context::TraceParent;
use switchboard_protocol::{ConversationId, ErrorCode, ServerId};
use switchboard_service_kit::http::ApiError;

use crate::plan::Signal;
use crate::quota::{QuotaFrame, Quotas, Verdict};
use crate::sequencer::{SendRequest, Sequencer};
use crate::state::AppState;

/// The work of `POST .../batch` (`routes::batch`), inside its span (so every line it logs names the batch).
/// `trace`: the request's step of the sender's trace, carried by every send of the batch.
pub(crate) async fn answer_batch(
    state: web::Data<AppState>,
    server: ServerId,
    items: Vec<ServerItem>,
    trace: Option<TraceParent>,
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
    let online: Vec<&str> = online.iter().map(|u| u.as_str()).collect();
    let offline: Vec<&str> = offline.iter().map(|u| u.as_str()).collect();
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
    for (_, send) in sends.values_mut().flatten() {
        send.traceparent = trace;
    }

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
        crate::signals::answer_signals(&state, server.as_str(), signals),
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
    quotas: &Quotas,
    places: usize,
    sends: &HashMap<ConversationId, Vec<(usize, SendRequest)>>,
    signals: &[Signal],
) -> Vec<Option<Verdict>> {
    let mut frames: Vec<(usize, QuotaFrame<'_>)> = Vec::new();
    for (index, send) in sends.values().flatten() {
        frames.push((
            *index,
            QuotaFrame {
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
            QuotaFrame {
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
    verdicts: &[Option<Verdict>],
    replies: &mut [Option<ServerFrame>],
    sends: &mut HashMap<ConversationId, Vec<(usize, SendRequest)>>,
    signals: &mut Vec<Signal>,
) {
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
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(conversation_id = %conversation_id, sends = group.len())
)]
async fn send_group(
    sequencer: &Sequencer,
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
