//! The decoder under random input: messages cut into random fragments and reads come out
//! whole; random bytes never panic and never make it hold more than its limit.

use bytes::Bytes;
use switchboard_ws_codec::frame::{encode_client, OP_CONTINUATION, OP_PING, OP_TEXT};
use switchboard_ws_codec::{DecodeError, Decoder, Message};

fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client(&mut out, fin, opcode, payload, [0x12, 0x34, 0x56, 0x78]);
    out
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
fn decode_all(bytes: &[u8], chunks: &[usize], max: usize) -> (Vec<Message>, Option<DecodeError>) {
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
                    expected.push(Message::Ping(Bytes::from_static(b"between")));
                }
            }
            expected.push(Message::Text(text));
        }
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
        assert!(decoder.held() <= bytes.len().max(128) + 128);
    }
}

#[test]
fn a_drained_decoder_holds_no_buffer() {
    let mut decoder = Decoder::new(&[], 1 << 20);
    decoder.push(&client_frame(true, OP_TEXT, &vec![b'x'; 70_000]));
    assert!(matches!(decoder.decode(), Ok(Some(Message::Text(_)))));
    assert_eq!(decoder.decode(), Ok(None));
    assert_eq!(decoder.buffer_capacity(), 0);
}
