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

impl From<crate::redis_sentinel::StoreError> for ApiError {
    fn from(err: crate::redis_sentinel::StoreError) -> Self {
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
