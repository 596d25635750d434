//! Free TCP ports on 127.0.0.1.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use rand::Rng;

/// Ports already handed out by this process, so two callers never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Picked below the kernel's ephemeral range (32768-60999 by default) so an outgoing
/// connection's local port cannot take a port between our pick and the service's bind.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A TCP port that is free on 127.0.0.1 right now (it was bound and released).
///
/// Tries random ports in 20000-31999 first (see above), then falls back to letting the kernel
/// pick (`bind 127.0.0.1:0`). A port is never returned twice by the same process.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let taken = guard.get_or_insert_with(HashSet::new);
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(RANGE);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if taken.insert(port) {
            return port;
        }
    }
}

/// True if nothing listens on `addr:port` (checked by binding it).
pub fn is_free(addr: &str, port: u16) -> bool {
    TcpListener::bind((addr, port)).is_ok()
}
