//! HTTP request heads: any bytes a client can send before the upgrade. Parsing must never
//! panic, a head must parse the same with bytes after it, and the opening-handshake checks
//! must accept or refuse whatever parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_ws_codec::{check_upgrade, parse_head};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some((head, len))) => {
            assert!(len <= data.len());
            let again = parse_head(&data[..len]).expect("the head alone parses");
            assert_eq!(again.map(|(h, l)| (h, l)), Some((head.clone(), len)));
            let _ = check_upgrade(|name| head.header(name));
        }
        Ok(None) | Err(_) => {}
    }
});
