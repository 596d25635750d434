//! The webhook dispatcher's endpoint API (`/server/v1/webhooks`, docs/webhooks.md): its wire
//! types and its OpenAPI description.
//!
//! The dispatcher serves these routes and the message service publishes the one OpenAPI
//! document of the REST API (`/api/v1/openapi.json`); services may not depend on each other
//! (scripts/check-crate-graph.sh), so the description lives here, beside the types both use.
//! The dispatcher's handlers take and answer exactly these types, and its tests check that
//! every route described here is one it serves.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The endpoint API's path prefix (nginx routes it to the dispatcher).
pub const WEBHOOKS_PATH: &str = "/server/v1/webhooks";

/// `POST /server/v1/webhooks`: an endpoint to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookEndpoint {
    /// Where deliveries are posted: `https://` (or `http://`), at most 2048 bytes, no
    /// loopback, link-local or private destination unless the operator allow-listed it
    /// (`SB_WEBHOOK_ALLOW_NETS`).
    pub url: String,
    /// At least one of `message.created`, `receipt.updated`, `member.added`,
    /// `member.removed`, `conversation.created`, `presence.changed`.
    pub event_types: Vec<String>,
}

/// An endpoint as the API shows it (never its secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    /// `ep_<ulid>`.
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Disabled endpoints get no deliveries (410 Gone, or a long failure streak);
    /// `POST .../enable` turns one on again.
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub disabled_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Failed attempts in a row (0 after a success).
    pub consecutive_failures: i32,
    /// Deliveries waiting (recorded, not yet delivered or dead-lettered).
    pub pending: i64,
}

/// `201` of `POST /server/v1/webhooks`: the endpoint and its signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookEndpointCreated {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_<base64>`: verifies `webhook-signature` (Standard Webhooks).
    pub secret: String,
}

/// `GET /server/v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookEndpointList {
    pub endpoints: Vec<WebhookEndpoint>,
}

/// `POST /server/v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotatedWebhookSecret {
    pub id: String,
    /// The new secret: it signs from now on.
    pub secret: String,
    /// How long the previous secrets keep signing beside it (`SB_WEBHOOK_SECRET_OVERLAP_SECS`).
    pub previous_secrets_sign_for_secs: u64,
}

/// The OpenAPI description of the endpoint API, merged into the message service's document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    openapi::WebhooksApi::openapi()
}

/// Route descriptions only: each function stands for the dispatcher's handler of the same
/// name (webhook-dispatcher/src/routes.rs) and is never called.
#[allow(dead_code)]
mod openapi {
    use super::{
        NewWebhookEndpoint, RotatedWebhookSecret, WebhookEndpoint, WebhookEndpointCreated,
        WebhookEndpointList,
    };
    use crate::error_code::ErrorBody;

