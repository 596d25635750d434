//! Fan-out: frames to the topics of the socket servers holding the devices that get them.

use std::collections::HashMap;

use switchboard_message_log::{HandlerRecord, LogRecord};
use switchboard_protocol::frames::{RecordKind, ServerFrame};

use super::{RouteTargets, Sequencer};

impl Sequencer {
    /// One record per socket server holding a member's device; the sending device is skipped (it
    /// gets `sent`). A failure here loses no message: it is in the log, and devices fill gaps
    /// from history.
    pub(super) async fn route(
        &self,
        targets: &RouteTargets,
        record: &LogRecord,
        skip: Option<(&str, u64)>,
    ) {
        let frame = match &record.event {
            // An edit, delete or reaction: an `event` frame, in the same order as messages.
            Some(event) if event.kind != RecordKind::Message => ServerFrame::Event {
                conversation_id: record.conversation_id.clone(),
                event_id: record.message_id.clone(),
                seq: record.seq,
                sender_id: record.sender_id.clone(),
                kind: event.kind,
                message_id: event.target_id.clone(),
                body: (event.kind == RecordKind::Edit).then(|| record.body.clone()),
                emoji: event.emoji.clone(),
                created_at: record.created_at,
            },
            reply => ServerFrame::Message {
                conversation_id: record.conversation_id.clone(),
                message_id: record.message_id.clone(),
                seq: record.seq,
                sender_id: record.sender_id.clone(),
                body: record.body.clone(),
                created_at: record.created_at,
                reply_to: reply.as_ref().map(|r| r.target_id.clone()),
                attachments: record.attachments.clone(),
            },
        }
        .to_json();
        self.route_frame(targets, &frame, skip, Some(record)).await;
    }

    /// Which socket servers get a frame for `users` (one Redis round trip); an empty map when the
    /// lookup fails (devices then catch up from history).
    pub(super) async fn route_targets(&self, users: &[String]) -> RouteTargets {
        match self.servers.route(users, self.route_broadcast_from).await {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(error = %e, "recipient lookup failed; devices will catch up from history");
                HashMap::new()
            }
        }
    }

    /// Produces `frame` to every socket server holding a device of `users`, skipping one connection.
    pub async fn fan_out(&self, frame: &str, users: &[String], skip: Option<(&str, u64)>) {
        let targets = self.route_targets(users).await;
        self.route_frame(&targets, frame, skip, None).await;
    }

    /// Queues one record per target socket server on the [`Router`] without waiting for the
    /// broker's ack: the router keeps this manager's routing order per socket server topic, and
    /// socket servers restore `seq` order across managers (`order`), so the lease is not held for a
    /// second round trip.
    /// A record that fails only costs live delivery: the message is in the log, and devices
    /// fill gaps from history. `message`: the log record a `message` frame carries (its
    /// order, acceptance time and id travel beside the frame).
    pub(super) async fn route_frame(
        &self,
        targets: &RouteTargets,
        frame: &str,
        skip: Option<(&str, u64)>,
        message: Option<&LogRecord>,
    ) {
        for (server, recipients) in targets {
            let record = HandlerRecord {
                recipients: recipients.clone(),
                skip_connection: skip.filter(|(h, _)| h == server).map(|(_, c)| c),
                frame: frame.to_owned(),
                accepted_at_ms: message.map(|m| m.created_at.millis()),
                order: message.map(|m| (m.conversation_id.clone(), m.seq)),
                message_id: message.map(|m| m.message_id.clone()),
                traceparent: message.and_then(|m| m.traceparent),
            };
            self.router
                .route(self.kafka.config.handler_topic(server), record)
                .await;
        }
    }
}
