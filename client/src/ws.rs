//! The WebSocket side: a [`Connection`] ready once `hello` arrived, typed frames both ways,
//! and a split into a [`FrameSender`] and a [`FrameReceiver`] for load.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};
use crate::urls;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a new connection waits for `hello`.
pub const HELLO_WAIT: Duration = Duration::from_secs(10);

/// A `sent` acknowledgement: the message is in the log under `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub client_msg_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub seq: u64,
    pub created_at: String,
}

/// A `send` frame serialized from borrowed strings: the same JSON as
/// [`ClientFrame::Send`] (a unit test holds them equal) without copying the strings first.
#[derive(Serialize)]
#[serde(tag = "type", rename = "send")]
struct SendRef<'a> {
    conversation_id: &'a str,
    client_msg_id: &'a str,
    body: &'a str,
}

/// The text of a `send` frame.
fn send_text(conversation_id: &str, client_msg_id: &str, body: &str) -> String {
    serde_json::to_string(&SendRef {
        conversation_id,
        client_msg_id,
        body,
    })
    .expect("frames are plain data")
}

fn frame_text(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).expect("frames are plain data")
}

/// A text frame from the server, typed.
fn parse_server_frame(text: &str) -> Result<ServerFrame> {
    serde_json::from_str(text).map_err(|e| {
        let shown: String = text.chars().take(200).collect();
        Error::Protocol(format!("not a server frame ({e}): {shown}"))
    })
}

async fn send_to<S>(sink: &mut S, message: Message) -> Result<()>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    Ok(sink.send(message).await?)
}

/// The next server frame before `deadline`, skipping control and binary frames.
async fn recv_from<St>(stream: &mut St, deadline: Instant) -> Result<ServerFrame>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(Error::Timeout),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Err(Error::Closed),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(Message::Text(text)))) => return parse_server_frame(&text),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The first frame `wanted` accepts; frames before it are dropped.
async fn recv_until_from<St>(
    stream: &mut St,
    within: Duration,
    mut wanted: impl FnMut(&ServerFrame) -> bool,
) -> Result<ServerFrame>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + within;
    loop {
        let frame = recv_from(stream, deadline).await?;
        if wanted(&frame) {
            return Ok(frame);
        }
    }
}

/// Frames until `done` says so, `within` passes, or the connection ends.
async fn collect_from<St>(
    stream: &mut St,
    within: Duration,
    mut done: impl FnMut(&[ServerFrame]) -> bool,
) -> Vec<ServerFrame>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + within;
    let mut frames = Vec::new();
    while !done(&frames) {
        match recv_from(stream, deadline).await {
            Ok(frame) => frames.push(frame),
            Err(_) => break,
        }
    }
    frames
}

/// The `sent` for `client_msg_id`, or the `error` frame answering it.
async fn expect_sent_from<St>(
    stream: &mut St,
    client_msg_id: &str,
    within: Duration,
) -> Result<Sent>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let frame = recv_until_from(stream, within, |f| match f {
        ServerFrame::Sent {
            client_msg_id: id, ..
        } => id == client_msg_id,
        ServerFrame::Error {
            client_msg_id: Some(id),
            ..
        } => id == client_msg_id,
        _ => false,
    })
    .await?;
    match frame {
        ServerFrame::Sent {
            client_msg_id,
            conversation_id,
            message_id,
            seq,
            created_at,
        } => Ok(Sent {
            client_msg_id,
            conversation_id: conversation_id.into(),
            message_id: message_id.into(),
            seq,
            created_at: created_at.to_string(),
        }),
        ServerFrame::Error {
            code,
            message,
            client_msg_id,
        } => Err(Error::Frame {
            code,
            message,
            client_msg_id,
        }),
        other => Err(Error::Protocol(format!("unexpected {other:?}"))),
    }
}

/// One WebSocket to a socket server, past `hello`.
pub struct Connection {
    ws: Ws,
    server_id: String,
    user_id: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server_id", &self.server_id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

impl Connection {
    /// Connects to `url` (an [`Assignment`]'s) with `?token=` and waits for `hello`.
    ///
    /// [`Assignment`]: switchboard_protocol::registry::Assignment
    pub async fn connect(url: &str, token: &str) -> Result<Connection> {
        Connection::open(&urls::ws_with_token(url, token), None).await
    }

    /// Connects to `url` with the token in an `Authorization: Bearer` header.
    pub async fn connect_bearer(url: &str, token: &str) -> Result<Connection> {
        Connection::open(url, Some(token)).await
    }

