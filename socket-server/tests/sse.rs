//! The HTTP fallback (`GET /sse`, `POST /sse/{session_id}/frames`) against a real socket
//! server, manager, message service and registry, as `tests/ws.rs` runs them: frames both
//! ways between an SSE client and a WebSocket client, the server's load counting the SSE
//! session, refusals (token, session, user, per-address cap), the heartbeat and client
//! timeout, a slow consumer dropped, and the graceful drain's 1012.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_config::names::SB_USER_FRAMES_PER_MIN;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::shared;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct TestApp {
    /// `127.0.0.1:PORT` of the public port.
    host: String,
    ops: String,
    messages: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

async fn spawn_apps(
    name: &str,
    tweak: impl FnOnce(&mut socket_server::SocketServerConfig),
) -> TestApp {
    // No per-user quotas: the slow-consumer test sends a burst.
    let apps = common::spawn_apps(name, |vars| vars.with(SB_USER_FRAMES_PER_MIN, 0), tweak).await;
    let app = TestApp {
        host: apps.host,
        ops: apps.ops,
        messages: apps.messages,
        // Idle connections go after 1 s, before the servers' 5 s keep-alive closes them
        // (reusing one the server is closing fails the request with `IncompleteMessage`).
        http: reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
        stop: apps.stop,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while app
        .http
        .get(format!("{}/ready", app.ops))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

/// A client of `GET /sse`: the response's events, read line by line.
struct Sse {
    reader: BufReader<TcpStream>,
    session_id: String,
}

/// `GET /sse` raw: the status line and, on 200, the session (its first event read).
async fn open_sse(host: &str, user: &str) -> Result<Sse, (u16, String)> {
    open_sse_on(TcpStream::connect(host).await.unwrap(), host, user).await
}

async fn open_sse_on(mut stream: TcpStream, host: &str, user: &str) -> Result<Sse, (u16, String)> {
    let request = format!(
        "GET /sse?token={} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Origin: http://app.example\r\n\r\n",
        shared::token(user)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head[9..12].parse().unwrap();
    if status != 200 {
        let mut body = String::new();
        let _ = reader.read_to_string(&mut body).await;
        return Err((status, body));
    }
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(
        lower.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    let mut sse = Sse {
        reader,
        session_id: String::new(),
    };
    let (event, data) = sse.event().await.expect("the session event");
    assert_eq!(event.as_deref(), Some("session"));
    let data: Value = serde_json::from_str(&data).unwrap();
    sse.session_id = data["session_id"].as_str().unwrap().to_owned();
    Ok(sse)
}

impl Sse {
    /// The next event (`event:` name, `data:`), or `None` at the end of the stream.
    async fn event(&mut self) -> Option<(Option<String>, String)> {
        let mut name = None;
        let mut data = Vec::new();
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).await.ok()?;
            if read == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !data.is_empty() {
                    return Some((name, data.join("\n")));
                }
                continue;
            }
            if let Some(value) = line.strip_prefix("event: ") {
                name = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push(value.to_owned());
            }
        }
    }

    /// The next data frame of `type` within 15 s (others, and pings, skipped).
    async fn next_of(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (event, data) = tokio::time::timeout(left, self.event())
                .await
                .unwrap_or_else(|_| panic!("no {kind} frame in time"))
                .expect("the stream stays open");
            if event.is_none() {
                let frame: Value = serde_json::from_str(&data).unwrap();
                if frame["type"] == kind {
                    return frame;
                }
            }
        }
    }

    /// Reads to the `close` event; answers its code (`None`: the stream ended without one).
    async fn close_code(&mut self) -> Option<u64> {
        loop {
            match self.event().await? {
                (Some(name), data) if name == "close" => {
                    let close: Value = serde_json::from_str(&data).unwrap();
                    return close["code"].as_u64();
                }
                _ => {}
            }
        }
    }
}

