//! Polling HTTP endpoints until they answer.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::ManagedProcess;

/// Polls `GET url` every 100 ms until it returns 200 (`Ok`), or until `give_up` returns a
/// reason (`Err(reason, last outcome)`); `give_up` sees whether the deadline has passed.
async fn poll_ok(
    url: &str,
    timeout: Duration,
    mut give_up: impl FnMut(bool) -> Option<String>,
) -> Result<(), (String, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| (e.to_string(), String::new()))?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(url).send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => format!("error: {e}"),
        };
        if let Some(why) = give_up(Instant::now() >= deadline) {
            return Err((why, last));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET url` until it returns 200, or fails after `timeout` with the last outcome.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let outcome = poll_ok(url, timeout, |late| {
        late.then(|| format!("not 200 within {timeout:?}"))
    })
    .await;
    if let Err((why, last)) = outcome {
        bail!("GET {url}: {why} (last: {last})");
    }
    Ok(())
}

/// Polls `GET url` until 200 while `process` keeps running. On failure the error carries
/// the tail of the process's log.
pub async fn wait_ready(process: &ManagedProcess, url: &str, timeout: Duration) -> Result<()> {
    let outcome = poll_ok(url, timeout, |late| match process.exit_status() {
        Some(status) => Some(format!("exited ({status})")),
        None => late.then(|| format!("not ready within {timeout:?}")),
    })
    .await;
    if let Err((why, last)) = outcome {
        bail!(
            "{} (pid {}) {why}: GET {url} -> {last}\n--- tail of {} ---\n{}\n---",
            process.name(),
            process.pid(),
            process.log_path().display(),
            process.log_tail(40)
        );
    }
    Ok(())
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
