//! A typed Switchboard client, shared by the e2e tests and loadgen.
//!
//! - [`Api`]: REST through the front door (nginx): the registry (`assign`, dev tokens) and
//!   the message service (conversations, members, history, presence). Answers are the
//!   `switchboard_protocol` types; a refusal is an [`Error::Api`] carrying the stable
//!   [`ErrorCode`](switchboard_protocol::ErrorCode) of the `{"error":{...}}` body.
//! - [`Connection`]: one WebSocket, opened with a token and ready once `hello` arrived. It
//!   sends [`ClientFrame`](switchboard_protocol::frames::ClientFrame)s and receives
//!   [`ServerFrame`](switchboard_protocol::frames::ServerFrame)s, with the helpers tests need
//!   (`recv_until`, `collect_until`, `expect_sent`, `ping`).
//! - [`Connection::split`]: a [`FrameSender`] and a [`FrameReceiver`] for load generation;
//!   the receiver can run in its own task and hand every frame to a callback
//!   ([`FrameReceiver::spawn`]), and [`FrameSender::send_message`] serializes a `send` frame
//!   straight from borrowed strings.
//! - [`urls`]: the pure URL building every call goes through.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod error;
mod rest;
pub mod urls;
mod ws;

pub use error::{parse_error_body, Error, Result};
pub use rest::{mint_token, Api};
pub use ws::{Connection, FrameReceiver, FrameSender, Sent, HELLO_WAIT};

pub use switchboard_protocol as protocol;