/// `POST /sse/{id}/frames` with `body` as `user`: status and body.
async fn post(app: &TestApp, id: &str, user: Option<&str>, body: &str) -> (u16, String) {
    let mut url = format!("http://{}/sse/{id}/frames", app.host);
    if let Some(user) = user {
        url.push_str(&format!("?token={}", shared::token(user)));
    }
    let resp = app
        .http
        .post(url)
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn group(app: &TestApp, owner: &str, members: &[&str]) -> String {
    let resp = app
        .http
        .post(format!("{}/api/v1/conversations", app.messages))
        .bearer_auth(shared::token(owner))
        .json(&json!({"kind": "group", "name": "g", "members": members}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_ws(app: &TestApp, user: &str) -> Ws {
    let url = format!("ws://{}/ws?token={}", app.host, shared::token(user));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn ws_next_of(ws: &mut Ws, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame in time"))
            .expect("open")
            .expect("a frame");
        if let WsMessage::Close(close) = &message {
            panic!("closed while waiting for {kind}: {close:?}");
        }
        if let WsMessage::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // `switchboard_<name>`, with or without labels.
    let full = format!("switchboard_{name}");
    text.lines()
        .filter(|line| {
            line.strip_prefix(&full)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find_map(|line| line.rsplit(' ').next()?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_session_carries_frames_both_ways_and_counts_as_a_connection() {
    let app = spawn_apps("sse-frames", |_| {}).await;
    let mut ann = open_sse(&app.host, "ann").await.expect("opened");
    let hello = ann.next_of("hello").await;
    assert_eq!(hello["user_id"], "ann");
    let mut ben = connect_ws(&app, "ben").await;
    ws_next_of(&mut ben, "hello").await;
    assert_eq!(metric(&app, "socket_connections").await, 2.0);
    let conv = group(&app, "ann", &["ben"]).await;

    // Up: a send and a ping in one POST, one frame per line, read in order.
    let send =
        json!({"type":"send","conversation_id":conv,"client_msg_id":"m1","body":"over http"});
    let (status, _) = post(
        &app,
        &ann.session_id,
        Some("ann"),
        &format!("{send}\n{{\"type\":\"ping\"}}\n"),
    )
    .await;
    assert_eq!(status, 204);
    // The pong is the loop's own answer; `sent` comes back from the managers, later.
    ann.next_of("pong").await;
    let sent = ann.next_of("sent").await;
    assert_eq!(
        (sent["client_msg_id"].as_str(), sent["seq"].as_u64()),
        (Some("m1"), Some(1))
    );
    let message = ws_next_of(&mut ben, "message").await;
    assert_eq!(
        (message["body"].as_str(), message["sender_id"].as_str()),
        (Some("over http"), Some("ann"))
    );

    // Down: ben's message arrives on ann's stream.
    ben.send(WsMessage::Text(
        json!({"type":"send","conversation_id":conv,"client_msg_id":"b1","body":"back"})
            .to_string(),
    ))
    .await
    .unwrap();
    let message = ann.next_of("message").await;
    assert_eq!(
        (message["body"].as_str(), message["seq"].as_u64()),
        (Some("back"), Some(2))
    );

    // The same validation as a WebSocket frame: bad JSON and U+0000 are `bad_request`, and
    // the session goes on.
    assert_eq!(
        post(&app, &ann.session_id, Some("ann"), "not json").await.0,
        204
    );
    let error = ann.next_of("error").await;
    assert_eq!(error["code"], "bad_request");
    let nul = json!({"type":"send","conversation_id":conv,"client_msg_id":"m2","body":"a\u{0}b"});
    assert_eq!(
        post(&app, &ann.session_id, Some("ann"), &nul.to_string())
            .await
            .0,
        204
    );
    let error = ann.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["client_msg_id"].as_str()),
        (Some("bad_request"), Some("m2"))
    );
    // An empty POST answers the heartbeat.
    assert_eq!(post(&app, &ann.session_id, Some("ann"), "").await.0, 204);

    // Gone when the client goes: its place in the load is given back.
    drop(ann);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&app, "socket_connections").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the SSE session was never counted out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_tokens_sessions_users_and_the_per_address_cap() {
    let app = spawn_apps("sse-refusals", |config| {
        config.max_connections_per_ip = 1;
    })
    .await;
    // No token, a bad one: 401 before anything opens.
    let raw = format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", app.host);
    let mut stream = TcpStream::connect(&app.host).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.contains("\"code\":\"unauthorized\""), "{answer}");
    let resp = app
        .http
        .get(format!("http://{}/sse?token=not-a-jwt", app.host))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let ann = open_sse(&app.host, "ann").await.expect("opened");
    // One session per address here: a second (any user) is 429.
    match open_sse(&app.host, "ben").await {
        Err((status, body)) => {
            assert_eq!(status, 429);
            assert!(body.contains("rate_limited"), "{body}");
        }
        Ok(_) => panic!("a second session from one address was accepted"),
    }
    // POSTs: no token 401, another user's token 403, an unknown session 404.
    let (status, body) = post(&app, &ann.session_id, None, "{\"type\":\"ping\"}").await;
    assert_eq!(
        (status, body.contains("unauthorized")),
        (401, true),
        "{body}"
    );
    let (status, body) = post(&app, &ann.session_id, Some("ben"), "{\"type\":\"ping\"}").await;
    assert_eq!((status, body.contains("forbidden")), (403, true), "{body}");
    let (status, body) = post(&app, "0123456789abcdef", Some("ann"), "{\"type\":\"ping\"}").await;
    assert_eq!((status, body.contains("not_found")), (404, true), "{body}");
    let id = ann.session_id.clone();
    // A session that ended takes its id with it, and frees its place.
    drop(ann);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if post(&app, &id, Some("ann"), "").await.0 == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ended session still takes frames"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_sse(&app.host, "ben").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the ended session's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_needs_an_answer_and_the_drain_closes_with_1012() {
    let app = spawn_apps("sse-heartbeat", |config| {
        config.heartbeat_interval = Duration::from_millis(200);
        config.client_timeout = Duration::from_millis(1_000);
    })
    .await;
    // A client that answers every `ping` event (an empty POST) stays past the timeout.
    let mut alive = open_sse(&app.host, "ann").await.unwrap();
    // A client that never answers is closed with 1001, as a WebSocket would be.
    let mut silent = open_sse(&app.host, "ben").await.unwrap();
    let start = Instant::now();
    let answering = async {
        let mut pings = 0;
        while start.elapsed() < Duration::from_secs(3) {
            let (event, _) = alive.event().await.expect("still open");
            if event.as_deref() == Some("ping") {
                pings += 1;
                assert_eq!(post(&app, &alive.session_id, Some("ann"), "").await.0, 204);
            }
        }
        pings
    };
    let closing = async {
        let code = tokio::time::timeout(Duration::from_secs(5), silent.close_code())
            .await
            .expect("the silent client was closed in time");
        (code, start.elapsed())
    };
    let (pings, (code, closed_after)) = tokio::join!(answering, closing);
    assert_eq!(code, Some(1001));
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    assert!(pings >= 10, "{pings} pings");
    // Shutdown drains it like a WebSocket: 1012, reconnect through the registry.
    app.stop.cancel();
    let code = tokio::time::timeout(Duration::from_secs(5), alive.close_code())
        .await
        .expect("closed by the drain");
    assert_eq!(code, Some(1012));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_stream_is_dropped_as_a_slow_consumer() {
    let app = spawn_apps("sse-slow", |config| {
        config.client_write_timeout = Duration::from_millis(500);
        config.outbound_queue = 16;
    })
    .await;
    // A small receive window, and nothing read after the first events.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.host.parse().unwrap()).await.unwrap();
    let mut ann = open_sse_on(stream, &app.host, "ann").await.unwrap();
    ann.next_of("hello").await;
    let mut ben = connect_ws(&app, "ben").await;
    ws_next_of(&mut ben, "hello").await;
    // Ben reads everything as it comes: the write timeout (500 ms here) and the small queue
    // apply to his session too, and only ann may be the slow one. (Ben left unread was
    // reset as a stalled client when his own frames filled his socket: a race this test
    // once lost.)
    let (mut ben, mut ben_in) = ben.split();
    let (frames, mut ben_frames) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ben_in.next().await {
            if let WsMessage::Text(text) = message {
                let _ = frames.send(serde_json::from_str(&text).unwrap());
            }
        }
    });
    let conv = group(&app, "ben", &["ann"]).await;
    let body = "x".repeat(15_000);
    let before = metric(&app, "socket_slow_consumer_kicks_total").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while metric(&app, "socket_slow_consumer_kicks_total").await == before {
        assert!(
            Instant::now() < deadline,
            "never dropped after {n} messages"
        );
        // Bursts of 10, each only once ben has read the `sent` answers of the one before:
        // his outbound queue (16 here, like ann's) must never hold two bursts' answers, or
        // the sender is the one kicked. (Pacing by time alone, 60 ms between bursts, let two
        // bursts' answers meet in his queue when the machine was busy: a race this test lost
        // in a full run.)
        for _ in 0..10 {
            n += 1;
            let frame = json!({"type":"send","conversation_id":conv,"client_msg_id":format!("b{n}"),"body":body});
            ben.send(WsMessage::Text(frame.to_string())).await.unwrap();
        }
        let mut answered = 0;
        while answered < 10 {
            let frame = tokio::time::timeout(Duration::from_secs(15), ben_frames.recv())
                .await
                .expect("ben's sends are answered")
                .expect("ben's connection is open");
            if frame["type"] == "sent" || frame["type"] == "error" {
                answered += 1;
            }
        }
        // Within the server's 200 frames/s.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Its session is gone: frames for it are refused, and ben is unharmed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while post(&app, &ann.session_id, Some("ann"), "").await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the slow session still takes frames"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ben.send(WsMessage::Text(json!({"type":"ping"}).to_string()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(frame) = ben_frames.recv().await {
            if frame["type"] == "pong" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(pong, Ok(true), "ben's session ended with ann's");
}
