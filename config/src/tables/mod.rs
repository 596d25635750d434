//! Each part's table of the variables it reads ([`EnvTable`]: name, default, meaning), one
//! module per owner. The owning crate parses them (its `from_lookup`) and lists its tables for
//! `--help` (its `HELP_TABLES`); its tests check them against `docs/configuration.md` and
//! against the defaults the parsing really uses ([`crate::env::check_defaults`]).

use crate::env::EnvTable;

pub mod api_keys;
pub mod attachments;
pub mod common;
pub mod events;
pub mod health_checker;
pub mod kafka;
pub mod logging;
pub mod message_service;
pub mod mint_token;
pub mod postgres;
pub mod push;
pub mod push_gateway_sink;
pub mod redis;
pub mod registry;
pub mod socket_manager;
pub mod socket_server;
pub mod webhook_dispatcher;

/// The variables every service reads, by group (common, Redis, logging), for `--help` and the
/// docs.
pub const COMMON: &[EnvTable] = &[common::TABLE, redis::TABLE, logging::TABLE];
