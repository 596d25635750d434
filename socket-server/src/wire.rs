//! What a connection's loop reads from and writes to its client, apart from any WebSocket
//! library, so the loop (`session::socket_loop::run_session`) can be driven by channels in unit
//! tests.
//!
//! - [`Incoming`] / [`ReadError`]: what the loop reads (a `Stream` of `Result`s).
//! - [`Outgoing`]: what it writes, through an [`Outlet`]. Every `Sink<Outgoing> + Unpin` is
//!   an outlet (the unit tests' channels); the server's is `websocket::FrameWriter`.
//!
//! The server reads with `websocket::FrameReader`.

use bytes::Bytes;
use futures_util::{Sink, SinkExt};

/// A frame from the client, as the loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming<T> {
    /// A text message (fragments already reassembled, UTF-8 checked).
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
    /// The client broke RFC 6455: the connection is failed with this close code (1002 a
    /// protocol error, 1007 a text message or close reason that is not UTF-8).
    Protocol(u16),
    /// The socket failed: the connection is unusable.
    Broken,
}

/// A frame the loop writes to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A text frame; shared, as one frame fans out to many devices.
    Text(std::sync::Arc<str>),
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
    /// A text message (or close reason) that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
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

    /// Gives the connection up after a write that did not complete (the client stopped
    /// reading): nothing more is written, and what is still unsent is discarded rather than
    /// delivered. Nothing to do for a sink.
    fn abandon(&mut self) {}
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
