//! WebSocket frames (SPEC section 4): one JSON object per text frame, discriminated by `type`.
//!
//! [`ClientFrame`] is the raw frame, what a client wrote, with plain string ids: it parses
//! leniently so that a frame with a bad id is still a frame, answered with its documented error
//! code (`bad_request`, `not_a_member`) by whoever checks it rather than a parse error. It
//! crosses to the managers as written, and the managers' batch planning checks its ids into
//! typed ones before anything is numbered. [`ServerFrame`] carries checked ids and
//! [`Timestamp`]s.

use serde::{Deserialize, Serialize};

use crate::{ConversationId, ErrorCode, MessageId, ServerId, Timestamp, UserId};

/// A frame a client sends, raw: its ids are checked by whoever acts on it (see the module
/// doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        conversation_id: String,
        client_msg_id: String,
        body: String,
        /// Ids of attachments uploaded for this conversation
        /// (`POST /api/v1/conversations/{id}/attachments`), at most 10. Additive: absent means
        /// none, and a send without attachments is handled exactly as before.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
        /// The `message_id` of an earlier message of the same conversation this one answers.
        /// Additive: absent means none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// Replaces the body of one of your messages (an event numbered in the conversation's
    /// sequence like a message; answered with `sent`). `client_msg_id` is its idempotency key,
    /// in the same space as your sends'.
    Edit {
        conversation_id: String,
        client_msg_id: String,
        /// The message to edit.
        message_id: String,
        body: String,
    },
    /// Deletes a message for everyone (yours; a group's owner or admins delete any): its body
    /// is erased and it stays a tombstone. Answered with `sent`.
    Delete {
        conversation_id: String,
        client_msg_id: String,
        message_id: String,
    },
    /// Sets your reaction to a message (one emoji per user per message: a new one replaces
    /// yours), or removes it when `emoji` is absent or null. Answered with `sent`.
    React {
        conversation_id: String,
        client_msg_id: String,
        message_id: String,
        #[serde(default)]
        emoji: Option<String>,
    },
    Delivered {
        conversation_id: String,
        seq: u64,
    },
    Read {
        conversation_id: String,
        seq: u64,
    },
    Typing {
        conversation_id: String,
    },
    Ping,
    /// A fresh token for the same user, so the connection outlives the token it opened with
    /// (answered by the socket server itself: `token_refreshed`, or an `error`).
    Refresh {
        token: String,
    },
}

/// A frame the server sends. Its ids and times are typed: whatever the server writes has been
/// checked, and a client reads them checked (the JSON is the same plain strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user_id: UserId,
        server_id: ServerId,
    },
    Sent {
        /// The send's idempotency key, echoed as the client wrote it (like an `error`'s).
        client_msg_id: String,
        conversation_id: ConversationId,
        message_id: MessageId,
        seq: u64,
        created_at: Timestamp,
    },
    Message {
        conversation_id: ConversationId,
        message_id: MessageId,
        seq: u64,
        sender_id: UserId,
        body: String,
        created_at: Timestamp,
        /// The message this one answers (`send`'s `reply_to`). Additive: absent means none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MessageId>,
        /// The ids of its attachments (`send`'s `attachments`, verified before numbering);
        /// their metadata and download URLs come from history or
        /// `GET .../attachments/{id}`. Additive: absent means none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
    },
    /// An edit, delete or reaction of an earlier message, numbered in the conversation's
    /// sequence: `seq` and `event_id` are the event's own (its `sent` answered them), and
    /// `message_id` names the message it changes. New: a client that does not know it ignores
    /// it and still sees each message's current state in history (docs/protocol.md, "Message
    /// events").
    Event {
        conversation_id: ConversationId,
        event_id: MessageId,
        seq: u64,
        sender_id: UserId,
        /// `edit`, `delete` or `reaction`.
        kind: RecordKind,
        message_id: MessageId,
        /// `edit`: the new body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// `reaction`: the sender's emoji now; absent: the sender removed their reaction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        emoji: Option<String>,
        created_at: Timestamp,
    },
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        kind: ReceiptKind,
        seq: u64,
    },
    Presence {
        user_id: UserId,
        status: PresenceStatus,
        last_seen: Option<Timestamp>,
    },
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
    },
    Pong,
    /// The connection's token expires at `expires_at` (its `exp`): send `refresh` with a new
    /// token before then, or the connection is closed with 4401.
    TokenExpiring {
        expires_at: Timestamp,
    },
    /// A `refresh` was taken: the connection now lives until `expires_at`.
    TokenRefreshed {
        expires_at: Timestamp,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The refused frame's `client_msg_id` as the client wrote it (it may be what was
        /// wrong), so it stays plain text.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        client_msg_id: Option<String>,
    },
}

