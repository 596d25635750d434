//! A service's credential on cluster-only calls, as it presents it: its role
//! ([`ServiceRole`], sent in `x-cluster-service`) and its own secret (`x-cluster-secret`),
//! together a [`ClusterCredential`]; and [`secret_hash`], the form in which a callee lists a
//! caller's secret (`SB_CALLER_KEYS`). Checking a credential on a route is the service kit's
//! (`cluster_auth::ClusterAuth`, with the web stack).

use std::fmt;

use sha2::{Digest, Sha256};
use switchboard_config::secret::Secret;
use switchboard_protocol::registry::{CLUSTER_SECRET_HEADER, CLUSTER_SERVICE_HEADER};

/// The services that call each other's cluster-only routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceRole {
    SocketServer,
    SocketManager,
    MessageService,
    Registry,
    HealthChecker,
    WebhookDispatcher,
}

impl ServiceRole {
    pub const ALL: [ServiceRole; 6] = [
        ServiceRole::SocketServer,
        ServiceRole::SocketManager,
        ServiceRole::MessageService,
        ServiceRole::Registry,
        ServiceRole::HealthChecker,
        ServiceRole::WebhookDispatcher,
    ];

    /// The role's name in `x-cluster-service` and `SB_CALLER_KEYS`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceRole::SocketServer => "socket-server",
            ServiceRole::SocketManager => "socket-manager",
            ServiceRole::MessageService => "message-service",
            ServiceRole::Registry => "registry",
            ServiceRole::HealthChecker => "health-checker",
            ServiceRole::WebhookDispatcher => "webhook-dispatcher",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

impl fmt::Display for ServiceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of `secret`, in lowercase hex: what `SB_CALLER_KEYS` lists.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What a service sends on its cluster-only calls.
#[derive(Debug, Clone)]
pub struct ClusterCredential {
    role: ServiceRole,
    secret: Secret,
}

impl ClusterCredential {
    pub fn new(role: ServiceRole, secret: Secret) -> Self {
        ClusterCredential { role, secret }
    }

    /// `request` with the two headers.
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .header(CLUSTER_SERVICE_HEADER, self.role.as_str())
            .header(CLUSTER_SECRET_HEADER, self.secret.expose())
    }

    /// The two headers as pairs, for clients other than reqwest.
    pub fn headers(&self) -> [(&'static str, &str); 2] {
        [
            (CLUSTER_SERVICE_HEADER, self.role.as_str()),
            (CLUSTER_SECRET_HEADER, self.secret.expose()),
        ]
    }
}

/// Equality that takes the same time wherever the first difference is (secrets, hashes).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
