//! Consumes this handler's Kafka topic and pushes each record's frame to the local devices of
//! its recipients. One record carries every local recipient, so a group message costs one
//! record per handler, not one per device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use switchboard_kafka::KafkaConfig;
use switchboard_message_log::{decode_handler_envelope, HandlerRecord};
use switchboard_service_kit::latch::Latch;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_service_kit::telemetry;

use crate::hub::Outbound;
use crate::reorder::Reorderer;
use crate::state::ServerState;

pub(crate) async fn run(
    state: Arc<ServerState>,
    kafka: KafkaConfig,
    topic: String,
    stop: CancellationToken,
) {
    // The group is the handler itself: it alone reads its topic, and after a restart with the
    // same id it resumes where it stopped.
    let consumer: StreamConsumer = match kafka
        .consumer_config(
            &format!("handler-{}", state.server_id),
            state.config.delivery_fetch_wait_ms,
        )
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the delivery consumer");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[&topic]) {
        tracing::error!(error = %e, %topic, "cannot subscribe to the handler topic");
        return;
    }
    tracing::info!(%topic, "consuming deliveries");
    // Whichever way this task ends, /ready stops claiming live delivery.
    let _unlatch = Unlatch(&state.delivery_assigned);
    let mut reorder = Reorderer::new(REORDER_HOLD);
    let mut tick = tokio::time::interval(REORDER_HOLD / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                for record in reorder.expire(Instant::now()) {
                    deliver(&state, &record);
                }
                if !state.delivery_assigned.is_set() && has_assignment(&consumer) {
                    tracing::info!(%topic, "delivery consumer assigned");
                    state.delivery_assigned.set();
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "delivery consumer error");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match decode_handler_envelope(message.payload().unwrap_or_default()) {
            Ok(decoded) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_received(decoded.trace.as_deref(), &decoded.records);
                }
                for record in decoded.records {
                    take(&state, &mut reorder, record);
                }
            }
            Err(e) => tracing::error!(
                offset = message.offset(),
                error = %e,
                "unreadable handler record"
            ),
        }
        let _ = consumer.store_offset_from_message(&message);
    }
}

/// Whether the broker has given this consumer any partition (a cheap local call).
fn has_assignment(consumer: &StreamConsumer) -> bool {
    consumer.assignment().is_ok_and(|list| list.count() > 0)
}

/// Clears the readiness latch when dropped.
struct Unlatch<'a>(&'a Latch);

impl Drop for Unlatch<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// Delivers one routed frame, through the reorder buffer when it is a numbered message.
fn take(state: &ServerState, reorder: &mut Reorderer<HandlerRecord>, record: HandlerRecord) {
    if record.recipients.is_empty() {
        // For nobody: a control record (`Sessions::control`).
        state.sessions.control(&record.frame);
        return;
    }
    if let Some(accepted) = record.accepted_at_ms {
        let age_ms = chrono::Utc::now().timestamp_millis() - accepted;
        state
            .metrics
            .delivery_latency
            .observe(age_ms.max(0) as f64 / 1000.0);
    }
    match record.order.clone() {
        Some((conversation, seq)) => {
            for ready in reorder.push(&conversation, seq, record, Instant::now()) {
                deliver(state, &ready);
            }
        }
        None => deliver(state, &record),
    }
}

/// How long a message waits for its predecessor before going out anyway.
const REORDER_HOLD: Duration = Duration::from_millis(100);

fn deliver(state: &ServerState, record: &HandlerRecord) {
    let frame = Outbound::Frame(Arc::from(record.frame.as_str()));
    for user in &record.recipients {
        let outcome = state.hub.push_to_user(user, &frame, record.skip_connection);
        state.metrics.deliveries.inc_by(outcome.queued as u64);
    }
}

/// One debug line per routed message: its id, the flush that routed it (the envelope's
/// `trace`, as the manager's `routed` line names it), the send's W3C trace (`trace_id`, from
/// the record's `traceparent`) and how many local users get it. The line is the step of
/// this server in that trace: it sits in a `deliver` span joined to it (exported with the
/// `otlp` feature).
fn log_received(trace: Option<&str>, records: &[HandlerRecord]) {
    let trace = trace.unwrap_or("-");
    for record in records {
        if let Some(message_id) = &record.message_id {
            let span = tracing::debug_span!("deliver", trace_id = tracing::field::Empty);
            if let Some(parent) = record.traceparent {
                telemetry::trace::join(&span, Some(parent));
            }
            span.in_scope(|| {
                tracing::debug!(
                    trace,
                    trace_id = record.traceparent.map(|t| tracing::field::display(t.trace_id)),
                    %message_id,
                    recipients = record.recipients.len(),
                    "delivered"
                )
            });
        }
    }
}
