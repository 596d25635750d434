//! Writing to the client: every write is bounded by the write timeout (`SB_CLIENT_WRITE_TIMEOUT_MS`),
//! server frames are counted, and what the connection's bounded outbound queue holds (the
//! managers' replies, frames delivered from our topic) is written in order. A write that
//! fails or stalls answers how the loop ends ([`Ending`]).
//!
//! The loop writes inside its `select!` arms, so a client that stops reading (its TCP window
//! full) would otherwise hold the loop in one write forever, and neither the kick, the
//! heartbeat nor shutdown could end it. A timeout here rather than a writer task per
//! connection keeps an idle connection one task (docs/performance.md, S1).

use std::time::Duration;

use switchboard_protocol::frames::ServerFrame;

use crate::hub::Outbound;
use crate::metrics::Metrics;
use crate::wire::{Outgoing, Outlet};

/// Why a connection loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    ClientClosed,
    ClientGone,
    TimedOut,
    Kicked,
    TooLarge,
    ServerShutdown,
    /// A write did not complete within the write timeout: the client stopped reading.
    Stalled,
    /// The token's `exp` passed without a refresh (4401).
    TokenExpired,
    /// The user's sessions were ended (4403).
    SessionsEnded,
    /// The client broke RFC 6455: failed with the close code it asks for (1002, 1007).
    ProtocolError(u16),
}

/// The loop's side of the connection: its outlet, each write bounded in time.
pub(super) struct Writer<'a, K> {
    pub outlet: K,
    pub metrics: &'a Metrics,
    /// A frame not handed to the connection within this long ends it as a slow consumer.
    pub timeout: Duration,
}

impl<K: Outlet> Writer<'_, K> {
    /// One write, bounded in time: `None` when it went out, else how the connection ends.
    pub(super) async fn write(&mut self, frame: Outgoing) -> Option<Ending> {
        match tokio::time::timeout(self.timeout, self.outlet.write(frame)).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Ending::ClientGone),
            Err(_) => Some(Ending::Stalled),
        }
    }

    /// A server frame, counted in `socket_frames_out_total`.
    pub(super) async fn send(&mut self, frame: &ServerFrame) -> Option<Ending> {
        self.metrics.frames_out.inc();
        self.write(Outgoing::Text(frame.to_json().into())).await
    }

    /// What the connection's queue gave: a frame is written (and counted) as it is.
    pub(super) async fn queued(&mut self, out: Option<Outbound>) -> Option<Ending> {
        let Some(Outbound::Frame(text)) = out else {
            return None;
        };
        self.metrics.frames_out.inc();
        self.write(Outgoing::Text(text)).await
    }
}
