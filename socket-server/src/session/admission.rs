//! Admission of a session, before the upgrade (or the SSE stream's answer): the client
//! address's connect rate, the token and its lifetime, the `Origin`, shutdown, the per-user and
//! server caps, and last the user's sessions-ended mark. The token and origin rules here are
//! also the ones a `refresh` frame and an SSE `POST` are held to.

use std::net::IpAddr;

use switchboard_chat_state::sessions::refused;
use switchboard_protocol::token::{Claims, TokenError};
use switchboard_protocol::{ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;
use switchboard_ws_codec::RequestHead;

use crate::state::ServerState;
use crate::token_life::Admitted;

/// Admission of `GET /ws?token=…` (or `Authorization: Bearer …`), before the upgrade: the
/// client address's connect rate, the token (401), the `Origin` (403), shutdown (503), the
/// user's devices on this server (429), the server's capacity (503), and last (one Redis
/// read) whether the user's sessions were ended after the token was issued (401; 503 when
/// that cannot be read). Returns the user with the token's `exp` and `iat`, and the client's
/// address (the peer, or `X-Forwarded-For` from a trusted proxy).
pub(crate) async fn admit(
    state: &ServerState,
    peer: IpAddr,
    head: &RequestHead,
) -> Result<(Admitted, IpAddr), ApiError> {
    // Before the token is even looked at: verifying signatures is work an attacker could
    // make us do for free.
    let ip = switchboard_service_kit::limits::client_ip_behind(
        peer,
        head.headers("x-forwarded-for"),
        &state.config.common.trusted_proxies,
    );
    if !state.connects.allow(ip, std::time::Instant::now()) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many connection attempts from your address, retry in a few seconds",
        ));
    }
    let admitted = verify_token(state, head)?;
    check_room(state, head, &admitted.user_id)?;
    // Last: the one check that costs a round trip.
    match state.sessions.marks().ended_before(&admitted.user_id).await {
        Ok(mark) if refused(admitted.iat, mark) => {
            state.metrics.auth_failures.inc();
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this user's sessions were ended after the token was issued: get a new token",
            ));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "sessions-ended mark unreadable; upgrade refused");
            return Err(ApiError::unavailable(
                "cannot check the token against ended sessions right now, retry shortly",
            ));
        }
    }
    Ok((admitted, ip))
}

/// The request's token: present, verified, living no longer than the deployment accepts; its
/// subject parsed once, here, into the session's user.
fn verify_token(state: &ServerState, head: &RequestHead) -> Result<Admitted, ApiError> {
    let refuse = |message: String| {
        state.metrics.auth_failures.inc();
        ApiError::new(ErrorCode::Unauthorized, message)
    };
    let token = bearer_token(head).ok_or_else(|| {
        refuse("a token is required: ?token=<jwt> or Authorization: Bearer <jwt>".into())
    })?;
    let verified = state
        .tokens
        .verify_claims(&token)
        .map_err(|e| refuse(token_error_message(e).into()))?;
    let claims = verified.claims;
    let max_lifetime = state.config.token_max_lifetime_secs;
    if lives_too_long(&claims, max_lifetime) {
        return Err(refuse(format!(
            "token lives longer (exp - iat) than the {max_lifetime} s this deployment accepts"
        )));
    }
    Ok(Admitted {
        user_id: verified.user_id,
        exp: claims.exp,
        iat: claims.iat,
    })
}

/// The checks that need no round trip once the user is known: the `Origin` (403), shutdown
/// (503), the user's devices here (429) and the server's capacity (503).
fn check_room(state: &ServerState, head: &RequestHead, user_id: &UserId) -> Result<(), ApiError> {
    if let Some(origin) = head.header("origin") {
        if !origin_allowed(&state.config.common.allowed_origins, origin) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("origin {origin:?} may not open a WebSocket here (SB_ALLOWED_ORIGINS)"),
            ));
        }
    }
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("this server is shutting down"));
    }
    let per_user = state.config.max_connections_per_user;
    if per_user > 0 && state.hub.devices_of(user_id) >= per_user {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("at most {per_user} devices of one user may connect to a server"),
        ));
    }
    if state.hub.live() as u64 >= state.config.max_connections {
        return Err(ApiError::new(ErrorCode::NoCapacity, "this server is full"));
    }
    Ok(())
}

/// What a client is told of a token that does not verify (at the upgrade or in a refresh).
pub(super) fn token_error_message(e: TokenError) -> &'static str {
    match e {
        TokenError::Expired => "token has expired",
        TokenError::NotYetValid => "token is not valid yet",
        TokenError::NotForUs => "token was issued by another issuer or for another audience",
        TokenError::Invalid => "token is malformed or wrongly signed",
        TokenError::BadUserId => "token subject is not a valid user id",
        TokenError::Reserved => "token subject is reserved for the server API's senders",
        // Only minting and key loading answer these; verification never does.
        TokenError::CannotMint | TokenError::BadKey(_) => "token cannot be verified",
    }
}

/// Whether a token lives longer than the deployment accepts: a sessions-ended mark lasts
/// that long, so a longer-lived token could outlive the mark that refuses it.
pub(super) fn lives_too_long(claims: &Claims, max_lifetime_secs: i64) -> bool {
    claims.exp.saturating_sub(claims.iat) > max_lifetime_secs
}

/// The token of a request: `Authorization: Bearer …` or `?token=`.
pub(crate) fn bearer_token(head: &RequestHead) -> Option<String> {
    if let Some(value) = head.header("authorization") {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned()).filter(|t| !t.is_empty());
    }
    form_urlencoded::parse(head.query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .filter(|t| !t.is_empty())
}

/// Whether a browser page from `origin` may connect: any, when no list is configured.
pub(crate) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a == "*" || a == origin.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_only_when_configured() {
        assert!(origin_allowed(&[], "https://anywhere.example"));
        let allowed = vec!["https://chat.example.com".to_owned()];
        assert!(origin_allowed(&allowed, "https://chat.example.com"));
        assert!(origin_allowed(&allowed, "https://chat.example.com/"));
        assert!(!origin_allowed(&allowed, "https://evil.example"));
        assert!(!origin_allowed(&allowed, "null"));
        assert!(origin_allowed(&["*".to_owned()], "https://evil.example"));
    }
}
