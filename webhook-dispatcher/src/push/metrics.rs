//! The notifier's metrics (prefixed `switchboard_` by the ops registry).

use prometheus::{IntCounter, IntGauge};
use switchboard_service_kit::ops::Ops;

#[derive(Clone)]
pub struct PushMetrics {
    /// Pushes the gateway accepted.
    pub sent: IntCounter,
    /// Pushes not sent because the user had read the message by then (online and read, or
    /// read elsewhere before the window closed).
    pub suppressed: IntCounter,
    /// Pushes dropped because their newest message was older than the TTL (each once).
    pub dropped: IntCounter,
    /// Attempts that were retries.
    pub retries: IntCounter,
    /// Attempts that failed (will be retried).
    pub failures: IntCounter,
    /// Pushes with nobody to send to: no device left, or no longer a member.
    pub no_target: IntCounter,
    /// Devices removed because the gateway rejected their pushkey.
    pub rejected_devices: IntCounter,
    /// Recipients not considered: past `SB_PUSH_MAX_RECIPIENTS` for one conversation and batch.
    pub recipients_skipped: IntCounter,
    /// Pushes waiting now.
    pub waiting: IntGauge,
}

impl PushMetrics {
    pub fn new(ops: &Ops) -> anyhow::Result<Self> {
        let m = PushMetrics {
            sent: IntCounter::new("push_sent_total", "pushes the gateway accepted")?,
            suppressed: IntCounter::new(
                "push_suppressed_total",
                "pushes not sent: the user had read the message",
            )?,
            dropped: IntCounter::new(
                "push_dropped_total",
                "pushes dropped past SB_PUSH_TTL_SECS (each counted once)",
            )?,
            retries: IntCounter::new("push_retries_total", "gateway attempts that were retries")?,
            failures: IntCounter::new(
                "push_failed_attempts_total",
                "gateway attempts that failed (retried)",
            )?,
            no_target: IntCounter::new(
                "push_no_target_total",
                "pushes with no device left or no longer a member",
            )?,
            rejected_devices: IntCounter::new(
                "push_rejected_devices_total",
                "devices removed because the gateway rejected their pushkey",
            )?,
            recipients_skipped: IntCounter::new(
                "push_recipients_skipped_total",
                "recipients past SB_PUSH_MAX_RECIPIENTS, not considered",
            )?,
            waiting: IntGauge::new("push_waiting", "pushes waiting")?,
        };
        ops.register(&m.sent);
        ops.register(&m.suppressed);
        ops.register(&m.dropped);
        ops.register(&m.retries);
        ops.register(&m.failures);
        ops.register(&m.no_target);
        ops.register(&m.rejected_devices);
        ops.register(&m.recipients_skipped);
        ops.register(&m.waiting);
        Ok(m)
    }
}
