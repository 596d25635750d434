//! The sequencer's metrics: lease waits, numbering and append latencies, refusals and the
//! recovery alarms.

use switchboard_service_kit::ops::Ops;

/// Histogram buckets (seconds) for the stages of a send.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct SequencerMetrics {
    pub lock_wait_seconds: prometheus::Histogram,
    /// One numbering script with its `WAIT` (the Redis part of a send).
    pub numbering_seconds: prometheus::Histogram,
    /// A conversation batch's log appends, from enqueue to the last broker ack.
    pub append_seconds: prometheus::Histogram,
    /// Numbering attempts refused because another holder had the lease.
    pub lease_busy: prometheus::IntCounter,
    pub messages_sent: prometheus::IntCounter,
    pub send_errors: prometheus::IntCounterVec,
    /// Numbers a lease holder found pending and appended again.
    pub pending_replayed: prometheus::IntCounter,
    /// Pending numbers found older than a minute (their append stays in doubt): an alarm.
    pub pending_stale: prometheus::IntCounter,
    /// Counters found behind the log (a failover lost numbers) and raised.
    pub counters_raised: prometheus::IntCounter,
    /// Conversation batches whose senders the mirror could not vouch for (cold, or a stranger
    /// among them), so the members were read from the source of truth.
    pub membership_fallbacks: prometheus::IntCounter,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<prometheus::Histogram> {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec()),
    )
}

impl SequencerMetrics {
    /// The metrics, registered with `ops`.
    pub fn registered(ops: &Ops) -> prometheus::Result<Self> {
        let metrics = Self::new()?;
        ops.register(&metrics.lock_wait_seconds);
        ops.register(&metrics.numbering_seconds);
        ops.register(&metrics.append_seconds);
        ops.register(&metrics.lease_busy);
        ops.register(&metrics.messages_sent);
        ops.register(&metrics.send_errors);
        ops.register(&metrics.pending_replayed);
        ops.register(&metrics.pending_stale);
        ops.register(&metrics.counters_raised);
        ops.register(&metrics.membership_fallbacks);
        Ok(metrics)
    }

    fn new() -> prometheus::Result<Self> {
        Ok(SequencerMetrics {
            lock_wait_seconds: histogram(
                "manager_lock_wait_seconds",
                "time to acquire a conversation's sequence lock",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0],
            )?,
            numbering_seconds: histogram(
                "manager_numbering_seconds",
                "one numbering script and its replica WAIT",
                &LATENCY_BUCKETS,
            )?,
            append_seconds: histogram(
                "manager_append_seconds",
                "a conversation batch's log appends, enqueue to the last broker ack",
                &LATENCY_BUCKETS,
            )?,
            lease_busy: prometheus::IntCounter::new(
                "manager_lease_busy_total",
                "numbering attempts refused because another holder had the lease",
            )?,
            messages_sent: prometheus::IntCounter::new(
                "manager_messages_sent_total",
                "messages numbered and appended to the log",
            )?,
            send_errors: prometheus::IntCounterVec::new(
                prometheus::Opts::new("manager_send_errors_total", "sends refused or failed"),
                &["reason"],
            )?,
            pending_replayed: prometheus::IntCounter::new(
                "manager_pending_replayed_total",
                "numbers a lease holder found pending (append in doubt) and appended again",
            )?,
            pending_stale: prometheus::IntCounter::new(
                "manager_pending_stale_total",
                "pending numbers found waiting for their append longer than a minute (an alarm: an append stays in doubt)",
            )?,
            counters_raised: prometheus::IntCounter::new(
                "manager_counters_raised_total",
                "sequence counters found behind the log after a Redis failover, and raised",
            )?,
            membership_fallbacks: prometheus::IntCounter::new(
                "manager_membership_fallbacks_total",
                "conversation batches whose senders the mirror could not vouch for \
                 (a cold mirror, or a sender not in it), checked against the source of truth",
            )?,
        })
    }
}
