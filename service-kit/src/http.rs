//! The JSON error body every REST API answers with, and extractor configs that turn actix's
//! own rejections (bad JSON, bad query, bad path) into that body instead of plain text.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::ErrorCode;

/// An error a handler returns: a stable code and a human message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody::new(self.code, &self.message))
    }
}

impl From<switchboard_redis::StoreError> for ApiError {
    fn from(err: switchboard_redis::StoreError) -> Self {
        tracing::warn!(error = %err, "redis operation failed");
        ApiError::unavailable("the cluster state store is unavailable, retry shortly")
    }
}

/// JSON body extractor that answers malformed bodies with a `bad_request` error body.
pub fn json_config(limit_bytes: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit_bytes)
        .error_handler(|err, _req| {
            let code = match &err {
                actix_web::error::JsonPayloadError::Overflow { .. }
                | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                    ErrorCode::TooLarge
                }
                _ => ErrorCode::BadRequest,
            };
            ApiError::new(code, err.to_string()).into()
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::bad_request(err.to_string()).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _req| ApiError::bad_request(err.to_string()).into())
}

/// The answer for routes that do not exist.
pub async fn not_found() -> HttpResponse {
    ApiError::new(ErrorCode::NotFound, "no such route").error_response()
}

/// Starts a JSON REST service the way every Switchboard service runs one: request timing,
/// JSON errors for bad bodies, queries and paths (bodies up to `body_limit` bytes), `/live`
/// `/ready` `/metrics`, a JSON 404 for unknown routes, a deep accept backlog (bursts queue
/// rather than being refused), and no signal handling of its own (the service's shutdown
/// token stops it). `configure` mounts the service's own state and routes; it runs once per
/// HTTP worker, on that worker's thread. `workers`: HTTP worker threads, `None` for one per
/// core.
pub fn serve_json_api<F>(
    ops: crate::ops::Ops,
    listener: std::net::TcpListener,
    body_limit: usize,
    allowed_origins: &[String],
    workers: Option<usize>,
    configure: F,
) -> std::io::Result<actix_web::dev::Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let allowed_origins = allowed_origins.to_vec();
    let mut server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::Condition::new(
                !allowed_origins.is_empty(),
                cors(&allowed_origins),
            ))
            .wrap_fn(crate::ops::timed(ops.clone()))
            .app_data(json_config(body_limit))
            .app_data(query_config())
            .app_data(path_config())
            .configure(ops.clone().configure())
            .configure(configure.clone())
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .backlog(4096)
    .shutdown_timeout(5);
    if let Some(workers) = workers {
        server = server.workers(workers.max(1));
    }
    Ok(server.listen(listener)?.run())
}

/// Starts a process's operations-only server (`/live`, `/ready`, `/metrics`, a JSON 404), for
/// a service whose other port is not an HTTP API of ours (the socket server's WebSockets, the
/// health checker's none): one worker, requests timed and in `request` spans like every other
/// HTTP app's, no signal handling of its own, and `shutdown_timeout_secs` for requests in
/// flight when it stops.
pub fn serve_ops(
    ops: crate::ops::Ops,
    listener: std::net::TcpListener,
    shutdown_timeout_secs: u64,
) -> std::io::Result<actix_web::dev::Server> {
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap_fn(crate::ops::timed(ops.clone()))
            .app_data(query_config())
            .configure(ops.clone().configure())
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout_secs)
    .listen(listener)?
    .run();
    Ok(server)
}

/// CORS for the REST API: the allowed origins (or any, for `*`) may call it with a bearer
/// token from a browser page; preflights are answered, other origins get no grant.
fn cors(allowed_origins: &[String]) -> actix_cors::Cors {
    use actix_web::http::header;
    let cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(600);
    if allowed_origins.iter().any(|o| o == "*") {
        return cors.allow_any_origin();
    }
    allowed_origins
        .iter()
        .fold(cors, |cors, origin| cors.allowed_origin(origin))
}
