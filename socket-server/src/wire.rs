//! What a connection's loop reads from and writes to its client, apart from any WebSocket
//! library, so the loop (`session::run_session`) can be driven by channels in unit tests.
//!
//! - [`Incoming`] / [`ReadError`]: what the loop reads (a `Stream` of `Result`s).
//! - [`Outgoing`]: what it writes, through an [`Outlet`]. Every `Sink<Outgoing> + Unpin` is
//!   an outlet; actix-ws's `Session` is one through [`ActixOutlet`], by direct calls (its API
//!   is `async fn`s over a private channel, so a `Sink` over it would need a boxed future per
//!   frame).
//! - [`actix_incoming`]: actix-ws's aggregated message stream as `Incoming`s (a `map`).

use actix_web::web::Bytes;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use futures_util::{Sink, SinkExt, Stream, StreamExt};

/// A frame from the client, as the loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming<T> {
    /// A text frame (continuations already aggregated); `T` is actix-ws's `ByteString` on
    /// the wire.
    Text(T),
    /// A binary frame; its payload is never read.
    Binary,
    /// A ping, answered with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    Close,
}

/// Why the client's stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// A frame (or aggregated message) over the size limit: answered `too_large` + 1009.
    TooLarge,
    /// Anything else: the connection is unusable.
    Broken,
}

/// A frame the loop writes to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    Text(String),
    /// The heartbeat ping (empty payload).
    Ping,
    /// The answer to a client ping, with its payload.
    Pong(Bytes),
    /// The last frame; `None` ends the connection without a status code.
    Close(Option<CloseFrame>),
}

/// A close frame's status code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseFrame {
    pub code: u16,
    pub reason: Option<&'static str>,
}

/// The close codes the loop uses (RFC 6455 section 7.4.1; 1012/1013 from the IANA registry).
pub(crate) mod close_code {
    /// The client closed.
    pub const NORMAL: u16 = 1000;
    /// Heartbeat timeout.
    pub const AWAY: u16 = 1001;
    /// A frame over the size limit.
    pub const SIZE: u16 = 1009;
    /// The server is shutting down: reconnect through the registry.
    pub const RESTART: u16 = 1012;
    /// A slow consumer: reconnect and resync.
    pub const AGAIN: u16 = 1013;
}

/// The peer is gone: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// Where the loop writes frames. `write` completes once the frame is handed to the
/// connection (it waits while the connection's write buffer is full).
pub(crate) trait Outlet {
    async fn write(&mut self, frame: Outgoing) -> Result<(), Gone>;
}

/// Any sink of frames; after a close frame the sink is closed.
impl<K> Outlet for K
where
    K: Sink<Outgoing> + Unpin,
{
    async fn write(&mut self, frame: Outgoing) -> Result<(), Gone> {
        let last = matches!(frame, Outgoing::Close(_));
        SinkExt::send(self, frame).await.map_err(|_| Gone)?;
        if last {
            SinkExt::close(self).await.map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// actix-ws's session as an [`Outlet`]; a close frame consumes the session.
pub(crate) struct ActixOutlet(Option<actix_ws::Session>);

impl ActixOutlet {
    pub(crate) fn new(session: actix_ws::Session) -> Self {
        ActixOutlet(Some(session))
    }
}

impl Outlet for ActixOutlet {
    async fn write(&mut self, frame: Outgoing) -> Result<(), Gone> {
        let session = self.0.as_mut().ok_or(Gone)?;
        let written = match frame {
            Outgoing::Text(text) => session.text(text).await,
            Outgoing::Ping => session.ping(b"").await,
            Outgoing::Pong(payload) => session.pong(&payload).await,
            Outgoing::Close(close) => {
                let session = self.0.take().ok_or(Gone)?;
                session
                    .close(close.map(|c| CloseReason {
                        code: CloseCode::from(c.code),
                        description: c.reason.map(String::from),
                    }))
                    .await
            }
        };
        written.map_err(|_| Gone)
    }
}

/// actix-ws's aggregated message stream as the loop's input.
pub(crate) fn actix_incoming(
    stream: actix_ws::AggregatedMessageStream,
) -> impl Stream<Item = Result<Incoming<impl AsRef<str>>, ReadError>> + Unpin {
    stream.map(|msg| match msg {
        Ok(AggregatedMessage::Text(text)) => Ok(Incoming::Text(text)),
        Ok(AggregatedMessage::Binary(_)) => Ok(Incoming::Binary),
        Ok(AggregatedMessage::Ping(payload)) => Ok(Incoming::Ping(payload)),
        Ok(AggregatedMessage::Pong(_)) => Ok(Incoming::Pong),
        Ok(AggregatedMessage::Close(_)) => Ok(Incoming::Close),
        Err(ProtocolError::Overflow) => Err(ReadError::TooLarge),
        Err(_) => Err(ReadError::Broken),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_map_to_the_same_actix_codes() {
        for (code, actix) in [
            (close_code::NORMAL, CloseCode::Normal),
            (close_code::AWAY, CloseCode::Away),
            (close_code::SIZE, CloseCode::Size),
            (close_code::RESTART, CloseCode::Restart),
            (close_code::AGAIN, CloseCode::Again),
        ] {
            assert_eq!(CloseCode::from(code), actix);
            assert_eq!(u16::from(actix), code);
        }
    }
}
