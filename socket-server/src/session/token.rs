//! The token's life inside the loop (docs/protocol.md, "Token lifetime"): one timer, first at
//! the notice (`token_expiring`), then at `exp` (4401); a `refresh` frame with a fresh token of
//! the same user is checked here without a round trip, then against the user's sessions-ended
//! mark (one Redis read, a branch of the loop's own so the loop never waits on it), and moves
//! both deadlines.
//!
//! The token costs the message path nothing but two more branches of the `select!` that are
//! not ready: its timer is one `Sleep`, reset at the notice and on a refresh.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchboard_chat_state::sessions::{refused, SessionMarks};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::token::{Claims, TokenKeys};
use switchboard_protocol::{ErrorCode, UserId};
use switchboard_redis::StoreError;
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::time::{Instant, Sleep};

use super::admission::{lives_too_long, token_error_message};
use super::outbound::{Ending, Writer};
use crate::token_life::{self, TokenMetrics};
use crate::wire::Outlet;

/// The connection's token: when it expires, and what a `refresh` is checked against.
pub(crate) struct TokenContext<'a> {
    pub keys: &'a TokenKeys,
    /// The sessions-ended marks a refresh is checked against; `None` checks none (unit tests).
    pub marks: Option<&'a SessionMarks>,
    /// The `exp` of the token the connection opened with (seconds since the epoch).
    pub exp: i64,
    /// The `iat` of the connection's current token, shared with `token_life::Sessions`.
    pub iat: &'a AtomicI64,
    /// `token_expiring` goes this long before `exp` (at most a tenth of the lifetime).
    pub notice: Duration,
    pub max_lifetime_secs: i64,
    /// Cancelled when the user's sessions are ended: close with 4403.
    pub ended: &'a CancellationToken,
    pub metrics: &'a TokenMetrics,
}

/// Where the token's one timer is: before the notice, or between it and `exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenPhase {
    Notice,
    Expiry,
}

/// The deadlines of a token expiring at `exp`: the notice, and `exp` itself.
fn token_deadlines(exp: i64, iat: i64, notice: Duration) -> (Instant, Instant) {
    let expiry = Instant::now() + token_life::until(exp);
    let lead = token_life::notice_lead(notice, exp, iat);
    let notice_at = expiry.checked_sub(lead).unwrap_or_else(Instant::now);
    (notice_at, expiry)
}

/// A refresh waiting for the user's sessions-ended mark: the new token's claims and the mark.
pub(super) type PendingRefresh<'a> = BoxFuture<'a, (Claims, Result<Option<i64>, StoreError>)>;

/// The checks of a `refresh` that need no round trip: the token verifies, is the same user's
/// and lives no longer than the deployment accepts. `Err` is the error to answer.
fn check_refresh(
    token: &TokenContext<'_>,
    user_id: &UserId,
    jwt: &str,
) -> Result<Claims, (ErrorCode, &'static str)> {
    let verified = token
        .keys
        .verify_claims(jwt)
        .map_err(|e| (ErrorCode::Unauthorized, token_error_message(e)))?;
    if verified.user_id != *user_id {
        return Err((
            ErrorCode::Forbidden,
            "the refresh token is another user's: a connection keeps its user",
        ));
    }
    if lives_too_long(&verified.claims, token.max_lifetime_secs) {
        return Err((
            ErrorCode::Unauthorized,
            "token lives longer (exp - iat) than this deployment accepts",
        ));
    }
    Ok(verified.claims)
}

/// The round trip of a refresh: the user's sessions-ended mark (none without marks).
fn read_mark<'a>(
    marks: Option<&'a SessionMarks>,
    user_id: &'a UserId,
    claims: Claims,
) -> PendingRefresh<'a> {
    Box::pin(async move {
        let mark = match marks {
            Some(marks) => marks.ended_before(user_id).await,
            None => Ok(None),
        };
        (claims, mark)
    })
}

/// The loop's branch for a refresh in flight; polled only while there is one.
pub(super) async fn mark_read(
    refreshing: &mut Option<PendingRefresh<'_>>,
) -> (Claims, Result<Option<i64>, StoreError>) {
    refreshing.as_mut().expect("guarded by is_some").await
}

