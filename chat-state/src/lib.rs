//! The chat's shared state in Redis. Each module owns one key family (its key names under
//! the deployment's prefix `SB_REDIS_PREFIX`, default `sb:`, and the Lua scripts that change
//! it); other crates call these APIs and never build these keys themselves.
//!
//! - [`presence`]: which socket server holds which users' devices, the servers'
//!   liveness, the janitor role, and `last_seen`. Written by the socket managers, read by
//!   the managers (routing) and the message service (`GET /api/v1/presence`).
//! - [`membership`]: each conversation's members mirrored from PostgreSQL, versioned so a
//!   stale refill cannot undo a removal. Written by the message service, read by the
//!   managers.
//! - [`sessions`]: the moment each user's sessions were ended (logout everywhere, a ban):
//!   written by the socket managers, read by the socket servers, which refuse tokens issued
//!   before it.
//!
//! - [`sequence`]: each conversation's sequence lease, counter, counter epoch, pending numbers
//!   and idempotency records. Written and read by the socket managers' sequencer, whose
//!   scripts get these keys from here.
//!
//! The server directory (`servers`, `server:{id}`, `reserved:{id}`) has its own owner,
//! `switchboard-server-directory`.

pub mod membership;
pub mod presence;
pub mod sequence;
pub mod sessions;