    /// Connects to `url` exactly as given (whatever query it carries), with an optional
    /// bearer token, and waits for `hello`. A refused upgrade is [`Error::Refused`], with the
    /// status, the body and its error code.
    pub async fn open(url: &str, bearer: Option<&str>) -> Result<Connection> {
        let mut request = url.into_client_request()?;
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Protocol("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let mut ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(Error::refused(response.status().as_u16(), body));
            }
            Err(e) => return Err(e.into()),
        };
        match recv_from(&mut ws, Instant::now() + HELLO_WAIT).await? {
            ServerFrame::Hello { user_id, server_id } => Ok(Connection {
                ws,
                server_id: server_id.into(),
                user_id: user_id.into(),
            }),
            other => Err(Error::Protocol(format!("expected hello, got {other:?}"))),
        }
    }

    /// The socket server's id, from `hello`.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Who the server says we are, from `hello`.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        send_to(&mut self.ws, Message::Text(frame_text(frame))).await
    }

    /// A `send` frame.
    pub async fn send_message(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Result<()> {
        let text = send_text(conversation_id, client_msg_id, body);
        send_to(&mut self.ws, Message::Text(text)).await
    }

    /// Any text, as one text frame (malformed frames, for tests of the server's answers).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        send_to(&mut self.ws, Message::Text(text.into())).await
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<()> {
        send_to(&mut self.ws, Message::Binary(data)).await
    }

    /// The next server frame: [`Error::Timeout`] after `within`, [`Error::Closed`] once the
    /// server closed.
    pub async fn recv(&mut self, within: Duration) -> Result<ServerFrame> {
        recv_from(&mut self.ws, Instant::now() + within).await
    }

    /// The first frame `wanted` accepts within `within`; frames before it are dropped.
    pub async fn recv_until(
        &mut self,
        within: Duration,
        wanted: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame> {
        recv_until_from(&mut self.ws, within, wanted).await
    }

    /// Every frame until `done` says so, `within` passes or the connection ends.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        done: impl FnMut(&[ServerFrame]) -> bool,
    ) -> Vec<ServerFrame> {
        collect_from(&mut self.ws, within, done).await
    }

    /// Waits for the `sent` of `client_msg_id` (other frames are dropped); an `error` frame
    /// for it is [`Error::Frame`] with its code.
    pub async fn expect_sent(&mut self, client_msg_id: &str, within: Duration) -> Result<Sent> {
        expect_sent_from(&mut self.ws, client_msg_id, within).await
    }

    /// `send` and [`Connection::expect_sent`] in one.
    pub async fn send_and_expect_sent(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
        within: Duration,
    ) -> Result<Sent> {
        self.send_message(conversation_id, client_msg_id, body)
            .await?;
        self.expect_sent(client_msg_id, within).await
    }

    /// A `ping` frame and its `pong` (other frames before it are dropped); the round trip.
    pub async fn ping(&mut self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        self.send(&ClientFrame::Ping).await?;
        self.recv_until(within, |f| matches!(f, ServerFrame::Pong))
            .await?;
        Ok(started.elapsed())
    }

    /// Waits for the server's close frame and answers its code (`None`: no code, timeout, or
    /// the connection ended without one).
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Sends a close frame and waits (2 s at most) for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Keeps reading in a task (so the server's pings are answered) until it is aborted or
    /// the connection ends.
    pub fn keep_alive(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { while let Some(Ok(_)) = self.ws.next().await {} })
    }

    /// Drops the TCP connection without a close frame, as a crashed client would.
    pub fn drop_tcp(self) {
        drop(self.ws);
    }

    /// A sender and a receiver usable from different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        let (sink, stream) = self.ws.split();
        (FrameSender { sink }, FrameReceiver { stream })
    }
}

/// The sending half of a [`Connection`].
pub struct FrameSender {
    sink: SplitSink<Ws, Message>,
}

impl FrameSender {
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        send_to(&mut self.sink, Message::Text(frame_text(frame))).await
    }

    /// A `send` frame, serialized straight from the borrowed strings.
    pub async fn send_message(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Result<()> {
        let text = send_text(conversation_id, client_msg_id, body);
        send_to(&mut self.sink, Message::Text(text)).await
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        send_to(&mut self.sink, Message::Text(text.into())).await
    }

    /// Sends a close frame.
    pub async fn close(&mut self) -> Result<()> {
        Ok(self.sink.close().await?)
    }
}

/// The receiving half of a [`Connection`].
pub struct FrameReceiver {
    stream: SplitStream<Ws>,
}

impl FrameReceiver {
    /// See [`Connection::recv`].
    pub async fn recv(&mut self, within: Duration) -> Result<ServerFrame> {
        recv_from(&mut self.stream, Instant::now() + within).await
    }

