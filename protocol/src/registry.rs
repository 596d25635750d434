//! Bodies of the registry REST API (SPEC section 3).

use serde::{Deserialize, Serialize};

/// `GET /api/v1/socket-server`: the server a client should connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub server_id: String,
    pub url: String,
    pub connections: u64,
    pub max_connections: u64,
}

/// One row of `GET /api/v1/socket-servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    pub server_id: String,
    pub url: String,
    pub connections: u64,
    pub max_connections: u64,
    /// RFC 3339 UTC, or null when the server never heartbeated.
    pub last_heartbeat: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerInfo>,
}

/// `POST /api/v1/socket-servers`: a socket server announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    pub server_id: String,
    pub url: String,
    pub health_url: String,
    pub max_connections: u64,
}

/// `POST /api/v1/dev/token` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevTokenRequest {
    pub user_id: String,
}

/// `POST /api/v1/dev/token` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevTokenResponse {
    pub token: String,
    pub user_id: String,
    pub expires_at: String,
}

/// The header cluster-only routes require, holding the shared cluster secret.
pub const CLUSTER_SECRET_HEADER: &str = "x-cluster-secret";
