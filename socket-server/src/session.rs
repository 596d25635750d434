//! One client connection: authenticate before the upgrade, then a loop that selects over the
//! client's frames, the connection's bounded outbound queue, a heartbeat, shutdown, and its
//! token's life (`token_expiring` before `exp`, 4401 at it, 4403 when its user's sessions are
//! ended; a `refresh` frame moves `exp`).

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use switchboard_chat_state::sessions::{refused, SessionMarks};
use switchboard_protocol::frames::{is_storable_text, ClientFrame, ServerFrame};
use switchboard_protocol::internal::HandlerItem;
use switchboard_protocol::sessions::close_code as token_close;
use switchboard_protocol::token::{Claims, TokenError, TokenKeys};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;
use switchboard_service_kit::redis_sentinel::StoreError;
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::{mpsc, oneshot};

use crate::hub::{ConnHandle, ConnId, Outbound};
use crate::listener::RequestHead;
use crate::manager_client::{unavailable_reply, ManagerClient, Pending};
use crate::rate::TokenBucket;
use crate::token_life::{self, Admitted, TokenMetrics};
use crate::wire::{close_code, CloseFrame, Incoming, Outgoing, Outlet, ReadError};
use crate::{Metrics, ServerState, SocketServerConfig};

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
    let token = bearer_token(head).ok_or_else(|| {
        state.metrics.auth_failures.inc();
        ApiError::new(
            ErrorCode::Unauthorized,
            "a token is required: ?token=<jwt> or Authorization: Bearer <jwt>",
        )
    })?;
    let claims = state.tokens.verify_claims(&token).map_err(|e| {
        state.metrics.auth_failures.inc();
        ApiError::new(ErrorCode::Unauthorized, token_error_message(e))
    })?;
    let max_lifetime = state.config.token_max_lifetime_secs;
    if lives_too_long(&claims, max_lifetime) {
        state.metrics.auth_failures.inc();
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "token lives longer (exp - iat) than the {max_lifetime} s this deployment accepts"
            ),
        ));
    }
    let user_id = claims.sub.as_str();
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
    // Last: the one check that costs a round trip.
    match state.sessions.marks().ended_before(user_id).await {
        Ok(mark) if refused(claims.iat, mark) => {
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
    let admitted = Admitted {
        user_id: Arc::from(user_id),
        exp: claims.exp,
        iat: claims.iat,
    };
    Ok((admitted, ip))
}

/// What a client is told of a token that does not verify (at the upgrade or in a refresh).
fn token_error_message(e: TokenError) -> &'static str {
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
fn lives_too_long(claims: &Claims, max_lifetime_secs: i64) -> bool {
    claims.exp.saturating_sub(claims.iat) > max_lifetime_secs
}

fn bearer_token(head: &RequestHead) -> Option<String> {
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

/// Why a connection loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    ClientClosed,
    ClientGone,
    TimedOut,
    Kicked,
    TooLarge,
    ServerShutdown,
    /// A write did not complete within the write timeout: the client stopped reading.
    Stalled,
    /// The token's `exp` passed without a refresh (4401).
    TokenExpired,
    /// The user's sessions were ended (4403).
    SessionsEnded,
    /// The client broke RFC 6455: failed with the close code it asks for (1002, 1007).
    ProtocolError(u16),
}

/// One accepted connection: joins the hub (and, for a user's first device, the managers'
/// routing), runs [`run_session`] over the client's frames and outlet, then leaves.
pub(crate) async fn run<S, T, K>(
    state: Arc<ServerState>,
    admitted: Admitted,
    incoming: S,
    outlet: K,
) where
    S: Stream<Item = Result<Incoming<T>, ReadError>> + Unpin,
    T: AsRef<str>,
    K: Outlet,
{
    let user_id = admitted.user_id;
    let (tx, rx) = mpsc::channel::<Outbound>(state.config.outbound_queue);
    let kick = CancellationToken::new();
    let (conn_id, first_device) = state.hub.insert(ConnHandle {
        user_id: user_id.clone(),
        outbound: tx.clone(),
        kick: kick.clone(),
    });
    // Right after it joined the hub, before any await: a control that ends the user's
    // sessions from here on finds it, and one that went by already is remembered.
    let registration = state.sessions.register(&user_id, conn_id, admitted.iat);
    state.metrics.connections.set(state.hub.live() as i64);
    state.metrics.connects.inc();
    state.directory_connected().await;
    if first_device {
        // Wait until the managers route to this handler for the user, so nothing sent after
        // `hello` can miss this device.
        report_presence(&state, conn_id, &user_id, true).await;
    }

    let ctx = SessionContext {
        conn_id,
        user_id: &user_id,
        server_id: &state.server_id,
        limits: SessionLimits::of(&state.config),
        metrics: &state.metrics,
        manager: state.manager.as_ref(),
        shutdown: &state.shutdown,
        kick: &kick,
        own_queue: tx,
        outbound: rx,
        token: TokenContext {
            keys: &state.tokens,
            marks: Some(state.sessions.marks()),
            exp: admitted.exp,
            iat: &registration.iat,
            notice: state.config.token_expiry_notice,
            max_lifetime_secs: state.config.token_max_lifetime_secs,
            ended: &registration.ended,
            metrics: &state.sessions.metrics,
        },
    };
    let leave = async {
        state.sessions.unregister(&user_id, conn_id);
        let last_device = state.hub.remove(conn_id);
        state.metrics.connections.set(state.hub.live() as i64);
        if last_device {
            report_presence(&state, conn_id, &user_id, false).await;
        }
    };
    run_session(incoming, outlet, ctx, leave).await;
    state.directory_disconnected().await;
}

/// The per-connection limits the loop enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// The server pings this often.
    pub heartbeat_interval: Duration,
    /// A client silent longer than this is closed with 1001 at the next heartbeat.
    pub client_timeout: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_body_bytes: usize,
    /// A frame not handed to the connection within this long ends it as a slow consumer.
    pub write_timeout: Duration,
}