/// The token's state in one connection's loop.
pub(super) struct TokenLife<'a, 't> {
    ctx: TokenContext<'a>,
    user_id: &'a UserId,
    /// The current token's `exp` (seconds since the epoch).
    exp: i64,
    expiry_at: Instant,
    phase: TokenPhase,
    /// The token's one timer: at the notice, then at `exp`. The loop waits on it.
    pub timer: Pin<&'t mut Sleep>,
    /// A refresh waiting for its mark ([`mark_read`]); a newer refresh replaces it.
    pub refreshing: Option<PendingRefresh<'a>>,
}

impl<'a, 't> TokenLife<'a, 't> {
    /// The token of `user_id` as the connection opened with it, `timer` set to its notice.
    pub(super) fn start(
        ctx: TokenContext<'a>,
        user_id: &'a UserId,
        mut timer: Pin<&'t mut Sleep>,
    ) -> Self {
        let (notice_at, expiry_at) =
            token_deadlines(ctx.exp, ctx.iat.load(Ordering::Acquire), ctx.notice);
        timer.as_mut().reset(notice_at);
        TokenLife {
            exp: ctx.exp,
            ctx,
            user_id,
            expiry_at,
            phase: TokenPhase::Notice,
            timer,
            refreshing: None,
        }
    }

    /// The timer fired: the notice goes out (and the timer moves to `exp`), or the token has
    /// expired.
    pub(super) async fn timer_fired<K: Outlet>(
        &mut self,
        writer: &mut Writer<'_, K>,
    ) -> Option<Ending> {
        match self.phase {
            TokenPhase::Notice => {
                self.phase = TokenPhase::Expiry;
                self.timer.as_mut().reset(self.expiry_at);
                let frame = ServerFrame::TokenExpiring {
                    expires_at: token_life::expires_at(self.exp),
                };
                writer.send(&frame).await
            }
            TokenPhase::Expiry => Some(Ending::TokenExpired),
        }
    }

    /// A `refresh` frame with `jwt`: refused at once, or its mark read next.
    pub(super) async fn refresh<K: Outlet>(
        &mut self,
        jwt: &str,
        writer: &mut Writer<'_, K>,
    ) -> Option<Ending> {
        match check_refresh(&self.ctx, self.user_id, jwt) {
            Ok(claims) => {
                // A refresh still in flight is dropped: the latest token wins.
                self.refreshing = Some(read_mark(self.ctx.marks, self.user_id, claims));
                None
            }
            Err((code, message)) => {
                let frame = ServerFrame::error(code, message);
                self.refused();
                writer.send(&frame).await
            }
        }
    }

    /// A refresh's mark was read: the new token is taken (both deadlines move) unless the
    /// user's sessions were ended after it was issued, or the mark could not be read.
    pub(super) async fn mark_answered<K: Outlet>(
        &mut self,
        (claims, mark): (Claims, Result<Option<i64>, StoreError>),
        writer: &mut Writer<'_, K>,
    ) -> Option<Ending> {
        self.refreshing = None;
        let frame = match mark {
            Ok(mark) if !refused(claims.iat, mark) => self.take(&claims),
            Ok(_) => {
                self.refused();
                ServerFrame::error(
                    ErrorCode::Unauthorized,
                    "this user's sessions were ended after the token was issued: get a new token",
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "sessions-ended mark unreadable; refresh refused");
                self.refused();
                ServerFrame::error(
                    ErrorCode::Unavailable,
                    "cannot check the token right now, retry shortly",
                )
            }
        };
        writer.send(&frame).await
    }

    /// Takes a refreshed token: its `iat` (which an end of the user's sessions is judged by)
    /// and `exp`, the timer back to the notice.
    fn take(&mut self, claims: &Claims) -> ServerFrame {
        self.ctx.iat.store(claims.iat, Ordering::Release);
        self.exp = claims.exp;
        let (notice_at, expiry_at) = token_deadlines(claims.exp, claims.iat, self.ctx.notice);
        self.expiry_at = expiry_at;
        self.phase = TokenPhase::Notice;
        self.timer.as_mut().reset(notice_at);
        self.ctx
            .metrics
            .refreshes
            .with_label_values(&["taken"])
            .inc();
        ServerFrame::TokenRefreshed {
            expires_at: token_life::expires_at(claims.exp),
        }
    }

    fn refused(&self) {
        self.ctx
            .metrics
            .refreshes
            .with_label_values(&["refused"])
            .inc();
    }
}
