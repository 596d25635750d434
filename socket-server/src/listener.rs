//! The public port: one accept loop that reads each connection's HTTP request head and either
//! opens a WebSocket session (`GET /ws`, see [`crate::websocket`]) or hands the connection,
//! head included, to the operations server (`/live`, `/ready`, `/metrics`) listening on
//! loopback. WebSocket connections never pass through an HTTP framework, so an idle one holds
//! only its socket, its task and its queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::websocket::{self, FrameReader, FrameWriter, HandshakeError};
use crate::{session, ServerState};

/// The longest request head accepted (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A client must finish its request head within this long (slow-header clients hold a task).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests being read or refused at once; connections past this are closed at accept.
const MAX_HANDSHAKES: usize = 4096;
/// How long a closing connection's unread input is drained (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);
/// Headers parsed per request.
const MAX_HEADERS: usize = 64;

/// An HTTP/1.x request's line and headers, owned; header names in lower case.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header (`name` in lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub(crate) fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The peer went away (or sent nothing).
    Closed,
    Malformed,
    TooLarge,
}

/// Parses a complete head at the start of `buf`: `Ok(None)` while it is incomplete; on
/// success, the head and its length in bytes.
fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = request
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).map_err(|_| HeadError::Malformed)?;
            Ok((h.name.to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect::<Result<_, HeadError>>()?;
    Ok(Some((
        RequestHead {
            method: request.method.unwrap_or_default().to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
        },
        len,
    )))
}

/// Reads until a whole request head has arrived; returns it with every byte read so far.
async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let read = stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| HeadError::Closed)?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
        if let Some((head, len)) = parse_head(&buf)? {
            return Ok((head, buf, len));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(MAX_HEAD_BYTES - buf.len()));
        }
    }
}

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, ops: SocketAddr, state: Arc<ServerState>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
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
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many requests being read at once; connection closed");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut stream = stream;
            let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
            let (head, buf, head_len) = match head {
                Err(_) | Ok(Err(HeadError::Closed)) => return,
                Ok(Err(HeadError::TooLarge)) => {
                    let error = ApiError::bad_request("request head too large");
                    return refuse(stream, 431, &error, "").await;
                }
                Ok(Err(HeadError::Malformed)) => {
                    let error = ApiError::bad_request("malformed HTTP request");
                    return refuse(stream, 400, &error, "").await;
                }
                Ok(Ok(read)) => read,
            };
            drop(permit);
            if head.method == "GET" && head.path == "/ws" {
                upgrade(stream, peer, head, &buf[head_len..], state).await;
            } else {
                proxy(stream, &head, &buf[head_len..], ops).await;
            }
        });
    }
}

/// `GET /ws`: admits the client (token, origin, limits), completes the handshake and runs
/// its session on this task.
async fn upgrade(
    mut stream: TcpStream,
    peer: SocketAddr,
    head: RequestHead,
    already_read: &[u8],
    state: Arc<ServerState>,
) {
    let user_id = match session::admit(&state, peer.ip(), &head) {
        Ok(user_id) => user_id,
        Err(error) => return refuse(stream, error.code.http_status(), &error, "").await,
    };
    let accept = match websocket::check_upgrade(|name| head.header(name)) {
        Ok(accept) => accept,
        Err(HandshakeError::NotAnUpgrade(why)) => {
            let error = ApiError::bad_request(format!("not a valid WebSocket upgrade: {why}"));
            return refuse(stream, 400, &error, "").await;
        }
        Err(HandshakeError::Version) => {
            let error = ApiError::bad_request("only WebSocket version 13 is spoken here");
            let extra = format!("sec-websocket-version: {}\r\n", websocket::VERSION);
            return refuse(stream, 426, &error, &extra).await;
        }
    };
    if stream
        .write_all(websocket::switching_protocols(&accept).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, already_read, state.config.max_frame_bytes);
    session::run(state, user_id, &mut reader, FrameWriter::new(write)).await;
    linger(&mut reader.into_inner()).await;
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

/// The head to relay: the client's, with `connection: close`, so the connection carries this
/// one request (the next one, perhaps `GET /ws`, must come back through [`serve`]).
fn relayed_head(head: &RequestHead) -> String {
    let mut out = format!("{} {}", head.method, head.path);
    if !head.query.is_empty() {
        out.push('?');
        out.push_str(&head.query);
    }
    out.push_str(" HTTP/1.1\r\n");
    for (name, value) in head.headers.iter().filter(|(n, _)| n != "connection") {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out
}

/// Any other request: relayed, with the bytes already read after its head, to the operations
/// server.
async fn proxy(mut client: TcpStream, head: &RequestHead, already_read: &[u8], ops: SocketAddr) {
    let mut upstream = match TcpStream::connect(ops).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!(error = %e, "operations server unreachable");
            let error = ApiError::new(ErrorCode::Unavailable, "shutting down");
            return refuse(client, 503, &error, "").await;
        }
    };
    let _ = upstream.set_nodelay(true);
    if upstream
        .write_all(relayed_head(head).as_bytes())
        .await
        .is_ok()
        && upstream.write_all(already_read).await.is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_with_their_query_and_lower_case_names() {
        let raw = b"GET /ws?token=abc&x=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\
                    x-forwarded-for: 5.6.7.8\r\nUpgrade:  websocket \r\n\r\nextra";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 5);
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query, "token=abc&x=1");
        assert_eq!(head.header("upgrade"), Some("websocket"));
        assert_eq!(
            head.headers("x-forwarded-for").collect::<Vec<_>>(),
            ["1.2.3.4", "5.6.7.8"]
        );
        assert_eq!(head.header("origin"), None);
    }

    #[test]
    fn a_relayed_request_asks_to_close_after_it() {
        let raw = b"GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n";
        let (head, _) = parse_head(raw).unwrap().unwrap();
        assert_eq!(
            relayed_head(&head),
            "GET /metrics?x=1 HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn incomplete_and_bad_heads() {
        assert!(matches!(
            parse_head(b"GET /ws HTTP/1.1\r\nHost: h\r\n"),
            Ok(None)
        ));
        assert!(matches!(
            parse_head(b"\x00\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_head(raw.as_bytes()),
            Err(HeadError::TooLarge)
        ));
    }
}
