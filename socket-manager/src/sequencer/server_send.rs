//! A server-API message (docs/server-api.md) through the same lease, numbering script,
//! idempotency records, append and fan-out as a client's send: the only differences are that
//! no device sent it (nothing is skipped in the fan-out, every member's devices get the
//! `message` frame) and that a reserved system/bot sender is let through the membership
//! check without being a member.

use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ClientMsgId, ConversationId, ErrorCode, ServerId, UserId};

use super::{error_frame, unavailable, SendRequest, Sequencer};

/// The socket server id a server-API send names as its origin: no socket server registers it
/// (server ids come from socket servers' own configuration and this one is documented as
/// reserved), so the fan-out skips no device.
pub const SERVER_API_ORIGIN: &str = "server-api";

impl Sequencer {
    /// Numbers one server-API message under the conversation's lease and answers it like a
    /// client's `send` (`sent`, or an `error` frame). `client_msg_id` is the namespaced
    /// idempotency key. A `reserved_sender` needs no membership (the conversation must have
    /// members, i.e. exist); anyone else must be a member (`not_a_member`).
    pub async fn send_for_server(
        &self,
        conversation_id: &ConversationId,
        sender_id: UserId,
        client_msg_id: ClientMsgId,
        body: String,
        reserved_sender: bool,
    ) -> ServerFrame {
        let request = SendRequest {
            server_id: ServerId::parse(SERVER_API_ORIGIN).expect("a valid server id"),
            connection_id: 0,
            sender_id,
            conversation_id: conversation_id.clone(),
            client_msg_id,
            body,
            attachments: Vec::new(),
            event: None,
            traceparent: None,
        };
        if !reserved_sender {
            // Exactly a client's send: the mirror, else the source of truth, vouches for the
            // sender.
            let mut answers = self.send_all(conversation_id, &[request]).await;
            return answers.pop().expect("one send, one answer");
        }
        let mut members = match self.members.of(conversation_id).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(error = %e, "membership lookup failed");
                return error_frame(
                    ErrorCode::Unavailable,
                    "membership is unavailable, retry",
                    &request.client_msg_id,
                );
            }
        };
        if members.is_empty() {
            return error_frame(
                ErrorCode::NotFound,
                "no such conversation",
                &request.client_msg_id,
            );
        }
        // The members given to the numbering script are only its membership check and its
        // recipients: the mirror is not written, so the bot joins nothing.
        if !members.iter().any(|m| *m == *request.sender_id) {
            members.push(request.sender_id.to_string());
        }
        self.sequence(conversation_id, &[&request], Some(&members))
            .await
            .and_then(|mut answers| answers.pop())
            .unwrap_or_else(|| unavailable(&request.client_msg_id))
    }
}
