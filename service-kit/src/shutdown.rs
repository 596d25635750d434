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

/// Runs `run` with a token that is cancelled when the process is asked to stop (SIGTERM,
/// Ctrl-C), and answers what it answers. No task is spawned: the signal is awaited beside
/// `run`, which then finishes its own drain.
pub async fn until_signal<F: std::future::Future>(
    run: impl FnOnce(CancellationToken) -> F,
) -> F::Output {
    let token = CancellationToken::new();
    let mut running = std::pin::pin!(run(token.clone()));
    tokio::select! {
        out = &mut running => return out,
        _ = signal() => {
            tracing::info!("shutdown signal received");
            token.cancel();
        }
    }
    running.await
}
