//! WebSocket frames: any bytes a client can send after the upgrade, fed to the decoder in the
//! pieces the first byte chooses. Decoding must never panic, never hold more than the limit
//! plus one frame header, and give the same answer however the bytes are cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_ws_codec::{Decoder, Message};

const LIMIT: usize = 1024;

fn run(bytes: &[u8], chunk: usize) -> (Vec<Message>, Option<u16>) {
    let mut decoder = Decoder::new(&[], LIMIT);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.push(piece);
        loop {
            match decoder.decode() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e.close_code())),
            }
        }
        assert!(decoder.held() <= bytes.len());
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = run(rest, usize::MAX);
    assert_eq!(run(rest, usize::from(first % 16) + 1), whole);
    for message in &whole.0 {
        if let Message::Text(text) = message {
            assert!(text.len() <= LIMIT);
        }
    }
});
