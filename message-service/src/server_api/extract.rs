//! What every server API handler takes before it does anything: the API key, checked for
//! the route's scope and rate ([`ApiKey`], an extractor, so no handler can forget it and
//! every refusal is answered the same way: 401, 403, or 429 with `Retry-After`), and the ids
//! of its path, parsed once here.

use std::future::{ready, Ready};
use std::marker::PhantomData;

use actix_web::{web, FromRequest, HttpRequest};
use switchboard_credentials::api_keys::Scope;
use switchboard_protocol::{ConversationId, ErrorCode, UserId};
use switchboard_service_kit::api_keys::ApiKeyError;
use switchboard_service_kit::http::ApiError;

use crate::state::AppState;

/// The scope a route needs, as a type: `ApiKey<Read>` in a handler's arguments.
pub(super) trait RouteScope {
    const SCOPE: Scope;
}

/// `read`: history, conversations and presence.
pub(super) enum Read {}
/// `conversations:write`: create conversations, add and remove members.
pub(super) enum ConversationsWrite {}
/// `messages:write`: post messages.
pub(super) enum MessagesWrite {}
/// `users:disconnect`: end a user's sessions.
pub(super) enum UsersDisconnect {}

impl RouteScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RouteScope for ConversationsWrite {
    const SCOPE: Scope = Scope::ConversationsWrite;
}
impl RouteScope for MessagesWrite {
    const SCOPE: Scope = Scope::MessagesWrite;
}
impl RouteScope for UsersDisconnect {
    const SCOPE: Scope = Scope::UsersDisconnect;
}

/// A request authorized by an API key with scope `S`, one token of the key's rate taken.
/// Handlers take it first, so a request without a good key is refused before its path,
/// query or body is looked at.
pub(super) struct ApiKey<S: RouteScope>(PhantomData<S>);

impl<S: RouteScope> FromRequest for ApiKey<S> {
    type Error = ApiKeyError;
    type Future = Ready<Result<Self, ApiKeyError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiKeyError {
                error: ApiError::new(ErrorCode::Internal, "state missing"),
                retry_after_secs: None,
            }));
        };
        ready(
            state
                .config
                .api_keys
                .authorize(req, S::SCOPE)
                .map(|_| ApiKey(PhantomData)),
        )
    }
}

/// A conversation id from the path, or 400.
pub(super) fn conversation_id(text: String) -> Result<ConversationId, ApiError> {
    ConversationId::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A user id from the path or body, or 400.
pub(super) fn user_id(text: String) -> Result<UserId, ApiError> {
    UserId::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// 404 `not_found` for a conversation id that names none.
pub(super) fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such conversation")
}
