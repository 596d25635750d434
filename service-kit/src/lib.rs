//! The service kit: everything each Switchboard service needs and none should write twice.
//!
//! - [`config`]: typed configuration from environment variables with working local defaults.
//! - [`lookup`]: reading one variable (from the environment or a test's map) and the
//!   [`lookup::ConfigError`] that names a bad one; [`config`] re-exports it.
//! - [`env`]: the variables as data ([`env::EnvVar`]), one table per service, for `--help`, the
//!   docs and the tests that keep them in step.
//! - [`cli`]: `--help` / `--version` and argument errors, the same for every binary.
//! - [`redis_sentinel`]: a Redis handle that finds the master through Sentinel by name and
//!   re-resolves it whenever the connection breaks (failover without restarts).
//! - [`telemetry`]: `tracing` subscriber setup (pretty or JSON lines).
//! - [`http`]: [`http::ApiError`], the one JSON error body, and the JSON extractor configs.
//! - [`ops`]: `/live`, `/ready` (readiness reflects dependencies) and `/metrics`, plus the HTTP
//!   latency middleware.
//! - [`api_keys`]: API keys of app backends (`Authorization: Bearer sbk_...`) for the server
//!   API: scopes, rotation, a per-key rate.
//! - [`shutdown`]: one cancellation token that every task of a service watches.
//! - [`tls`]: CA files and error messages for TLS to Redis, Kafka and PostgreSQL, and
//!   PostgreSQL's `sslmode`.

pub mod api_keys;
pub mod cli;
pub mod cluster_auth;
pub mod config;
pub mod env;
pub mod http;
pub mod internal;
pub mod jwks;
pub mod latch;
pub mod limits;
pub mod lookup;
pub mod ops;
pub mod redis_sentinel;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod tls;
