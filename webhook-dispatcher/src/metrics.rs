//! The dispatcher's metrics (all prefixed `switchboard_` by the ops registry).

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
};
use switchboard_service_kit::ops::Ops;

#[derive(Clone)]
pub struct Metrics {
    /// Attempts by outcome: `delivered`, `failed` (will be retried), `dead` (gave up),
    /// `gone` (410: endpoint disabled).
    pub attempts: IntCounterVec,
    /// Attempts that were retries (every attempt of a delivery after its first).
    pub retries: IntCounter,
    /// Deliveries recorded from the topics: `queued`, `overflowed` (dead-lettered at once:
    /// the endpoint's queue was full).
    pub recorded: IntCounterVec,
    /// Endpoints disabled, by reason (`gone`, `failing`).
    pub disabled_total: IntCounterVec,
    /// Endpoints disabled now.
    pub disabled: IntGauge,
    /// Per enabled endpoint: deliveries waiting.
    pub backlog: GaugeVec,
    /// Per enabled endpoint: age of its oldest waiting delivery, seconds (its lag).
    pub lag_seconds: GaugeVec,
    /// Age of the newest record of the last batch read from the topics when it was
    /// recorded (the consumer's own lag, in time).
    pub consumer_lag_seconds: Gauge,
    /// One attempt, request to answer (or timeout).
    pub attempt_seconds: Histogram,
}

impl Metrics {
    pub fn new(ops: &Ops) -> anyhow::Result<Self> {
        let m = Metrics {
            attempts: IntCounterVec::new(
                Opts::new("webhook_deliveries_total", "delivery attempts by outcome"),
                &["outcome"],
            )?,
            retries: IntCounter::new("webhook_retries_total", "delivery attempts that were retries")?,
            recorded: IntCounterVec::new(
                Opts::new(
                    "webhook_recorded_total",
                    "deliveries recorded from the topics (queued, or overflowed: dead-lettered because the endpoint's queue was full)",
                ),
                &["outcome"],
            )?,
            disabled_total: IntCounterVec::new(
                Opts::new("webhook_endpoints_disabled_total", "endpoints disabled, by reason"),
                &["reason"],
            )?,
            disabled: IntGauge::new("webhook_endpoints_disabled", "endpoints disabled now")?,
            backlog: GaugeVec::new(
                Opts::new("webhook_backlog", "deliveries waiting per enabled endpoint"),
                &["endpoint"],
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "webhook_lag_seconds",
                    "age of the oldest waiting delivery per enabled endpoint",
                ),
                &["endpoint"],
            )?,
            consumer_lag_seconds: Gauge::new(
                "webhook_consumer_lag_seconds",
                "age of the newest topic record of the last batch recorded",
            )?,
            attempt_seconds: Histogram::with_opts(
                HistogramOpts::new("webhook_attempt_seconds", "one delivery attempt")
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )?,
        };
        ops.register(&m.attempts);
        ops.register(&m.retries);
        ops.register(&m.recorded);
        ops.register(&m.disabled_total);
        ops.register(&m.disabled);
        ops.register(&m.backlog);
        ops.register(&m.lag_seconds);
        ops.register(&m.consumer_lag_seconds);
        ops.register(&m.attempt_seconds);
        Ok(m)
    }
}
