//! `Authorization: Bearer <jwt>` as an extractor: handlers take [`AuthUser`] and never see an
//! unauthenticated request.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;

use crate::state::AppState;

pub struct AuthUser(pub String);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::new(ErrorCode::Internal, "state missing")));
        };
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let result = match token {
            None => Err(unauthorized("send Authorization: Bearer <token>")),
            Some(token)
                if token
                    .trim()
                    .starts_with(switchboard_credentials::api_keys::KEY_PREFIX) =>
            {
                Err(unauthorized(
                    "API keys are for /server; /api takes a user token",
                ))
            }
            Some(token) => state
                .tokens
                .verify(token.trim())
                .map_err(|e| unauthorized(&e.to_string()))
                .and_then(|user| {
                    // Reserved system/bot senders post only through the server API: nobody
                    // signs in as one here.
                    if state.config.is_reserved_sender(&user) {
                        Err(unauthorized("this user id is reserved for the server API"))
                    } else {
                        Ok(AuthUser(user.into_string()))
                    }
                }),
        };
        ready(result)
    }
}