    #[derive(utoipa::OpenApi)]
    #[openapi(
        paths(create, list, get_one, delete, rotate, enable),
        components(schemas(
            NewWebhookEndpoint,
            WebhookEndpoint,
            WebhookEndpointCreated,
            WebhookEndpointList,
            RotatedWebhookSecret
        ))
    )]
    pub(super) struct WebhooksApi;

    /// Registers an endpoint; its signing secret is in the answer, once.
    #[utoipa::path(
        post, path = "/server/v1/webhooks", tag = "webhooks",
        request_body = NewWebhookEndpoint,
        responses(
            (status = 201, description = "the endpoint and its secret", body = WebhookEndpointCreated),
            (status = 400, description = "a bad URL (or one the SSRF guard refuses), an unknown or no event type, or not JSON", body = ErrorBody),
            (status = 401, description = "no valid API key", body = ErrorBody),
            (status = 403, description = "the key lacks `webhooks:manage`, or the endpoint limit is reached", body = ErrorBody),
            (status = 503, description = "the webhook store is unavailable", body = ErrorBody),
        ),
        security(("api_key" = []))
    )]
    fn create() {}

    /// Every registered endpoint.
    #[utoipa::path(
        get, path = "/server/v1/webhooks", tag = "webhooks",
        responses(
            (status = 200, description = "the endpoints", body = WebhookEndpointList),
            (status = 401, description = "no valid API key", body = ErrorBody),
            (status = 403, description = "the key lacks `webhooks:manage`", body = ErrorBody),
            (status = 503, description = "the webhook store is unavailable", body = ErrorBody),
        ),
        security(("api_key" = []))
    )]
    fn list() {}

    /// One endpoint.
    #[utoipa::path(
        get, path = "/server/v1/webhooks/{id}", tag = "webhooks",
        params(("id" = String, Path, description = "endpoint id (`ep_...`)")),
        responses(
            (status = 200, description = "the endpoint", body = WebhookEndpoint),
            (status = 401, description = "no valid API key", body = ErrorBody),
            (status = 403, description = "the key lacks `webhooks:manage`", body = ErrorBody),
            (status = 404, description = "no such endpoint", body = ErrorBody),
            (status = 503, description = "the webhook store is unavailable", body = ErrorBody),
        ),
        security(("api_key" = []))
    )]
    fn get_one() {}

    /// Removes an endpoint and its waiting deliveries.
    #[utoipa::path(
        delete, path = "/server/v1/webhooks/{id}", tag = "webhooks",
        params(("id" = String, Path, description = "endpoint id (`ep_...`)")),
        responses(
            (status = 204, description = "removed"),
            (status = 401, description = "no valid API key", body = ErrorBody),
            (status = 403, description = "the key lacks `webhooks:manage`", body = ErrorBody),
            (status = 404, description = "no such endpoint", body = ErrorBody),
            (status = 503, description = "the webhook store is unavailable", body = ErrorBody),
        ),
        security(("api_key" = []))
    )]
    fn delete() {}

    /// A new signing secret; the previous ones keep signing for the overlap.
    #[utoipa::path(
        post, path = "/server/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
        params(("id" = String, Path, description = "endpoint id (`ep_...`)")),
        responses(
            (status = 200, description = "the new secret", body = RotatedWebhookSecret),
            (status = 401, description = "no valid API key", body = ErrorBody),
            (status = 403, description = "the key lacks `webhooks:manage`", body = ErrorBody),
            (status = 404, description = "no such endpoint", body = ErrorBody),
            (status = 503, description = "the webhook store is unavailable", body = ErrorBody),
        ),
        security(("api_key" = []))
    )]
    fn rotate() {}

    /// Enables an endpoint again after a 410 or a failure streak disabled it.
    #[utoipa::path(
        post, path = "/server/v1/webhooks/{id}/enable", tag = "webhooks",
        params(("id" = String, Path, description = "endpoint id (`ep_...`)")),
        responses(
            (status = 200, description = "the endpoint, enabled", body = WebhookEndpoint),
            (status = 401, description = "no valid API key", body = ErrorBody),
            (status = 403, description = "the key lacks `webhooks:manage`", body = ErrorBody),
            (status = 404, description = "no such endpoint", body = ErrorBody),
            (status = 503, description = "the webhook store is unavailable", body = ErrorBody),
        ),
        security(("api_key" = []))
    )]
    fn enable() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_lists_the_six_routes_under_the_prefix() {
        let doc = openapi();
        let mut routes: Vec<String> = Vec::new();
        for (path, item) in &doc.paths.paths {
            assert!(path.starts_with(WEBHOOKS_PATH), "{path}");
            let value = serde_json::to_value(item).unwrap();
            for method in value.as_object().unwrap().keys() {
                routes.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        routes.sort();
        assert_eq!(
            routes,
            [
                "DELETE /server/v1/webhooks/{id}",
                "GET /server/v1/webhooks",
                "GET /server/v1/webhooks/{id}",
                "POST /server/v1/webhooks",
                "POST /server/v1/webhooks/{id}/enable",
                "POST /server/v1/webhooks/{id}/rotate-secret",
            ]
        );
    }

    #[test]
    fn a_created_endpoint_is_flat_with_its_secret() {
        let created = WebhookEndpointCreated {
            endpoint: WebhookEndpoint {
                id: "ep_1".into(),
                url: "https://example.com/hook".into(),
                event_types: vec!["message.created".into()],
                created_at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
                disabled: false,
                disabled_at: None,
                disabled_reason: None,
                consecutive_failures: 0,
                pending: 0,
            },
            secret: "whsec_AAAA".into(),
        };
        let json = serde_json::to_value(&created).unwrap();
        assert_eq!(json["id"], "ep_1");
        assert_eq!(json["secret"], "whsec_AAAA");
        assert!(json.get("disabled_at").is_none());
        let back: WebhookEndpointCreated = serde_json::from_value(json).unwrap();
        assert_eq!(back, created);
    }

    #[test]
    fn unknown_fields_of_a_new_endpoint_are_refused() {
        let e = serde_json::from_str::<NewWebhookEndpoint>(
            r#"{"url":"https://x.example","event_types":[],"secret":"mine"}"#,
        );
        assert!(e.is_err());
    }
}
