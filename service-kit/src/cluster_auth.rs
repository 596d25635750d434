//! Who may call a cluster-only route: per-service credentials.
//!
//! Every service presents its own secret (`SB_SERVICE_SECRET`) in `x-cluster-secret` and names
//! its role in `x-cluster-service`. A service that serves cluster-only routes holds only the
//! SHA-256 of each caller's secret (`SB_CALLER_KEYS`), and each route names the roles it
//! serves: a socket server's credential opens the managers' handler routes and the registry's
//! registration, and nothing else. A compromised socket server (the one part that faces the
//! internet) cannot call the membership routes; a compromised callee cannot impersonate its
//! callers, because it never held their secrets.
//!
//! Without `SB_CALLER_KEYS` the cluster runs in the *shared* mode kept for the quick start and
//! older deployments: the one `SB_CLUSTER_SECRET` is every service's credential and opens
//! every cluster-only route. The local stack, the tests and compose run per-service.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use switchboard_config::secret::Secret;
use switchboard_credentials::cluster::{constant_time_eq, ClusterCredential, ServiceRole};
use switchboard_protocol::registry::{CLUSTER_SECRET_HEADER, CLUSTER_SERVICE_HEADER};
use switchboard_protocol::ErrorCode;

use crate::http::ApiError;

/// Who is allowed in.
#[derive(Debug, Clone)]
enum Callers {
    /// One secret for every service and route.
    Shared(Secret),
    /// The SHA-256 of each role's secret.
    PerService(HashMap<ServiceRole, [u8; 32]>),
}

/// This service's credential and the credentials it accepts.
#[derive(Debug, Clone)]
pub struct ClusterAuth {
    own: Secret,
    callers: Callers,
}

impl ClusterAuth {
    /// Per-service mode when `caller_keys` (the text of `SB_CALLER_KEYS`) is `Some`, else the
    /// shared mode with `cluster_secret`.
    pub fn new(
        own: Secret,
        caller_keys: Option<&str>,
        cluster_secret: &Secret,
    ) -> Result<Self, String> {
        let callers = match caller_keys {
            None => Callers::Shared(cluster_secret.clone()),
            Some(text) => Callers::PerService(parse_caller_keys(text)?),
        };
        Ok(ClusterAuth { own, callers })
    }

    /// Whether every caller shares one secret.
    pub fn is_shared(&self) -> bool {
        matches!(self.callers, Callers::Shared(_))
    }

    /// What this service presents when it calls another as `role`.
    pub fn credential(&self, role: ServiceRole) -> ClusterCredential {
        ClusterCredential::new(role, self.own.clone())
    }

    /// Lets the request in when it carries the credential of one of `roles` (any role in the
    /// shared mode); answers which role called. 401 for a missing or wrong credential, 403
    /// for a good credential of a role this route does not serve.
    pub fn require(
        &self,
        req: &actix_web::HttpRequest,
        roles: &[ServiceRole],
    ) -> Result<Option<ServiceRole>, ApiError> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let presented = header(CLUSTER_SECRET_HEADER);
        let claimed = ServiceRole::parse(header(CLUSTER_SERVICE_HEADER));
        let unauthorized = || {
            ApiError::new(
                ErrorCode::Unauthorized,
                "this route is for cluster members: send the service's role in \
                 x-cluster-service and its secret in x-cluster-secret",
            )
        };
        match &self.callers {
            Callers::Shared(secret) => {
                if constant_time_eq(presented.as_bytes(), secret.expose().as_bytes()) {
                    Ok(claimed)
                } else {
                    Err(unauthorized())
                }
            }
            Callers::PerService(hashes) => {
                let role = claimed.ok_or_else(unauthorized)?;
                let expected = hashes.get(&role).ok_or_else(unauthorized)?;
                let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                if !constant_time_eq(&got, expected) {
                    return Err(unauthorized());
                }
                if !roles.contains(&role) {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        format!("a {role} may not call this route"),
                    ));
                }
                Ok(Some(role))
            }
        }
    }
}

/// `role=sha256hex` pairs, comma separated.
fn parse_caller_keys(text: &str) -> Result<HashMap<ServiceRole, [u8; 32]>, String> {
    let mut keys = HashMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (role, hash) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not role=sha256hex"))?;
        let role = ServiceRole::parse(role.trim()).ok_or_else(|| {
            format!(
                "`{role}` is not a service role (one of: {})",
                ServiceRole::ALL.map(ServiceRole::as_str).join(", ")
            )
        })?;
        let bytes = hex::decode(hash.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("the key of {role} is not 64 hex digits (a SHA-256)"))?;
        if keys.insert(role, bytes).is_some() {
            return Err(format!("{role} is listed twice"));
        }
    }
    if keys.is_empty() {
        return Err("lists no caller".to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use switchboard_credentials::cluster::secret_hash;

    fn per_service() -> ClusterAuth {
        let keys = format!(
            "socket-server={}, socket-manager={}",
            secret_hash("ss-secret"),
            secret_hash("sm-secret")
        );
        ClusterAuth::new(
            Secret::new("own"),
            Some(&keys),
            &Secret::new("unused-cluster"),
        )
        .unwrap()
    }

    fn request(role: &str, secret: &str) -> actix_web::HttpRequest {
        TestRequest::default()
            .insert_header((CLUSTER_SERVICE_HEADER, role))
            .insert_header((CLUSTER_SECRET_HEADER, secret))
            .to_http_request()
    }

    #[test]
    fn per_service_roles_open_only_their_routes() {
        let auth = per_service();
        let only_servers = [ServiceRole::SocketServer];
        assert_eq!(
            auth.require(&request("socket-server", "ss-secret"), &only_servers)
                .unwrap(),
            Some(ServiceRole::SocketServer)
        );
        let forbidden = auth
            .require(&request("socket-manager", "sm-secret"), &only_servers)
            .unwrap_err();
        assert_eq!(forbidden.code, ErrorCode::Forbidden);
        // Another role's secret, a made-up role, the shared secret: all 401.
        for (role, secret) in [
            ("socket-server", "sm-secret"),
            ("registry", "ss-secret"),
            ("nobody", "ss-secret"),
            ("socket-server", "unused-cluster"),
        ] {
            let refused = auth
                .require(&request(role, secret), &only_servers)
                .unwrap_err();
            assert_eq!(refused.code, ErrorCode::Unauthorized, "{role} {secret}");
        }
    }

    #[test]
    fn shared_mode_takes_the_cluster_secret_for_any_role() {
        let shared = Secret::new("cluster");
        let auth = ClusterAuth::new(shared.clone(), None, &shared).unwrap();
        assert!(auth.is_shared());
        assert!(auth
            .require(
                &request("registry", "cluster"),
                &[ServiceRole::SocketServer]
            )
            .is_ok());
        assert!(auth
            .require(&request("registry", "wrong"), &[ServiceRole::SocketServer])
            .is_err());
    }

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn caller_keys_are_checked() {
        let cluster = Secret::new("c");
        for bad in [
            "socket-server",
            "nobody=00",
            "socket-server=abc",
            "",
            &format!("registry={0},registry={0}", secret_hash("x")),
        ] {
            assert!(
                ClusterAuth::new(Secret::new("o"), Some(bad), &cluster).is_err(),
                "{bad:?}"
            );
        }
    }
}
