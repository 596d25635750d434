//! URL building, pure so it can be tested without a server. Ids in paths and queries are
//! percent-encoded ([`path_segment`]), so an id can never change which route a URL names.

use switchboard_protocol::token::path_segment;

/// `base` (with or without a trailing `/`) followed by `path` (which starts with `/`).
pub fn join(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// A socket server's WebSocket URL with `token` in the query string.
pub fn ws_with_token(url: &str, token: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}token={}", path_segment(token))
}

/// `GET` here assigns a socket server.
pub const ASSIGN: &str = "/api/v1/socket-server";
/// `GET` here lists the socket servers.
pub const SERVERS: &str = "/api/v1/socket-servers";
/// `POST` here mints a dev token (dev mode only).
pub const DEV_TOKEN: &str = "/api/v1/dev/token";
/// `POST` creates, `GET` lists the caller's conversations.
pub const CONVERSATIONS: &str = "/api/v1/conversations";

/// One page of history: messages with `seq > after_seq`, at most `limit`.
pub fn history(conversation_id: &str, after_seq: u64, limit: u32) -> String {
    format!(
        "{CONVERSATIONS}/{}/messages?after_seq={after_seq}&limit={limit}",
        path_segment(conversation_id)
    )
}

/// `POST` adds a member.
pub fn members(conversation_id: &str) -> String {
    format!("{CONVERSATIONS}/{}/members", path_segment(conversation_id))
}

/// `DELETE` removes a member (or leaves).
pub fn member(conversation_id: &str, user_id: &str) -> String {
    format!(
        "{CONVERSATIONS}/{}/members/{}",
        path_segment(conversation_id),
        path_segment(user_id)
    )
}

/// `PUT` sets a member's role.
pub fn member_role(conversation_id: &str, user_id: &str) -> String {
    format!("{}/role", member(conversation_id, user_id))
}

/// `GET` the presence of `users` (`user_id` repeated).
pub fn presence<S: AsRef<str>>(users: &[S]) -> String {
    let mut url = String::from("/api/v1/presence");
    for (i, user) in users.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str("user_id=");
        url.push_str(&path_segment(user.as_ref()));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_with_exactly_one_slash() {
        assert_eq!(
            join("http://127.0.0.1:8080", ASSIGN),
            "http://127.0.0.1:8080/api/v1/socket-server"
        );
        assert_eq!(
            join("http://127.0.0.1:8080/", ASSIGN),
            "http://127.0.0.1:8080/api/v1/socket-server"
        );
        assert_eq!(join("http://h//", "metrics"), "http://h/metrics");
    }

    #[test]
    fn the_token_goes_in_the_query() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig-_x";
        assert_eq!(
            ws_with_token("ws://127.0.0.1:9001/ws", jwt),
            format!("ws://127.0.0.1:9001/ws?token={jwt}"),
            "a JWT needs no encoding"
        );
        assert_eq!(
            ws_with_token("ws://h/ws?v=1", "a b&c"),
            "ws://h/ws?v=1&token=a%20b%26c"
        );
    }

    #[test]
    fn ids_are_encoded_in_paths() {
        assert_eq!(
            history("01ARZ3NDEKTSV4RRFFQ69G5FAV", 7, 1000),
            "/api/v1/conversations/01ARZ3NDEKTSV4RRFFQ69G5FAV/messages?after_seq=7&limit=1000"
        );
        assert_eq!(
            history("../x?y", 0, 1),
            "/api/v1/conversations/..%2Fx%3Fy/messages?after_seq=0&limit=1"
        );
        assert_eq!(members("c1"), "/api/v1/conversations/c1/members");
        assert_eq!(
            member("c1", "auth0|x"),
            "/api/v1/conversations/c1/members/auth0%7Cx"
        );
        assert_eq!(
            member_role("c1", "ann+work@example.com"),
            "/api/v1/conversations/c1/members/ann%2Bwork%40example.com/role"
        );
    }

    #[test]
    fn presence_repeats_user_id() {
        assert_eq!(presence(&["alice"]), "/api/v1/presence?user_id=alice");
        assert_eq!(
            presence(&["alice".to_string(), "a|b".to_string()]),
            "/api/v1/presence?user_id=alice&user_id=a%7Cb"
        );
        assert_eq!(presence::<&str>(&[]), "/api/v1/presence");
    }
}
