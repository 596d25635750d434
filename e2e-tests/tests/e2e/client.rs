//! Client-side helpers: mint tokens, ask the registry, speak the WebSocket protocol.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::registry::Assignment;
use switchboard_protocol::token::TokenKeys;
use switchboard_test_support::Stack;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn token_for(stack: &Stack, user: &str) -> String {
    TokenKeys::new(stack.jwt_secret().as_bytes())
        .mint(user, chrono::Duration::hours(1))
        .expect("mint")
        .0
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// `GET /api/v1/socket-server` through nginx.
pub async fn assign(http: &reqwest::Client, stack: &Stack) -> anyhow::Result<Assignment> {
    let resp = http
        .get(format!("{}/api/v1/socket-server", stack.nginx_url()))
        .send()
        .await?;
    let status = resp.status();
    if status != 200 {
        anyhow::bail!(
            "assign answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(resp.json().await?)
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub server_id: String,
}

/// How a connection attempt went.
pub enum Connect {
    Open(Box<WsClient>),
    Refused(u16, String),
}

impl WsClient {
    /// Connects with `?token=` and waits for `hello`.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<WsClient> {
        match Self::try_connect(&format!("{url}?token={token}"), None).await? {
            Connect::Open(client) => Ok(*client),
            Connect::Refused(status, body) => anyhow::bail!("refused with {status}: {body}"),
        }
    }

    pub async fn try_connect(url: &str, bearer: Option<&str>) -> anyhow::Result<Connect> {
        let mut request = url.into_client_request()?;
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                let mut client = WsClient {
                    ws,
                    server_id: String::new(),
                };
                match client.next_frame(WAIT).await {
                    Some(ServerFrame::Hello { server_id, .. }) => client.server_id = server_id,
                    other => anyhow::bail!("expected hello, got {other:?}"),
                }
                Ok(Connect::Open(Box::new(client)))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Ok(Connect::Refused(resp.status().as_u16(), body))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::Binary(data)).await.expect("send");
    }

    /// The next application frame (control frames are handled by tungstenite), or `None` on
    /// timeout or close.
    pub async fn next_frame(&mut self, within: Duration) -> Option<ServerFrame> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(serde_json::from_str(&text).expect("server frame parses"))
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn close_code(&mut self, within: Duration) -> Option<CloseCode> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// `ping` frame, expecting `pong`.
    pub async fn ping_pong(&mut self) -> bool {
        self.send_json(serde_json::json!({"type": "ping"})).await;
        matches!(self.next_frame(WAIT).await, Some(ServerFrame::Pong))
    }

    /// Sends a close frame and waits briefly for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Keeps reading in the background (so pings are answered) until the task is aborted.
    pub fn keep_alive(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { while let Some(Ok(_)) = self.ws.next().await {} })
    }

    /// Drops the TCP connection without a close frame, as a crashed client would.
    pub fn drop_tcp(self) {
        drop(self.ws);
    }
}

/// Assigns through nginx and connects `count` clients, `parallel` at a time.
pub async fn connect_via_registry(
    stack: &Stack,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<WsClient>> {
    let http = http();
    let mut clients = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(parallel) {
        let chunk = (chunk_start..count.min(chunk_start + parallel)).map(|i| {
            let http = http.clone();
            let token = token_for(stack, &format!("user{i}"));
            async move {
                let assignment = assign(&http, stack).await?;
                WsClient::connect(&assignment.url, &token).await
            }
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

/// REST call to the message service through nginx with a bearer token.
pub async fn api(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = http
        .request(method, format!("{}{path}", stack.nginx_url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
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
    let (status, value) = api(
        http,
        stack,
        token,
        reqwest::Method::POST,
        "/api/v1/conversations",
        Some(body),
    )
    .await;
    assert!(
        status == 200 || status == 201,
        "create answered {status}: {value}"
    );
    value["id"].as_str().expect("id").to_owned()
}

/// The most common opening: an HTTP client, tokens for alice and bob, and their direct
/// conversation (created by alice).
pub async fn alice_and_bob(stack: &Stack) -> (reqwest::Client, String, String, String) {
    let http = http();
    let (alice, bob) = (token_for(stack, "alice"), token_for(stack, "bob"));
    let conversation = create_conversation(
        &http,
        stack,
        &alice,
        serde_json::json!({"kind": "direct", "members": ["bob"]}),
    )
    .await;
    (http, alice, bob, conversation)
}

/// The whole history after `after_seq`, following pages of `limit`.
pub async fn history(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    after_seq: u64,
) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut after = after_seq;
    loop {
        let (status, value) = api(
            http,
            stack,
            token,
            reqwest::Method::GET,
            &format!(
                "/api/v1/conversations/{conversation_id}/messages?after_seq={after}&limit=1000"
            ),
            None,
        )
        .await;
        assert_eq!(status, 200, "history: {value}");
        let page = value["messages"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return all;
        }
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(page);
    }
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
        self.send_json(serde_json::json!({
            "type": "send",
            "conversation_id": conversation_id,
            "client_msg_id": client_msg_id,
            "body": body,
        }))
        .await;
    }

    /// Collects frames until `done` says so or `within` passes.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[ServerFrame]) -> bool,
    ) -> Vec<ServerFrame> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        while !done(&frames) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.next_frame(left).await {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        frames
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
            } if c == conversation_id => Some((*seq, message_id.clone())),
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
            } => Some((client_msg_id.clone(), (*seq, message_id.clone()))),
            _ => None,
        })
        .collect()
}

/// Sum of every sample of `name` (any labels) on a `/metrics` page.
pub async fn metric(http: &reqwest::Client, base_url: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
