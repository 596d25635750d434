//! The client's frames: each read from the client's stream becomes an answer, a frame
//! forwarded to the managers (their reply arrives in the connection's outbound queue), a
//! `refresh` for the token, or the loop's end. Text frames are rate limited
//! (`SB_CLIENT_RATE_PER_SEC`, `SB_CLIENT_RATE_BURST`) and validated here, at the edge, before
//! anything is numbered or stored; anything unparseable gets a `bad_request` error frame and
//! the connection stays open.

use switchboard_protocol::frames::{is_storable_text, ClientFrame, ServerFrame};
use switchboard_protocol::internal::ServerItem;
use switchboard_protocol::{ErrorCode, UserId};
use tokio::sync::mpsc;

use super::outbound::{Ending, Writer};
use super::token::TokenLife;
use crate::hub::{ConnId, Outbound};
use crate::manager_client::{unavailable_reply, ManagerClient, Pending};
use crate::rate::TokenBucket;
use crate::wire::{Incoming, Outgoing, Outlet, ReadError};

/// What the loop needs to answer or forward a client's frames.
pub(super) struct Inbound<'a> {
    pub conn_id: ConnId,
    pub user_id: &'a UserId,
    /// The link to the managers; `None` (messaging disabled) answers chat frames
    /// `unavailable`.
    pub manager: Option<&'a ManagerClient>,
    pub max_body_bytes: usize,
    /// This connection's queue, where the managers' replies are sent.
    pub own_queue: mpsc::Sender<Outbound>,
    /// The connection's frame rate.
    pub limiter: TokenBucket,
}

impl Inbound<'_> {
    /// One read from the client's stream (`None`: it ended).
    pub(super) async fn read<T: AsRef<str>, K: Outlet>(
        &mut self,
        read: Option<Result<Incoming<T>, ReadError>>,
        token: &mut TokenLife<'_, '_>,
        writer: &mut Writer<'_, K>,
    ) -> Option<Ending> {
        match read {
            Some(Ok(Incoming::Text(text))) => self.text(text.as_ref(), token, writer).await,
            Some(Ok(Incoming::Binary)) => {
                writer.metrics.frames_in.inc();
                let frame = ServerFrame::error(
                    ErrorCode::BadRequest,
                    "binary frames are not supported: send JSON text frames",
                );
                writer.send(&frame).await
            }
            Some(Ok(Incoming::Ping(payload))) => writer.write(Outgoing::Pong(payload)).await,
            Some(Ok(Incoming::Pong)) => None,
            Some(Ok(Incoming::Close)) => Some(Ending::ClientClosed),
            Some(Err(ReadError::TooLarge)) => Some(Ending::TooLarge),
            Some(Err(ReadError::Protocol(code))) => Some(Ending::ProtocolError(code)),
            Some(Err(ReadError::Broken)) | None => Some(Ending::ClientGone),
        }
    }

    /// One client text frame, counted; past the rate it is answered `rate_limited`.
    async fn text<K: Outlet>(
        &mut self,
        text: &str,
        token: &mut TokenLife<'_, '_>,
        writer: &mut Writer<'_, K>,
    ) -> Option<Ending> {
        writer.metrics.frames_in.inc();
        let handled = if self.limiter.try_take(std::time::Instant::now()) {
            self.handle_text(text)
        } else {
            Handled::Reply(ServerFrame::error(
                ErrorCode::RateLimited,
                "slow down: too many frames",
            ))
        };
        match handled {
            Handled::Reply(frame) => writer.send(&frame).await,
            Handled::Forwarded => None,
            Handled::Refresh(jwt) => token.refresh(&jwt, writer).await,
        }
    }

    /// Answers one client text frame, or forwards it to the managers (the reply then arrives
    /// in this connection's outbound queue).
    fn handle_text(&self, text: &str) -> Handled {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                return Handled::Reply(ServerFrame::error(ErrorCode::BadRequest, e.to_string()))
            }
        };
        if let Some(refusal) = refuse_invalid(&frame, self.max_body_bytes) {
            return Handled::Reply(refusal);
        }
        match frame {
            ClientFrame::Ping => Handled::Reply(ServerFrame::Pong),
            ClientFrame::Refresh { token } => Handled::Refresh(token),
            frame => self.forward(frame),
        }
    }

    /// Queues a chat frame on the connection's manager lane; a full lane is `rate_limited`.
    /// The first step of a send (span `inbound`; the lane's `batch` span is the next).
    #[tracing::instrument(
        name = "inbound",
        level = "debug",
        skip_all,
        fields(connection = self.conn_id, client_msg_id = frame.client_msg_id())
    )]
    fn forward(&self, frame: ClientFrame) -> Handled {
        let item = ServerItem::Frame {
            connection_id: self.conn_id,
            user_id: self.user_id.clone(),
            frame,
        };
        let Some(manager) = self.manager else {
            return unavailable_reply(&item).map_or(Handled::Forwarded, Handled::Reply);
        };
        let pending = Pending {
            item,
            reply_to: Some(self.own_queue.clone()),
            done: None,
        };
        match manager.submit(self.conn_id, pending) {
            Ok(()) => {
                tracing::debug!("forwarded to the managers");
                Handled::Forwarded
            }
            Err(pending) => {
                let client_msg_id = match &pending.item {
                    ServerItem::Frame { frame, .. } => frame.client_msg_id().map(str::to_owned),
                    _ => None,
                };
                Handled::Reply(ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    message: "this server is saturated, retry shortly".into(),
                    client_msg_id,
                })
            }
        }
    }
}

