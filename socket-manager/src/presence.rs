//! Presence changes: when a user's first device arrives or last device leaves (or its socket
//! server dies), tell the people who share a conversation with them, and record the change on the
//! events topic.
//!
//! To avoid storming big groups, `presence` frames go only to members of conversations with
//! at most `SB_PRESENCE_MAX_GROUP` members (default 100); clients ask
//! `GET /api/v1/presence` for anyone else. The work runs in the background: a connect is never
//! held up by its presence broadcast.

use actix_web::web;
use switchboard_message_log::Event;
use switchboard_protocol::frames::{PresenceStatus, ServerFrame};
use switchboard_protocol::UserId;

use crate::state::AppState;

pub(crate) fn announce(state: web::Data<AppState>, online: Vec<String>, offline: Vec<String>) {
    if online.is_empty() && offline.is_empty() {
        return;
    }
    let tasks = state.background.clone();
    tasks.spawn(async move {
        let now = switchboard_protocol::Timestamp::now();
        let changes = online
            .into_iter()
            .map(|u| (u, PresenceStatus::Online))
            .chain(offline.into_iter().map(|u| (u, PresenceStatus::Offline)));
        for (user, status) in changes {
            // The socket server reported typed ids; the directory's reply (which of them came
            // online or went offline) is plain text until chat-state's presence is typed.
            let Ok(user) = UserId::parse(user) else {
                continue;
            };
            let sequencer = &state.sequencer;
            match sequencer
                .members
                .contacts_of(&user, state.config.presence_max_group)
                .await
            {
                Ok(contacts) if !contacts.is_empty() => {
                    let frame = ServerFrame::Presence {
                        user_id: user.clone(),
                        status,
                        last_seen: Some(now),
                    };
                    sequencer.fan_out(&frame.to_json(), &contacts, None).await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, %user, "presence contacts unavailable"),
            }
            let event = Event::Presence {
                user_id: user.clone(),
                online: status == PresenceStatus::Online,
                at: now,
            };
            if let Ok(payload) = serde_json::to_vec(&event) {
                let topic = &sequencer.kafka.config.events_topic;
                if let Err(e) = sequencer.kafka.produce(topic, &user, &payload).await {
                    tracing::debug!(error = %e, "presence event not recorded");
                }
            }
        }
    });
}
