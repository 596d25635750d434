//! The WebSocket opening handshake (RFC 6455 section 4.2): the checks of the client's
//! request headers and the server's `101 Switching Protocols` answer.

/// What a client must send in `Sec-WebSocket-Version`.
pub const VERSION: &str = "13";
/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a comma-separated header value lists `token` (case-insensitive), as `Connection:
/// keep-alive, Upgrade` does.
pub fn lists_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why an upgrade request is not a WebSocket opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Missing or wrong `Upgrade`/`Connection`/`Sec-WebSocket-Key`: 400.
    NotAnUpgrade(&'static str),
    /// A version other than 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
}

/// Checks the handshake headers (`header(name)` looks one up, case-insensitively) and returns
/// the `Sec-WebSocket-Accept` value.
pub fn check_upgrade<'a>(
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
pub fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
