//! Bodies of the registry REST API (SPEC section 3), and the OpenAPI description of its
//! public routes ([`public_openapi`]), which the message service merges into the document it
//! serves at `GET /api/v1/openapi.json`.

use serde::{Deserialize, Serialize};

use crate::{ServerId, UserId};

/// `GET /api/v1/socket-server`: the server a client should connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    #[schema(value_type = String)]
    pub server_id: ServerId,
    pub url: String,
    pub connections: u64,
    pub max_connections: u64,
}

/// One row of `GET /api/v1/socket-servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    #[schema(value_type = String)]
    pub server_id: ServerId,
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

/// `POST /api/v1/socket-servers`: a socket server announces itself. `server_id` is checked
/// against [`ServerId`]'s rule as the body is read (a bad one is a 400 naming the rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    #[schema(value_type = String)]
    pub server_id: ServerId,
    pub url: String,
    pub health_url: String,
    pub max_connections: u64,
}

/// `POST /api/v1/dev/token` request; the id is checked as the body is read (400 naming the
/// rule for a bad one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevTokenRequest {
    #[schema(value_type = String)]
    pub user_id: UserId,
}

/// `POST /api/v1/dev/token` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevTokenResponse {
    pub token: String,
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub expires_at: String,
}

/// The header cluster-only routes require, holding the calling service's secret (or, in the
/// shared mode, the one cluster secret).
pub const CLUSTER_SECRET_HEADER: &str = "x-cluster-secret";

/// The header naming the calling service's role (`socket-server`, `socket-manager`, ...), whose
/// secret `x-cluster-secret` holds.
pub const CLUSTER_SERVICE_HEADER: &str = "x-cluster-service";

/// The OpenAPI description of the registry's public routes: `GET /api/v1/socket-server`,
/// `GET /api/v1/socket-servers` and `POST /api/v1/dev/token` (registration and the tunnel
/// check are cluster-only and not listed). The registry's handlers implement exactly these.
pub fn public_openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    openapi::PublicApi::openapi()
}

/// Route descriptions only: each function stands for a registry handler (same name, so the
/// same `operationId`) and is never called.
#[allow(dead_code)]
mod openapi {
    use super::{Assignment, DevTokenRequest, DevTokenResponse, ServerList};
    use crate::error_code::ErrorBody;

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(assign, list, dev_token))]
    pub(super) struct PublicApi;

    /// The least-loaded socket server, with a slot reserved for a few seconds.
    #[utoipa::path(
        get,
        path = "/api/v1/socket-server",
        tag = "registry",
        responses(
            (status = 200, description = "the server to connect to", body = Assignment),
            (status = 429, description = "too many assignments from this address (`rate_limited`)", body = ErrorBody),
            (status = 503, description = "no server has room (`no_capacity`) or Redis is down", body = ErrorBody),
        )
    )]
    fn assign() {}

    /// Every registered socket server with its load.
    #[utoipa::path(
        get,
        path = "/api/v1/socket-servers",
        tag = "registry",
        responses(
            (status = 200, description = "the registered servers", body = ServerList),
            (status = 503, description = "Redis is down", body = ErrorBody),
        )
    )]
    fn list() {}

    /// Dev mode only: mints a token for any user id.
    #[utoipa::path(
        post,
        path = "/api/v1/dev/token",
        tag = "registry",
        request_body = DevTokenRequest,
        responses(
            (status = 200, description = "a token", body = DevTokenResponse),
            (status = 400, description = "not a valid user id, or not JSON", body = ErrorBody),
            (status = 404, description = "dev mode is off (`dev_mode_disabled`)", body = ErrorBody),
        )
    )]
    fn dev_token() {}
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::HttpMethod;

    /// A route, its method, and its documented statuses, each with its body schema.
    type Route = (
        &'static str,
        HttpMethod,
        &'static [(&'static str, &'static str)],
    );

    /// Each public route of the registry.
    const ROUTES: [Route; 3] = [
        (
            "/api/v1/socket-server",
            HttpMethod::Get,
            &[
                ("200", "Assignment"),
                ("429", "ErrorBody"),
                ("503", "ErrorBody"),
            ],
        ),
        (
            "/api/v1/socket-servers",
            HttpMethod::Get,
            &[("200", "ServerList"), ("503", "ErrorBody")],
        ),
        (
            "/api/v1/dev/token",
            HttpMethod::Post,
            &[
                ("200", "DevTokenResponse"),
                ("400", "ErrorBody"),
                ("404", "ErrorBody"),
            ],
        ),
    ];

    #[test]
    fn the_description_lists_each_public_route_with_its_responses() {
        let doc = super::public_openapi();
        let json = serde_json::to_value(&doc).unwrap();
        let mut paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/api/v1/dev/token",
                "/api/v1/socket-server",
                "/api/v1/socket-servers"
            ]
        );
        for (path, method, responses) in ROUTES {
            let item = &doc.paths.paths[path];
            let method_name = serde_json::to_value(&method).unwrap();
            let method_name = method_name.as_str().unwrap();
            let operations = json["paths"][path].as_object().unwrap();
            assert_eq!(
                operations.keys().collect::<Vec<_>>(),
                [method_name],
                "{path}: exactly one method"
            );
            let op = match method {
                HttpMethod::Get => item.get.as_ref(),
                HttpMethod::Post => item.post.as_ref(),
                _ => None,
            }
            .unwrap_or_else(|| panic!("{path}: no {method_name} operation"));
            assert_eq!(op.tags.as_deref(), Some(&["registry".to_string()][..]));
            let op_json = &operations[method_name];
            let statuses: Vec<&str> = op_json["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let wanted: Vec<&str> = responses.iter().map(|(status, _)| *status).collect();
            assert_eq!(statuses, wanted, "{path}: documented statuses");
            for (status, schema) in responses {
                let response = &op_json["responses"][status];
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{path} {status}: a description"
                );
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    format!("#/components/schemas/{schema}"),
                    "{path} {status}: body"
                );
            }
        }
        let dev_token = &json["paths"]["/api/v1/dev/token"]["post"]["requestBody"];
        assert_eq!(dev_token["required"], true);
        assert_eq!(
            dev_token["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/DevTokenRequest"
        );
        let schemas = json["components"]["schemas"].as_object().unwrap();
        for schema in [
            "Assignment",
            "ServerList",
            "ServerInfo",
            "DevTokenRequest",
            "DevTokenResponse",
            "ErrorBody",
            "ErrorDetail",
            "ErrorCode",
        ] {
            assert!(schemas.contains_key(schema), "schema {schema} is described");
        }
    }
}
