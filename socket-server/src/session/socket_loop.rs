//! The socket loop: one task per connection that writes `hello`, then selects (in this
//! priority) over shutdown, a kick, the end of the user's sessions, the token's timer, the
//! client's frames, the connection's outbound queue, a refresh's mark read and the heartbeat
//! until one of them ends it; then it awaits `leave` and writes the close frame (at most 2 s).
//!
//! Each branch's work is its part's: `inbound` (client frames), `outbound` (the queue, and
//! every write bounded by the write timeout), `token` (expiry and refresh), `heartbeat`
//! (liveness) and `closing` (the close frame). What the loop keeps is the order of the
//! branches and that nothing but those bounded writes is awaited between two selects.

use std::future::Future;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::{ServerId, UserId};
use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::mpsc;

use super::closing::close;
use super::heartbeat::Liveness;
use super::inbound::Inbound;
use super::outbound::{Ending, Writer};
use super::token::{mark_read, TokenContext, TokenLife};
use crate::config::SocketServerConfig;
use crate::hub::{ConnId, Outbound};
use crate::manager_client::ManagerClient;
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::wire::{Incoming, Outgoing, Outlet, ReadError};

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
    pub user_id: &'a UserId,
    /// Named in `hello`.
    pub server_id: &'a ServerId,
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

/// The connection loop (see the module doc): `hello`, the `select!` over the connection's
/// branches until one ends it, then `leave` and the close frame.
///
/// Made once, before the loop: the shutdown, kick and sessions-ended signals (a fresh
/// `cancelled()` per turn locks each token and registers a waiter every time a frame passes;
/// `is_cancelled` and the waiter's poll/drop showed in the profile), and the token's one
/// timer.
pub(crate) async fn run_session<S, T, K>(
    mut incoming: S,
    outlet: K,
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
    let mut writer = Writer {
        outlet,
        metrics,
        timeout: limits.write_timeout,
    };
    let hello = ServerFrame::Hello {
        user_id: user_id.clone(),
        server_id: server_id.clone(),
    };
    let mut ending = writer.write(Outgoing::Text(hello.to_json().into())).await;

    let mut liveness = Liveness::new(limits.heartbeat_interval, limits.client_timeout);
    let mut inbound = Inbound {
        conn_id,
        user_id,
        manager,
        max_body_bytes: limits.max_body_bytes,
        own_queue,
        limiter: TokenBucket::new(limits.rate_per_sec, limits.rate_burst),
    };
    let token_metrics = token.metrics;
    let shutdown_signal = shutdown.cancelled();
    let kick_signal = kick.cancelled();
    let ended_signal = token.ended.cancelled();
    tokio::pin!(shutdown_signal, kick_signal, ended_signal);
    let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut token = TokenLife::start(token, user_id, timer);
    while ending.is_none() {
        ending = tokio::select! {
            biased;
            _ = &mut shutdown_signal => Some(Ending::ServerShutdown),
            _ = &mut kick_signal => Some(Ending::Kicked),
            _ = &mut ended_signal => Some(Ending::SessionsEnded),
            _ = &mut token.timer => token.timer_fired(&mut writer).await,
            read = incoming.next() => {
                liveness.heard();
                inbound.read(read, &mut token, &mut writer).await
            }
            out = rx.recv() => writer.queued(out).await,
            answer = mark_read(&mut token.refreshing), if token.refreshing.is_some() => {
                token.mark_answered(answer, &mut writer).await
            }
            _ = liveness.ticks.tick() => liveness.tick(&mut writer).await,
        };
    }

    leave.await;
    close(writer, ending, token_metrics).await;
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

    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use switchboard_protocol::token::TokenKeys;
    use switchboard_protocol::ErrorCode;

    use super::*;
    use crate::token_life::TokenMetrics;
    use crate::wire::{CloseFrame, Gone};

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
        user_id: UserId,
        server_id: ServerId,
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
                user_id: UserId::parse("u1").expect("a user id"),
                server_id: ServerId::parse("socket-test").expect("a server id"),
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
                user_id: &self.user_id,
                server_id: &self.server_id,
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
                    user_id: "u1".parse().unwrap(),
                    server_id: "socket-test".parse().unwrap()
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
            assert!(expires_at.to_string().ends_with('Z'), "{expires_at}");
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