/// What a numbered record of a conversation is: a message, or an event that changes an
/// earlier message (issue 28). Every kind takes a `seq` of the same sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    #[default]
    Message,
    Edit,
    Delete,
    Reaction,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Message => "message",
            RecordKind::Edit => "edit",
            RecordKind::Delete => "delete",
            RecordKind::Reaction => "reaction",
        }
    }

    pub fn parse(text: &str) -> Option<RecordKind> {
        Some(match text {
            "message" => RecordKind::Message,
            "edit" => RecordKind::Edit,
            "delete" => RecordKind::Delete,
            "reaction" => RecordKind::Reaction,
            _ => return None,
        })
    }

    pub fn is_message(&self) -> bool {
        *self == RecordKind::Message
    }
}

/// The most bytes one reaction's emoji may take (a flag or a family with skin tones takes
/// about 30).
pub const MAX_EMOJI_BYTES: usize = 64;

/// Whether `emoji` may be a reaction: 1 to [`MAX_EMOJI_BYTES`] bytes, no whitespace and no
/// control characters (so it is one token that PostgreSQL can store and a client can show).
/// Which graphemes count as emoji is the clients' business.
pub fn is_valid_emoji(emoji: &str) -> bool {
    !emoji.is_empty()
        && emoji.len() <= MAX_EMOJI_BYTES
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            client_msg_id: None,
        }
    }

    /// Serializes the frame; frames are plain data, so this cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// Whether PostgreSQL `TEXT` can store `s`. A `&str` is valid UTF-8 already, so the one
/// character `TEXT` refuses is U+0000 (NUL). Every client-supplied string that ends up in the
/// database is checked with this at the edge, so it can never poison the ingest of the log.
pub fn is_storable_text(s: &str) -> bool {
    !s.contains('\0')
}

/// Why a client's text frame could not be understood; becomes an `error` frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not a JSON object with a known `type`: {0}")]
    Malformed(String),
}

