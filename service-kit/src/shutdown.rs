//! One shutdown path: a [`CancellationToken`] cancelled on SIGTERM or Ctrl-C. Every task of a
//! service selects on it, so a single signal winds down the whole process.

pub use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A token cancelled when the process is asked to stop.
pub fn token_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown signal received");
        child.cancel();
    });
    token
}