    /// See [`Connection::recv_until`].
    pub async fn recv_until(
        &mut self,
        within: Duration,
        wanted: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame> {
        recv_until_from(&mut self.stream, within, wanted).await
    }

    /// See [`Connection::collect_until`].
    pub async fn collect_until(
        &mut self,
        within: Duration,
        done: impl FnMut(&[ServerFrame]) -> bool,
    ) -> Vec<ServerFrame> {
        collect_from(&mut self.stream, within, done).await
    }

    /// See [`Connection::expect_sent`].
    pub async fn expect_sent(&mut self, client_msg_id: &str, within: Duration) -> Result<Sent> {
        expect_sent_from(&mut self.stream, client_msg_id, within).await
    }

    /// Reads in a task until the connection ends, handing every server frame to `on_frame`
    /// (text that is not a server frame is skipped). The load generator's receive path: no
    /// timers, one parse per frame.
    pub fn spawn<F>(mut self, mut on_frame: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(ServerFrame) + Send + 'static,
    {
        tokio::spawn(async move {
            while let Some(Ok(message)) = self.stream.next().await {
                if let Message::Text(text) = message {
                    if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                        on_frame(frame);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::ErrorCode;

    #[test]
    fn borrowed_send_is_the_same_json_as_the_typed_frame() {
        for (conversation, id, body) in [
            ("c1", "m1", "hi"),
            ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "3-17", "3:123456"),
            ("c", "m", "quote \" backslash \\ nul \u{0} emoji \u{1F600}"),
        ] {
            let typed = ClientFrame::Send {
                conversation_id: conversation.into(),
                client_msg_id: id.into(),
                body: body.into(),
                attachments: Vec::new(),
                reply_to: None,
            };
            let text = send_text(conversation, id, body);
            assert_eq!(text, frame_text(&typed));
            assert_eq!(ClientFrame::parse(&text).unwrap(), typed);
        }
        assert_eq!(frame_text(&ClientFrame::Ping), r#"{"type":"ping"}"#);
    }

    #[test]
    fn server_frames_parse_or_say_why_not() {
        assert_eq!(
            parse_server_frame(r#"{"type":"pong"}"#).unwrap(),
            ServerFrame::Pong
        );
        let error = parse_server_frame(
            r#"{"type":"error","code":"rate_limited","message":"slow down","client_msg_id":"m"}"#,
        )
        .unwrap();
        assert!(matches!(
            error,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                client_msg_id: Some(_),
                ..
            }
        ));
        let long = format!(r#"{{"type":"dance","x":"{}"}}"#, "y".repeat(500));
        match parse_server_frame(&long) {
            Err(Error::Protocol(why)) => {
                // The frame is shown cut to 200 characters (the rest of the line is serde's
                // reason, which lists every frame type).
                assert!(why.contains("dance"), "{why}");
                assert!(!why.contains(&"y".repeat(200)), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The stream helpers against an in-memory stream of messages.
    #[tokio::test]
    async fn stream_helpers_skip_control_frames_and_stop_at_close() {
        let frame = |f: ServerFrame| Message::Text(f.to_json());
        let sent = |id: &str, seq| {
            frame(ServerFrame::Sent {
                client_msg_id: id.into(),
                conversation_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
                message_id: format!("01BX5ZZKBKACTAV9WEVGEMMVR{seq}").parse().unwrap(),
                seq,
                created_at: "2026-01-01T00:00:00.000Z".parse().unwrap(),
            })
        };
        let messages = vec![
            Message::Ping(vec![1]),
            frame(ServerFrame::Pong),
            sent("a", 1),
            frame(ServerFrame::error(ErrorCode::TooLarge, "big")),
            frame(ServerFrame::Error {
                code: ErrorCode::TooLarge,
                message: "big".into(),
                client_msg_id: Some("b".into()),
            }),
            sent("c", 2),
            Message::Close(None),
            sent("never", 3),
        ];
        let mut stream =
            futures_util::stream::iter(messages.into_iter().map(Ok::<_, tungstenite::Error>));
        let wait = Duration::from_secs(1);
        assert_eq!(
            recv_from(&mut stream, Instant::now() + wait).await.unwrap(),
            ServerFrame::Pong
        );
        assert_eq!(
            expect_sent_from(&mut stream, "a", wait).await.unwrap().seq,
            1
        );
        match expect_sent_from(&mut stream, "b", wait).await {
            Err(e @ Error::Frame { .. }) => assert_eq!(e.code(), Some(ErrorCode::TooLarge)),
            other => panic!("{other:?}"),
        }
        let rest = collect_from(&mut stream, wait, |_| false).await;
        assert_eq!(rest.len(), 1, "stops at the close frame: {rest:?}");
        assert!(matches!(
            recv_from(&mut stream, Instant::now() + wait).await,
            Ok(ServerFrame::Sent { seq: 3, .. })
        ));
        assert!(matches!(
            recv_from(&mut stream, Instant::now() + wait).await,
            Err(Error::Closed)
        ));
        let mut silent = futures_util::stream::pending::<Result<Message, tungstenite::Error>>();
        assert!(matches!(
            recv_until_from(&mut silent, Duration::from_millis(20), |_| true).await,
            Err(Error::Timeout)
        ));
    }
}
