//! "Everything in the log is in the store": the answer a socket manager needs before it
//! reseeds a sequence counter.
//!
//! Redis replication is asynchronous, so a failover can hand a manager a counter that is
//! behind numbers already in the log. The manager then asks for the conversation's highest
//! stored `seq` *after* ingest has stored every record the log held when it asked
//! ([`Settled::wait_for_log_end`]), and continues above it: every acknowledged message was in
//! the log before its `sent`, so no acknowledged number can be given twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use switchboard_kafka::KafkaConfig;

/// Per partition of the message log: the offset after the last record ingest has written.
#[derive(Clone, Default)]
pub struct IngestProgress {
    next: Arc<Mutex<HashMap<i32, i64>>>,
}

impl IngestProgress {
    /// Everything before `next_offset` of `partition` is written.
    pub fn advance(&self, partition: i32, next_offset: i64) {
        let mut next = self.next.lock().expect("ingest progress lock");
        let entry = next.entry(partition).or_insert(next_offset);
        *entry = (*entry).max(next_offset);
    }

    fn at_least(&self, ends: &HashMap<i32, i64>) -> bool {
        let next = self.next.lock().expect("ingest progress lock");
        ends.iter()
            .all(|(p, end)| *end <= 0 || next.get(p).is_some_and(|n| n >= end))
    }
}

/// Partition → the offset after the log's last record, when read.
type EndOffsets = Arc<HashMap<i32, i64>>;

/// Reads the log's end offsets and waits for ingest to reach them.
///
/// Reading the end offsets costs the broker a metadata and a watermark request per partition,
/// so concurrent callers share reads: a read that *started* after a caller arrived answers it
/// (offsets read later are only larger), and callers arriving while a read is in flight are
/// all served by the next one. A burst of new conversations costs two reads, not thousands.
pub struct Settled {
    client: Arc<BaseConsumer>,
    topic: String,
    progress: IngestProgress,
    /// The latest read: when it started, and the end offsets it found. An async mutex on
    /// purpose: waiting for it *is* waiting for the read in flight.
    latest: tokio::sync::Mutex<Option<(Instant, EndOffsets)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotSettled {
    #[error("the message log's end offsets are unknown: {0}")]
    Broker(String),
    #[error("ingest is still behind the message log after {0:?}")]
    Behind(Duration),
}

impl Settled {
    pub fn new(kafka: &KafkaConfig, progress: IngestProgress) -> anyhow::Result<Self> {
        let client: BaseConsumer = kafka
            .consumer_config("message-service-settled", 10)
            .create()?;
        Ok(Settled {
            client: Arc::new(client),
            topic: kafka.message_topic.clone(),
            progress,
            latest: tokio::sync::Mutex::new(None),
        })
    }

    /// End offsets read no earlier than `arrived`.
    async fn ends_since(&self, arrived: Instant) -> Result<EndOffsets, NotSettled> {
        let mut latest = self.latest.lock().await;
        if let Some((started, ends)) = latest.as_ref() {
            if *started >= arrived {
                return Ok(ends.clone());
            }
        }
        let started = Instant::now();
        let ends = Arc::new(self.read_ends().await?);
        *latest = Some((started, ends.clone()));
        Ok(ends)
    }

    /// Returns once ingest has written every message-log record that existed when called.
    pub async fn wait_for_log_end(&self, within: Duration) -> Result<(), NotSettled> {
        let started = Instant::now();
        let ends = tokio::time::timeout(within, self.ends_since(started))
            .await
            .map_err(|_| NotSettled::Broker(format!("no end offsets within {within:?}")))??;
        while !self.progress.at_least(&ends) {
            if started.elapsed() > within {
                return Err(NotSettled::Behind(within));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn read_ends(&self) -> Result<HashMap<i32, i64>, NotSettled> {
        let client = self.client.clone();
        let topic = self.topic.clone();
        let ends = tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, String> {
            let timeout = Duration::from_secs(2);
            let metadata = client
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| e.to_string())?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or_default();
            let mut ends = HashMap::new();
            for p in 0..partitions as i32 {
                let (_, high) = client
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| e.to_string())?;
                ends.insert(p, high);
            }
            Ok(ends)
        })
        .await
        .map_err(|e| NotSettled::Broker(e.to_string()))?
        .map_err(NotSettled::Broker)?;
        Ok(ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_only_what_was_written_and_never_goes_back() {
        let progress = IngestProgress::default();
        let ends: HashMap<i32, i64> = [(0, 5), (1, 0)].into();
        assert!(!progress.at_least(&ends), "nothing written yet");
        progress.advance(0, 4);
        assert!(!progress.at_least(&ends));
        progress.advance(0, 5);
        assert!(progress.at_least(&ends), "an empty partition needs nothing");
        progress.advance(0, 3);
        assert!(progress.at_least(&ends), "never goes back");
    }
}