impl SessionLimits {
    pub(crate) fn of(config: &SocketServerConfig) -> Self {
        SessionLimits {
            heartbeat_interval: config.heartbeat_interval,
            client_timeout: config.client_timeout,
            rate_per_sec: config.client_rate_per_sec,
            rate_burst: config.client_rate_burst,
            max_body_bytes: config.max_body_bytes,
            write_timeout: config.client_write_timeout,
        }
    }
}

/// What one connection's loop needs besides its client.
pub(crate) struct SessionContext<'a> {
    pub conn_id: ConnId,
    pub user_id: &'a str,
    /// Named in `hello`.
    pub server_id: &'a str,
    pub limits: SessionLimits,
    pub metrics: &'a Metrics,
    /// The link to the managers; `None` (messaging disabled) answers chat frames
    /// `unavailable`.
    pub manager: Option<&'a ManagerClient>,
    /// Cancelled when the server shuts down: close with 1012.
    pub shutdown: &'a CancellationToken,
    /// Cancelled when this connection's queue overflowed: close with 1013.
    pub kick: &'a CancellationToken,
    /// This connection's queue, where the managers' replies are sent.
    pub own_queue: mpsc::Sender<Outbound>,
    /// The other end of `own_queue`: frames for this connection, written in order.
    pub outbound: mpsc::Receiver<Outbound>,
    pub token: TokenContext<'a>,
}

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
fn token_deadlines(
    exp: i64,
    iat: i64,
    notice: Duration,
) -> (tokio::time::Instant, tokio::time::Instant) {
    let expiry = tokio::time::Instant::now() + token_life::until(exp);
    let lead = token_life::notice_lead(notice, exp, iat);
    let notice_at = expiry
        .checked_sub(lead)
        .unwrap_or_else(tokio::time::Instant::now);
    (notice_at, expiry)
}

/// A refresh waiting for the user's sessions-ended mark: the new token's claims and the mark.
type PendingRefresh<'a> = BoxFuture<'a, (Claims, Result<Option<i64>, StoreError>)>;

/// The checks of a `refresh` that need no round trip: the token verifies, is the same user's
/// and lives no longer than the deployment accepts. `Err` is the error to answer.
fn check_refresh(
    token: &TokenContext<'_>,
    user_id: &str,
    jwt: &str,
) -> Result<Claims, (ErrorCode, &'static str)> {
    let claims = token
        .keys
        .verify_claims(jwt)
        .map_err(|e| (ErrorCode::Unauthorized, token_error_message(e)))?;
    if claims.sub != user_id {
        return Err((
            ErrorCode::Forbidden,
            "the refresh token is another user's: a connection keeps its user",
        ));
    }
    if lives_too_long(&claims, token.max_lifetime_secs) {
        return Err((
            ErrorCode::Unauthorized,
            "token lives longer (exp - iat) than this deployment accepts",
        ));
    }
    Ok(claims)
}

/// The round trip of a refresh: the user's sessions-ended mark (none without marks).
fn read_mark<'a>(
    marks: Option<&'a SessionMarks>,
    user_id: &'a str,
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

