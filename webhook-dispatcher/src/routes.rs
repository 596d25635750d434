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

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::api_keys::{ApiKeys, Scope};
use switchboard_service_kit::http::ApiError;
use tokio::sync::Notify;

use crate::events::EVENT_TYPES;
use crate::signing;
use crate::ssrf::{self, AllowNets};
use crate::store::Store;

/// The longest URL an endpoint may have.
const MAX_URL_LEN: usize = 2048;

pub struct ApiState {
    pub store: Store,
    pub keys: ApiKeys,
    pub allow: AllowNets,
    pub max_endpoints: i64,
    pub secret_overlap: std::time::Duration,
    /// Wakes the delivery supervisor, so a new or re-enabled endpoint gets its worker now.
    pub wake: Arc<Notify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/server/v1/webhooks")
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
    body: web::Json<NewEndpoint>,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    let NewEndpoint { url, event_types } = body.into_inner();
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
    let mut answer = serde_json::to_value(&endpoint).unwrap_or_default();
    answer["secret"] = serde_json::Value::String(secret);
    tracing::info!(endpoint = %id, url = %parsed, "webhook endpoint registered");
    Ok(HttpResponse::Created().json(answer))
}

async fn list(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    authorize(&state, &req)?;
    let endpoints = state.store.endpoints().await.map_err(db)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "endpoints": endpoints })))
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
    Ok(HttpResponse::Ok().json(endpoint))
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
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": id.as_str(),
        "secret": secret,
        "previous_secrets_sign_for_secs": state.secret_overlap.as_secs(),
    })))
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
    Ok(HttpResponse::Ok().json(endpoint))
}
