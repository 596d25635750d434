//! The client-facing contract of Switchboard (SPEC sections 2-4), in one place.
//!
//! - [`frames`]: the JSON objects exchanged over the WebSocket, one per text frame.
//! - [`token`]: HS256 JWTs (`sub`, `exp`, `iat`) and the user-id rule.
//! - [`registry`]: request and response bodies of the registry REST API.
//! - [`ids`]: the ids that cross services (`UserId`, `ConversationId`, `MessageId`,
//!   `ServerId`, `ClientMsgId`), each with its one parsing constructor, and
//!   `ConversationKind`.
//! - [`time`]: [`Timestamp`], RFC 3339 UTC with milliseconds, as every body carries it.
//! - [`sessions`]: the close codes that end a session for its token's sake, and the
//!   cluster-internal bodies that end every session of a user.
//! - [`server_api`]: the server API's bodies (`/server/v1`) and its cluster-internal send.
//! - [`trace_context`]: the W3C `traceparent` one send's trace travels under, across HTTP
//!   and the Kafka records.
//! - [`error_code`]: the one table of stable error codes every service uses.
//!
//! Every service and every Rust client (tests, load generator) uses these types, so a field
//! renamed here is renamed everywhere at once.

pub mod conversations;
pub mod error_code;
pub mod frames;
pub mod ids;
pub mod internal;
pub mod registry;
pub mod server_api;
pub mod sessions;
pub mod time;
pub mod token;
pub mod trace_context;
pub mod webhooks;

pub use error_code::ErrorCode;
pub use ids::{
    ClientMsgId, ConversationId, ConversationKind, IdError, MessageId, ServerId, UserId,
};
pub use time::Timestamp;
