//! The public port: one accept loop that reads each connection's HTTP request head and either
//! opens a WebSocket session (`GET /ws`, see [`crate::websocket`]), opens or feeds a session
//! over HTTP where WebSockets are blocked (`GET /sse`, `POST /sse/{id}/frames`, see
//! [`crate::sse`]), answers `GET /live`
//! itself, or refuses the request (404). `/ready` and `/metrics` are served only by the
//! operations server on its own port (`SB_SOCKET_OPS_BIND`), which clients cannot reach
//! through this one, so a flood here cannot starve the health checkers' probes and the
//! metrics stay private. WebSocket connections never pass through an HTTP framework, so an
//! idle one holds only its socket, its task and its queue.
//!
//! One address cannot take the whole port: at accept, a connection is closed at once when its
//! address already has `SB_HANDSHAKES_PER_IP` heads being read (they must arrive within
//! `SB_HANDSHAKE_TIMEOUT_MS`), and an upgrade is refused (429) when the client's address
//! already holds `SB_MAX_CONNECTIONS_PER_IP` sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::trace_context::{TraceParent, TRACEPARENT_HEADER};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use switchboard_ws_codec::{parse_head, HeadError};

use switchboard_ws_codec::RequestHead;

use crate::per_address::AddressSlot;
use crate::session;
use crate::sse::{self, SseSessions};
use crate::state::ServerState;
use crate::token_life::Admitted;
use crate::websocket::{self, FrameReader, FrameWriter, HandshakeError};

/// The longest request head accepted (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Requests being read or refused at once, from all addresses; connections past this are
/// closed at accept. One address holds at most `SB_HANDSHAKES_PER_IP` of them.
const MAX_HANDSHAKES: usize = 4096;
/// How long a closing connection's unread input is drained (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// Why no request head could be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadHeadError {
    /// The peer went away (or sent nothing).
    Closed,
    /// What the codec refuses: malformed (400) or too many headers (431).
    Head(HeadError),
    /// Past [`MAX_HEAD_BYTES`] without a complete head (431).
    TooLarge,
}

/// Reads until a whole request head has arrived; returns it with every byte read so far.
async fn read_head(
    stream: &mut TcpStream,
) -> Result<(RequestHead, BytesMut, usize), ReadHeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let read = stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| ReadHeadError::Closed)?;
        if read == 0 {
            return Err(ReadHeadError::Closed);
        }
        if let Some((head, len)) = parse_head(&buf).map_err(ReadHeadError::Head)? {
            return Ok((head, buf, len));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ReadHeadError::TooLarge);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(MAX_HEAD_BYTES - buf.len()));
        }
    }
}

/// Connections waiting to be accepted on the public port.
const ACCEPT_BACKLOG: u32 = 4096;

/// `addr` as another process on this host reaches it (an unspecified address as loopback).
pub(crate) fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// Binds the public port (`SO_REUSEADDR`, so a restarted server can take it back at once).
pub(crate) fn bind_public(addr: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr} resolves to no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(ACCEPT_BACKLOG)?)
}

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let sse_sessions = SseSessions::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The address's share first, so one address cannot use up the global permits.
        let Some(address_slot) = state.handshakes_per_ip.try_take(peer.ip()) else {
            state.metrics.handshakes_refused.inc();
            tracing::debug!(%peer, "address has too many requests being read; connection closed");
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            state.metrics.handshakes_refused.inc();
            tracing::warn!(%peer, "too many requests being read at once; connection closed");
            continue;
        };
        let accepted = Accepted {
            stream,
            peer,
            address_slot,
            permit,
        };
        // Tracked, so the drain waits for the last connection by notification.
        state
            .connections
            .spawn(answer(accepted, state.clone(), sse_sessions.clone()));
    }
}

/// A connection let in at accept, with what it holds while its head is read.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// The address's share of the heads being read, kept until the connection is a session
    /// or gone: answers and refusals linger up to 2 s, and one address must not hold more of
    /// them.
    address_slot: Option<AddressSlot>,
    /// One of the [`MAX_HANDSHAKES`] heads being read at once, given back with the head.
    permit: OwnedSemaphorePermit,
}

/// One accepted connection: reads its request head (within `SB_HANDSHAKE_TIMEOUT_MS`), then
/// answers it by method and path.
async fn answer(accepted: Accepted, state: Arc<ServerState>, sse_sessions: Arc<SseSessions>) {
    let Accepted {
        mut stream,
        peer,
        address_slot,
        permit,
    } = accepted;
    let _ = stream.set_nodelay(true);
    let head = tokio::time::timeout(state.config.handshake_timeout, read_head(&mut stream)).await;
    let (head, buf, head_len) = match head {
        Err(_) | Ok(Err(ReadHeadError::Closed)) => return,
        Ok(Err(ReadHeadError::TooLarge | ReadHeadError::Head(HeadError::TooLarge))) => {
            let error = ApiError::bad_request("request head too large");
            return refuse(stream, 431, &error, "").await;
        }
        Ok(Err(ReadHeadError::Head(HeadError::Malformed))) => {
            let error = ApiError::bad_request("malformed HTTP request");
            return refuse(stream, 400, &error, "").await;
        }
        Ok(Ok(read)) => read,
    };
    drop(permit);
    let rest = &buf[head_len..];
    let span = request_span(&head);
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/ws") => upgrade(stream, peer, head, rest, state, address_slot, span).await,
        ("GET", "/live") => live(stream).instrument(span).await,
        // The fallback where WebSocket upgrades are blocked (crate::sse).
        ("GET", "/sse") => {
            sse::open(stream, peer, head, state, sse_sessions, address_slot, span).await;
        }
        ("POST", path) if path.starts_with("/sse/") => {
            sse::post(stream, head, rest, state, sse_sessions)
                .instrument(span)
                .await;
        }
        ("OPTIONS", path) if path == "/sse" || path.starts_with("/sse/") => {
            sse::preflight(stream, state, head).instrument(span).await;
        }
        _ => {
            let error = ApiError::new(
                ErrorCode::NotFound,
                "this port serves only GET /ws, GET /sse, POST /sse/{id}/frames and \
                 /live; /ready and /metrics are on the operations port \
                 (SB_SOCKET_OPS_BIND)",
            );
            refuse(stream, 404, &error, "").instrument(span).await;
        }
    }
}

