//! "Everything in the log is in the store", fenced: the answer a socket manager needs before it
//! uses a sequence counter it cannot trust.
//!
//! Redis replication is asynchronous, so a failover can hand a manager a counter that is
//! behind numbers already in the log, and a number a deposed holder took may still be on its
//! way to the log. [`Settled::fence`] takes the conversation's next log epoch
//! ([`crate::log_fences::next_epoch`]), appends a fence record to the conversation's partition
//! of the log (`acks=all`) and waits until ingest has stored everything up to and including it.
//! The fence's floor (the highest `seq` stored before it) is then the counter's floor: every
//! acknowledged number was in the log before its `sent`, and a record of an older epoch that
//! lands after the fence above the floor is refused by ingest, so no acknowledged number is
//! given twice and no late append can displace one.
//!
//! It fails closed: no broker acknowledgement of the fence, or ingest not past it in time, is
//! an error (the manager answers `unavailable` and the client resends), never a guess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_kafka::KafkaConfig;
use switchboard_message_log::{encode_log_fence, log_partition, LogFence};
use switchboard_protocol::ConversationId;

use crate::log_fences;
use crate::store::Store;

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

    /// Whether ingest has written the record at `offset` of `partition`.
    fn past(&self, partition: i32, offset: i64) -> bool {
        let next = self.next.lock().expect("ingest progress lock");
        next.get(&partition).is_some_and(|n| *n > offset)
    }
}

/// Appends fences and waits for ingest to apply them.
pub struct Settled {
    producer: FutureProducer,
    topic: String,
    store: Store,
    progress: IngestProgress,
}

#[derive(Debug, thiserror::Error)]
pub enum NotSettled {
    #[error("the fence was not appended to the message log: {0}")]
    Broker(String),
    #[error("ingest did not reach the fence within {0:?}")]
    Behind(Duration),
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A fence ingest has applied: the conversation's new epoch and the floor numbering resumes
/// above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    pub epoch: u64,
    pub floor: u64,
}

/// The fence's produce timeout (the broker's acknowledgement); the whole check is bounded by
/// the caller's `within` as well.
const FENCE_PRODUCE_TIMEOUT_MS: u64 = 2_000;

impl Settled {
    pub fn new(
        kafka: &KafkaConfig,
        store: Store,
        progress: IngestProgress,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = kafka.producer_config(FENCE_PRODUCE_TIMEOUT_MS).create()?;
        Ok(Settled {
            producer,
            topic: kafka.message_topic.clone(),
            store,
            progress,
        })
    }

    /// Fences the conversation's log (see the module docs) and answers once ingest has applied
    /// the fence. `partitions`: how many partitions the managers spread the log over (the
    /// fence must land in the conversation's own).
    pub async fn fence(
        &self,
        conversation_id: &ConversationId,
        partitions: i32,
        within: Duration,
    ) -> Result<Fenced, NotSettled> {
        let started = Instant::now();
        let epoch = log_fences::next_epoch(self.store.pool(), conversation_id).await?;
        let payload = encode_log_fence(&LogFence {
            conversation_id: conversation_id.clone(),
            epoch,
        });
        let partition = log_partition(conversation_id, partitions);
        let delivery = self
            .producer
            .send(
                FutureRecord::<(), [u8]>::to(&self.topic)
                    .partition(partition)
                    .payload(&payload),
                Duration::from_millis(100),
            )
            .await
            .map_err(|(e, _)| NotSettled::Broker(e.to_string()))?;
        let (partition, offset) = (delivery.partition, delivery.offset);
        while !self.progress.past(partition, offset) {
            if started.elapsed() > within {
                return Err(NotSettled::Behind(within));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let floor = log_fences::floor_of(self.store.pool(), conversation_id, epoch)
            .await?
            .ok_or_else(|| NotSettled::Behind(within))?;
        Ok(Fenced { epoch, floor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_only_what_was_written_and_never_goes_back() {
        let progress = IngestProgress::default();
        assert!(!progress.past(0, 4), "nothing written yet");
        progress.advance(0, 4);
        assert!(!progress.past(0, 4));
        progress.advance(0, 5);
        assert!(progress.past(0, 4));
        assert!(!progress.past(1, 0), "another partition");
        progress.advance(0, 3);
        assert!(progress.past(0, 4), "never goes back");
    }
}
