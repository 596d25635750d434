//! Client-side helpers for the tests: a thin layer over `switchboard-client` (typed REST,
//! registry assignment, the WebSocket protocol) that panics where a test would, plus what only
//! tests need (tokens from the stack's secret, Redis scores, balance checks, metrics).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_client::{Api, Connection, Error};
use switchboard_protocol::conversations::CreateConversation;
use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use switchboard_protocol::registry::Assignment;
use switchboard_test_support::Stack;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn token_for(stack: &Stack, user: &str) -> String {
    stack
        .token_keys()
        .mint(
            &switchboard_protocol::UserId::parse(user).expect("a valid user id"),
            chrono::Duration::hours(1),
        )
        .expect("mint")
        .0
}

pub fn http() -> reqwest::Client {
    Api::default_http()
}

/// The stack's front door (nginx) through `http`.
fn front(http: &reqwest::Client, stack: &Stack) -> Api {
    Api::with_http(http.clone(), &stack.nginx_url())
}

/// `GET /api/v1/socket-server` through nginx.
pub async fn assign(http: &reqwest::Client, stack: &Stack) -> anyhow::Result<Assignment> {
    Ok(front(http, stack).assign().await?)
}

pub struct WsClient {
    conn: Connection,
    pub server_id: String,
}

/// How a connection attempt went.
pub enum Connect {
    Open(Box<WsClient>),
    Refused(u16, String),
}

impl WsClient {
    fn from(conn: Connection) -> WsClient {
        WsClient {
            server_id: conn.server_id().to_owned(),
            conn,
        }
    }