/// The `request` span of one request on the public port (`method`, `path`, `trace_id`; the
/// same as every HTTP app's, see `service_kit::ops::timed`), joined to the trace a
/// `traceparent` header names. For an upgrade or an SSE stream it covers the admission and
/// the handshake, not the session: a span held for a session's life costs every idle
/// connection its slot in the subscriber (about a kilobyte, measured in S1). The path carries
/// no query: a token in `?token=` is never in a span.
pub(crate) fn request_span(head: &RequestHead) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %head.method,
        path = %head.path,
        trace_id = tracing::field::Empty
    );
    let incoming = head.header(TRACEPARENT_HEADER).and_then(TraceParent::parse);
    switchboard_service_kit::telemetry::trace::join(&span, incoming);
    span
}

/// `GET /ws`: admits the client (token, origin, limits) and completes the handshake inside
/// the request's span, then runs its session on this task once the span has ended.
async fn upgrade(
    stream: TcpStream,
    peer: SocketAddr,
    head: RequestHead,
    already_read: &[u8],
    state: Arc<ServerState>,
    handshake_slot: Option<AddressSlot>,
    span: tracing::Span,
) {
    let Some((stream, admitted, _address_slot)) = open_websocket(stream, peer, &head, &state)
        .instrument(span)
        .await
    else {
        return;
    };
    drop(handshake_slot);
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, already_read, state.config.max_frame_bytes);
    session::run(state, admitted, &mut reader, FrameWriter::new(write)).await;
    linger(&mut reader.into_inner()).await;
}

/// The upgrade's checks and its `101`: the stream, the admitted user and their address's slot
/// (held for the session's life), or `None` once refused.
async fn open_websocket(
    mut stream: TcpStream,
    peer: SocketAddr,
    head: &RequestHead,
    state: &ServerState,
) -> Option<(TcpStream, Admitted, Option<AddressSlot>)> {
    let (admitted, client_ip) = match session::admit(state, peer.ip(), head).await {
        Ok(admitted) => admitted,
        Err(error) => {
            refuse(stream, error.code.http_status(), &error, "").await;
            return None;
        }
    };
    tracing::debug!(user_id = %admitted.user_id, "upgrade admitted");
    let Some(address_slot) = state.connections_per_ip.try_take(client_ip) else {
        let cap = state.config.max_connections_per_ip;
        let error = ApiError::new(
            ErrorCode::RateLimited,
            format!("at most {cap} connections from one address may be open on a server"),
        );
        refuse(stream, 429, &error, "").await;
        return None;
    };
    let accept = match websocket::check_upgrade(|name| head.header(name)) {
        Ok(accept) => accept,
        Err(HandshakeError::NotAnUpgrade(why)) => {
            let error = ApiError::bad_request(format!("not a valid WebSocket upgrade: {why}"));
            refuse(stream, 400, &error, "").await;
            return None;
        }
        Err(HandshakeError::Version) => {
            let error = ApiError::bad_request("only WebSocket version 13 is spoken here");
            let extra = format!("sec-websocket-version: {}\r\n", websocket::VERSION);
            refuse(stream, 426, &error, &extra).await;
            return None;
        }
    };
    stream
        .write_all(websocket::switching_protocols(&accept).as_bytes())
        .await
        .ok()?;
    Some((stream, admitted, address_slot))
}

/// Answers with an error body and closes.
async fn refuse(mut stream: TcpStream, status: u16, error: &ApiError, extra_headers: &str) {
    let body = serde_json::to_vec(&ErrorBody::new(error.code, &error.message)).unwrap_or_default();
    let reason = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    // One write: a client may read only what arrived with the head (tungstenite does).
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    if stream.write_all(&response).await.is_ok() {
        let _ = stream.shutdown().await;
        linger(&mut stream).await;
    }
}

/// Reads and drops what the client still sends (up to [`LINGER`]), so closing does not reset
/// the connection while our last bytes are still on their way to it.
async fn linger<R: AsyncRead + Unpin>(read: &mut R) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// `GET /live` on the public port: answered here, never relayed, so it costs no more than a
/// refusal (a load balancer in front may probe it).
async fn live(mut stream: TcpStream) {
    let body = br#"{"status":"live"}"#;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let mut response = head.into_bytes();
    response.extend_from_slice(body);
    if stream.write_all(&response).await.is_ok() {
        let _ = stream.shutdown().await;
        linger(&mut stream).await;
    }
}
