//! The fallback transport where WebSocket upgrades are blocked (a proxy that strips `Upgrade`,
//! a corporate gateway): the same session over plain HTTP.
//!
//! - `GET /sse?token=<jwt>` opens a session: admitted exactly like `GET /ws`
//!   ([`session::admit`]: connect rate, token, origin, shutdown, per-user and server caps,
//!   ended sessions; then the address's `SB_MAX_CONNECTIONS_PER_IP` share), then answered
//!   `200 text/event-stream`. Its first event is `event: session` with
//!   `{"session_id":"…"}`; then every server frame is one `data:` event, the heartbeat is an
//!   `event: ping`, and the end is an `event: close` with `{"code","reason"}` (the codes of a
//!   WebSocket close) before the server ends the response.
//! - `POST /sse/{session_id}/frames` (token as for the GET, of the same user) carries client
//!   frames: one JSON frame per line. An empty body answers the heartbeat (a WebSocket pong).
//!   Answered 204 once the frames are queued to the session, in the order of the lines.
//!
//! Both plug into [`session::run`], the loop a WebSocket runs: an [`SseWriter`] is its
//! [`Outlet`] and an [`SseIncoming`] (the POSTs' frames, and the end of the GET's connection)
//! its stream. So the loop's rate limit, validation, heartbeat and client timeout, slow-consumer
//! kick, write timeout, token life and graceful drain (1012), the hub and the load reported to
//! the registry are the WebSocket's, with no second copy to keep in step.
//!
//! The session id is 160 random bits, known only to the client that opened the stream, and a
//! POST must also carry a token of the session's user: the id alone is not a credential.
//! Responses carry `Access-Control-Allow-Origin` for an allowed `Origin`, so a page served
//! elsewhere reads them (the client SDK sends only CORS "simple" requests: no preflight).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::Instrument;

use futures_util::Stream;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::{ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use switchboard_ws_codec::RequestHead;

use crate::per_address::AddressSlot;
use crate::session::{self, bearer_token, origin_allowed};
use crate::state::ServerState;
use crate::token_life::Admitted;
use crate::wire::{Gone, Incoming, Outgoing, Outlet, ReadError};

/// POSTed frames waiting for the session loop, per session. The loop reads them as fast as a
/// WebSocket's; a POST that finds the queue full waits (up to the write timeout) rather than
/// growing it.
const POST_QUEUE: usize = 256;

/// What a POST feeds the session loop.
type Feed = Result<Incoming<String>, ReadError>;

/// The open SSE sessions of one server, by session id. Made by the accept loop, so two
/// servers in one process (the tests) never see each other's sessions.
#[derive(Default)]
pub(crate) struct SseSessions {
    table: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    user_id: UserId,
    feed: mpsc::Sender<Feed>,
}

impl SseSessions {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn get(&self, id: &str) -> Option<Entry> {
        self.table.lock().expect("sse sessions").get(id).cloned()
    }
}

/// Removes a session's entry when its stream ends, however it ends.
struct Registration {
    sessions: Arc<SseSessions>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions
            .table
            .lock()
            .expect("sse sessions")
            .remove(&self.id);
    }
}

/// 160 random bits as 40 hex digits (ULIDs carry 80 random bits each, from a CSPRNG).
fn new_session_id() -> String {
    let (a, b) = (ulid::Ulid::new().random(), ulid::Ulid::new().random());
    format!("{a:020x}{b:020x}")
}

/// `GET /sse`: admits the client as `GET /ws` does, answers the event stream and runs the
/// session on this task.
pub(crate) async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    head: RequestHead,
    state: Arc<ServerState>,
    sessions: Arc<SseSessions>,
    handshake_slot: Option<AddressSlot>,
    span: tracing::Span,
) {
    // The admission and the stream's head inside the request's span; the session after it
    // ended (see `listener::request_span`).
    let Some(opened) = open_stream(stream, peer, &head, &state, sessions)
        .instrument(span)
        .await
    else {
        return;
    };
    drop(handshake_slot);
    let Opened {
        stream,
        admitted,
        address_slot: _address_slot,
        registration,
        frames,
    } = opened;
    let (read, write) = stream.into_split();
    let incoming = SseIncoming {
        frames,
        read,
        read_done: false,
    };
    session::run(state, admitted, incoming, SseWriter::new(write)).await;
    drop(registration);
}

