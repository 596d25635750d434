//! The WebSocket protocol (RFC 6455, server side) straight over a TCP stream: a
//! [`FrameReader`] that yields the session loop's [`Incoming`] frames, and a [`FrameWriter`]
//! that is its [`Outlet`]. The parsing and encoding are `switchboard-ws-codec`'s (no I/O,
//! fuzzed, and checked against the Autobahn cases there); this module only moves bytes.
//!
//! Why not a library: an idle connection is most of what a chat server holds, and the HTTP
//! stack we used (actix-http + actix-ws) kept an 8 KiB read buffer, an 8 KiB write buffer and
//! a channel per connection for its whole life (docs/performance.md, run 11). Here nothing is
//! buffered while a connection is idle: bytes are read into a stack chunk, kept by the codec
//! only while a frame is incomplete, and its buffer is freed as soon as it is drained. Writes
//! go straight to the socket, one `write` per frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use switchboard_ws_codec::frame::{encode, encode_close, OP_PING, OP_PONG, OP_TEXT};
use switchboard_ws_codec::{DecodeError, Decoder, Message};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::wire::{Gone, Incoming, Outgoing, Outlet, ReadError};

pub(crate) use switchboard_ws_codec::handshake::{
    check_upgrade, switching_protocols, HandshakeError, VERSION,
};

/// How much one read takes from the socket.
const READ_CHUNK: usize = 4096;

/// The client's side of a connection as a `Stream` of [`Incoming`] frames (text messages
/// reassembled from fragments). After an error or the end of the stream it yields `None`.
pub(crate) struct FrameReader {
    read: OwnedReadHalf,
    decoder: Decoder,
    done: bool,
}

impl FrameReader {
    /// `already_read` holds bytes that arrived after the handshake request.
    pub(crate) fn new(read: OwnedReadHalf, already_read: &[u8], max_message: usize) -> Self {
        FrameReader {
            read,
            decoder: Decoder::new(already_read, max_message),
            done: false,
        }
    }

    /// Gives the socket back, to drain it before closing (a close with unread data in the
    /// receive buffer sends a reset, which can destroy the frames just written).
    pub(crate) fn into_inner(self) -> OwnedReadHalf {
        self.read
    }
}

/// The session loop's view of a decoded message.
fn incoming(message: Message) -> Incoming<String> {
    match message {
        Message::Text(text) => Incoming::Text(text),
        Message::Binary => Incoming::Binary,
        Message::Ping(payload) => Incoming::Ping(payload),
        Message::Pong => Incoming::Pong,
        Message::Close(_) => Incoming::Close,
    }
}

fn read_error(error: DecodeError) -> ReadError {
    match error {
        DecodeError::TooLarge => ReadError::TooLarge,
        other => ReadError::Protocol(other.close_code()),
    }
}

impl Stream for FrameReader {
    type Item = Result<Incoming<String>, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.decode() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(incoming(message)))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(read_error(e))));
                }
            }
            // A stack chunk, so an idle connection's pending read holds no buffer.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut this.read).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ReadError::Broken)));
                }
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(())) => this.decoder.push(read.filled()),
            }
        }
    }
}

/// The server's side of a connection: each frame is one write to the socket; a close frame
/// is followed by shutting the write side.
pub(crate) struct FrameWriter {
    write: OwnedWriteHalf,
    closed: bool,
}

impl FrameWriter {
    pub(crate) fn new(write: OwnedWriteHalf) -> Self {
        FrameWriter {
            write,
            closed: false,
        }
    }
}

impl Outlet for FrameWriter {
    fn abandon(&mut self) {
        self.closed = true;
        // SO_LINGER 0: when the socket is closed it is reset, so the kernel drops the bytes
        // the client never read instead of keeping them (and retrying) for minutes. tokio
        // deprecates `set_linger` because a non-zero linger blocks the thread in `close`; a
        // zero one does not block.
        #[allow(deprecated)]
        let _ = self
            .write
            .as_ref()
            .set_linger(Some(std::time::Duration::ZERO));
    }

    async fn write(&mut self, frame: Outgoing) -> Result<(), Gone> {
        if self.closed {
            return Err(Gone);
        }
        let mut out = Vec::new();
        match &frame {
            Outgoing::Text(text) => {
                out.reserve_exact(text.len() + 10);
                encode(&mut out, OP_TEXT, text.as_bytes());
            }
            Outgoing::Ping => encode(&mut out, OP_PING, b""),
            Outgoing::Pong(payload) => encode(&mut out, OP_PONG, payload),
            Outgoing::Close(Some(close)) => {
                encode_close(&mut out, close.code, close.reason.unwrap_or_default());
            }
            Outgoing::Close(None) => {}
        }
        if matches!(frame, Outgoing::Close(_)) {
            self.closed = true;
            let written = self.write.write_all(&out).await;
            let _ = self.write.shutdown().await;
            return written.map_err(|_| Gone);
        }
        self.write.write_all(&out).await.map_err(|_| Gone)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test's client writer
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_ws_codec::frame::{
        encode_client, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
    };

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client(&mut out, fin, opcode, payload, [0x12, 0x34, 0x56, 0x78]);
        out
    }