    /// Connects with `?token=` and waits for `hello`.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<WsClient> {
        Ok(WsClient::from(Connection::connect(url, token).await?))
    }

    /// Connects to `url` as given, with an optional bearer token; a refused upgrade is
    /// `Connect::Refused` with its status and body.
    pub async fn try_connect(url: &str, bearer: Option<&str>) -> anyhow::Result<Connect> {
        match Connection::open(url, bearer).await {
            Ok(conn) => Ok(Connect::Open(Box::new(WsClient::from(conn)))),
            Err(Error::Refused { status, body, .. }) => Ok(Connect::Refused(status, body)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.conn.send_text(text).await.expect("send");
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        self.conn.send(frame).await.expect("send");
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.conn.send_binary(data).await.expect("send");
    }

    /// The next application frame (control frames are handled by tungstenite), or `None` on
    /// timeout or close. A text frame that is not a server frame fails the test.
    pub async fn next_frame(&mut self, within: Duration) -> Option<ServerFrame> {
        match self.conn.recv(within).await {
            Ok(frame) => Some(frame),
            Err(Error::Protocol(why)) => panic!("server frame parses: {why}"),
            Err(_) => None,
        }
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn close_code(&mut self, within: Duration) -> Option<CloseCode> {
        self.conn.close_code(within).await.map(CloseCode::from)
    }

    /// `ping` frame, expecting `pong` as the very next frame.
    pub async fn ping_pong(&mut self) -> bool {
        self.send_frame(&ClientFrame::Ping).await;
        matches!(self.next_frame(WAIT).await, Some(ServerFrame::Pong))
    }

    /// Sends a close frame and waits briefly for the server's answer.
    pub async fn close(self) {
        self.conn.close().await;
    }

    /// Keeps reading in the background (so pings are answered) until the task is aborted.
    pub fn keep_alive(self) -> tokio::task::JoinHandle<()> {
        self.conn.keep_alive()
    }

    /// Drops the TCP connection without a close frame, as a crashed client would.
    pub fn drop_tcp(self) {
        self.conn.drop_tcp();
    }
}

/// Assigns through nginx and connects `count` clients, `parallel` at a time.
pub async fn connect_via_registry(
    stack: &Stack,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<WsClient>> {
    let front = front(&http(), stack);
    let mut clients = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(parallel) {
        let chunk = (chunk_start..count.min(chunk_start + parallel)).map(|i| {
            let front = front.clone();
            let token = token_for(stack, &format!("user{i}"));
            async move { anyhow::Ok(WsClient::from(front.connect(&token).await?)) }
        });
        for client in futures_util::future::join_all(chunk).await {
            clients.push(client?);
        }
    }
    Ok(clients)
}

/// Clients per server id.
pub fn spread(clients: &[WsClient]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for c in clients {
        *counts.entry(c.server_id.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts no server holds more than 20% above the mean.
pub fn assert_balanced(counts: &HashMap<String, usize>, servers: usize, total: usize) {
    assert_eq!(
        counts.len(),
        servers,
        "every server gets clients: {counts:?}"
    );
    let mean = total as f64 / servers as f64;
    for (server, n) in counts {
        assert!(
            (*n as f64) <= mean * 1.2,
            "server {server} holds {n}, more than 20% above the mean {mean:.1}: {counts:?}"
        );
    }
}

/// The load score of every server in the sorted set, read from the Redis master.
pub async fn scores(stack: &Stack) -> HashMap<String, f64> {
    let mut conn = stack.redis.master_connection().await;
    let flat: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("{}servers", stack.redis_prefix()))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .expect("zrange");
    flat.into_iter().collect()
}

/// Polls `check` until it returns true or `within` runs out.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// REST call to the message service through nginx with a bearer token; the status and the
/// body as JSON (`Null` when it is not JSON).
pub async fn api(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, text) = front(http, stack)
        .as_user(token)
        .raw(method, path, body.as_ref())
        .await
        .expect("request");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Creates a conversation as `token`'s user; returns its id.
pub async fn create_conversation(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    body: serde_json::Value,
) -> String {
    let request: CreateConversation =
        serde_json::from_value(body.clone()).expect("a create-conversation body");
    match front(http, stack).as_user(token).create(&request).await {
        Ok(conversation) => conversation.id,
        Err(e) => panic!("create {body} answered {e}"),
    }
}

/// The most common opening: an HTTP client, tokens for alice and bob, and their direct
/// conversation (created by alice).
pub async fn alice_and_bob(stack: &Stack) -> (reqwest::Client, String, String, String) {
    let http = http();
    let (alice, bob) = (token_for(stack, "alice"), token_for(stack, "bob"));
    let conversation = front(&http, stack)
        .as_user(&alice)
        .create_direct("bob")
        .await
        .expect("alice and bob's conversation")
        .id;
    (http, alice, bob, conversation)
}

/// The whole history after `after_seq`, following pages of 1000, as JSON.
pub async fn history(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    after_seq: u64,
) -> Vec<serde_json::Value> {
    front(http, stack)
        .as_user(token)
        .history_all(conversation_id, after_seq)
        .await
        .unwrap_or_else(|e| panic!("history: {e}"))
        .iter()
        .map(|m| serde_json::to_value(m).expect("a stored message serializes"))
        .collect()
}

/// Polls history until it holds at least `count` messages (the store trails the log).
pub async fn history_with(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    count: usize,
) -> Vec<serde_json::Value> {
    history_within(
        http,
        stack,
        token,
        conversation_id,
        count,
        Duration::from_secs(20),
    )
    .await
}

/// [`history_with`] with an explicit bound.
pub async fn history_within(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    count: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let messages = history(http, stack, token, conversation_id, 0).await;
        if messages.len() >= count || Instant::now() > deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl WsClient {
    pub async fn send_message(&mut self, conversation_id: &str, client_msg_id: &str, body: &str) {
        self.conn
            .send_message(conversation_id, client_msg_id, body)
            .await
            .expect("send");
    }

    /// Collects frames until `done` says so or `within` passes.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        done: impl FnMut(&[ServerFrame]) -> bool,
    ) -> Vec<ServerFrame> {
        self.conn.collect_until(within, done).await
    }
}

/// `(seq, message_id)` of every `message` frame of `conversation_id`, in arrival order.
pub fn messages_of(frames: &[ServerFrame], conversation_id: &str) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message {
                conversation_id: c,
                seq,
                message_id,
                ..
            } if c == conversation_id => Some((*seq, message_id.to_string())),
            _ => None,
        })
        .collect()
}

/// `sent` frames, by client_msg_id.
pub fn sent_of(frames: &[ServerFrame]) -> HashMap<String, (u64, String)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Sent {
                client_msg_id,
                seq,
                message_id,
                ..
            } => Some((client_msg_id.clone(), (*seq, message_id.to_string()))),
            _ => None,
        })
        .collect()
}

pub use switchboard_test_support::http::metric;