/// An admitted SSE session whose head was written.
struct Opened {
    stream: TcpStream,
    admitted: Admitted,
    /// Held for the session's life, as a WebSocket's.
    address_slot: Option<AddressSlot>,
    registration: Registration,
    frames: mpsc::Receiver<Result<Incoming<String>, ReadError>>,
}

/// The stream's checks, its registration and its head, or `None` once refused.
async fn open_stream(
    mut stream: TcpStream,
    peer: SocketAddr,
    head: &RequestHead,
    state: &ServerState,
    sessions: Arc<SseSessions>,
) -> Option<Opened> {
    let cors = cors_headers(state, head);
    let (admitted, client_ip) = match session::admit(state, peer.ip(), head).await {
        Ok(admitted) => admitted,
        Err(error) => {
            respond_error(stream, &error, &cors).await;
            return None;
        }
    };
    let Some(address_slot) = state.connections_per_ip.try_take(client_ip) else {
        let cap = state.config.max_connections_per_ip;
        let error = ApiError::new(
            ErrorCode::RateLimited,
            format!("at most {cap} connections from one address may be open on a server"),
        );
        respond_error(stream, &error, &cors).await;
        return None;
    };
    let id = new_session_id();
    let (feed, frames) = mpsc::channel(POST_QUEUE);
    sessions.table.lock().expect("sse sessions").insert(
        id.clone(),
        Entry {
            user_id: admitted.user_id.clone(),
            feed,
        },
    );
    let registration = Registration {
        sessions,
        id: id.clone(),
    };
    // No content-length: the body is the stream, ended by closing the connection.
    // `x-accel-buffering: no` tells an nginx in front not to buffer it (besides the
    // location's own `proxy_buffering off`).
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n{cors}\r\n\
         event: session\ndata: {{\"session_id\":\"{id}\"}}\n\n"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    Some(Opened {
        stream,
        admitted,
        address_slot,
        registration,
        frames,
    })
}

/// `POST /sse/{session_id}/frames`: the client's frames for its session, one JSON frame per
/// line; an empty body is the answer to a heartbeat. `already_read` holds the body's bytes
/// that came with the head.
pub(crate) async fn post(
    mut stream: TcpStream,
    head: RequestHead,
    already_read: &[u8],
    state: Arc<ServerState>,
    sessions: Arc<SseSessions>,
) {
    let cors = cors_headers(&state, &head);
    match accept_post(&mut stream, &head, already_read, &state, &sessions).await {
        Ok(()) => respond(stream, 204, "", &cors).await,
        Err(error) => respond_error(stream, &error, &cors).await,
    }
}

/// `OPTIONS /sse…`: a CORS preflight (a client that authenticates with a header rather than
/// `?token=`).
pub(crate) async fn preflight(stream: TcpStream, state: Arc<ServerState>, head: RequestHead) {
    let mut cors = cors_headers(&state, &head);
    if !cors.is_empty() {
        cors.push_str(
            "access-control-allow-methods: GET, POST\r\n\
             access-control-allow-headers: authorization, content-type\r\n\
             access-control-max-age: 600\r\n",
        );
    }
    respond(stream, 204, "", &cors).await;
}

/// A POST's work: find its session (of the token's user), read its body within the limits,
/// and queue its frames to the session in order.
async fn accept_post(
    stream: &mut TcpStream,
    head: &RequestHead,
    already_read: &[u8],
    state: &ServerState,
    sessions: &SseSessions,
) -> Result<(), ApiError> {
    let entry = session_of(head, state, sessions)?;
    let length = content_length(head)?;
    let limit = state.config.max_frame_bytes;
    let timeout = state.config.client_write_timeout;
    if length > limit {
        // As a WebSocket frame over the limit: `too_large`, and the session is closed (1009).
        let _ = tokio::time::timeout(timeout, entry.feed.send(Err(ReadError::TooLarge))).await;
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("a POST carries at most {limit} bytes of frames; the session is closed"),
        ));
    }
    let body = read_body(stream, already_read, length, state.config.handshake_timeout).await?;
    let Ok(body) = String::from_utf8(body) else {
        // As a WebSocket text frame that is not UTF-8 (1007).
        let _ = tokio::time::timeout(
            timeout,
            entry.feed.send(Err(ReadError::Protocol(
                crate::wire::close_code::INVALID_PAYLOAD,
            ))),
        )
        .await;
        return Err(ApiError::bad_request(
            "frames must be UTF-8; the session is closed",
        ));
    };
    feed(&entry, frames_of(&body), timeout).await
}

