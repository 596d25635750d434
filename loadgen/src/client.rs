//! A lean client: tokens, registry assignment, and a WebSocket split into a writer the
//! scenario keeps and a reader task that hands every frame to a callback.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::token::TokenKeys;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Writer = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// Microseconds since the process's first call: the clock in message bodies, so latency is
/// measured by one clock in one process.
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
        .expect("http client")
}

/// A token for `user`: minted locally with the shared secret when given, otherwise from the
/// dev endpoint (dev mode).
pub async fn token(
    http: &reqwest::Client,
    base_url: &str,
    secret: Option<&str>,
    user: &str,
) -> Result<String> {
    if let Some(secret) = secret {
        return Ok(TokenKeys::new(secret.as_bytes())
            .mint(user, chrono::Duration::hours(2))?
            .0);
    }
    let response: serde_json::Value = http
        .post(format!("{base_url}/api/v1/dev/token"))
        .json(&serde_json::json!({ "user_id": user }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(response["token"].as_str().context("token")?.to_owned())
}

/// Asks the registry, connects, waits for `hello`, and spawns a reader that calls
/// `on_frame` for every later frame. Returns the server id and the writer.
pub async fn connect<F>(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    mut on_frame: F,
) -> Result<(String, Writer)>
where
    F: FnMut(ServerFrame) + Send + 'static,
{
    let assignment: serde_json::Value = http
        .get(format!("{base_url}/api/v1/socket-server"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let url = assignment["url"].as_str().context("url")?;
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
    let (writer, mut reader) = ws.split();
    let server_id = match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str(&text)? {
            ServerFrame::Hello { server_id, .. } => server_id,
            other => bail!("expected hello, got {other:?}"),
        },
        other => bail!("no hello: {other:?}"),
    };
    tokio::spawn(async move {
        while let Some(Ok(message)) = reader.next().await {
            if let Message::Text(text) = message {
                if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                    on_frame(frame);
                }
            }
        }
    });
    Ok((server_id, writer))
}

pub async fn send_json(writer: &mut Writer, value: &serde_json::Value) -> Result<()> {
    writer.send(Message::Text(value.to_string())).await?;
    Ok(())
}

/// Runs `f` over `items` with at most `parallel` at a time, keeping order.
pub async fn bounded<T, F, Fut, R>(items: Vec<T>, parallel: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    use futures_util::stream;
    stream::iter(items.into_iter().map(f))
        .buffered(parallel.max(1))
        .collect()
        .await
}
