//! The fast tier for the socket server: `Application::build` on port 0 against the test
//! binary's shared Redis, PostgreSQL and broker (`switchboard_test_support::shared`), with the
//! registry, a socket manager and the message service running in-process beside it (the
//! socket server registers with the first and sends through the second, which asks the
//! third). Clients are real WebSockets.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_test_support::shared;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct TestApp {
    id: String,
    socket: String,
    /// `http://127.0.0.1:PORT` of `/live`, `/ready` and `/metrics` (`SB_SOCKET_OPS_BIND`).
    ops: String,
    server_id: String,
    messages: String,
    http: reqwest::Client,
}

async fn spawn_apps(name: &str) -> TestApp {
    let app = spawn_apps_with(name, |_| {}).await;
    // Ready once registered, linked to the manager and assigned our topic.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = app
            .http
            .get(format!("{}/ready", app.ops))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        let body = resp.text().await.unwrap_or_default();
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

/// The apps running, the socket server's config changed by `tweak`; not waited for.
async fn spawn_apps_with(
    name: &str,
    tweak: impl FnOnce(&mut socket_server::SocketServerConfig),
) -> TestApp {
    let apps = common::spawn_apps(name, |vars| vars, tweak).await;
    TestApp {
        id: apps.id,
        socket: format!("ws://{}/ws", apps.host),
        ops: apps.ops,
        server_id: apps.server_id,
        messages: apps.messages,
        // Idle connections go after 1 s, before the servers' 5 s keep-alive closes them
        // (reusing one the server is closing fails the request with `IncompleteMessage`).
        http: reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    }
}

impl TestApp {
    async fn connect(&self, user: &str) -> Ws {
        let url = format!("{}?token={}", self.socket, shared::token(user));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgraded");
        ws
    }

    async fn group(&self, owner: &str, members: &[&str]) -> String {
        let resp = self
            .http
            .post(format!("{}/api/v1/conversations", self.messages))
            .bearer_auth(shared::token(owner))
            .json(&json!({"kind": "group", "name": "g", "members": members}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }
}

/// The next text frame of `type` (others are skipped), within 15 s.
/// One request on a fresh connection; the whole answer, up to the server closing.
async fn raw_request(host: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after answering")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame in time"))
            .expect("the socket stays open")
            .expect("a frame");
        if let WsMessage::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}

async fn send_text(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::Text(frame.to_string())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_errors_registration_and_a_send() {
    let app = spawn_apps("ws").await;

    // A valid token: upgraded, then `hello`.
    let mut alice = app.connect("alice").await;
    let hello = next_of(&mut alice, "hello").await;
    assert_eq!(hello["user_id"], "alice");
    assert_eq!(hello["server_id"], app.server_id.as_str());

    // A bad token is refused before the upgrade, with 401.
    let bad = format!("{}?token=not-a-jwt", app.socket);
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let resp = app
        .http
        .get(app.socket.replace("ws://", "http://"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no token at all");

    // The handshake itself, as raw HTTP on one connection each: a version other than 13 is
    // 426 naming the version; a plain GET with a token is 400; the answer is one JSON body.
    let alice_token = shared::token("alice");
    let host = app
        .socket
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let wrong_version = raw_request(
        &host,
        &format!(
            "GET /ws?token={alice_token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 8\r\n\r\n"
        ),
    )
    .await;
    assert!(
        wrong_version.starts_with("HTTP/1.1 426 "),
        "{wrong_version}"
    );
    assert!(
        wrong_version.contains("sec-websocket-version: 13\r\n"),
        "{wrong_version}"
    );
    assert!(
        wrong_version.contains("\"code\":\"bad_request\""),
        "{wrong_version}"
    );
    let plain_get = raw_request(
        &host,
        &format!("GET /ws?token={alice_token} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert!(plain_get.starts_with("HTTP/1.1 400 "), "{plain_get}");
    assert!(
        plain_get.contains("not a valid WebSocket upgrade"),
        "{plain_get}"
    );
    // The clients' port answers /live itself; /ready and /metrics are only on the
    // operations port, which clients cannot reach through this one.
    let live = raw_request(
        &host,
        &format!("GET /live HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert!(live.starts_with("HTTP/1.1 200 "), "{live}");
    for path in ["/ready", "/metrics", "/metrics?x=1", "/"] {
        let answer = raw_request(
            &host,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
        assert!(!answer.contains("switchboard_"), "{path}: {answer}");
    }
    let metrics = app
        .http
        .get(format!("{}/metrics", app.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("switchboard_socket_connections"));

    // A malformed frame: an `error` frame with `bad_request`, and the socket stays open.
    alice
        .send(WsMessage::Text("{\"type\":\"shout\"}".into()))
        .await
        .unwrap();
    let error = next_of(&mut alice, "error").await;
    assert_eq!(error["code"], "bad_request");
    alice
        .send(WsMessage::Text("not json".into()))
        .await
        .unwrap();
    assert_eq!(next_of(&mut alice, "error").await["code"], "bad_request");
    send_text(&mut alice, json!({"type": "ping"})).await;
    next_of(&mut alice, "pong").await;

    // It registered itself in the server directory, counting its connection.
    let directory = ServerDirectory::new(SentinelRedis::new(shared::redis_config(
        "registry", &app.id,
    )));
    let servers = directory.list().await.unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].server_id, app.server_id);
    assert!(servers[0].url.ends_with("/ws"), "{}", servers[0].url);

    // A send: `sent` to the sender, `message` to the other member.
    let conversation = app.group("alice", &["bob"]).await;
    let mut bob = app.connect("bob").await;
    next_of(&mut bob, "hello").await;
    send_text(
        &mut alice,
        json!({"type": "send", "conversation_id": conversation, "client_msg_id": "c1", "body": "hi bob"}),
    )
    .await;
    let sent = next_of(&mut alice, "sent").await;
    assert_eq!(sent["client_msg_id"], "c1");
    assert_eq!(sent["seq"], 1);
    let message = next_of(&mut bob, "message").await;
    assert_eq!(message["body"], "hi bob");
    assert_eq!(message["sender_id"], "alice");
    assert_eq!(message["message_id"], sent["message_id"]);

    // A non-member's send is refused with `not_a_member`.
    let mut mallory = app.connect("mallory").await;
    next_of(&mut mallory, "hello").await;
    send_text(
        &mut mallory,
        json!({"type": "send", "conversation_id": conversation, "client_msg_id": "m1", "body": "psst"}),
    )
    .await;
    let refused = next_of(&mut mallory, "error").await;
    assert_eq!(refused["code"], "not_a_member");
    assert_eq!(refused["client_msg_id"], "m1");
}

/// `/ready` claims live delivery only once the delivery consumer holds our topic: with the
/// manager reachable (registered, topic created) but a broker address the consumer cannot
/// reach, the server stays unready and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_delivery_consumer_is_assigned() {
    let app = spawn_apps_with("unassigned", |config| {
        config.kafka.brokers = "127.0.0.1:1".into();
    })
    .await;
    // Watched until the link to the manager is made (the reason then names the consumer, the
    // check after the link's), then two seconds more: ten reconcile intervals (200 ms here),
    // by which the registration is done too, so a `/ready` that ignored the consumer would
    // have turned 200. (A fixed eight seconds cost the fast tier as much for no more proof.)
    let mut deadline = Instant::now() + Duration::from_secs(20);
    let mut linked = false;
    let mut last = String::new();
    while Instant::now() < deadline {
        let resp = app
            .http
            .get(format!("{}/ready", app.ops))
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 200, "ready without a delivery consumer");
        last = resp.text().await.unwrap_or_default();
        if !linked && last.contains("delivery consumer") {
            linked = true;
            deadline = Instant::now() + Duration::from_secs(2);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.contains("delivery consumer"),
        "the reason names the consumer: {last}"
    );
}

/// `SB_MAX_CONNECTIONS_PER_IP`: one address holds at most that many sessions (429
/// `rate_limited` past it, whoever the user), and a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_sessions() {
    let app = spawn_apps_with("per-ip", |config| {
        config.max_connections_per_ip = 2;
    })
    .await;
    let first = app.connect("ann").await;
    let _second = app.connect("ben").await;
    let url = format!("{}?token={}", app.socket, shared::token("cat"));
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("\"code\":\"rate_limited\""), "{body}");
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("a third session from one address was accepted"),
    }
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio_tungstenite::connect_async(url.clone()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed session's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SB_HANDSHAKES_PER_IP` and `SB_HANDSHAKE_TIMEOUT_MS`: an address with that many request
/// heads still being read has further connections closed at accept, and a connection that
/// sends no head is closed when the timeout passes, freeing its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_one_address_are_capped_and_timed_out() {
    use tokio::io::AsyncReadExt;
    let app = spawn_apps_with("heads", |config| {
        config.handshakes_per_ip = 2;
        config.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let host = app
        .socket
        .trim_start_matches("ws://")
        .trim_end_matches("/ws");
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(host).await.unwrap());
    }
    // The third is closed at once, without an answer.
    let mut third = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third idle connection was closed at accept: {read:?}"
    );
    // The idle two are closed when their heads do not come in time.
    for mut stream in idle {
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "closed after {waited:?}"
    );
    // Their places are free again: a real client connects.
    let ws = app.connect("after-the-idle-ones").await;
    drop(ws);
}

/// A raw WebSocket on `socket` (ws://127.0.0.1:PORT/ws) for `user`: the 101 head read, the
/// stream left at the first frame.
async fn raw_session(socket: &str, user: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = socket.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        shared::token(user)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "hung up");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    stream
}

/// Reads server frames until a close frame; answers its status code.
async fn close_code_of(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    loop {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).await.expect("a frame");
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await.unwrap();
                usize::from(u16::from_be_bytes(b))
            }
            127 => panic!("no frame here is that long"),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        if h[0] & 0x0F == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// RFC 6455 section 7.1.7: a client that breaks the framing rules has its connection failed
/// with the close code for it (1002, or 1007 for text that is not UTF-8), not just dropped,
/// so a client library can tell a bug of its own from a network failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_fail_the_connection_with_their_close_code() {
    use switchboard_ws_codec::frame::{encode_client, OP_CONTINUATION, OP_TEXT};
    use tokio::io::AsyncWriteExt;
    let app = spawn_apps("rfc6455").await;
    let rsv = {
        let mut f = Vec::new();
        encode_client(&mut f, true, OP_TEXT, b"{}", [1, 2, 3, 4]);
        f[0] |= 0x40;
        f
    };
    let mut not_utf8 = Vec::new();
    encode_client(&mut not_utf8, true, OP_TEXT, &[0xC0, 0xAF], [1, 2, 3, 4]);
    let mut orphan = Vec::new();
    encode_client(&mut orphan, true, OP_CONTINUATION, b"x", [1, 2, 3, 4]);
    for (name, bytes, code) in [
        ("an RSV bit", rsv, 1002),
        ("invalid UTF-8", not_utf8, 1007),
        ("a continuation of nothing", orphan, 1002),
    ] {
        let mut stream = raw_session(&app.socket, "rfc").await;
        stream.write_all(&bytes).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), close_code_of(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{name}: no close frame"));
        assert_eq!(got, code, "{name}");
    }
}