/// The connection loop: writes `hello`, then selects (in this priority) over shutdown, a
/// kick, the end of the user's sessions, the token's timer, the client's frames, the
/// connection's outbound queue, a refresh's mark read and the heartbeat until one of them
/// ends it; then awaits `leave` and writes the close frame (at most 2 s).
///
/// The token costs the message path nothing but two more branches of the `select!` that are
/// not ready: its timer is one `Sleep`, reset at the notice and on a refresh, and a refresh's
/// Redis read is a branch of its own, so the loop never waits on it.
///
/// Every write is bounded by `limits.write_timeout`: the loop writes inside its `select!`
/// arms, so a client that stops reading (its TCP window full) would otherwise hold the loop
/// in one write forever, and neither the kick, the heartbeat nor shutdown could end it. A
/// timeout here rather than a writer task per connection keeps an idle connection one task
/// (docs/performance.md, S1).
pub(crate) async fn run_session<S, T, K>(
    mut incoming: S,
    mut outlet: K,
    ctx: SessionContext<'_>,
    leave: impl Future<Output = ()>,
) where
    S: Stream<Item = Result<Incoming<T>, ReadError>> + Unpin,
    T: AsRef<str>,
    K: Outlet,
{
    let SessionContext {
        conn_id,
        user_id,
        server_id,
        limits,
        metrics,
        manager,
        shutdown,
        kick,
        own_queue,
        outbound: mut rx,
        token,
    } = ctx;
    let hello = ServerFrame::Hello {
        user_id: user_id.to_string(),
        server_id: server_id.to_owned(),
    };
    let write_timeout = limits.write_timeout;
    let mut ending = write(
        &mut outlet,
        Outgoing::Text(hello.to_json().into()),
        write_timeout,
    )
    .await;

    let mut last_heard = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval(limits.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut limiter = TokenBucket::new(limits.rate_per_sec, limits.rate_burst);

    // Made once: a fresh `cancelled()` per turn locks each token and registers a waiter every
    // time a frame passes (`is_cancelled` and the waiter's poll/drop showed in the profile).
    let shutdown_signal = shutdown.cancelled();
    let kick_signal = kick.cancelled();
    let ended_signal = token.ended.cancelled();
    tokio::pin!(shutdown_signal, kick_signal, ended_signal);
    let mut token_exp = token.exp;
    let (notice_at, mut expiry_at) =
        token_deadlines(token.exp, token.iat.load(Ordering::Acquire), token.notice);
    let mut token_phase = TokenPhase::Notice;
    let token_timer = tokio::time::sleep_until(notice_at);
    tokio::pin!(token_timer);
    let mut refreshing: Option<PendingRefresh<'_>> = None;
    while ending.is_none() {
        tokio::select! {
            biased;
            _ = &mut shutdown_signal => ending = Some(Ending::ServerShutdown),
            _ = &mut kick_signal => ending = Some(Ending::Kicked),
            _ = &mut ended_signal => ending = Some(Ending::SessionsEnded),
            _ = &mut token_timer => match token_phase {
                TokenPhase::Notice => {
                    token_phase = TokenPhase::Expiry;
                    token_timer.as_mut().reset(expiry_at);
                    let frame = ServerFrame::TokenExpiring { expires_at: token_life::expires_at(token_exp) };
                    ending = send(metrics, &mut outlet, &frame, write_timeout).await;
                }
                TokenPhase::Expiry => ending = Some(Ending::TokenExpired),
            },
            msg = incoming.next() => {
                last_heard = tokio::time::Instant::now();
                ending = match msg {
                    Some(Ok(Incoming::Text(text))) => {
                        metrics.frames_in.inc();
                        let handled = if limiter.try_take(Instant::now()) {
                            handle_text(manager, limits.max_body_bytes, text.as_ref(), conn_id, user_id, &own_queue)
                        } else {
                            Handled::Reply(ServerFrame::error(ErrorCode::RateLimited, "slow down: too many frames"))
                        };
                        match handled {
                            Handled::Reply(frame) => send(metrics, &mut outlet, &frame, write_timeout).await,
                            Handled::Forwarded => None,
                            Handled::Refresh(jwt) => match check_refresh(&token, user_id, &jwt) {
                                Ok(claims) => {
                                    // A refresh still in flight is dropped: the latest token wins.
                                    refreshing = Some(read_mark(token.marks, user_id, claims));
                                    None
                                }
                                Err((code, message)) => {
                                    let frame = ServerFrame::error(code, message);
                                    token.metrics.refreshes.with_label_values(&["refused"]).inc();
                                    send(metrics, &mut outlet, &frame, write_timeout).await
                                }
                            },
                        }
                    }
                    Some(Ok(Incoming::Binary)) => {
                        metrics.frames_in.inc();
                        let frame = ServerFrame::error(ErrorCode::BadRequest, "binary frames are not supported: send JSON text frames");
                        send(metrics, &mut outlet, &frame, write_timeout).await
                    }
                    Some(Ok(Incoming::Ping(payload))) => {
                        write(&mut outlet, Outgoing::Pong(payload), write_timeout).await
                    }
                    Some(Ok(Incoming::Pong)) => None,
                    Some(Ok(Incoming::Close)) => Some(Ending::ClientClosed),
                    Some(Err(ReadError::TooLarge)) => Some(Ending::TooLarge),
                    Some(Err(ReadError::Protocol(code))) => Some(Ending::ProtocolError(code)),
                    Some(Err(ReadError::Broken)) | None => Some(Ending::ClientGone),
                };
            }
            out = rx.recv() => {
                if let Some(Outbound::Frame(text)) = out {
                    metrics.frames_out.inc();
                    ending = write(&mut outlet, Outgoing::Text(text), write_timeout).await;
                }
            }
            (claims, mark) = async { refreshing.as_mut().expect("guarded by is_some").await }, if refreshing.is_some() => {
                refreshing = None;
                let frame = match mark {
                    Ok(mark) if !refused(claims.iat, mark) => {
                        token.iat.store(claims.iat, Ordering::Release);
                        token_exp = claims.exp;
                        let (notice_at, new_expiry) = token_deadlines(claims.exp, claims.iat, token.notice);
                        expiry_at = new_expiry;
                        token_phase = TokenPhase::Notice;
                        token_timer.as_mut().reset(notice_at);
                        token.metrics.refreshes.with_label_values(&["taken"]).inc();
                        ServerFrame::TokenRefreshed { expires_at: token_life::expires_at(claims.exp) }
                    }
                    Ok(_) => {
                        token.metrics.refreshes.with_label_values(&["refused"]).inc();
                        ServerFrame::error(
                            ErrorCode::Unauthorized,
                            "this user's sessions were ended after the token was issued: get a new token",
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sessions-ended mark unreadable; refresh refused");
                        token.metrics.refreshes.with_label_values(&["refused"]).inc();
                        ServerFrame::error(ErrorCode::Unavailable, "cannot check the token right now, retry shortly")
                    }
                };
                ending = send(metrics, &mut outlet, &frame, write_timeout).await;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > limits.client_timeout {
                    ending = Some(Ending::TimedOut);
                } else {
                    ending = write(&mut outlet, Outgoing::Ping, write_timeout).await;
                }
            }
        }
    }

    leave.await;
    let close = match ending {
        Some(Ending::ServerShutdown) => Some(CloseFrame {
            code: close_code::RESTART,
            reason: Some("server restarting: reconnect through the registry"),
        }),
        Some(Ending::Kicked) => {
            metrics.slow_consumer_kicks.inc();
            Some(CloseFrame {
                code: close_code::AGAIN,
                reason: Some("too slow: reconnect and resync from history"),
            })
        }
        Some(Ending::Stalled) => {
            // Counted as a slow consumer too: it is one, caught by its writes rather than
            // by its queue.
            metrics.slow_consumer_kicks.inc();
            metrics.write_timeouts.inc();
            // A frame may be half written, and the client reads nothing anyway: no close
            // frame, and the connection is reset rather than left to drain its send buffer.
            outlet.abandon();
            return;
        }
        Some(Ending::TooLarge) => {
            let frame = ServerFrame::error(ErrorCode::TooLarge, "frame exceeds the size limit");
            let _ = write(
                &mut outlet,
                Outgoing::Text(frame.to_json().into()),
                write_timeout,
            )
            .await;
            Some(CloseFrame {
                code: close_code::SIZE,
                reason: Some("frame too large"),
            })
        }
        Some(Ending::TimedOut) => Some(CloseFrame {
            code: close_code::AWAY,
            reason: Some("heartbeat timeout"),
        }),
        Some(Ending::TokenExpired) => {
            token.metrics.expired.inc();
            Some(CloseFrame {
                code: token_close::TOKEN_EXPIRED,
                reason: Some("token expired: get a new token and reconnect"),
            })
        }
        Some(Ending::SessionsEnded) => {
            token.metrics.ended.inc();
            Some(CloseFrame {
                code: token_close::SESSIONS_ENDED,
                reason: Some("sessions ended: sign in again"),
            })
        }
        Some(Ending::ClientClosed) => Some(CloseFrame {
            code: close_code::NORMAL,
            reason: None,
        }),
        Some(Ending::ProtocolError(code)) => Some(CloseFrame {
            code,
            reason: Some(if code == close_code::INVALID_PAYLOAD {
                "invalid UTF-8"
            } else {
                "protocol error"
            }),
        }),
        Some(Ending::ClientGone) | None => None,
    };
    // Best effort: a peer that vanished cannot receive a close frame, and one that stopped
    // reading is given up after 2 s.
    let closing = outlet.write(Outgoing::Close(close));
    if tokio::time::timeout(Duration::from_secs(2), closing)
        .await
        .is_err()
    {
        outlet.abandon();
    }
}

async fn send<K: Outlet>(
    metrics: &Metrics,
    outlet: &mut K,
    frame: &ServerFrame,
    timeout: Duration,
) -> Option<Ending> {
    metrics.frames_out.inc();
    write(outlet, Outgoing::Text(frame.to_json().into()), timeout).await
}

/// One write, bounded in time: `None` when it went out, else how the connection ends.
async fn write<K: Outlet>(outlet: &mut K, frame: Outgoing, timeout: Duration) -> Option<Ending> {
    match tokio::time::timeout(timeout, outlet.write(frame)).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(Ending::ClientGone),
        Err(_) => Some(Ending::Stalled),
    }
}

/// Reports a user's first device arriving (waiting for the manager) or last device leaving
/// (not waiting) on this handler.
async fn report_presence(state: &ServerState, conn_id: u64, user_id: &str, connected: bool) {
    let Some(manager) = &state.manager else {
        return;
    };
    let item = if connected {
        HandlerItem::Connected {
            connection_id: conn_id,
            user_id: user_id.to_owned(),
        }
    } else {
        HandlerItem::Disconnected {
            connection_id: conn_id,
            user_id: user_id.to_owned(),
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    let pending = Pending {
        item,
        reply_to: None,
        done: Some(done_tx),
    };
    if manager.submit(conn_id, pending).is_err() {
        tracing::warn!(user_id, "manager lane full; presence report dropped");
        return;
    }
    if connected {
        match tokio::time::timeout(Duration::from_secs(5), done_rx).await {
            Ok(Ok(true)) => {}
            _ => tracing::warn!(user_id, "connection report not confirmed by a manager"),
        }
    }
}

/// The edge's validation of a parsed frame: the one place that refuses what must never be
/// numbered or stored. A `send` body over `max_body_bytes` is `too_large`; a string that
/// PostgreSQL `TEXT` cannot store (one holding U+0000) is `bad_request`, since it would be
/// numbered and then fail to insert. Refusals of a `send` carry its `client_msg_id`.
/// Whether a browser page from `origin` may connect: any, when no list is configured.
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a == "*" || a == origin.trim_end_matches('/'))
}

fn refuse_invalid(frame: &ClientFrame, max_body_bytes: usize) -> Option<ServerFrame> {
    const EMPTY: String = String::new();
    let (conversation_id, send) = match frame {
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
            ..
        }
        | ClientFrame::Edit {
            conversation_id,
            client_msg_id,
            body,
            ..
        } => (conversation_id, Some((client_msg_id, body))),
        // A delete's or reaction's texts are checked by the managers (ids and the emoji).
        ClientFrame::Delete {
            conversation_id,
            client_msg_id,
            ..
        }
        | ClientFrame::React {
            conversation_id,
            client_msg_id,
            ..
        } => (conversation_id, Some((client_msg_id, &EMPTY))),
        ClientFrame::Delivered {
            conversation_id, ..
        }
        | ClientFrame::Read {
            conversation_id, ..
        }
        | ClientFrame::Typing { conversation_id } => (conversation_id, None),
        ClientFrame::Ping | ClientFrame::Refresh { .. } => return None,
    };
    let client_msg_id = send.map(|(id, _)| id.clone());
    if let Some((_, body)) = send {
        if body.len() > max_body_bytes {
            return Some(ServerFrame::Error {
                code: ErrorCode::TooLarge,
                message: format!(
                    "body is {} bytes; the limit is {max_body_bytes}",
                    body.len()
                ),
                client_msg_id,
            });
        }
    }
    let (field, _) = std::iter::once(("conversation_id", conversation_id))
        .chain(
            send.into_iter()
                .flat_map(|(id, body)| [("client_msg_id", id), ("body", body)]),
        )
        .find(|(_, text)| !is_storable_text(text))?;
    Some(ServerFrame::Error {
        code: ErrorCode::BadRequest,
        message: format!("{field} contains U+0000 (NUL), which cannot be stored"),
        client_msg_id,
    })
}

