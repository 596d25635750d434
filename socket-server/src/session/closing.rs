//! How a session ends on the wire: the close frame (code and reason) for each [`Ending`],
//! counted where it is a slow consumer or a token's end, written best effort within 2 s; a
//! stalled connection gets no close frame and is reset.

use std::time::Duration;

use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::sessions::close_code as token_close;
use switchboard_protocol::ErrorCode;

use super::outbound::{Ending, Writer};
use crate::token_life::TokenMetrics;
use crate::wire::{close_code, CloseFrame, Outgoing, Outlet};

/// How long the close frame may take before the connection is given up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes the close frame for `ending` (after the `too_large` error that explains a 1009), or
/// abandons the connection when it stalled.
pub(super) async fn close<K: Outlet>(
    mut writer: Writer<'_, K>,
    ending: Option<Ending>,
    token_metrics: &TokenMetrics,
) {
    let close = match ending {
        Some(Ending::Stalled) => {
            // Counted as a slow consumer too: it is one, caught by its writes rather than
            // by its queue.
            writer.metrics.slow_consumer_kicks.inc();
            writer.metrics.write_timeouts.inc();
            // A frame may be half written, and the client reads nothing anyway: no close
            // frame, and the connection is reset rather than left to drain its send buffer.
            writer.outlet.abandon();
            return;
        }
        Some(Ending::TooLarge) => {
            let frame = ServerFrame::error(ErrorCode::TooLarge, "frame exceeds the size limit");
            let _ = writer.write(Outgoing::Text(frame.to_json().into())).await;
            close_frame(Ending::TooLarge)
        }
        Some(Ending::Kicked) => {
            writer.metrics.slow_consumer_kicks.inc();
            close_frame(Ending::Kicked)
        }
        Some(Ending::TokenExpired) => {
            token_metrics.expired.inc();
            close_frame(Ending::TokenExpired)
        }
        Some(Ending::SessionsEnded) => {
            token_metrics.ended.inc();
            close_frame(Ending::SessionsEnded)
        }
        Some(ending) => close_frame(ending),
        None => None,
    };
    // Best effort: a peer that vanished cannot receive a close frame, and one that stopped
    // reading is given up after 2 s.
    let closing = writer.outlet.write(Outgoing::Close(close));
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        writer.outlet.abandon();
    }
}

/// The close frame of an ending; `None` where the client cannot be told (it is gone).
fn close_frame(ending: Ending) -> Option<CloseFrame> {
    let (code, reason) = match ending {
        Ending::ServerShutdown => (
            close_code::RESTART,
            Some("server restarting: reconnect through the registry"),
        ),
        Ending::Kicked => (
            close_code::AGAIN,
            Some("too slow: reconnect and resync from history"),
        ),
        Ending::TooLarge => (close_code::SIZE, Some("frame too large")),
        Ending::TimedOut => (close_code::AWAY, Some("heartbeat timeout")),
        Ending::TokenExpired => (
            token_close::TOKEN_EXPIRED,
            Some("token expired: get a new token and reconnect"),
        ),
        Ending::SessionsEnded => (
            token_close::SESSIONS_ENDED,
            Some("sessions ended: sign in again"),
        ),
        Ending::ClientClosed => (close_code::NORMAL, None),
        Ending::ProtocolError(code) => (
            code,
            Some(if code == close_code::INVALID_PAYLOAD {
                "invalid UTF-8"
            } else {
                "protocol error"
            }),
        ),
        Ending::ClientGone | Ending::Stalled => return None,
    };
    Some(CloseFrame { code, reason })
}
