//! Stable error codes, shared by REST bodies (`{"error":{"code","message"}}`) and WebSocket
//! `error` frames. Clients branch on these strings, so they never change once published.

use serde::{Deserialize, Serialize};

/// Every error code the system emits. The serialized form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request or frame is malformed or fails validation.
    BadRequest,
    /// No token, or a token that is malformed, expired or wrongly signed.
    Unauthorized,
    /// The caller is authenticated but may not do this (for example a cluster-only route).
    Forbidden,
    /// The caller is not a member of the conversation.
    NotAMember,
    /// The thing asked for does not exist.
    NotFound,
    /// A body or frame is over the configured limit.
    TooLarge,
    /// The caller sends faster than allowed.
    RateLimited,
    /// A dependency (Redis, the broker, the database) is unreachable; retry later.
    Unavailable,
    /// No socket server has room for one more connection.
    NoCapacity,
    /// The route exists only in dev mode, which is off.
    DevModeDisabled,
    /// A bug on our side; the message says no more than that.
    Internal,
    /// An `Idempotency-Key` already used for a different request (another body, sender or
    /// conversation): the first request's answer stands, this one is not done.
    IdempotencyConflict,
    /// A `send` names an attachment that is not there: unknown, not uploaded (or uploaded
    /// through an expired URL, which the store refused), uploaded by someone else, or created
    /// for another conversation.
    AttachmentNotFound,
    /// An attachment's stored object differs from what was declared when its upload URL was
    /// made (size or content type).
    AttachmentMismatch,
    /// An attachment the deployment does not take: a content type outside its allow-list, or
    /// an image over its pixel limit or that cannot be read (a decompression bomb).
    AttachmentRefused,
    /// An `edit`, `delete`, `react` or a `send`'s `reply_to` names no message of this
    /// conversation (unknown, another conversation's, or the id of an event).
    MessageNotFound,
    /// An `edit`, `delete` or `react` of a message that was deleted.
    MessageDeleted,
    /// An `edit` of someone else's message, or a `delete` of someone else's message by a
    /// member who is not the group's owner or an admin.
    NotAuthor,
    /// An `edit` after the deployment's edit window (`SB_EDIT_WINDOW_SECS`) closed.
    EditWindowClosed,
    /// An `edit` of a message already edited the deployment's maximum number of times
    /// (`SB_MAX_EDITS`).
    TooManyEdits,
    /// A `react` with an emoji that would take a message past the deployment's number of
    /// distinct reactions (`SB_MAX_REACTIONS_PER_MESSAGE`).
    TooManyReactions,
}

impl ErrorCode {
    /// The wire string of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::DevModeDisabled => "dev_mode_disabled",
            ErrorCode::Internal => "internal",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::AttachmentNotFound => "attachment_not_found",
            ErrorCode::AttachmentMismatch => "attachment_mismatch",
            ErrorCode::AttachmentRefused => "attachment_refused",
            ErrorCode::MessageNotFound => "message_not_found",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::NotAuthor => "not_author",
            ErrorCode::EditWindowClosed => "edit_window_closed",
            ErrorCode::TooManyEdits => "too_many_edits",
            ErrorCode::TooManyReactions => "too_many_reactions",
        }
    }

    /// The HTTP status that goes with the code in REST answers.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::NotAMember => 403,
            ErrorCode::NotFound | ErrorCode::DevModeDisabled => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable | ErrorCode::NoCapacity => 503,
            ErrorCode::Internal => 500,
            ErrorCode::IdempotencyConflict => 422,
            ErrorCode::AttachmentNotFound => 404,
            ErrorCode::AttachmentMismatch | ErrorCode::AttachmentRefused => 422,
            ErrorCode::MessageNotFound => 404,
            ErrorCode::MessageDeleted => 410,
            ErrorCode::NotAuthor | ErrorCode::EditWindowClosed => 403,
            ErrorCode::TooManyEdits | ErrorCode::TooManyReactions => 422,
        }
    }
}

/// The REST error body: `{"error":{"code":"snake_case","message":"human text"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotAMember,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::NoCapacity,
            ErrorCode::DevModeDisabled,
            ErrorCode::Internal,
            ErrorCode::IdempotencyConflict,
            ErrorCode::AttachmentNotFound,
            ErrorCode::AttachmentMismatch,
            ErrorCode::AttachmentRefused,
            ErrorCode::MessageNotFound,
            ErrorCode::MessageDeleted,
            ErrorCode::NotAuthor,
            ErrorCode::EditWindowClosed,
            ErrorCode::TooManyEdits,
            ErrorCode::TooManyReactions,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody::new(ErrorCode::NoCapacity, "all full");
        let value = serde_json::to_value(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error":{"code":"no_capacity","message":"all full"}})
        );
    }
}
