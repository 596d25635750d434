//! Cleans up after dead handlers: a handler whose liveness key expired (it was evicted by the
//! health checker, crashed, or was cut off) loses its topic and its user mappings.

use std::time::Duration;

use actix_web::web;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::AppState;

pub(crate) async fn run(state: web::Data<AppState>, shutdown: CancellationToken) {
    let owner = ulid::Ulid::new().to_string();
    let period = Duration::from_millis((state.config.handler_ttl_ms / 2).max(500) as u64);
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let handlers = &state.sequencer.handlers;
        match handlers
            .try_janitor_lease(&owner, period.as_millis() as i64)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "janitor lease unavailable");
                continue;
            }
        }
        let dead = match handlers.dead_handlers().await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::debug!(error = %e, "listing handlers failed");
                continue;
            }
        };
        for handler in dead {
            tracing::warn!(%handler, "handler stopped renewing; removing its topic and mappings");
            if state.config.delete_handler_topics {
                let topic = state.sequencer.kafka.config.handler_topic(&handler);
                if let Err(e) = state.sequencer.kafka.delete_topic(&topic).await {
                    tracing::warn!(error = %e, %topic, "deleting the handler topic failed");
                }
            }
            match handlers.forget(&handler).await {
                Ok(offline) => crate::presence::announce(state.clone(), Vec::new(), offline),
                Err(e) => tracing::warn!(error = %e, %handler, "forgetting the handler failed"),
            }
        }
    }
}
