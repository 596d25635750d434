//! WebSocket frames (SPEC section 4): one JSON object per text frame, discriminated by `type`.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// A frame a client sends.
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

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user_id: String,
        server_id: String,
    },
    Sent {
        client_msg_id: String,
        conversation_id: String,
        message_id: String,
        seq: u64,
        created_at: String,
    },
    Message {
        conversation_id: String,
        message_id: String,
        seq: u64,
        sender_id: String,
        body: String,
        created_at: String,
    },
    Receipt {
        conversation_id: String,
        user_id: String,
        kind: ReceiptKind,
        seq: u64,
    },
    Presence {
        user_id: String,
        status: PresenceStatus,
        last_seen: Option<String>,
    },
    Typing {
        conversation_id: String,
        user_id: String,
    },
    Pong,
    /// The connection's token expires at `expires_at` (its `exp`): send `refresh` with a new
    /// token before then, or the connection is closed with 4401.
    TokenExpiring {
        expires_at: String,
    },
    /// A `refresh` was taken: the connection now lives until `expires_at`.
    TokenRefreshed {
        expires_at: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        client_msg_id: Option<String>,
    },
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
    /// Parses one text frame. Unknown `type`s and missing fields are `Malformed`, with serde's
    /// description, so the client learns what was wrong.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"type":"send","conversation_id":"c","client_msg_id":"m","body":"b"})
        );
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
            user_id: "alice".into(),
            server_id: "s1".into(),
        };
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            serde_json::json!({"type":"hello","user_id":"alice","server_id":"s1"})
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        let expiring = ServerFrame::TokenExpiring {
            expires_at: "2026-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(
            expiring.to_json(),
            r#"{"type":"token_expiring","expires_at":"2026-01-01T00:00:00.000Z"}"#
        );
        let refreshed = ServerFrame::TokenRefreshed {
            expires_at: "2026-01-01T00:00:00.000Z".into(),
        };
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
