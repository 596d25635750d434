//! The service kit: everything each Switchboard service needs and none should write twice.
//!
//! - [`config`]: the settings every service shares ([`config::CommonConfig`]), read from
//!   environment variables with working local defaults. The variables' names and tables, the
//!   readers and `ConfigError` are `switchboard-config`'s.
//! - [`redis`]: the `/ready` check and the memory gauges of the Redis handle (`switchboard-redis`:
//!   the master found through Sentinel by name, re-resolved whenever the connection breaks).
//! - [`telemetry`]: `tracing` subscriber setup (pretty or JSON lines).
//! - [`http`]: [`http::ApiError`], the one JSON error body, and the JSON extractor configs.
//! - [`ops`]: `/live`, `/ready` (readiness reflects dependencies) and `/metrics`, plus the HTTP
//!   latency middleware.
//! - [`api_keys`]: checking app backends' API keys (`Authorization: Bearer sbk_...`) on the
//!   server API: the configured table, rotation, a per-key rate (the entries, scopes and
//!   minting are `switchboard-credentials`').
//! - [`cluster_auth`]: checking a caller's cluster credential on a cluster-only route (the
//!   credential itself is `switchboard-credentials`').
//! - [`shutdown`]: one cancellation token that every task of a service watches.
//! - [`tls`]: PostgreSQL's TLS settings (`sslmode`, CA file) applied to a database URL.

pub mod api_keys;
pub mod cluster_auth;
pub mod config;
pub mod http;
pub mod internal;
pub mod jwks;
pub mod latch;
pub mod limits;
pub mod ops;
pub mod redis;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod tls;