/// The session a POST is for: its id from the path, the request's token (of the session's
/// user) and `Origin` checked.
fn session_of(
    head: &RequestHead,
    state: &ServerState,
    sessions: &SseSessions,
) -> Result<Entry, ApiError> {
    let id = head
        .path
        .strip_prefix("/sse/")
        .and_then(|rest| rest.strip_suffix("/frames"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                "client frames go to POST /sse/{session_id}/frames",
            )
        })?;
    let token = bearer_token(head).ok_or_else(|| {
        state.metrics.auth_failures.inc();
        ApiError::new(
            ErrorCode::Unauthorized,
            "a token is required: ?token=<jwt> or Authorization: Bearer <jwt>",
        )
    })?;
    let verified = state.tokens.verify_claims(&token).map_err(|_| {
        state.metrics.auth_failures.inc();
        ApiError::new(
            ErrorCode::Unauthorized,
            "token is expired, malformed or wrongly signed",
        )
    })?;
    if let Some(origin) = head.header("origin") {
        if !origin_allowed(&state.config.common.allowed_origins, origin) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("origin {origin:?} may not post frames here (SB_ALLOWED_ORIGINS)"),
            ));
        }
    }
    let entry = sessions.get(id).ok_or_else(session_gone)?;
    if entry.user_id != verified.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the session is another user's",
        ));
    }
    Ok(entry)
}

/// What a POST for a session that has ended is answered.
fn session_gone() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such session (it has ended): open a new one through the registry",
    )
}

/// The body's length: its `content-length` (none: empty); chunked bodies are refused.
fn content_length(head: &RequestHead) -> Result<usize, ApiError> {
    if head
        .header("transfer-encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err(ApiError::bad_request(
            "send frames with a content-length, not chunked",
        ));
    }
    match head.header("content-length") {
        None => Ok(0),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_request("content-length is not a number")),
    }
}

/// A body's frames: one per non-blank line; an empty body answers the heartbeat.
fn frames_of(body: &str) -> Vec<Feed> {
    if body.trim().is_empty() {
        vec![Ok(Incoming::Pong)]
    } else {
        body.split('\n')
            .map(|line| line.trim_end_matches('\r'))
            .filter(|line| !line.trim().is_empty())
            .map(|line| Ok(Incoming::Text(line.to_owned())))
            .collect()
    }
}

/// Queues `frames` to the session in order, each within `timeout` (the session is not
/// reading them: `unavailable`).
async fn feed(entry: &Entry, frames: Vec<Feed>, timeout: Duration) -> Result<(), ApiError> {
    for frame in frames {
        match tokio::time::timeout(timeout, entry.feed.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(session_gone()),
            Err(_) => {
                return Err(ApiError::unavailable(
                    "the session is not reading its frames: retry shortly",
                ))
            }
        }
    }
    Ok(())
}

/// The body: what came with the head, then the rest up to `length`, within `timeout`.
async fn read_body(
    stream: &mut TcpStream,
    already_read: &[u8],
    length: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let mut body = already_read[..already_read.len().min(length)].to_vec();
    let rest = length - body.len();
    if rest > 0 {
        let start = body.len();
        body.resize(length, 0);
        let read = tokio::time::timeout(timeout, stream.read_exact(&mut body[start..])).await;
        if !matches!(read, Ok(Ok(_))) {
            return Err(ApiError::bad_request(
                "the body did not arrive in time (or shorter than its content-length)",
            ));
        }
    }
    Ok(body)
}

/// `Access-Control-Allow-Origin` (with `Vary`) for a request whose `Origin` may connect.
fn cors_headers(state: &ServerState, head: &RequestHead) -> String {
    match head.header("origin") {
        Some(origin) if origin_allowed(&state.config.common.allowed_origins, origin) => {
            let origin: String = origin.chars().filter(|c| !c.is_control()).collect();
            format!("access-control-allow-origin: {origin}\r\nvary: origin\r\n")
        }
        _ => String::new(),
    }
}

