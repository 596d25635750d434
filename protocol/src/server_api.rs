//! The server API's bodies (`/server/v1/...`, docs/server-api.md), and the cluster-internal
//! call by which the message service has a socket manager number a server-API message.

use serde::{Deserialize, Serialize};

use crate::{ConversationId, MessageId, Timestamp, UserId};

/// The header that makes a server-API send idempotent: required, 1 to
/// [`IDEMPOTENCY_KEY_MAX`] bytes of visible ASCII.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// Set on the answer to a replayed `Idempotency-Key` (the first request's message).
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";

/// Whether `key` may be an `Idempotency-Key`: 1 to [`IDEMPOTENCY_KEY_MAX`] bytes of visible
/// ASCII (`!` to `~`), so it can be logged and compared byte for byte.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=IDEMPOTENCY_KEY_MAX).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// `POST /server/v1/conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerPost {
    /// Who the message is from: a member of the conversation, or a reserved system/bot id
    /// (`SB_SERVER_SENDER_PREFIXES`), which may post without being a member.
    pub sender_id: String,
    pub body: String,
}

/// The answer to a server-API post (201, also for a replay, which adds
/// `Idempotent-Replayed: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerPosted {
    #[schema(value_type = String)]
    pub message_id: MessageId,
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
}

/// `POST /server/v1/conversations`: a direct conversation of two users, or a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerCreateConversation {
    /// `direct` or `group`.
    pub kind: String,
    /// Direct: exactly two users. Group: its members (1 to `SB_MAX_GROUP_MEMBERS`), all
    /// added as accepted members.
    pub members: Vec<String>,
    /// A group's name (1-200 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A group's owner; default: the first of `members`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Path of the managers' route that numbers one server-API message (cluster-only, the
/// message service's credential).
pub const INTERNAL_SERVER_SEND_PATH: &str = "/internal/v1/server-send";

/// The message service to a socket manager: number, log and fan out one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalServerSend {
    /// Checked by the message service (the server API's edge).
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub body: String,
    /// The caller's `Idempotency-Key`, as given (the manager namespaces it).
    pub idempotency_key: String,
    /// The sender is a reserved system/bot id: it need not be a member.
    pub reserved_sender: bool,
}

/// The manager's answer: the message, and whether the key had been seen before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalServerSent {
    pub message_id: MessageId,
    pub seq: u64,
    pub created_at: Timestamp,
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(valid_idempotency_key("order-42/created"));
        assert!(valid_idempotency_key(&"k".repeat(IDEMPOTENCY_KEY_MAX)));
        for bad in ["", "a b", "é", "a\nb"] {
            assert!(!valid_idempotency_key(bad), "{bad:?}");
        }
        assert!(!valid_idempotency_key(&"k".repeat(IDEMPOTENCY_KEY_MAX + 1)));
    }
}
