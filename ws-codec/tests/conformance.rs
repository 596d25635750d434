//! A port of the Autobahn test suite's cases for a server's receiving side (sections 1-7 and 9:
//! framing, pings, reserved bits and opcodes, fragmentation, UTF-8, close), run against the
//! decoder without a socket. The PyPI `autobahntestsuite` needs Python 2, which this machine
//! cannot install, so the cases are ported: each names its Autobahn case, and each is fed
//! whole, byte by byte, and in 7-byte pieces, which must all give the same answer.
//!
//! What a server must do per case is Autobahn's expectation: a message comes out whole, or
//! the connection fails with the close code Autobahn accepts (1002 protocol error, 1007
//! invalid payload, 1009 too big).

use bytes::Bytes;
use switchboard_ws_codec::frame::{
    encode_client, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use switchboard_ws_codec::{DecodeError, Decoder, Message};

const LIMIT: usize = 1 << 20;

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client(&mut out, fin, opcode, payload, [0x37, 0xFA, 0x21, 0x3D]);
    out
}

/// A frame with raw first-byte bits (RSV, odd opcodes).
fn raw(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame(true, OP_TEXT, payload);
    out[0] = b0;
    out
}

type Outcome = (Vec<Message>, Option<DecodeError>);

fn feed(bytes: &[u8], chunk: usize) -> Outcome {
    let mut decoder = Decoder::new(&[], LIMIT);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.push(piece);
        loop {
            match decoder.decode() {
                Ok(Some(m)) => {
                    let close = matches!(m, Message::Close(_));
                    out.push(m);
                    if close {
                        return (out, None); // nothing is read after a close
                    }
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// Runs a case three ways and checks they agree; answers the outcome.
fn case(name: &str, bytes: Vec<u8>) -> Outcome {
    let whole = feed(&bytes, usize::MAX);
    assert_eq!(feed(&bytes, 1), whole, "{name}: byte by byte differs");
    assert_eq!(feed(&bytes, 7), whole, "{name}: 7-byte pieces differ");
    whole
}

fn text(s: &str) -> Message {
    Message::Text(s.to_owned())
}

#[test]
fn section_1_framing_of_text_and_binary_at_every_length_boundary() {
    for len in [0usize, 125, 126, 127, 128, 65_535, 65_536] {
        let body = "*".repeat(len);
        assert_eq!(
            case(
                &format!("1.1 text {len}"),
                frame(true, OP_TEXT, body.as_bytes())
            ),
            (vec![text(&body)], None)
        );
        assert_eq!(
            case(
                &format!("1.2 binary {len}"),
                frame(true, OP_BINARY, &vec![0xFE; len])
            ),
            (vec![Message::Binary], None)
        );
    }
}

#[test]
fn section_2_pings_and_pongs() {
    for len in [0usize, 1, 125] {
        let payload = vec![b'p'; len];
        assert_eq!(
            case("2.1-2.3 ping", frame(true, OP_PING, &payload)),
            (vec![Message::Ping(Bytes::from(payload))], None)
        );
    }
    assert_eq!(
        case("2.4 binary ping", frame(true, OP_PING, &[0x00, 0xFF, 0xFE])),
        (
            vec![Message::Ping(Bytes::from_static(&[0x00, 0xFF, 0xFE]))],
            None
        )
    );
    assert_eq!(
        case("2.5 ping of 126", frame(true, OP_PING, &[b'x'; 126])).1,
        Some(DecodeError::Protocol)
    );
    assert_eq!(
        case("2.6 unsolicited pong", frame(true, OP_PONG, b"unasked")),
        (vec![Message::Pong], None)
    );
    let ten: Vec<u8> = (0..10).flat_map(|_| frame(true, OP_PING, b"x")).collect();
    assert_eq!(case("2.10 ten pings", ten).0.len(), 10);
}

#[test]
fn section_3_reserved_bits_fail_the_connection() {
    for rsv in 1u8..=7 {
        let b0 = 0x80 | (rsv << 4) | OP_TEXT;
        let bytes = [frame(true, OP_TEXT, b"ok"), raw(b0, b"bad")].concat();
        assert_eq!(
            case(&format!("3.{rsv}"), bytes),
            (vec![text("ok")], Some(DecodeError::Protocol))
        );
    }
}

#[test]
fn section_4_reserved_opcodes_fail_the_connection() {
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_eq!(
            case(&format!("4.x opcode {opcode}"), raw(0x80 | opcode, b"")).1,
            Some(DecodeError::Protocol)
        );
    }
}

#[test]
fn section_5_fragmentation() {
    assert_eq!(
        case(
            "5.1 fragmented ping",
            [
                frame(false, OP_PING, b"a"),
                frame(true, OP_CONTINUATION, b"b")
            ]
            .concat()
        )
        .1,
        Some(DecodeError::Protocol)
    );
    assert_eq!(
        case(
            "5.2 fragmented pong",
            [
                frame(false, OP_PONG, b"a"),
                frame(true, OP_CONTINUATION, b"b")
            ]
            .concat()
        )
        .1,
        Some(DecodeError::Protocol)
    );
    assert_eq!(
        case(
            "5.3 text in two",
            [
                frame(false, OP_TEXT, b"frag"),
                frame(true, OP_CONTINUATION, b"ment")
            ]
            .concat()
        ),
        (vec![text("fragment")], None)
    );
    assert_eq!(
        case(
            "5.6 ping between fragments",
            [
                frame(false, OP_TEXT, b"frag"),
                frame(true, OP_PING, b"hi"),
                frame(true, OP_CONTINUATION, b"ment"),
            ]
            .concat()
        ),
        (
            vec![Message::Ping(Bytes::from_static(b"hi")), text("fragment")],
            None
        )
    );
    for (name, first_fin) in [
        ("5.9 continuation of nothing, fin", true),
        ("5.10 continuation of nothing", false),
    ] {
        assert_eq!(
            case(name, frame(first_fin, OP_CONTINUATION, b"orphan")).1,
            Some(DecodeError::Protocol)
        );
    }
    assert_eq!(
        case(
            "5.15 a new message inside a fragmented one",
            [frame(false, OP_TEXT, b"a"), frame(true, OP_TEXT, b"b")].concat()
        )
        .1,
        Some(DecodeError::Protocol)
    );
    assert_eq!(
        case(
            "5.19 many fragments with pings between",
            (0..5)
                .flat_map(|i| {
                    let op = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
                    [frame(i == 4, op, b"x"), frame(true, OP_PING, b"p")].concat()
                })
                .collect()
        )
        .0
        .last(),
        Some(&Message::Ping(Bytes::from_static(b"p")))
    );
    assert_eq!(
        case(
            "5.x empty fragments",
            [
                frame(false, OP_TEXT, b""),
                frame(false, OP_CONTINUATION, b""),
                frame(true, OP_CONTINUATION, b"")
            ]
            .concat()
        ),
        (vec![text("")], None)
    );
}

#[test]
fn section_6_utf8() {
    let valid: [&[u8]; 5] = [
        "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
        "κόσμε".as_bytes(),
        &[0xF4, 0x8F, 0xBF, 0xBF], // U+10FFFF
        &[0xEF, 0xBF, 0xBF],       // U+FFFF
        &[0x7F],
    ];
    for bytes in valid {
        let expect = String::from_utf8(bytes.to_vec()).unwrap();
        assert_eq!(
            case("6.x valid", frame(true, OP_TEXT, bytes)),
            (vec![text(&expect)], None)
        );
        // 6.2: split at every byte across fragments: only the whole message is checked.
        for cut in 0..=bytes.len() {
            let split = [
                frame(false, OP_TEXT, &bytes[..cut]),
                frame(true, OP_CONTINUATION, &bytes[cut..]),
            ]
            .concat();
            assert_eq!(case("6.2 split", split), (vec![text(&expect)], None));
        }
    }
    let invalid: [&[u8]; 8] = [
        &[
            0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
        ], // surrogate
        &[0xC0, 0xAF],             // overlong '/'
        &[0xE0, 0x80, 0xAF],       // overlong
        &[0xF4, 0x90, 0x80, 0x80], // > U+10FFFF
        &[0xFF],
        &[0xFE],
        &[0xC2],       // truncated
        &[0xE1, 0xBD], // truncated
    ];
    for bytes in invalid {
        assert_eq!(
            case("6.x invalid", frame(true, OP_TEXT, bytes)).1,
            Some(DecodeError::InvalidUtf8),
            "{bytes:x?}"
        );
    }
}

#[test]
fn section_7_close() {
    assert_eq!(
        case("7.1.1 close", frame(true, OP_CLOSE, b"")),
        (vec![Message::Close(None)], None)
    );
    assert_eq!(
        case(
            "7.1.5 data after close is not read",
            [frame(true, OP_CLOSE, b""), frame(true, OP_TEXT, b"late")].concat()
        ),
        (vec![Message::Close(None)], None)
    );
    assert_eq!(
        case("7.3.2 close of one byte", frame(true, OP_CLOSE, &[0x03])).1,
        Some(DecodeError::Protocol)
    );
    let long = [&1000u16.to_be_bytes()[..], &[b'x'; 124]].concat();
    assert_eq!(
        case("7.3.6 reason too long", frame(true, OP_CLOSE, &long)).1,
        Some(DecodeError::Protocol)
    );
    let bad_reason = [
        &1000u16.to_be_bytes()[..],
        &[0xCE, 0xBA, 0xED, 0xA0, 0x80][..],
    ]
    .concat();
    assert_eq!(
        case("7.5.1 reason not UTF-8", frame(true, OP_CLOSE, &bad_reason)).1,
        Some(DecodeError::InvalidUtf8)
    );
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        assert_eq!(
            case("7.7 valid code", frame(true, OP_CLOSE, &code.to_be_bytes())),
            (vec![Message::Close(Some(code))], None),
            "{code}"
        );
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            case(
                "7.9 invalid code",
                frame(true, OP_CLOSE, &code.to_be_bytes())
            )
            .1,
            Some(DecodeError::Protocol),
            "{code}"
        );
    }
}

#[test]
fn section_9_limits() {
    let limit = 64 * 1024;
    let decode = |bytes: &[u8]| {
        let mut d = Decoder::new(bytes, limit);
        d.decode()
    };
    assert!(matches!(
        decode(&frame(true, OP_TEXT, &vec![b'a'; limit])),
        Ok(Some(Message::Text(_)))
    ));
    assert_eq!(
        decode(&frame(true, OP_TEXT, &vec![b'a'; limit + 1])),
        Err(DecodeError::TooLarge)
    );
    // Over the limit only once reassembled.
    let mut d = Decoder::new(&[], limit);
    d.push(&frame(false, OP_TEXT, &vec![b'a'; limit / 2 + 1]));
    assert_eq!(d.decode(), Ok(None));
    d.push(&frame(true, OP_CONTINUATION, &vec![b'a'; limit / 2 + 1]));
    assert_eq!(d.decode(), Err(DecodeError::TooLarge));
    // Known from the header alone: 2^63 bytes announced, nothing else sent.
    let mut d = Decoder::new(
        &[0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        limit,
    );
    assert_eq!(d.decode(), Err(DecodeError::TooLarge));
    for (code, e) in [
        (1009, DecodeError::TooLarge),
        (1007, DecodeError::InvalidUtf8),
        (1002, DecodeError::Protocol),
    ] {
        assert_eq!(e.close_code(), code);
    }
}
