//! The prober's metrics: probes by outcome, evictions, and the servers seen in the last round.

use switchboard_service_kit::ops::Ops;

pub(crate) struct Metrics {
    pub probes: prometheus::IntCounterVec,
    pub evictions: prometheus::IntCounter,
    pub servers: prometheus::IntGauge,
}

impl Metrics {
    /// The metrics, registered with `ops` for `/metrics`.
    pub fn new(ops: &Ops) -> Result<Self, prometheus::Error> {
        let metrics = Metrics {
            probes: prometheus::IntCounterVec::new(
                prometheus::Opts::new("health_probes_total", "socket server probes by outcome"),
                &["outcome"],
            )?,
            evictions: prometheus::IntCounter::new(
                "health_evictions_total",
                "socket servers evicted by this checker",
            )?,
            servers: prometheus::IntGauge::new(
                "health_registered_servers",
                "socket servers seen in the last round",
            )?,
        };
        ops.register(&metrics.probes);
        ops.register(&metrics.evictions);
        ops.register(&metrics.servers);
        Ok(metrics)
    }
}
