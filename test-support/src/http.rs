//! Polling HTTP endpoints until they answer.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::ManagedProcess;

/// Polls `GET url` until it returns 200, or fails after `timeout` with the last outcome.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(url).send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => format!("error: {e}"),
        };
        if Instant::now() >= deadline {
            bail!("GET {url} did not return 200 within {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET url` until 200 while `process` keeps running. On failure the error carries
/// the tail of the process's log.
pub async fn wait_ready(process: &ManagedProcess, url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(url).send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => format!("error: {e}"),
        };
        let exited = process.exit_status();
        if exited.is_some() || Instant::now() >= deadline {
            let why = match exited {
                Some(status) => format!("exited ({status})"),
                None => format!("not ready within {timeout:?}"),
            };
            bail!(
                "{} (pid {}) {why}: GET {url} -> {last}\n--- tail of {} ---\n{}\n---",
                process.name(),
                process.pid(),
                process.log_path().display(),
                process.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