async fn respond_error(stream: TcpStream, error: &ApiError, cors: &str) {
    let body =
        serde_json::to_string(&ErrorBody::new(error.code, &error.message)).unwrap_or_default();
    respond(stream, error.code.http_status(), &body, cors).await;
}

/// One response, then close (after draining what the client still sends, briefly, so the
/// close does not reset the connection under our answer).
async fn respond(mut stream: TcpStream, status: u16, body: &str, cors: &str) {
    let reason = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let content_type = if body.is_empty() {
        ""
    } else {
        "content-type: application/json\r\n"
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{content_type}content-length: {}\r\n\
         connection: close\r\n{cors}\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The session loop's client frames: what the POSTs feed, ending when the GET's connection
/// does (the client went away). Bytes the client sends on the GET's connection are dropped.
pub(crate) struct SseIncoming {
    frames: mpsc::Receiver<Feed>,
    read: OwnedReadHalf,
    read_done: bool,
}

impl Stream for SseIncoming {
    type Item = Feed;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Feed>> {
        let this = self.get_mut();
        if let Poll::Ready(Some(frame)) = this.frames.poll_recv(cx) {
            return Poll::Ready(Some(frame));
        }
        loop {
            if this.read_done {
                return Poll::Ready(None);
            }
            // A stack chunk, so an idle session's pending read holds no buffer.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 512];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut this.read).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(ReadError::Broken)));
                }
                Poll::Ready(Ok(())) if buf.filled().is_empty() => this.read_done = true,
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

/// The session loop's outlet: each frame one SSE event, one write.
pub(crate) struct SseWriter {
    write: OwnedWriteHalf,
    closed: bool,
}

impl SseWriter {
    fn new(write: OwnedWriteHalf) -> Self {
        SseWriter {
            write,
            closed: false,
        }
    }
}

/// One SSE event: `data:` per line of `text` (frames are one line; a line break would
/// otherwise end the event early), after `event:` when named.
fn event(name: Option<&str>, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in text.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The body of the `close` event: the code and reason a WebSocket's close frame would carry.
#[derive(serde::Serialize)]
struct CloseEvent<'a> {
    code: u16,
    reason: &'a str,
}

impl Outlet for SseWriter {
    fn abandon(&mut self) {
        self.closed = true;
        // As a WebSocket's: reset rather than keep the unread bytes (see FrameWriter).
        #[allow(deprecated)]
        let _ = self.write.as_ref().set_linger(Some(Duration::ZERO));
    }

    async fn write(&mut self, frame: Outgoing) -> Result<(), Gone> {
        if self.closed {
            return Err(Gone);
        }
        let out = match &frame {
            Outgoing::Text(text) => event(None, text),
            // The heartbeat: the client answers with an empty POST, as a WebSocket pongs.
            Outgoing::Ping => event(Some("ping"), "{}"),
            // Only a WebSocket ping is answered with a pong: never here.
            Outgoing::Pong(_) => return Ok(()),
            Outgoing::Close(close) => {
                self.closed = true;
                let out = close.map(|c| {
                    let body = CloseEvent {
                        code: c.code,
                        reason: c.reason.unwrap_or_default(),
                    };
                    let body = serde_json::to_string(&body).unwrap_or_default();
                    event(Some("close"), &body)
                });
                let written = match out {
                    Some(out) => self.write.write_all(&out).await,
                    None => Ok(()),
                };
                let _ = self.write.shutdown().await;
                return written.map_err(|_| Gone);
            }
        };
        self.write.write_all(&out).await.map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_data_lines_and_named_ones_carry_their_name() {
        assert_eq!(
            event(None, r#"{"type":"pong"}"#),
            b"data: {\"type\":\"pong\"}\n\n".to_vec()
        );
        assert_eq!(
            event(Some("ping"), "{}"),
            b"event: ping\ndata: {}\n\n".to_vec()
        );
        assert_eq!(event(None, "a\r\nb"), b"data: a\ndata: b\n\n".to_vec());
    }

    #[test]
    fn session_ids_are_40_hex_digits_and_differ() {
        let (a, b) = (new_session_id(), new_session_id());
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
