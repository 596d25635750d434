//! Registry handlers. Errors are [`ApiError`]s, so every failure is the JSON error body.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{TimeZone, Utc};
use switchboard_protocol::registry::{
    DevTokenRequest, DevTokenResponse, Registration, ServerInfo, ServerList,
};
use switchboard_protocol::token::{is_valid_user_id, TokenError};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::{require_cluster_secret, ApiError};

use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/socket-server", web::get().to(assign))
        .route("/api/v1/socket-servers", web::get().to(list))
        .route("/api/v1/socket-servers", web::post().to(register))
        .route(
            "/api/v1/socket-servers/{server_id}",
            web::delete().to(deregister),
        )
        .route("/api/v1/dev/token", web::post().to(dev_token));
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

async fn assign(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let found = state
        .directory
        .assign(
            now_ms(),
            state.config.stale_after_ms,
            state.config.reservation_ttl_ms,
        )
        .await;
    let outcome = match &found {
        Ok(Some(_)) => "assigned",
        Ok(None) => "no_capacity",
        Err(_) => "error",
    };
    state.assignments.with_label_values(&[outcome]).inc();
    match found? {
        Some(assignment) => Ok(HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(assignment)),
        None => Err(ApiError::new(
            ErrorCode::NoCapacity,
            "no socket server has room for another connection",
        )),
    }
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let servers = state
        .directory
        .list()
        .await?
        .into_iter()
        .map(|r| ServerInfo {
            server_id: r.server_id,
            url: r.url,
            connections: r.load,
            max_connections: r.max_connections,
            last_heartbeat: r
                .last_heartbeat_ms
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ServerList { servers }))
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Registration>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    let reg = body.into_inner();
    if reg.server_id.is_empty() || reg.server_id.len() > 128 {
        return Err(ApiError::bad_request("server_id must be 1-128 characters"));
    }
    if !(reg.url.starts_with("ws://") || reg.url.starts_with("wss://")) {
        return Err(ApiError::bad_request("url must be a ws:// or wss:// URL"));
    }
    if !(reg.health_url.starts_with("http://") || reg.health_url.starts_with("https://")) {
        return Err(ApiError::bad_request("health_url must be an http(s) URL"));
    }
    if reg.max_connections == 0 {
        return Err(ApiError::bad_request("max_connections must be positive"));
    }
    state.directory.register(&reg, 0, now_ms()).await?;
    tracing::info!(server_id = %reg.server_id, url = %reg.url, "socket server registered");
    Ok(HttpResponse::Created().json(reg))
}

async fn deregister(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_cluster_secret(&req, &state.config.common.cluster_secret)?;
    let server_id = path.into_inner();
    if state.directory.remove(&server_id).await? {
        tracing::info!(%server_id, "socket server deregistered");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no socket server {server_id} is registered"),
        ))
    }
}

async fn dev_token(
    state: web::Data<AppState>,
    body: web::Json<DevTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.common.dev_mode {
        return Err(ApiError::new(
            ErrorCode::DevModeDisabled,
            "dev tokens are only minted when SB_DEV_MODE is on",
        ));
    }
    if !is_valid_user_id(&body.user_id) {
        return Err(ApiError::bad_request(
            "user_id must match [A-Za-z0-9_.-]{1,64}",
        ));
    }
    let ttl = chrono::Duration::seconds(state.config.dev_token_ttl_secs);
    let (token, expires) = state
        .tokens
        .mint(&body.user_id, ttl)
        .map_err(|e: TokenError| ApiError::bad_request(e.to_string()))?;
    Ok(HttpResponse::Ok().json(DevTokenResponse {
        token,
        user_id: body.user_id.clone(),
        expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}
