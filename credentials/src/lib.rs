//! The credentials Switchboard's processes present and configure, free of the web stack, so a
//! client of the services (the test harness, a tool) can hold them without actix-web:
//!
//! - [`cluster`]: a service's role and secret on cluster-only calls ([`cluster::ClusterCredential`]).
//! - [`api_keys`]: app backends' API keys as configured ([`api_keys::KeyEntry`], scopes) and
//!   minted ([`api_keys::mint`]).
//!
//! Checking them on a route (`ClusterAuth`, `ApiKeys`) stays in the service kit.

pub mod api_keys;
pub mod cluster;