/// What became of one client text frame.
enum Handled {
    /// Answered here with this frame.
    Reply(ServerFrame),
    /// Forwarded to the managers (their answer arrives in the connection's queue).
    Forwarded,
    /// A `refresh` with this token, for the loop (it owns the connection's token).
    Refresh(String),
}

/// Answers one client text frame, or forwards it to the managers (the reply then arrives in
/// this connection's outbound queue). Anything unparseable gets a `bad_request` error frame
/// and the connection stays open.
fn handle_text(
    manager: Option<&ManagerClient>,
    max_body_bytes: usize,
    text: &str,
    conn_id: u64,
    user_id: &str,
    own_queue: &mpsc::Sender<Outbound>,
) -> Handled {
    match forward_text(manager, max_body_bytes, text, conn_id, user_id, own_queue) {
        Ok(Some(frame)) => Handled::Reply(frame),
        Ok(None) => Handled::Forwarded,
        Err(jwt) => Handled::Refresh(jwt),
    }
}

/// [`handle_text`]'s work: `Err` is a `refresh`'s token.
fn forward_text(
    manager: Option<&ManagerClient>,
    max_body_bytes: usize,
    text: &str,
    conn_id: u64,
    user_id: &str,
    own_queue: &mpsc::Sender<Outbound>,
) -> Result<Option<ServerFrame>, String> {
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err(e) => {
            return Ok(Some(ServerFrame::error(
                ErrorCode::BadRequest,
                e.to_string(),
            )))
        }
    };
    if let Some(refusal) = refuse_invalid(&frame, max_body_bytes) {
        return Ok(Some(refusal));
    }
    match frame {
        ClientFrame::Ping => return Ok(Some(ServerFrame::Pong)),
        ClientFrame::Refresh { token } => return Err(token),
        _ => {}
    }
    let item = HandlerItem::Frame {
        connection_id: conn_id,
        user_id: user_id.to_owned(),
        frame,
    };
    let Some(manager) = manager else {
        return Ok(unavailable_reply(&item));
    };
    let pending = Pending {
        item,
        reply_to: Some(own_queue.clone()),
        done: None,
    };
    match manager.submit(conn_id, pending) {
        Ok(()) => Ok(None),
        Err(pending) => {
            let client_msg_id = match &pending.item {
                HandlerItem::Frame { frame, .. } => frame.client_msg_id().map(str::to_owned),
                _ => None,
            };
            Ok(Some(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "this server is saturated, retry shortly".into(),
                client_msg_id,
            }))
        }
    }
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

    fn send(client_msg_id: &str, body: &str) -> ClientFrame {
        ClientFrame::Send {
            conversation_id: "c1".into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
            attachments: Vec::new(),
            reply_to: None,
        }
    }

    fn refusal(frame: &ClientFrame) -> Option<(ErrorCode, String, Option<String>)> {
        match refuse_invalid(frame, 16)? {
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
            } => Some((code, message, client_msg_id)),
            other => panic!("not an error frame: {other:?}"),
        }
    }

    #[test]
    fn a_send_with_nul_is_a_bad_request_tagged_with_its_id() {
        let parsed = ClientFrame::parse(
            r#"{"type":"send","conversation_id":"c1","client_msg_id":"m1","body":"a\u0000b"}"#,
        )
        .unwrap();
        let (code, message, id) = refusal(&parsed).expect("refused");
        assert_eq!(code, ErrorCode::BadRequest);
        assert_eq!(id.as_deref(), Some("m1"));
        assert!(
            message.contains("body") && message.contains("U+0000"),
            "{message}"
        );

        let (code, message, id) = refusal(&send("m\0", "fine")).expect("refused");
        assert_eq!((code, id.as_deref()), (ErrorCode::BadRequest, Some("m\0")));
        assert!(message.starts_with("client_msg_id"), "{message}");
    }

    #[test]
    fn nul_in_any_conversation_id_is_refused() {
        for frame in [
            ClientFrame::Send {
                conversation_id: "c\0".into(),
                client_msg_id: "m1".into(),
                body: "hi".into(),
                attachments: Vec::new(),
                reply_to: None,
            },
            ClientFrame::Read {
                conversation_id: "c\0".into(),
                seq: 1,
            },
            ClientFrame::Delivered {
                conversation_id: "\0".into(),
                seq: 1,
            },
            ClientFrame::Typing {
                conversation_id: "c\0".into(),
            },
        ] {
            let (code, message, _) = refusal(&frame).expect("refused");
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.starts_with("conversation_id"), "{message}");
        }
    }

    #[test]
    fn valid_frames_pass_and_size_is_still_checked_first() {
        assert_eq!(refusal(&send("m1", "hello \u{1F600}")), None);
        assert_eq!(refusal(&send("m1", "")), None);
        assert_eq!(refusal(&ClientFrame::Ping), None);
        assert_eq!(
            refusal(&ClientFrame::Read {
                conversation_id: "c1".into(),
                seq: 3
            }),
            None
        );
        let (code, _, id) = refusal(&send("big", &"x".repeat(17))).expect("refused");
        assert_eq!((code, id.as_deref()), (ErrorCode::TooLarge, Some("big")));
        let (code, _, _) = refusal(&send("big", &format!("{}\0", "x".repeat(17)))).unwrap();
        assert_eq!(code, ErrorCode::TooLarge);
        assert_eq!(refusal(&send("edge", &"x".repeat(16))), None);
    }
}

