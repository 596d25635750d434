//! What every scenario shares besides the client (which is `switchboard-client`): the clock in
//! message bodies, the HTTP client settings, tokens, bounded parallelism.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use switchboard_client::Api;

use crate::Args;

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

/// The front door (`--base-url`) with loadgen's HTTP client.
pub fn api(args: &Args) -> Api {
    Api::with_http(http_client(), &args.base_url)
}

/// A token for `user`: minted locally with `--jwt-secret` when given, otherwise from the dev
/// endpoint (dev mode).
pub async fn token(api: &Api, args: &Args, user: &str) -> Result<String> {
    let secret = args.jwt_secret.as_deref().map(str::as_bytes);
    Ok(api.token(user, secret, chrono::Duration::hours(2)).await?)
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