    /// A connected pair: the server's reader, and the client's socket.
    async fn pair(max: usize) -> (FrameReader, FrameWriter, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        (
            FrameReader::new(read, &[], max),
            FrameWriter::new(write),
            client,
        )
    }

    async fn next(reader: &mut FrameReader) -> Option<Result<Incoming<String>, ReadError>> {
        futures_util::StreamExt::next(reader).await
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_reassembled_in_order() {
        use tokio::io::AsyncWriteExt as _;
        let (mut reader, _writer, mut client) = pair(1 << 20).await;
        let mut bytes = client_frame(true, OP_TEXT, "héllo".as_bytes());
        bytes.extend(client_frame(false, OP_TEXT, b"par"));
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"t"));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"s"));
        bytes.extend(client_frame(true, OP_TEXT, &vec![b'x'; 70_000]));
        bytes.extend(client_frame(true, OP_BINARY, b"\x00\x01"));
        bytes.extend(client_frame(true, OP_PONG, b""));
        bytes.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        // One byte at a time for the first frames, then the rest at once.
        let writer = tokio::spawn(async move {
            for b in &bytes[..20] {
                client.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(&bytes[20..]).await.unwrap();
            client
        });
        assert_eq!(
            next(&mut reader).await,
            Some(Ok(Incoming::Text("héllo".into())))
        );
        assert_eq!(
            next(&mut reader).await,
            Some(Ok(Incoming::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(
            next(&mut reader).await,
            Some(Ok(Incoming::Text("parts".into())))
        );
        assert_eq!(
            next(&mut reader).await,
            Some(Ok(Incoming::Text("x".repeat(70_000))))
        );
        assert_eq!(next(&mut reader).await, Some(Ok(Incoming::Binary)));
        assert_eq!(next(&mut reader).await, Some(Ok(Incoming::Pong)));
        assert_eq!(next(&mut reader).await, Some(Ok(Incoming::Close)));
        assert_eq!(
            reader.decoder.buffer_capacity(),
            0,
            "a drained buffer is freed"
        );
        drop(writer.await.unwrap());
        assert_eq!(
            next(&mut reader).await,
            None,
            "the client's FIN ends the stream"
        );
    }

    #[tokio::test]
    async fn bad_input_ends_the_stream_with_its_close_code() {
        use tokio::io::AsyncWriteExt as _;
        for (bytes, expected) in [
            (
                client_frame(true, OP_TEXT, &[0xFF, 0xFE]),
                ReadError::Protocol(1007),
            ),
            (
                client_frame(true, OP_TEXT, &[b'a'; 300]),
                ReadError::TooLarge,
            ),
            (
                [
                    client_frame(false, OP_TEXT, &[b'a'; 200]),
                    client_frame(true, OP_CONTINUATION, &[b'a'; 200]),
                ]
                .concat(),
                ReadError::TooLarge,
            ),
            (
                client_frame(true, OP_CONTINUATION, b"orphan"),
                ReadError::Protocol(1002),
            ),
            (
                [
                    client_frame(false, OP_TEXT, b"a"),
                    client_frame(true, OP_TEXT, b"b"),
                ]
                .concat(),
                ReadError::Protocol(1002),
            ),
        ] {
            let (mut reader, _writer, mut client) = pair(256).await;
            client.write_all(&bytes).await.unwrap();
            assert_eq!(next(&mut reader).await, Some(Err(expected)), "{bytes:?}");
            assert_eq!(next(&mut reader).await, None);
        }
    }

    #[tokio::test]
    async fn server_frames_are_unmasked_and_a_close_ends_the_writes() {
        use tokio::io::AsyncReadExt as _;
        let (_reader, mut writer, mut client) = pair(256).await;
        writer.write(Outgoing::Text("hi".into())).await.unwrap();
        writer
            .write(Outgoing::Text("y".repeat(300).into()))
            .await
            .unwrap();
        writer.write(Outgoing::Ping).await.unwrap();
        writer
            .write(Outgoing::Pong(Bytes::from_static(b"p")))
            .await
            .unwrap();
        writer
            .write(Outgoing::Close(Some(crate::wire::CloseFrame {
                code: 1012,
                reason: Some("bye"),
            })))
            .await
            .unwrap();
        assert_eq!(writer.write(Outgoing::Ping).await, Err(Gone));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut expected = vec![0x81, 2, b'h', b'i', 0x81, 126, 0x01, 0x2C];
        expected.extend(std::iter::repeat_n(b'y', 300));
        expected.extend([
            0x89, 0, 0x8A, 1, b'p', 0x88, 5, 0x03, 0xF4, b'b', b'y', b'e',
        ]);
        assert_eq!(got, expected);
    }
}
