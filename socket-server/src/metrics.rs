//! The socket server's Prometheus instruments (connections, frames, slow consumers, delivery
//! and the managers' lanes), made and registered once per server.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use switchboard_service_kit::ops::Ops;

use crate::manager_client::LaneMetrics;

/// Histogram buckets (seconds) for the stages of a frame.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Prometheus instruments of the socket server.
pub(crate) struct Metrics {
    pub connections: IntGauge,
    pub connects: IntCounter,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
    pub auth_failures: IntCounter,
    pub slow_consumer_kicks: IntCounter,
    pub handshakes_refused: IntCounter,
    pub write_timeouts: IntCounter,
    pub deliveries: IntCounter,
    pub delivery_latency: Histogram,
    pub lanes: LaneMetrics,
}

/// A counter, registered with `ops`.
fn counter(ops: &Ops, name: &str, help: &str) -> anyhow::Result<IntCounter> {
    let counter = IntCounter::new(name, help)?;
    ops.register(&counter);
    Ok(counter)
}

/// A latency histogram over [`LATENCY_BUCKETS`], registered with `ops`.
fn latency(ops: &Ops, name: &str, help: &str) -> anyhow::Result<Histogram> {
    let histogram =
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))?;
    ops.register(&histogram);
    Ok(histogram)
}

impl Metrics {
    pub(crate) fn new(ops: &Ops) -> anyhow::Result<Self> {
        let connections = IntGauge::new("socket_connections", "live WebSocket connections")?;
        ops.register(&connections);
        Ok(Metrics {
            connections,
            connects: counter(
                ops,
                "socket_connects_total",
                "accepted WebSocket connections",
            )?,
            frames_in: counter(ops, "socket_frames_in_total", "client frames received")?,
            frames_out: counter(ops, "socket_frames_out_total", "frames sent to clients")?,
            auth_failures: counter(
                ops,
                "socket_auth_failures_total",
                "upgrades refused for a bad or missing token",
            )?,
            slow_consumer_kicks: counter(
                ops,
                "socket_slow_consumer_kicks_total",
                "connections dropped as slow consumers: their outbound queue was full, or a \
                 write to them stalled past SB_CLIENT_WRITE_TIMEOUT_MS",
            )?,
            handshakes_refused: counter(
                ops,
                "socket_handshakes_refused_total",
                "connections closed at accept: their address (SB_HANDSHAKES_PER_IP) or the \
                 server already had that many request heads being read",
            )?,
            write_timeouts: counter(
                ops,
                "socket_write_timeouts_total",
                "connections dropped because a write to them stalled past \
                 SB_CLIENT_WRITE_TIMEOUT_MS (also counted in socket_slow_consumer_kicks_total)",
            )?,
            deliveries: counter(
                ops,
                "socket_deliveries_total",
                "frames from the handler topic queued to local devices",
            )?,
            delivery_latency: latency(
                ops,
                "socket_delivery_latency_seconds",
                "from a message's acceptance by a manager to its queueing for local devices",
            )?,
            lanes: LaneMetrics {
                answer_seconds: latency(
                    ops,
                    "socket_manager_answer_seconds",
                    "from a frame's queueing on its manager lane to the manager's answer",
                )?,
                batch_seconds: latency(
                    ops,
                    "socket_manager_batch_seconds",
                    "one lane batch's HTTP round trip to a manager",
                )?,
            },
        })
    }
}
