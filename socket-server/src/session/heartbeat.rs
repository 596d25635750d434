//! The connection's liveness: the server pings every `SB_HEARTBEAT_INTERVAL_MS`, and a client
//! heard from (any frame, a pong included) no later than `SB_CLIENT_TIMEOUT_MS` ago stays; at
//! the first tick past that it is closed with 1001.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::outbound::{Ending, Writer};
use crate::wire::{Outgoing, Outlet};

/// The heartbeat's timer and when the client was last heard from.
pub(super) struct Liveness {
    /// The loop's heartbeat branch waits on this (its first tick is immediate).
    pub ticks: Interval,
    last_heard: Instant,
    client_timeout: Duration,
}

impl Liveness {
    pub(super) fn new(interval: Duration, client_timeout: Duration) -> Self {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Liveness {
            ticks,
            last_heard: Instant::now(),
            client_timeout,
        }
    }

    /// The client was heard from (or its stream ended) just now.
    pub(super) fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// A heartbeat tick: the client timed out, or it is pinged.
    pub(super) async fn tick<K: Outlet>(&self, writer: &mut Writer<'_, K>) -> Option<Ending> {
        if self.last_heard.elapsed() > self.client_timeout {
            Some(Ending::TimedOut)
        } else {
            writer.write(Outgoing::Ping).await
        }
    }
}
