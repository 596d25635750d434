//! Test and dev-stack support for Switchboard: starts **real** processes (Redis master,
//! replicas and Sentinels; nginx; the `registry`, `socket-server` and `health-checker`
//! binaries) on 127.0.0.1, waits until they are ready, and stops them again.
//!
//! Every child is started with `PR_SET_PDEATHSIG(SIGKILL)` (see [`process`]), so nothing
//! outlives the harness, not even when the test binary itself is SIGKILLed.
//!
//! Entry points: [`Stack::start`] for the whole system, or the parts on their own:
//! [`RedisSentinelCluster`], [`Nginx`], [`ManagedProcess`].

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod broker;
pub mod compose_acl;
pub mod credentials;
pub mod http;
pub mod netcut;
pub mod nginx;
pub mod no_websocket;
pub mod object_store;
pub mod paths;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis_cluster;
pub mod shared;
pub mod stack;
pub mod tls;

pub use broker::Broker;
pub use http::wait_http_ok;
pub use netcut::NetCut;
pub use nginx::Nginx;
pub use paths::{bin_path, repo_root};
pub use ports::free_port;
pub use postgres::Postgres;
pub use process::{ManagedProcess, RunAs};
pub use redis_cluster::{RedisPorts, RedisSentinelCluster, MASTER_NAME};
pub use stack::{FixedPorts, Service, SocketServer, Stack, StackOptions};
pub use switchboard_credentials::cluster::ServiceRole;
