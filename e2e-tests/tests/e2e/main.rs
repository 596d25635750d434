//! End-to-end tests, compiled into one binary. Every test starts its own stack of real
//! processes (Redis master + 2 replicas + 3 Sentinels, nginx, registries, socket servers,
//! health checkers) on free loopback ports through `switchboard-test-support`, and talks to it
//! exactly as a client would: REST through nginx, WebSocket straight to the socket server.
//!
//! - `client`: a small WebSocket client and REST helpers shared by the tests.
//! - `abuse`: per-address rate limits and reservation caps, per-user device caps.
//! - `registry`: assignment, balance under bursts, capacity, protected routes, dev tokens.
//! - `socket`: authentication before the upgrade, frames, heartbeat, exact scores.
//! - `faults`: kill -9 of a socket server, SIGTERM ordering, Redis master failover.
//! - `membership`: an evicted server's entry, link and routes go together; a paused one
//!   comes back with them.
//! - `chat`, `chat_faults`, `signals`: the chat path, with and without faults; receipts,
//!   presence and typing.
//! - `nemesis`: the promise (stored once under its `seq`, in order, never lost) under one
//!   fault per test, checked against the whole history.
//! - `openapi`: the REST API's OpenAPI document, and schemathesis against every route.
//! - `tracing`: one message followed through the JSON logs of every process it crosses.
//! - `server_api`: the server API for app backends (API keys, bot posts through the sequencer,
//!   idempotent replays across a manager's kill -9).
//! - `quotas`: per-user quotas shared by the managers, and Redis memory per active user.
//! - `browser`, `compose`: the demo page in headless Chromium; docker-compose.yml.
//! - `store_cors`: the object store's bucket lets the page's origin (and no other) upload.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod abuse;
mod attachments;
mod browser;
mod chat;
mod chat_faults;
mod client;
mod compose;
mod consent;
mod events;
mod eviction;
mod faults;
mod hostile;
mod least_privilege;
mod membership;
mod nemesis;
mod observability;
mod openapi;
mod poison;
mod protocol_client;
mod quotas;
mod registry;
mod server_api;
mod signals;
mod socket;
mod store_cors;
mod tracing;