/// The loop driven by channels: the client's frames are a `Stream` over a tokio channel, what
/// the loop writes a `Sink` into another; time is tokio's paused clock, so heartbeats are
/// exact. There is no manager link (`manager: None`), so chat frames that pass validation are
/// answered `unavailable`; forwarding to real managers is covered by `tests/ws.rs`.
#[cfg(test)]
mod loop_tests {
    use std::cell::Cell;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use futures_util::Sink;
    use switchboard_service_kit::ops::Ops;
    use tokio::time::Instant;

    use super::*;
    use crate::wire::Gone;

    type Read = Result<Incoming<String>, ReadError>;

    /// The client's frames, as the loop reads them.
    struct Frames(mpsc::UnboundedReceiver<Read>);

    impl Stream for Frames {
        type Item = Read;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Read>> {
            self.0.poll_recv(cx)
        }
    }

    /// The client's side of the connection: what the loop writes arrives here.
    struct Wire(mpsc::UnboundedSender<Outgoing>);

    impl Sink<Outgoing> for Wire {
        type Error = mpsc::error::SendError<Outgoing>;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, frame: Outgoing) -> Result<(), Self::Error> {
            self.0.send(frame)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A client that stops reading once `stalled` is set: from then on no write completes,
    /// as a write into a full TCP window does not.
    struct Stalling {
        wire: Wire,
        stalled: Rc<Cell<bool>>,
        abandoned: Rc<Cell<bool>>,
    }

    impl Outlet for Stalling {
        async fn write(&mut self, frame: Outgoing) -> Result<(), Gone> {
            if self.stalled.get() {
                std::future::pending::<()>().await;
            }
            Outlet::write(&mut self.wire, frame).await
        }

        fn abandon(&mut self) {
            self.abandoned.set(true);
        }
    }

    /// What a session shares with the server: metrics, the shutdown and kick tokens, limits
    /// (the defaults: heartbeat 5 s, timeout 15 s), its token (u1's, an hour long unless a
    /// test sets `exp`; notice 60 s), and whether `leave` has run.
    struct Fixture {
        metrics: Metrics,
        shutdown: CancellationToken,
        kick: CancellationToken,
        limits: SessionLimits,
        left: Cell<bool>,
        keys: TokenKeys,
        token_metrics: TokenMetrics,
        ended: CancellationToken,
        exp: i64,
        iat: AtomicI64,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                metrics: Metrics::new(&Ops::new("socket-server")).expect("metrics"),
                shutdown: CancellationToken::new(),
                kick: CancellationToken::new(),
                limits: SessionLimits {
                    heartbeat_interval: Duration::from_secs(5),
                    client_timeout: Duration::from_secs(15),
                    rate_per_sec: 200,
                    rate_burst: 400,
                    max_body_bytes: 64 * 1024,
                    write_timeout: Duration::from_secs(5),
                },
                left: Cell::new(false),
                keys: TokenKeys::new(b"session-test"),
                token_metrics: TokenMetrics::new(&Ops::new("socket-server")).expect("metrics"),
                ended: CancellationToken::new(),
                exp: now() + 3_600,
                iat: AtomicI64::new(now()),
            }
        }

