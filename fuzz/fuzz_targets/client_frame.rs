//! Client frame parsing: any bytes a client can send in a text frame. Parsing must never
//! panic, and what parses must survive the checks the socket server applies next.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::frames::{is_storable_text, ClientFrame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            // The socket server's next steps on a parsed frame: its Debug form goes to logs,
            // and sends are checked for storable text.
            let _ = format!("{frame:?}");
            if let ClientFrame::Send { body, client_msg_id, .. } = &frame {
                let _ = is_storable_text(body) && is_storable_text(client_msg_id);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
