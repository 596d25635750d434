//! The socket server's edge parsers, with no I/O: every byte a client sends before and after
//! the upgrade goes through this crate first, so it is the part that must never panic, never
//! hold more than its limits, and follow RFC 6455 exactly. Being I/O-free, it is driven by
//! unit tests, by the fuzz targets in `fuzz/` (`ws_frames`, `http_head`) and by the
//! conformance cases in `tests/conformance.rs` (a port of the Autobahn test suite's framing,
//! fragmentation, UTF-8 and close cases), all without a socket.
//!
//! - [`head`]: the HTTP/1.x request head (`parse_head`), bounded in headers.
//! - [`handshake`]: the opening handshake's checks and `101` answer.
//! - [`frame`]: a [`frame::Decoder`] that turns bytes into whole [`frame::Message`]s
//!   (fragments reassembled, UTF-8 checked, sizes checked from the header) and the encoders of
//!   the server's unmasked frames.
//!
//! The socket server (`socket-server/src/websocket.rs`, `listener.rs`) owns the sockets and
//! feeds them through these.

pub mod frame;
pub mod handshake;
pub mod head;

pub use frame::{DecodeError, Decoder, Message};
pub use handshake::{check_upgrade, switching_protocols, HandshakeError};
pub use head::{parse_head, HeadError, RequestHead};