        /// A token of `sub` valid from now for `secs`.
        fn token(&self, sub: &str, secs: i64) -> String {
            let now = now();
            self.keys
                .sign_claims(&switchboard_protocol::token::Claims::new(
                    sub,
                    now + secs,
                    now,
                ))
        }

        /// A client and the session loop serving it (to be polled alongside the client).
        fn connect(&self) -> (Client, impl Future<Output = ()> + '_) {
            self.connect_through(|wire| wire)
        }

        /// [`Self::connect`], the loop writing through `outlet(wire)`.
        fn connect_through<'a, K: Outlet + 'a>(
            &'a self,
            outlet: impl FnOnce(Wire) -> K,
        ) -> (Client, impl Future<Output = ()> + 'a) {
            let (frames, frames_rx) = mpsc::unbounded_channel();
            let (wire_tx, wire) = mpsc::unbounded_channel();
            let (queue, outbound) = mpsc::channel(16);
            let ctx = SessionContext {
                conn_id: 7,
                user_id: "u1",
                server_id: "socket-test",
                limits: self.limits,
                metrics: &self.metrics,
                manager: None,
                shutdown: &self.shutdown,
                kick: &self.kick,
                own_queue: queue.clone(),
                outbound,
                token: TokenContext {
                    keys: &self.keys,
                    marks: None,
                    exp: self.exp,
                    iat: &self.iat,
                    notice: Duration::from_secs(60),
                    max_lifetime_secs: 86_400,
                    ended: &self.ended,
                    metrics: &self.token_metrics,
                },
            };
            let leave = async { self.left.set(true) };
            let session = run_session(Frames(frames_rx), outlet(Wire(wire_tx)), ctx, leave);
            let client = Client {
                frames,
                wire,
                queue,
            };
            (client, session)
        }
    }

    struct Client {
        frames: mpsc::UnboundedSender<Read>,
        wire: mpsc::UnboundedReceiver<Outgoing>,
        /// The connection's outbound queue, as the hub and the managers' replies fill it.
        queue: mpsc::Sender<Outbound>,
    }

    impl Client {
        fn send(&self, frame: Incoming<String>) {
            self.frames.send(Ok(frame)).expect("loop reads");
        }

        fn text(&self, text: &str) {
            self.send(Incoming::Text(text.to_owned()));
        }

        /// The next frame written, heartbeat pings skipped.
        async fn next(&mut self) -> Outgoing {
            loop {
                match self.wire.recv().await.expect("the loop ended") {
                    Outgoing::Ping => continue,
                    frame => return frame,
                }
            }
        }

        /// The next text frame, parsed.
        async fn frame(&mut self) -> ServerFrame {
            match self.next().await {
                Outgoing::Text(text) => serde_json::from_str(&text).expect("a server frame"),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }

        async fn error(&mut self) -> (ErrorCode, String, Option<String>) {
            match self.frame().await {
                ServerFrame::Error {
                    code,
                    message,
                    client_msg_id,
                } => (code, message, client_msg_id),
                other => panic!("expected an error frame, got {other:?}"),
            }
        }

        async fn hello(&mut self) {
            assert_eq!(
                self.frame().await,
                ServerFrame::Hello {
                    user_id: "u1".into(),
                    server_id: "socket-test".into()
                }
            );
        }

        /// The close frame, then nothing: the loop has ended and dropped its writer.
        async fn closed(&mut self) -> Option<CloseFrame> {
            let close = match self.next().await {
                Outgoing::Close(close) => close,
                other => panic!("expected a close frame, got {other:?}"),
            };
            assert_eq!(
                self.wire.recv().await,
                None,
                "nothing after the close frame"
            );
            close
        }
    }

    fn close(code: u16, reason: Option<&'static str>) -> Option<CloseFrame> {
        Some(CloseFrame { code, reason })
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// A token of 100 s: `token_expiring` a tenth of its life before `exp` (10 s, less than
    /// the 60 s notice), then 4401 at `exp`, counted. The client keeps answering pings, so
    /// only the token ends it.
    #[tokio::test(start_paused = true)]
    async fn an_expiring_token_is_noticed_then_closed_with_4401() {
        let mut fx = Fixture::new();
        fx.exp = now() + 100;
        fx.iat = AtomicI64::new(fx.exp - 100);
        let (mut client, session) = fx.connect();
        let start = Instant::now();
        let script = async move {
            client.hello().await;
            let expiring = loop {
                match client.wire.recv().await.expect("open") {
                    Outgoing::Ping => client.send(Incoming::Pong),
                    Outgoing::Text(text) => break text,
                    other => panic!("{other:?}"),
                }
            };
            let at = start.elapsed().as_secs_f64();
            assert!((89.0..=90.5).contains(&at), "notice at {at}s");
            let frame: ServerFrame = serde_json::from_str(&expiring).unwrap();
            let ServerFrame::TokenExpiring { expires_at } = frame else {
                panic!("{frame:?}")
            };
            assert!(expires_at.ends_with('Z'), "{expires_at}");
            let close_frame = loop {
                match client.wire.recv().await.expect("open") {
                    Outgoing::Ping => client.send(Incoming::Pong),
                    Outgoing::Close(close) => break close,
                    other => panic!("{other:?}"),
                }
            };
            assert_eq!(
                close_frame,
                close(4401, Some("token expired: get a new token and reconnect"))
            );
            let at = start.elapsed().as_secs_f64();
            assert!((99.0..=100.5).contains(&at), "closed at {at}s");
        };
        tokio::join!(session, script);
        assert_eq!(fx.token_metrics.expired.get(), 1);
        assert!(fx.left.get());
    }

    /// A refresh with a fresh token of the same user moves `exp`: no close at the old one.
    /// One of another user is `forbidden`, a bad or expired one `unauthorized`, and neither
    /// changes anything.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_moves_exp_and_a_wrong_one_changes_nothing() {
        let mut fx = Fixture::new();
        fx.exp = now() + 100;
        fx.iat = AtomicI64::new(now() - 50);
        let other_user = fx.token("u2", 600);
        let expired = fx
            .keys
            .sign_claims(&switchboard_protocol::token::Claims::new(
                "u1",
                now() - 60,
                now() - 120,
            ));
        let fresh = fx.token("u1", 600);
        let (mut client, session) = fx.connect();
        let start = Instant::now();
        let script = async move {
            client.hello().await;
            client.text(&format!(r#"{{"type":"refresh","token":"{other_user}"}}"#));
            assert_eq!(client.error().await.0, ErrorCode::Forbidden);
            client.text(&format!(r#"{{"type":"refresh","token":"{expired}"}}"#));
            let (code, message, _) = client.error().await;
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(message.contains("expired"), "{message}");
            client.text(r#"{"type":"refresh","token":"not-a-jwt"}"#);
            assert_eq!(client.error().await.0, ErrorCode::Unauthorized);
            client.text(&format!(r#"{{"type":"refresh","token":"{fresh}"}}"#));
            assert!(matches!(
                client.frame().await,
                ServerFrame::TokenRefreshed { .. }
            ));
            // Past the old exp, answering pings: still open.
            while start.elapsed() < Duration::from_secs(150) {
                assert_eq!(client.wire.recv().await, Some(Outgoing::Ping));
                client.send(Incoming::Pong);
            }
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
        assert_eq!(fx.token_metrics.expired.get(), 0);
        assert_eq!(
            fx.token_metrics
                .refreshes
                .with_label_values(&["refused"])
                .get(),
            3
        );
        assert_eq!(
            fx.token_metrics
                .refreshes
                .with_label_values(&["taken"])
                .get(),
            1
        );
        let iat = fx.iat.load(Ordering::Acquire);
        assert!(
            (now() - 5..=now()).contains(&iat),
            "the new token's iat: {iat}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ended_sessions_close_with_4403() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let ended = &fx.ended;
        let script = async move {
            client.hello().await;
            ended.cancel();
            assert_eq!(
                client.closed().await,
                close(4403, Some("sessions ended: sign in again"))
            );
        };
        tokio::join!(session, script);
        assert_eq!(fx.token_metrics.ended.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hello_then_a_ping_frame_gets_pong_and_a_websocket_ping_its_pong() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let script = async move {
            client.hello().await;
            client.text(r#"{"type":"ping"}"#);
            assert_eq!(client.frame().await, ServerFrame::Pong);
            client.send(Incoming::Ping(Bytes::from_static(b"abc")));
            assert_eq!(
                client.next().await,
                Outgoing::Pong(Bytes::from_static(b"abc"))
            );
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
        // `hello` and protocol pongs are not counted, as before.
        assert_eq!(fx.metrics.frames_in.get(), 1);
        assert_eq!(fx.metrics.frames_out.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_frame_gets_an_error_and_the_loop_goes_on() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let script = async move {
            client.hello().await;
            client.text("not json");
            let (code, _, id) = client.error().await;
            assert_eq!((code, id), (ErrorCode::BadRequest, None));
            client.text(r#"{"type":"nonsense"}"#);
            assert_eq!(client.error().await.0, ErrorCode::BadRequest);
            client.send(Incoming::Binary);
            let (code, message, _) = client.error().await;
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("binary"), "{message}");
            client.send(Incoming::Pong);
            client.text(r#"{"type":"ping"}"#);
            assert_eq!(client.frame().await, ServerFrame::Pong);
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
        assert_eq!(fx.metrics.frames_in.get(), 4);
        assert_eq!(fx.metrics.frames_out.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_with_nul_is_a_bad_request_and_a_valid_send_without_managers_unavailable() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let script = async move {
            client.hello().await;
            client.text(
                r#"{"type":"send","conversation_id":"c1","client_msg_id":"m1","body":"a\u0000b"}"#,
            );
            let (code, message, id) = client.error().await;
            assert_eq!((code, id.as_deref()), (ErrorCode::BadRequest, Some("m1")));
            assert!(message.contains("U+0000"), "{message}");
            client.text(r#"{"type":"typing","conversation_id":"c\u0000"}"#);
            assert_eq!(client.error().await.0, ErrorCode::BadRequest);
            client
                .text(r#"{"type":"send","conversation_id":"c1","client_msg_id":"m2","body":"hi"}"#);
            let (code, _, id) = client.error().await;
            assert_eq!((code, id.as_deref()), (ErrorCode::Unavailable, Some("m2")));
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_every_interval_then_closed_with_1001() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let start = Instant::now();
        let script = async move {
            client.hello().await;
            // The first tick is immediate; a client heard 15 s ago is not yet past the
            // timeout, so the close comes at the first tick after it: 20 s.
            for n in 0..4u64 {
                assert_eq!(client.wire.recv().await, Some(Outgoing::Ping));
                let at = start.elapsed().as_secs_f64();
                assert!((at - 5.0 * n as f64).abs() < 0.01, "ping {n} at {at}s");
            }
            assert_eq!(
                client.closed().await,
                close(1001, Some("heartbeat timeout"))
            );
            let at = start.elapsed().as_secs_f64();
            assert!((at - 20.0).abs() < 0.01, "closed at {at}s");
        };
        tokio::join!(session, script);
        assert!(fx.left.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_stays() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let start = Instant::now();
        let script = async move {
            client.hello().await;
            let mut pings = 0;
            while start.elapsed() < Duration::from_secs(60) {
                assert_eq!(client.wire.recv().await, Some(Outgoing::Ping));
                pings += 1;
                client.send(Incoming::Pong);
            }
            assert_eq!(pings, 13);
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_close_ends_the_loop_after_leaving() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let left = &fx.left;
        let script = async move {
            client.hello().await;
            assert!(!left.get());
            client.send(Incoming::Close);
            let close_frame = client.closed().await;
            assert_eq!(close_frame, close(1000, None));
            // The hub and the managers hear of it before the client gets its close frame.
            assert!(left.get());
            // `client.frames` is still open here: the close frame, not the end of the
            // stream, ended the loop.
            drop(client);
        };
        tokio::join!(session, script);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vanished_client_gets_no_close_code() {
        for last in [None, Some(Err(ReadError::Broken))] {
            let fx = Fixture::new();
            let (mut client, session) = fx.connect();
            let script = async move {
                client.hello().await;
                match last {
                    Some(read) => client.frames.send(read).unwrap(),
                    None => drop(std::mem::replace(
                        &mut client.frames,
                        mpsc::unbounded_channel().0,
                    )),
                }
                assert_eq!(client.closed().await, None);
            };
            tokio::join!(session, script);
            assert!(fx.left.get());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queued_frames_are_written_in_order() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let script = async move {
            client.hello().await;
            let frames: Vec<Arc<str>> = (1..=10)
                .map(|n| {
                    Arc::from(format!(
                        r#"{{"type":"typing","conversation_id":"c{n}","user_id":"u2"}}"#
                    ))
                })
                .collect();
            for frame in &frames[..5] {
                client
                    .queue
                    .try_send(Outbound::Frame(frame.clone()))
                    .unwrap();
            }
            client.text(r#"{"type":"ping"}"#);
            for frame in &frames[5..] {
                client
                    .queue
                    .send(Outbound::Frame(frame.clone()))
                    .await
                    .unwrap();
            }
            let mut written = Vec::new();
            while written.len() < 11 {
                match client.next().await {
                    Outgoing::Text(text) => written.push(text.to_string()),
                    other => panic!("{other:?}"),
                }
            }
            // The client's frame is read first (the loop prefers it); the queue keeps its
            // order.
            assert_eq!(written[0], ServerFrame::Pong.to_json());
            let queued: Vec<&str> = frames.iter().map(|f| &**f).collect();
            assert_eq!(written[1..], queued[..]);
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
        assert_eq!(fx.metrics.frames_out.get(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_with_1012_and_a_kick_with_1013() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let shutdown = &fx.shutdown;
        let script = async move {
            client.hello().await;
            shutdown.cancel();
            assert_eq!(
                client.closed().await,
                close(
                    1012,
                    Some("server restarting: reconnect through the registry")
                )
            );
        };
        tokio::join!(session, script);
        assert_eq!(fx.metrics.slow_consumer_kicks.get(), 0);

        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let kick = &fx.kick;
        let script = async move {
            client.hello().await;
            kick.cancel();
            assert_eq!(
                client.closed().await,
                close(1013, Some("too slow: reconnect and resync from history"))
            );
        };
        tokio::join!(session, script);
        assert_eq!(fx.metrics.slow_consumer_kicks.get(), 1);
    }

    /// A client that stops reading while frames are queued for it: the write never
    /// completes, and the kick that its full queue would send cannot be seen mid-write, so
    /// only the write timeout ends it: 5 s after the stall, without a close frame (a frame may
    /// be half written), the connection given up and counted as a slow consumer.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
        let fx = Fixture::new();
        let stalled = Rc::new(Cell::new(false));
        let abandoned = Rc::new(Cell::new(false));
        let (mut client, session) = fx.connect_through(|wire| Stalling {
            wire,
            stalled: stalled.clone(),
            abandoned: abandoned.clone(),
        });
        let start = Instant::now();
        let kick = &fx.kick;
        let script = async move {
            client.hello().await;
            stalled.set(true);
            for n in 0..16 {
                let frame =
                    format!(r#"{{"type":"typing","conversation_id":"c{n}","user_id":"u2"}}"#);
                client
                    .queue
                    .try_send(Outbound::Frame(frame.into()))
                    .unwrap();
            }
            // The loop is in the first of these writes when the queue has filled and the hub
            // kicks it.
            tokio::time::sleep(Duration::from_secs(1)).await;
            kick.cancel();
            let ended = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(frame) = client.wire.recv().await {
                    assert_eq!(frame, Outgoing::Ping, "nothing but the heartbeat got out");
                }
            })
            .await;
            assert!(ended.is_ok(), "the stalled loop never ended");
            let at = start.elapsed().as_secs_f64();
            assert!((at - 5.0).abs() < 0.01, "ended at {at}s");
        };
        tokio::join!(session, script);
        assert!(fx.left.get());
        assert!(
            abandoned.get(),
            "the connection was given up, not closed politely"
        );
        assert_eq!(fx.metrics.slow_consumer_kicks.get(), 1);
        assert_eq!(fx.metrics.write_timeouts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_frame_gets_too_large_then_1009() {
        let fx = Fixture::new();
        let (mut client, session) = fx.connect();
        let script = async move {
            client.hello().await;
            client.frames.send(Err(ReadError::TooLarge)).unwrap();
            assert_eq!(client.error().await.0, ErrorCode::TooLarge);
            assert_eq!(client.closed().await, close(1009, Some("frame too large")));
        };
        tokio::join!(session, script);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_burst_frames_are_rate_limited_and_the_loop_goes_on() {
        let mut fx = Fixture::new();
        fx.limits.rate_per_sec = 0;
        fx.limits.rate_burst = 2;
        let (mut client, session) = fx.connect();
        let script = async move {
            client.hello().await;
            for _ in 0..3 {
                client.text(r#"{"type":"ping"}"#);
            }
            assert_eq!(client.frame().await, ServerFrame::Pong);
            assert_eq!(client.frame().await, ServerFrame::Pong);
            assert_eq!(client.error().await.0, ErrorCode::RateLimited);
            client.send(Incoming::Ping(Bytes::new()));
            assert_eq!(client.next().await, Outgoing::Pong(Bytes::new()));
            client.send(Incoming::Close);
            assert_eq!(client.closed().await, close(1000, None));
        };
        tokio::join!(session, script);
        assert_eq!(fx.metrics.frames_in.get(), 3);
    }
}
