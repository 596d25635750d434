//! Bodies of the cluster-internal HTTP API between socket servers and socket managers. Not
//! client-facing; kept here so both sides compile against one definition. The API's paths and
//! one field keep the original design's name for a socket server, "handler"
//! (`/internal/v1/handlers/...`, `handler_id`): they are wire names, the types are not.

use serde::{Deserialize, Serialize};

use crate::frames::{ClientFrame, ServerFrame};
use crate::{MessageId, ServerId, UserId};

/// The header naming one batch a socket server posts to a manager (a ULID). Both sides log
/// it with the `client_msg_id`s of the batch, so a send can be followed across the hop.
pub const BATCH_ID_HEADER: &str = "x-sb-batch";

/// `POST /internal/v1/handlers`: a socket server announces itself; the manager creates its
/// topic. The id is checked as the body is read (a bad one is a `bad_request` naming the rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRegistration {
    #[serde(rename = "handler_id")]
    pub server_id: ServerId,
}

/// The answer to a [`ServerRegistration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRegistered {
    #[serde(rename = "handler_id")]
    pub server_id: ServerId,
    /// The Kafka topic the socket server must consume.
    pub topic: String,
}

/// One thing a socket server reports; a batch carries many, in connection order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServerItem {
    /// A device of `user_id` connected on this socket server.
    Connected { connection_id: u64, user_id: UserId },
    /// The last device of `user_id` on this socket server left.
    Disconnected { connection_id: u64, user_id: UserId },
    /// A client frame that needs the cluster (send, delivered, read, typing): its user is the
    /// connection's (checked when the token was), the frame raw as the client wrote it (the
    /// manager checks its ids).
    Frame {
        connection_id: u64,
        user_id: UserId,
        frame: ClientFrame,
    },
}

/// `POST /internal/v1/handlers/{id}/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerBatch {
    pub items: Vec<ServerItem>,
}

/// One reply per item, in order: the frame to send back to that item's connection, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerBatchReply {
    pub replies: Vec<Option<ServerFrame>>,
}

/// `POST /internal/v1/handlers/{id}/renew`: every user with a device on the socket server, so
/// the user-to-server mappings (which expire) stay alive while the server does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub users: Vec<String>,
}

/// The answer to a [`RenewRequest`]: how many users' mappings were renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewReply {
    pub renewed: usize,
}

/// `POST /internal/v1/conversations/{id}/settled-last-seq?after_seq=&partitions=` (manager →
/// message service): the conversation's log fenced under a new epoch, once ingest has applied
/// the fence (docs/architecture.md, "Fencing the log").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledLog {
    /// The fence's floor: the highest `seq` the log held before it. Numbering resumes above.
    pub last_seq: u64,
    /// The new epoch: the records numbered from here on carry it.
    pub epoch: u64,
    /// The newest stored messages above `after_seq` (bounded), newest first.
    #[serde(default)]
    pub messages: Vec<SettledMessage>,
}

/// `GET /internal/v1/conversations/{id}/members` (manager → message service): the members
/// of a conversation whose mirror in Redis was cold (the message service refills it on the
/// way), and the highest stored `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMembers {
    pub members: Vec<String>,
    /// The highest stored `seq` (0 for none).
    #[serde(default)]
    pub last_seq: u64,
}

/// `GET /internal/v1/users/{id}/contacts?max_group=` (manager → message service): who may see
/// the user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contacts {
    pub contacts: Vec<String>,
}

/// A stored message above the asked `after_seq`: what its idempotency record held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledMessage {
    pub seq: u64,
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub created_at: crate::Timestamp,
}

/// `POST /internal/v1/conversations/{id}/attachments/claim` (manager → message service): before
/// numbering a send that references attachments, the manager asks the message service to
/// verify them (each object exists in the store under this conversation, was created by the
/// sender, has the declared size and type; an image is within the pixel limit) and to claim
/// them for this send (docs/architecture.md, "Attachments").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentClaim {
    pub sender_id: String,
    pub client_msg_id: String,
    pub attachments: Vec<String>,
}

/// The answer to an [`AttachmentClaim`]: `refused` is absent when every attachment is
/// verified and claimed (a claim by the same send again is idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentVerdict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<crate::error_code::ErrorDetail>,
}

/// `POST /internal/v1/conversations/{id}/events/check` (manager → message service): before
/// numbering a conversation batch's edits, deletes, reactions and replies, the manager asks
/// the message service, which holds the messages and the members' roles, whether each may be
/// done (docs/architecture.md, "Message events"). Plain messages are never asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCheck {
    pub items: Vec<EventCheckItem>,
}

/// One numbered frame that refers to an earlier message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCheckItem {
    pub sender_id: String,
    pub client_msg_id: String,
    /// `message` (a reply), `edit`, `delete` or `reaction`.
    pub kind: crate::frames::RecordKind,
    pub target_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
}

/// The answer to an [`EventCheck`]: one verdict per item, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventVerdicts {
    pub verdicts: Vec<EventVerdict>,
}

/// `refused` is absent when the item may be numbered; `moderated` is set for a delete the
/// sender may make only as the group's owner or an admin (the log record carries it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventVerdict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<crate::error_code::ErrorDetail>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderated: bool,
}
