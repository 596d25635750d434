//! RFC 6455 frames: a [`Decoder`] for the client's (masked) frames and the encoders of the
//! server's (unmasked) ones.
//!
//! What the decoder accepts: masked client frames (an unmasked one is a protocol error),
//! 7/16/64-bit lengths, fragmented messages with control frames between fragments, a size
//! limit checked from the header (an oversized frame is refused before its payload is read),
//! UTF-8 checked per text message, close (its code and reason checked), ping and pong. No
//! extension is ever negotiated, so any RSV bit is a protocol error.
//!
//! Memory: the decoder keeps bytes only while a frame is incomplete, and frees its buffer as
//! soon as it is drained, so an idle connection holds nothing (docs/performance.md, run 11).

use bytes::{Buf, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A whole message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (fragments reassembled, UTF-8 checked).
    Text(String),
    /// A binary message; its payload is not kept (the chat protocol is text only).
    Binary,
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    /// A close, with its status code when the client sent one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot go on, with the close code RFC 6455 asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame or reassembled message over the size limit: 1009.
    TooLarge,
    /// A text message or close reason that is not UTF-8: 1007.
    InvalidUtf8,
    /// Anything else that breaks the framing rules: 1002.
    Protocol,
}

impl DecodeError {
    /// The close code to fail the connection with.
    pub fn close_code(self) -> u16 {
        match self {
            DecodeError::TooLarge => 1009,
            DecodeError::InvalidUtf8 => 1007,
            DecodeError::Protocol => 1002,
        }
    }
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
fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, DecodeError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(DecodeError::Protocol); // no extension was negotiated
    }
    if b1 & 0x80 == 0 {
        return Err(DecodeError::Protocol); // client frames must be masked
    }
    let control = opcode & 0x8 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(DecodeError::Protocol),
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
        return Err(DecodeError::Protocol);
    }
    let payload = usize::try_from(payload).map_err(|_| DecodeError::TooLarge)?;
    if payload > max_payload {
        return Err(DecodeError::TooLarge);
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

/// XORs `payload` with the masking key (masking and unmasking are the same operation).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A close frame's payload: empty, or a valid code and a UTF-8 reason (RFC 6455 7.4).
fn close_payload(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::Protocol),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // Codes a peer may send: 1000-1003, 1007-1011 (and 1012-1014 registered since),
            // and 3000-4999 for libraries and applications; 1004-1006, 1015 and the rest are
            // reserved or must never be on the wire.
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(DecodeError::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| DecodeError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// A fragmented message in progress.
struct Partial {
    text: bool,
    data: Vec<u8>,
}

/// The client's frames from the bytes read so far: complete messages out, a fragmented one
/// kept until its last fragment. Holds no allocation between frames.
pub struct Decoder {
    /// Bytes read but not yet parsed; empty (no allocation) between frames.
    buf: BytesMut,
    partial: Option<Partial>,
    /// The largest message (and so frame) accepted.
    max_message: usize,
}

impl Decoder {
    /// `already_read`: bytes that followed the request head in the same read.
    pub fn new(already_read: &[u8], max_message: usize) -> Self {
        Decoder {
            buf: BytesMut::from(already_read),
            partial: None,
            max_message,
        }
    }

    /// Adds bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: unparsed input plus a fragmented message's data (for tests and limits).
    pub fn held(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// The capacity of the input buffer: 0 once drained (nothing held while idle).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next complete message in the input, if there is one. After an error the decoder
    /// must not be used again: the connection is failed with [`DecodeError::close_code`].
    pub fn decode(&mut self) -> Result<Option<Message>, DecodeError> {
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
                OP_CLOSE => return close_payload(&payload).map(|code| Some(Message::Close(code))),
                OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(DecodeError::Protocol); // a new message inside a fragmented one
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
                        return Err(DecodeError::Protocol); // a continuation of nothing
                    };
                    if partial.data.len() + payload.len() > self.max_message {
                        return Err(DecodeError::TooLarge);
                    }
                    partial.data.extend_from_slice(&payload);
                    if header.fin {
                        let Partial { text, data } =
                            self.partial.take().ok_or(DecodeError::Protocol)?;
                        return complete(text, data).map(Some);
                    }
                }
            }
        }
    }
}

fn complete(text: bool, data: Vec<u8>) -> Result<Message, DecodeError> {
    if !text {
        return Ok(Message::Binary);
    }
    String::from_utf8(data)
        .map(Message::Text)
        .map_err(|_| DecodeError::InvalidUtf8)
}

/// Appends one unmasked server frame to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
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

/// Appends a close frame with `code` and `reason` (cut to fit a control frame's 125 bytes at
/// a character boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(out, OP_CLOSE, &payload);
}

/// A masked client frame, as a client (or a test) sends it.
pub fn encode_client(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
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
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client(&mut out, fin, opcode, payload, [0x12, 0x34, 0x56, 0x78]);
        out
    }

    #[test]
    fn headers_are_refused_when_they_break_the_rules() {
        // Unmasked, an RSV bit, an unknown opcode, a fragmented or long control frame.
        assert_eq!(parse_header(&[0x81, 0x05], 100), Err(DecodeError::Protocol));
        assert_eq!(parse_header(&[0xC1, 0x85], 100), Err(DecodeError::Protocol));
        assert_eq!(parse_header(&[0x83, 0x80], 100), Err(DecodeError::Protocol));
        assert_eq!(parse_header(&[0x09, 0x80], 100), Err(DecodeError::Protocol));
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 126], 100),
            Err(DecodeError::Protocol)
        );
        // Too large is known from the header alone.
        assert_eq!(
            parse_header(&[0x81, 0xFE, 0x01, 0x00], 255),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(
            parse_header(&[0x81, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0], 1000),
            Err(DecodeError::TooLarge)
        );
        // Incomplete headers wait for more bytes.
        assert_eq!(parse_header(&[0x81], 100), Ok(None));
        assert_eq!(parse_header(&[0x81, 0xFE, 0x00], 1000), Ok(None));
        assert_eq!(parse_header(&[0x81, 0x85, 1, 2], 100), Ok(None));
    }

    #[test]
    fn close_payloads_are_checked() {
        let decode =
            |payload: &[u8]| Decoder::new(&client_frame(true, OP_CLOSE, payload), 1000).decode();
        assert_eq!(decode(b""), Ok(Some(Message::Close(None))));
        assert_eq!(decode(&[0x03, 0xE8]), Ok(Some(Message::Close(Some(1000)))));
        assert_eq!(decode(&[0x03]), Err(DecodeError::Protocol));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                decode(&bad.to_be_bytes()),
                Err(DecodeError::Protocol),
                "{bad}"
            );
        }
        assert_eq!(decode(&[0x03, 0xE8, 0xFF]), Err(DecodeError::InvalidUtf8));
        assert_eq!(
            decode(&[0x0F, 0xA0, b'o', b'k']),
            Ok(Some(Message::Close(Some(4000))))
        );
    }

    #[test]
    fn a_close_reason_is_cut_at_a_character_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