/// The typed client against a real stack, route by route: what the other tests reach through
/// [`api`] as raw JSON, here through `switchboard-client`'s types and error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_typed_client_speaks_every_public_route_and_frame() {
    use switchboard_protocol::conversations::Role;
    use switchboard_protocol::frames::PresenceStatus;
    use switchboard_protocol::ErrorCode;

    let stack = Stack::start(switchboard_test_support::StackOptions::default())
        .await
        .unwrap();
    let front = front(&http(), &stack);
    let [alice_t, bob_t, carol_t] = ["alice", "bob", "carol"].map(|u| token_for(&stack, u));
    let (alice, bob, carol) = (
        front.as_user(&alice_t),
        front.as_user(&bob_t),
        front.as_user(&carol_t),
    );

    // Conversations: a direct pair is one conversation whoever asks; a group has roles.
    let direct = alice.create_direct("bob").await.unwrap();
    assert_eq!(direct.kind, "direct");
    assert_eq!(bob.create_direct("alice").await.unwrap().id, direct.id);
    let group = alice.create_group("team", ["bob"]).await.unwrap();
    assert_eq!(group.roles.get("alice"), Some(&Role::Owner));
    let refused = bob.add_member(&group.id, "carol").await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(403), Some(ErrorCode::Forbidden)),
        "{refused}"
    );
    let promoted = alice.set_role(&group.id, "bob", Role::Admin).await.unwrap();
    assert_eq!(promoted.roles.get("bob"), Some(&Role::Admin));
    let grown = bob.add_member(&group.id, "carol").await.unwrap();
    assert!(grown.members.iter().any(|m| m == "carol"), "{grown:?}");
    let outsider = carol.history(&direct.id, 0, 10).await.unwrap_err();
    assert_eq!(outsider.code(), Some(ErrorCode::NotAMember), "{outsider}");

    // Frames: acknowledged sends, deliveries, refusals with their code, ping.
    let mut a = front.connect(&alice_t).await.unwrap();
    let mut b = front.connect(&bob_t).await.unwrap();
    let mut c = front.connect(&carol_t).await.unwrap();
    assert_eq!(a.user_id(), "alice");
    let sent = a
        .send_and_expect_sent(&group.id, "m1", "hello team", WAIT)
        .await
        .unwrap();
    assert_eq!(
        (sent.seq, sent.conversation_id.as_str()),
        (1, group.id.as_str())
    );
    let delivered = b
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Message { .. }))
        .await
        .unwrap();
    assert!(
        matches!(&delivered, ServerFrame::Message { seq: 1, body, sender_id, .. }
            if body == "hello team" && sender_id == "alice"),
        "{delivered:?}"
    );
    let not_member = c
        .send_and_expect_sent(&direct.id, "x1", "let me in", WAIT)
        .await
        .unwrap_err();
    assert_eq!(
        not_member.code(),
        Some(ErrorCode::NotAMember),
        "{not_member}"
    );
    a.ping(WAIT).await.unwrap();

    // Stored history, the conversation list, presence.
    assert!(
        eventually(Duration::from_secs(20), || async {
            bob.history_all(&group.id, 0).await.unwrap().len() == 1
        })
        .await,
        "the message is stored"
    );
    let stored = bob.history(&group.id, 0, 10).await.unwrap();
    assert_eq!(
        (
            stored[0].seq,
            stored[0].message_id.as_str(),
            stored[0].client_msg_id.as_str()
        ),
        (1, sent.message_id.as_str(), "m1")
    );
    let listed = bob.conversations().await.unwrap();
    for id in [&direct.id, &group.id] {
        assert!(listed.iter().any(|c| &c.id == id), "{id} in {listed:?}");
    }
    let presence = alice.presence(&["bob"]).await.unwrap();
    assert_eq!(presence[0].status, PresenceStatus::Online, "{presence:?}");
    let stranger = carol.presence(&["nobody-she-knows"]).await.unwrap_err();
    assert_eq!(stranger.code(), Some(ErrorCode::Forbidden), "{stranger}");

    // Leaving takes effect; a bad token is refused before the upgrade with its code.
    carol.remove_member(&group.id, "carol").await.unwrap();
    let gone = carol.history(&group.id, 0, 10).await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotAMember), "{gone}");
    let url = front.assign().await.unwrap().url;
    match Connection::connect(&url, "not-a-token").await {
        Err(e @ Error::Refused { .. }) => assert_eq!(
            (e.status(), e.code()),
            (Some(401), Some(ErrorCode::Unauthorized)),
            "{e}"
        ),
        other => panic!("a bad token was not refused: {other:?}"),
    }
    for conn in [a, b, c] {
        conn.close().await;
    }
}
