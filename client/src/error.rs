//! What can go wrong, with the server's stable error code wherever it gave one.

use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::token::TokenError;
use switchboard_protocol::ErrorCode;
use tokio_tungstenite::tungstenite;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A REST call answered a non-success status. `code` is the body's stable error code when
    /// the body was the documented `{"error":{"code","message"}}`; otherwise `message` holds
    /// whatever the body was (nginx's own pages, for example).
    #[error("{status}{}: {message}", code_suffix(*.code))]
    Api {
        status: u16,
        code: Option<ErrorCode>,
        message: String,
    },
    /// The WebSocket upgrade was refused with an HTTP answer (401 for a bad token, 429 for a
    /// device cap, 503 when draining); `body` is the answer's body as text.
    #[error("upgrade refused with {status}{}: {body}", code_suffix(*.code))]
    Refused {
        status: u16,
        code: Option<ErrorCode>,
        body: String,
    },
    /// An `error` frame answered a frame of ours (see [`Connection::expect_sent`]).
    ///
    /// [`Connection::expect_sent`]: crate::Connection::expect_sent
    #[error("error frame {}: {message}", code.as_str())]
    Frame {
        code: ErrorCode,
        message: String,
        client_msg_id: Option<String>,
    },
    /// The server said something the protocol does not allow here (no `hello` first, or a
    /// text frame that is not a server frame).
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
    /// The server closed the WebSocket (or the connection ended).
    #[error("the connection is closed")]
    Closed,
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("token: {0}")]
    Token(#[from] TokenError),
}

fn code_suffix(code: Option<ErrorCode>) -> String {
    code.map(|c| format!(" {}", c.as_str())).unwrap_or_default()
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Error::Closed
            }
            other => Error::WebSocket(Box::new(other)),
        }
    }
}

impl Error {
    /// The stable error code the server answered with, if it gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } | Error::Refused { code, .. } => *code,
            Error::Frame { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status of a REST refusal or a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Refused { status, .. } => Some(*status),
            Error::Http(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The error of a non-success REST answer with `body`.
    pub fn api(status: u16, body: &str) -> Error {
        match parse_error_body(body) {
            Some(parsed) => Error::Api {
                status,
                code: Some(parsed.error.code),
                message: parsed.error.message,
            },
            None => Error::Api {
                status,
                code: None,
                message: body.trim().to_owned(),
            },
        }
    }

    /// The error of a refused WebSocket upgrade answered with `body`.
    pub fn refused(status: u16, body: String) -> Error {
        Error::Refused {
            status,
            code: parse_error_body(&body).map(|b| b.error.code),
            body,
        }
    }
}

/// The documented error body, if `body` is one (an unknown code is not: codes are a closed
/// set, and a body with one came from something else).
pub fn parse_error_body(body: &str) -> Option<ErrorBody> {
    serde_json::from_str(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_code() {
        let e = Error::api(
            403,
            r#"{"error":{"code":"not_a_member","message":"you are not a member"}}"#,
        );
        assert_eq!(e.code(), Some(ErrorCode::NotAMember));
        assert_eq!(e.status(), Some(403));
        assert_eq!(e.to_string(), "403 not_a_member: you are not a member");
        let Error::Api { message, .. } = e else {
            panic!("an api error")
        };
        assert_eq!(message, "you are not a member");
    }

    #[test]
    fn other_bodies_keep_their_text() {
        for body in [
            "<html>502 Bad Gateway</html>\n",
            "",
            r#"{"error":"flat"}"#,
            r#"{"error":{"code":"no_such_code","message":"m"}}"#,
        ] {
            let e = Error::api(502, body);
            assert_eq!(e.code(), None, "{body}");
            assert_eq!(e.status(), Some(502));
            let Error::Api { message, .. } = e else {
                panic!("an api error")
            };
            assert_eq!(message, body.trim());
        }
    }

    #[test]
    fn refused_upgrades_give_their_code() {
        let e = Error::refused(
            429,
            r#"{"error":{"code":"rate_limited","message":"10 devices"}}"#.into(),
        );
        assert_eq!(e.code(), Some(ErrorCode::RateLimited));
        assert_eq!(e.status(), Some(429));
        assert!(e
            .to_string()
            .starts_with("upgrade refused with 429 rate_limited"));
        assert_eq!(Error::refused(401, "no".into()).code(), None);
    }

    #[test]
    fn frame_errors_have_a_code_but_no_status() {
        let e = Error::Frame {
            code: ErrorCode::TooLarge,
            message: "body over 4096 bytes".into(),
            client_msg_id: Some("m1".into()),
        };
        assert_eq!(e.code(), Some(ErrorCode::TooLarge));
        assert_eq!(e.status(), None);
        assert_eq!(Error::Timeout.code(), None);
    }

    #[test]
    fn closed_websockets_are_closed() {
        assert!(matches!(
            Error::from(tungstenite::Error::ConnectionClosed),
            Error::Closed
        ));
        assert!(matches!(
            Error::from(tungstenite::Error::Utf8),
            Error::WebSocket(_)
        ));
    }
}