/// What became of one client text frame.
enum Handled {
    /// Answered here with this frame.
    Reply(ServerFrame),
    /// Forwarded to the managers (their answer arrives in the connection's queue).
    Forwarded,
    /// A `refresh` with this token, for the loop (it owns the connection's token).
    Refresh(String),
}

/// The edge's validation of a parsed frame: the one place that refuses what must never be
/// numbered or stored. A `send` body over `max_body_bytes` is `too_large`; a string that
/// PostgreSQL `TEXT` cannot store (one holding U+0000) is `bad_request`, since it would be
/// numbered and then fail to insert. Refusals of a `send` carry its `client_msg_id`.
fn refuse_invalid(frame: &ClientFrame, max_body_bytes: usize) -> Option<ServerFrame> {
    const EMPTY: String = String::new();
    let (conversation_id, send) = match frame {
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
            ..
        }
        | ClientFrame::Edit {
            conversation_id,
            client_msg_id,
            body,
            ..
        } => (conversation_id, Some((client_msg_id, body))),
        // A delete's or reaction's texts are checked by the managers (ids and the emoji).
        ClientFrame::Delete {
            conversation_id,
            client_msg_id,
            ..
        }
        | ClientFrame::React {
            conversation_id,
            client_msg_id,
            ..
        } => (conversation_id, Some((client_msg_id, &EMPTY))),
        ClientFrame::Delivered {
            conversation_id, ..
        }
        | ClientFrame::Read {
            conversation_id, ..
        }
        | ClientFrame::Typing { conversation_id } => (conversation_id, None),
        ClientFrame::Ping | ClientFrame::Refresh { .. } => return None,
    };
    let client_msg_id = send.map(|(id, _)| id.clone());
    if let Some((_, body)) = send {
        if body.len() > max_body_bytes {
            return Some(ServerFrame::Error {
                code: ErrorCode::TooLarge,
                message: format!(
                    "body is {} bytes; the limit is {max_body_bytes}",
                    body.len()
                ),
                client_msg_id,
            });
        }
    }
    let (field, _) = std::iter::once(("conversation_id", conversation_id))
        .chain(
            send.into_iter()
                .flat_map(|(id, body)| [("client_msg_id", id), ("body", body)]),
        )
        .find(|(_, text)| !is_storable_text(text))?;
    Some(ServerFrame::Error {
        code: ErrorCode::BadRequest,
        message: format!("{field} contains U+0000 (NUL), which cannot be stored"),
        client_msg_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(client_msg_id: &str, body: &str) -> ClientFrame {
        ClientFrame::Send {
            conversation_id: "c1".into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
            attachments: Vec::new(),
            reply_to: None,
        }
    }

    fn refusal(frame: &ClientFrame) -> Option<(ErrorCode, String, Option<String>)> {
        match refuse_invalid(frame, 16)? {
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
            } => Some((code, message, client_msg_id)),
            other => panic!("not an error frame: {other:?}"),
        }
    }

    #[test]
    fn a_send_with_nul_is_a_bad_request_tagged_with_its_id() {
        let parsed = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"c1","client_msg_id":"m1","body":"a\u0000b"}"#,
        )
        .unwrap();
        let (code, message, id) = refusal(&parsed).expect("refused");
        assert_eq!(code, ErrorCode::BadRequest);
        assert_eq!(id.as_deref(), Some("m1"));
        assert!(
            message.contains("body") && message.contains("U+0000"),
            "{message}"
        );

        let (code, message, id) = refusal(&send("m\0", "fine")).expect("refused");
        assert_eq!((code, id.as_deref()), (ErrorCode::BadRequest, Some("m\0")));
        assert!(message.starts_with("client_msg_id"), "{message}");
    }

    #[test]
    fn nul_in_any_conversation_id_is_refused() {
        for frame in [
            ClientFrame::Send {
                conversation_id: "c\0".into(),
                client_msg_id: "m1".into(),
                body: "hi".into(),
                attachments: Vec::new(),
                reply_to: None,
            },
            ClientFrame::Read {
                conversation_id: "c\0".into(),
                seq: 1,
            },
            ClientFrame::Delivered {
                conversation_id: "\0".into(),
                seq: 1,
            },
            ClientFrame::Typing {
                conversation_id: "c\0".into(),
            },
        ] {
            let (code, message, _) = refusal(&frame).expect("refused");
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.starts_with("conversation_id"), "{message}");
        }
    }

    #[test]
    fn valid_frames_pass_and_size_is_still_checked_first() {
        assert_eq!(refusal(&send("m1", "hello \u{1F600}")), None);
        assert_eq!(refusal(&send("m1", "")), None);
        assert_eq!(refusal(&ClientFrame::Ping), None);
        assert_eq!(
            refusal(&ClientFrame::Read {
                conversation_id: "c1".into(),
                seq: 3
            }),
            None
        );
        let (code, _, id) = refusal(&send("big", &"x".repeat(17))).expect("refused");
        assert_eq!((code, id.as_deref()), (ErrorCode::TooLarge, Some("big")));
        let (code, _, _) = refusal(&send("big", &format!("{}\0", "x".repeat(17)))).unwrap();
        assert_eq!(code, ErrorCode::TooLarge);
        assert_eq!(refusal(&send("edge", &"x".repeat(16))), None);
    }
}