impl ClientFrame {
    /// The idempotency key of a frame that is numbered (`send`, `edit`, `delete`, `react`):
    /// refusals of such a frame carry it.
    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Send { client_msg_id, .. }
            | ClientFrame::Edit { client_msg_id, .. }
            | ClientFrame::Delete { client_msg_id, .. }
            | ClientFrame::React { client_msg_id, .. } => Some(client_msg_id),
            _ => None,
        }
    }

    /// Parses one text frame. Unknown `type`s and missing fields are `Malformed`, with serde's
    /// description, so the client learns what was wrong.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const M: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";
    const E: &str = "01BX5ZZKBKACTAV9WEVGEMMVS0";
    const T: &str = "2026-01-01T00:00:00.000Z";

    fn id<I: std::str::FromStr>(text: &str) -> I
    where
        I::Err: std::fmt::Debug,
    {
        text.parse().unwrap()
    }

    fn at() -> Timestamp {
        Timestamp::parse(T).unwrap()
    }

    #[test]
    fn parses_every_client_frame() {
        let send = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"c1","client_msg_id":"m1","body":"hi"}"#,
        )
        .unwrap();
        assert_eq!(
            send,
            ClientFrame::Send {
                conversation_id: "c1".into(),
                client_msg_id: "m1".into(),
                body: "hi".into(),
                attachments: Vec::new(),
                reply_to: None,
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"read","conversation_id":"c","seq":3}"#).unwrap(),
            ClientFrame::Read { seq: 3, .. }
        ));
        assert_eq!(
            ClientFrame::parse(r#"{"type":"refresh","token":"a.b.c"}"#).unwrap(),
            ClientFrame::Refresh {
                token: "a.b.c".into()
            }
        );
        assert!(ClientFrame::parse(r#"{"type":"refresh"}"#).is_err());
    }

    #[test]
    fn send_attachments_are_optional_and_additive() {
        let frame = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"c","client_msg_id":"m","body":"","attachments":["a1"]}"#,
        )
        .unwrap();
        let ClientFrame::Send { attachments, .. } = &frame else {
            panic!("a send frame")
        };
        assert_eq!(attachments, &vec!["a1".to_owned()]);
        // A send without attachments serializes as it always did.
        let plain = ClientFrame::Send {
            conversation_id: "c".into(),
            client_msg_id: "m".into(),
            body: "b".into(),
            attachments: Vec::new(),
            reply_to: None,
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"type":"send","conversation_id":"c","client_msg_id":"m","body":"b"})
        );
    }

    #[test]
    fn event_frames_parse_and_are_additive() {
        let edit = ClientFrame::parse(
            r#"{"type":"edit","conversation_id":"c","client_msg_id":"e1","message_id":"m","body":"new"}"#,
        )
        .unwrap();
        assert_eq!(edit.client_msg_id(), Some("e1"));
        assert!(matches!(edit, ClientFrame::Edit { ref body, .. } if body == "new"));
        let unreact = ClientFrame::parse(
            r#"{"type":"react","conversation_id":"c","client_msg_id":"r","message_id":"m"}"#,
        )
        .unwrap();
        assert!(matches!(unreact, ClientFrame::React { emoji: None, .. }));
        assert!(ClientFrame::parse(
            r#"{"type":"delete","conversation_id":"c","client_msg_id":"d"}"#
        )
        .is_err());
        let reply = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"c","client_msg_id":"m","body":"b","reply_to":"x"}"#,
        )
        .unwrap();
        assert!(matches!(reply, ClientFrame::Send { reply_to: Some(ref r), .. } if r == "x"));
        assert_eq!(ClientFrame::Ping.client_msg_id(), None);
        // A message without a reply keeps its old shape; an event names its kind.
        let message = ServerFrame::Message {
            conversation_id: id(C),
            message_id: id(M),
            seq: 1,
            sender_id: id("a"),
            body: "b".into(),
            created_at: at(),
            reply_to: None,
            attachments: Vec::new(),
        };
        assert!(!message.to_json().contains("reply_to"));
        assert!(!message.to_json().contains("attachments"));
        let event = ServerFrame::Event {
            conversation_id: id(C),
            event_id: id(E),
            seq: 2,
            sender_id: id("a"),
            kind: RecordKind::Reaction,
            message_id: id(M),
            body: None,
            emoji: None,
            created_at: at(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"type":"event","conversation_id":C,"event_id":E,"seq":2,"sender_id":"a","kind":"reaction","message_id":M,"created_at":T})
        );
        for kind in [
            RecordKind::Message,
            RecordKind::Edit,
            RecordKind::Delete,
            RecordKind::Reaction,
        ] {
            assert_eq!(RecordKind::parse(kind.as_str()), Some(kind));
        }
        assert!(is_valid_emoji("\u{1F44D}"));
        assert!(is_valid_emoji(
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}"
        ));
        assert!(!is_valid_emoji(""));
        assert!(!is_valid_emoji("a b"));
        assert!(!is_valid_emoji("\0"));
        assert!(!is_valid_emoji(&"x".repeat(MAX_EMOJI_BYTES + 1)));
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        assert!(ClientFrame::parse(r#"{"type":"dance"}"#).is_err());
        assert!(ClientFrame::parse("not json").is_err());
        assert!(ClientFrame::parse(r#"{"type":"send"}"#).is_err());
    }

    #[test]
    fn nul_is_the_one_character_text_cannot_store() {
        assert!(is_storable_text(""));
        assert!(is_storable_text("h\u{e9}llo \u{1F600} \u{1}\u{7f}\u{fffd}"));
        assert!(!is_storable_text("a\u{0}b"));
        assert!(!is_storable_text("\0"));
        // NUL arrives through JSON as an escape.
        let frame = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"c","client_msg_id":"m","body":"a\u0000b"}"#,
        )
        .unwrap();
        let ClientFrame::Send { body, .. } = frame else {
            panic!("a send frame")
        };
        assert!(!is_storable_text(&body));
    }

    #[test]
    fn server_frames_have_spec_shape() {
        let hello = ServerFrame::Hello {
            user_id: id("alice"),
            server_id: id("s1"),
        };
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            serde_json::json!({"type":"hello","user_id":"alice","server_id":"s1"})
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        let expiring = ServerFrame::TokenExpiring { expires_at: at() };
        assert_eq!(
            expiring.to_json(),
            r#"{"type":"token_expiring","expires_at":"2026-01-01T00:00:00.000Z"}"#
        );
        let refreshed = ServerFrame::TokenRefreshed { expires_at: at() };
        assert_eq!(
            refreshed.to_json(),
            r#"{"type":"token_refreshed","expires_at":"2026-01-01T00:00:00.000Z"}"#
        );
        let err = ServerFrame::error(ErrorCode::BadRequest, "nope");
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"type":"error","code":"bad_request","message":"nope"})
        );
    }
}
