//! A session's life after the upgrade: the WebSocket close codes that end it for its token's
//! sake, and the cluster-internal bodies that end every session of a user (docs/protocol.md,
//! "Token lifetime"; docs/architecture.md, "Ending a user's sessions").
//!
//! - [`close_code`]: 4401 (the token expired) and 4403 (the user's sessions were ended).
//! - `POST /internal/v1/users/{user_id}/sessions/end` on any socket manager answers
//!   [`SessionsEnded`]; the manager writes the user's mark in Redis, then sends every live
//!   socket server an [`EndSessions`] control on its handler topic.

use serde::{Deserialize, Serialize};

use crate::UserId;

/// WebSocket close codes of the application range (4000-4999, RFC 6455 section 7.4.2), each
/// the HTTP status a client would get for the same reason plus 4000.
pub mod close_code {
    /// The connection's token expired without a `refresh`: get a new token, then reconnect
    /// through the registry.
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// Every session of the user was ended (logout everywhere, a ban, a password change):
    /// tokens issued until then are refused; do not reconnect with the same token.
    pub const SESSIONS_ENDED: u16 = 4403;
}

/// The route that ends every session of a user, relative to a socket manager's base URL.
pub fn end_sessions_path(user_id: &UserId) -> String {
    format!(
        "/internal/v1/users/{}/sessions/end",
        crate::token::path_segment(user_id)
    )
}

/// The answer of the end-sessions route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsEnded {
    pub user_id: UserId,
    /// The mark, in seconds since the epoch: tokens whose `iat` is at or before it are
    /// refused at the upgrade and in a `refresh` from now on.
    pub ended_before: i64,
    /// The socket servers the control record was written for (every live one).
    pub servers: usize,
}

/// The control record a socket server finds on its handler topic: close every connection of
/// `user_id` whose token was issued at or before `ended_before` (seconds). It travels as a
/// handler record with no recipients whose frame is this object, so a server that does not
/// know it delivers it to nobody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control", rename = "end_sessions")]
pub struct EndSessions {
    pub user_id: UserId,
    pub ended_before: i64,
}

impl EndSessions {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a control always serializes")
    }

    /// The control in a record's frame, if it is one.
    pub fn parse(frame: &str) -> Option<EndSessions> {
        serde_json::from_str(frame).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_round_trips_and_no_frame_is_taken_for_it() {
        let control = EndSessions {
            user_id: "auth0|ann".parse().unwrap(),
            ended_before: 1_700_000_000,
        };
        let json = control.to_json();
        assert_eq!(
            json,
            r#"{"control":"end_sessions","user_id":"auth0|ann","ended_before":1700000000}"#
        );
        assert_eq!(EndSessions::parse(&json), Some(control));
        assert_eq!(EndSessions::parse(r#"{"type":"pong"}"#), None);
        assert_eq!(
            end_sessions_path(&UserId::parse("auth0|ann").unwrap()),
            "/internal/v1/users/auth0%7Cann/sessions/end"
        );
    }
}
