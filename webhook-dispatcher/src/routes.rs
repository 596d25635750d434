//! The endpoint API, under the server API's prefix (nginx routes `/server/v1/webhooks` here).
//! Every route takes an API key with the `webhooks:manage` scope
//! (`Authorization: Bearer sbk_...`).
//!
//! - `POST /server/v1/webhooks` `{url, event_types[]}` → 201 the endpoint and its `secret`
//!   (shown this once).
//! - `GET /server/v1/webhooks` → `{endpoints: [...]}`; `GET /server/v1/webhooks/{id}`.
//! - `DELETE /server/v1/webhooks/{id}` → 204 (its waiting deliveries go with it).
//! - `POST /server/v1/webhooks/{id}/rotate-secret` → `{secret}`: the new secret signs from now
//!   on; the previous ones keep signing for `SB_WEBHOOK_SECRET_OVERLAP_SECS`.
//! - `POST /server/v1/webhooks/{id}/enable` → the endpoint, enabled again after a 410 or a
//!   failure streak disabled it.
//!
//! The wire types and the OpenAPI description are `switchboard_protocol::webhooks`'s (the
//! message service publishes the description in `/api/v1/openapi.json`); a test below checks
//! that every route described there is served here.

use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_credentials::api_keys::Scope;
use switchboard_protocol::time::Timestamp;
use switchboard_protocol::webhooks::{
    NewWebhookEndpoint, RotatedWebhookSecret, WebhookEndpoint, WebhookEndpointCreated,
    WebhookEndpointList, WEBHOOKS_PATH,
};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;

use crate::events::EVENT_TYPES;
use crate::signing;
use crate::ssrf;
use crate::state::ApiState;
use crate::store::Endpoint;

/// The longest URL an endpoint may have.
const MAX_URL_LEN: usize = 2048;

/// The endpoint as the API shows it.
fn wire(e: Endpoint) -> WebhookEndpoint {
    WebhookEndpoint {
        id: e.id,
        url: e.url,
        event_types: e.event_types,
        created_at: Timestamp::from_datetime(e.created_at),
        disabled: e.disabled,
        disabled_at: e.disabled_at.map(Timestamp::from_datetime),
        disabled_reason: e.disabled_reason,
        consecutive_failures: e.consecutive_failures,
        pending: e.pending,
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope(WEBHOOKS_PATH)
            .route("", web::post().to(create))
            .route("", web::get().to(list))
            .route("/{id}", web::get().to(get_one))
            .route("/{id}", web::delete().to(delete))
            .route("/{id}/rotate-secret", web::post().to(rotate))
            .route("/{id}/enable", web::post().to(enable)),
    );
}

fn authorize(state: &ApiState, req: &HttpRequest) -> Result<(), actix_web::Error> {
    state
        .keys
        .authorize(req, Scope::WebhooksManage)
        .map(|_| ())
        .map_err(actix_web::Error::from)
}

fn db(e: sqlx::Error) -> actix_web::Error {
    tracing::warn!(error = %e, "webhook store failed");
    ApiError::unavailable("the webhook store is unavailable, retry shortly").into()
}

fn not_found() -> actix_web::Error {
    ApiError::new(ErrorCode::NotFound, "no such webhook endpoint").into()
}

async fn create(
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<NewWebhookEndpoint>,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    let NewWebhookEndpoint { url, event_types } = body.into_inner();
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::bad_request(format!(
            "a webhook URL has at most {MAX_URL_LEN} bytes"
        ))
        .into());
    }
    let mut types: Vec<String> = Vec::new();
    for t in event_types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown event type {t:?}; one of {}",
                EVENT_TYPES.join(", ")
            ))
            .into());
        }
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.is_empty() {
        return Err(ApiError::bad_request("event_types names at least one event type").into());
    }
    let parsed = ssrf::check_url(&url, &state.allow)
        .await
        .map_err(|why| ApiError::bad_request(format!("refused webhook URL: {why}")))?;
    if state.store.count_endpoints().await.map_err(db)? >= state.max_endpoints {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "at most {} webhook endpoints may be registered (SB_WEBHOOK_MAX_ENDPOINTS)",
                state.max_endpoints
            ),
        )
        .into());
    }
    let id = format!("ep_{}", ulid::Ulid::new());
    let secret = signing::new_secret();
    state
        .store
        .create_endpoint(&id, parsed.as_str(), &types, &secret)
        .await
        .map_err(db)?;
    state.wake.notify_waiters();
    let endpoint = state
        .store
        .endpoint(&id)
        .await
        .map_err(db)?
        .ok_or_else(not_found)?;
    tracing::info!(endpoint = %id, url = %parsed, "webhook endpoint registered");
    Ok(HttpResponse::Created().json(WebhookEndpointCreated {
        endpoint: wire(endpoint),
        secret,
    }))
}

async fn list(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    let endpoints = state.store.endpoints().await.map_err(db)?;
    Ok(HttpResponse::Ok().json(WebhookEndpointList {
        endpoints: endpoints.into_iter().map(wire).collect(),
    }))
}

async fn get_one(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    let endpoint = state
        .store
        .endpoint(&id)
        .await
        .map_err(db)?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(wire(endpoint)))
}

async fn delete(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    if !state.store.delete_endpoint(&id).await.map_err(db)? {
        return Err(not_found());
    }
    tracing::info!(endpoint = %id, "webhook endpoint deleted");
    Ok(HttpResponse::NoContent().finish())
}

async fn rotate(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    let secret = signing::new_secret();
    if !state
        .store
        .rotate_secret(&id, &secret, state.secret_overlap)
        .await
        .map_err(db)?
    {
        return Err(not_found());
    }
    Ok(HttpResponse::Ok().json(RotatedWebhookSecret {
        id: id.into_inner(),
        secret,
        previous_secrets_sign_for_secs: state.secret_overlap.as_secs(),
    }))
}

async fn enable(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    if !state.store.enable(&id).await.map_err(db)? {
        return Err(not_found());
    }
    state.wake.notify_waiters();
    let endpoint = state
        .store
        .endpoint(&id)
        .await
        .map_err(db)?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(wire(endpoint)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::{test, App};
    use switchboard_service_kit::api_keys::ApiKeys;
    use tokio::sync::Notify;

    use super::*;
    use crate::ssrf::AllowNets;
    use crate::store::Store;

    /// Every route of the published description (`switchboard_protocol::webhooks::openapi`)
    /// is one this service serves: without a key each answers 401, never 404 or 405.
    #[actix_web::test]
    async fn every_described_route_is_served() {
        let state = web::Data::new(ApiState {
            store: Store::lazy("postgres://nobody@127.0.0.1:1/none"),
            keys: ApiKeys::none(),
            allow: AllowNets::default(),
            max_endpoints: 1,
            secret_overlap: std::time::Duration::from_secs(1),
            wake: Arc::new(Notify::new()),
        });
        let app = test::init_service(App::new().app_data(state).configure(configure)).await;
        let doc = serde_json::to_value(switchboard_protocol::webhooks::openapi()).unwrap();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let uri = path.replace("{id}", "ep_01ABC");
                let req = test::TestRequest::default()
                    .method(method.to_uppercase().parse().unwrap())
                    .uri(&uri)
                    .set_json(serde_json::json!({
                        "url": "https://example.com/hook",
                        "event_types": ["message.created"],
                    }))
                    .to_request();
                let resp = test::call_service(&app, req).await;
                assert_eq!(resp.status(), 401, "{method} {path}");
                seen += 1;
            }
        }
        assert_eq!(seen, 6);
    }
}
