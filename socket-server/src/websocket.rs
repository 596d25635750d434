//! The WebSocket protocol (RFC 6455, server side) straight over a TCP stream: the opening
//! handshake's checks and answer, a [`FrameReader`] that yields the session loop's
//! [`Incoming`] frames, and a [`FrameWriter`] that is its [`Outlet`].
//!
//! Why not a library: an idle connection is most of what a chat server holds, and the HTTP
//! stack we used (actix-http + actix-ws) kept an 8 KiB read buffer, an 8 KiB write buffer and
//! a channel per connection for its whole life (docs/performance.md, run 11). Here nothing is
//! buffered while a connection is idle: bytes are read into a stack chunk, kept only while a
//! frame is incomplete, and the buffer is freed as soon as it is drained. Writes go straight
//! to the socket, one `write` per frame.
//!
//! What is implemented: masked client frames (an unmasked one is a protocol error), 7/16/64-bit
//! lengths, fragmented messages with control frames between fragments, a size limit checked
//! from the header (so an oversized frame is refused before its payload is read), UTF-8
//! checked per text message, close/ping/pong. No extension is ever negotiated, so any RSV bit
//! is a protocol error; no subprotocol is offered.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::wire::{Gone, Incoming, Outgoing, Outlet, ReadError};

/// What a client must send in `Sec-WebSocket-Version`.
pub(crate) const VERSION: &str = "13";
/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How much one read takes from the socket.
const READ_CHUNK: usize = 4096;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(client_key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a comma-separated header value lists `token` (case-insensitive), as `Connection:
/// keep-alive, Upgrade` does.
pub(crate) fn lists_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why an upgrade request is not a WebSocket opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// Missing or wrong `Upgrade`/`Connection`/`Sec-WebSocket-Key`: 400.
    NotAnUpgrade(&'static str),
    /// A version other than 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
}

/// Checks the handshake headers (`header(name)` looks one up, case-insensitively) and returns
/// the `Sec-WebSocket-Accept` value.
pub(crate) fn check_upgrade<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, HandshakeError> {
    if !header("upgrade").is_some_and(|v| lists_token(v, "websocket")) {
        return Err(HandshakeError::NotAnUpgrade(
            "Upgrade: websocket is missing",
        ));
    }
    if !header("connection").is_some_and(|v| lists_token(v, "upgrade")) {
        return Err(HandshakeError::NotAnUpgrade(
            "Connection: Upgrade is missing",
        ));
    }
    if header("sec-websocket-version").map(str::trim) != Some(VERSION) {
        return Err(HandshakeError::Version);
    }
    let key = header("sec-websocket-key")
        .map(str::trim)
        .filter(|k| k.len() == 24)
        .ok_or(HandshakeError::NotAnUpgrade(
            "Sec-WebSocket-Key is missing or not 16 bytes in base64",
        ))?;
    Ok(accept_key(key))
}

/// The `101 Switching Protocols` answer.
pub(crate) fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// A frame's header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes including the mask.
    len: usize,
    payload: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` until all of it has arrived.
fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, ReadError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(ReadError::Broken); // no extension was negotiated
    }
    if b1 & 0x80 == 0 {
        return Err(ReadError::Broken); // client frames must be masked
    }
    let control = opcode & 0x8 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(ReadError::Broken),
    }
    let (payload, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if control && (!fin || payload > 125) {
        return Err(ReadError::Broken);
    }
    let payload = usize::try_from(payload).map_err(|_| ReadError::TooLarge)?;
    if payload > max_payload {
        return Err(ReadError::TooLarge);
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        len: at + 4,
        payload,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A fragmented message in progress.
struct Partial {
    text: bool,
    data: Vec<u8>,
}

/// The client's frames from the bytes read so far: complete messages out, a fragmented one
/// kept until its last fragment. Holds no allocation between frames.
struct Decoder {
    /// Bytes read but not yet parsed; empty (no allocation) between frames.
    buf: BytesMut,
    partial: Option<Partial>,
    /// The largest message (and so frame) accepted.
    max_message: usize,
}

impl Decoder {
    fn new(already_read: &[u8], max_message: usize) -> Self {
        Decoder {
            buf: BytesMut::from(already_read),
            partial: None,
            max_message,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame in `buf`, if there is one.
    fn decode(&mut self) -> Result<Option<Incoming<String>>, ReadError> {
        loop {
            let Some(header) = parse_header(&self.buf, self.max_message)? else {
                return Ok(None);
            };
            if self.buf.len() < header.len + header.payload {
                self.buf
                    .reserve(header.len + header.payload - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(header.len);
            let mut payload = self.buf.split_to(header.payload);
            if self.buf.is_empty() {
                self.buf = BytesMut::new(); // nothing held while idle
            }
            unmask(&mut payload, header.mask);
            match header.opcode {
                OP_CLOSE => return Ok(Some(Incoming::Close)),
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(ReadError::Broken); // a new message inside a fragmented one
                    }
                    let text = header.opcode == OP_TEXT;
                    if header.fin {
                        return complete(text, payload.to_vec()).map(Some);
                    }
                    self.partial = Some(Partial {
                        text,
                        data: payload.to_vec(),
                    });
                }
                _ => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(ReadError::Broken); // a continuation of nothing
                    };
                    if partial.data.len() + payload.len() > self.max_message {
                        return Err(ReadError::TooLarge);
                    }
                    partial.data.extend_from_slice(&payload);
                    if header.fin {
                        let Partial { text, data } =
                            self.partial.take().ok_or(ReadError::Broken)?;
                        return complete(text, data).map(Some);
                    }
                }
            }
        }
    }
}

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

fn complete(text: bool, data: Vec<u8>) -> Result<Incoming<String>, ReadError> {
    if !text {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| ReadError::Broken)
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
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
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

/// Appends one unmasked server frame to `out`.
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
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
                let mut payload = close.code.to_be_bytes().to_vec();
                payload.extend_from_slice(close.reason.unwrap_or_default().as_bytes());
                encode(&mut out, OP_CLOSE, &payload);
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
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut masked = payload.to_vec();
        unmask(&mut masked, mask);
        out.extend_from_slice(&masked);
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

    #[test]
    fn the_accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_headers_are_checked() {
        let good = |name: &str| match name {
            "upgrade" => Some("WebSocket"),
            "connection" => Some("keep-alive, Upgrade"),
            "sec-websocket-version" => Some("13"),
            "sec-websocket-key" => Some("dGhlIHNhbXBsZSBub25jZQ=="),
            _ => None,
        };
        assert_eq!(check_upgrade(good).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let old_version = |name: &str| match name {
            "sec-websocket-version" => Some("8"),
            other => good(other),
        };
        assert_eq!(check_upgrade(old_version), Err(HandshakeError::Version));
        let no_key = |name: &str| match name {
            "sec-websocket-key" => None,
            other => good(other),
        };
        assert!(matches!(
            check_upgrade(no_key),
            Err(HandshakeError::NotAnUpgrade(_))
        ));
        let plain_get = |_: &str| None;
        assert!(matches!(
            check_upgrade(plain_get),
            Err(HandshakeError::NotAnUpgrade(_))
        ));
    }

    #[test]
    fn headers_are_refused_when_they_break_the_rules() {
        // Unmasked, an RSV bit, an unknown opcode, a fragmented or long control frame.
        assert_eq!(parse_header(&[0x81, 0x05], 100), Err(ReadError::Broken));
        assert_eq!(parse_header(&[0xC1, 0x85], 100), Err(ReadError::Broken));
        assert_eq!(parse_header(&[0x83, 0x80], 100), Err(ReadError::Broken));
        assert_eq!(parse_header(&[0x09, 0x80], 100), Err(ReadError::Broken));
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 126], 100),
            Err(ReadError::Broken)
        );
        // Too large is known from the header alone.
        assert_eq!(
            parse_header(&[0x81, 0xFE, 0x01, 0x00], 255),
            Err(ReadError::TooLarge)
        );
        assert_eq!(
            parse_header(&[0x81, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0], 1000),
            Err(ReadError::TooLarge)
        );
        // Incomplete headers wait for more bytes.
        assert_eq!(parse_header(&[0x81], 100), Ok(None));
        assert_eq!(parse_header(&[0x81, 0xFE, 0x00], 1000), Ok(None));
        assert_eq!(parse_header(&[0x81, 0x85, 1, 2], 100), Ok(None));
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
        assert!(
            reader.decoder.buf.capacity() == 0,
            "a drained buffer is freed"
        );
        drop(writer.await.unwrap());
        assert_eq!(
            next(&mut reader).await,
            None,
            "the client's FIN ends the stream"
        );
    }

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Everything `decoder` yields from `bytes` fed in `chunks`, up to its first error.
    fn decode_all(
        bytes: &[u8],
        chunks: &[usize],
        max: usize,
    ) -> (Vec<Incoming<String>>, Option<ReadError>) {
        let mut decoder = Decoder::new(&[], max);
        let mut out = Vec::new();
        let mut at: usize = 0;
        for &chunk in chunks.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(chunk).min(bytes.len());
            decoder.push(&bytes[at..end]);
            at = end;
            loop {
                match decoder.decode() {
                    Ok(Some(frame)) => out.push(frame),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
            if at == bytes.len() {
                break;
            }
        }
        (out, None)
    }

    #[test]
    fn random_messages_in_random_fragments_and_reads_come_out_whole() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for _ in 0..120 {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..rng.below(6) + 1 {
                let len = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000][rng.below(8)];
                let text: String = (0..len).map(|i| ["a", "é", "€"][(i + len) % 3]).collect();
                let text: String = text.chars().take(len).collect();
                let payload = text.as_bytes();
                let mut cuts: Vec<usize> = (0..rng.below(4))
                    .map(|_| rng.below(payload.len() + 1))
                    .collect();
                cuts.sort_unstable();
                let mut start = 0;
                let pieces: Vec<&[u8]> = cuts
                    .iter()
                    .chain(std::iter::once(&payload.len()))
                    .map(|&end| {
                        let piece = &payload[start..end];
                        start = end;
                        piece
                    })
                    .collect();
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
                    let last = i + 1 == pieces.len();
                    bytes.extend(client_frame(last, opcode, piece));
                    if !last && rng.below(3) == 0 {
                        bytes.extend(client_frame(true, OP_PING, b"between"));
                        expected.push(Incoming::Ping(Bytes::from_static(b"between")));
                    }
                }
                expected.push(Incoming::Text(text));
            }
            // Pings between fragments come out before the message they interrupt (`expected`
            // lists them so already).
            let chunks: Vec<usize> = (0..rng.below(20)).map(|_| rng.below(5_000) + 1).collect();
            let (got, error) = decode_all(&bytes, &chunks, 1 << 20);
            assert_eq!(error, None);
            assert_eq!(got.len(), expected.len(), "frames out");
            assert!(
                got == expected,
                "a message came out different from what went in"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic_and_never_hold_more_than_the_limit() {
        let mut rng = Rng(0xBAD_F00D_0000_0042);
        for _ in 0..2_000 {
            let len = rng.below(300);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let chunks: Vec<usize> = (0..rng.below(5)).map(|_| rng.below(64) + 1).collect();
            let (_, _) = decode_all(&bytes, &chunks, 128);
            let mut decoder = Decoder::new(&bytes, 128);
            while let Ok(Some(_)) = decoder.decode() {}
            assert!(decoder.buf.len() <= bytes.len());
            assert!(decoder.partial.as_ref().is_none_or(|p| p.data.len() <= 128));
        }
    }

    #[tokio::test]
    async fn bad_input_ends_the_stream_with_its_reason() {
        use tokio::io::AsyncWriteExt as _;
        for (bytes, expected) in [
            (
                client_frame(true, OP_TEXT, &[0xFF, 0xFE]),
                ReadError::Broken,
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
                ReadError::Broken,
            ),
            (
                [
                    client_frame(false, OP_TEXT, b"a"),
                    client_frame(true, OP_TEXT, b"b"),
                ]
                .concat(),
                ReadError::Broken,
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
