//! Taking the partitions: every partition of both topics assigned directly, resuming from
//! the committed offsets, the message log's rewound (see the module docs of
//! [`crate::ingest`]).

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use switchboard_service_kit::shutdown::CancellationToken;

use super::Ingest;

impl Ingest {
    /// Takes every partition of both topics directly, resuming from the committed offsets
    /// (earliest when none), the message log's rewound by `SB_INGEST_REWIND_RECORDS`. No group
    /// membership is involved: a restarted instance resumes at once instead of waiting for the
    /// broker to expire its dead predecessor's membership (which the local broker never does).
    /// Several instances would each ingest everything; the inserts are idempotent, so that is
    /// safe, only redundant.
    pub(super) async fn assign_all(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let consumer = &self.consumer;
            let topics = [self.message_topic.clone(), self.events_topic.clone()];
            let found = tokio::task::block_in_place(|| {
                let mut list = TopicPartitionList::new();
                for topic in &topics {
                    let metadata = consumer
                        .fetch_metadata(Some(topic), Duration::from_secs(5))
                        .ok()?;
                    let partitions = metadata.topics().first()?.partitions().len();
                    if partitions == 0 {
                        return None;
                    }
                    for p in 0..partitions as i32 {
                        list.add_partition_offset(topic, p, Offset::Stored).ok()?;
                    }
                }
                self.rewind(&mut list);
                Some(list)
            });
            match found.map(|list| consumer.assign(&list)) {
                Some(Ok(())) => {
                    self.note_committed();
                    tracing::info!("ingesting every partition of the message log and events");
                    return true;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "assigning partitions failed"),
                None => tracing::info!("waiting for the message log topics to exist"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Moves each message-log partition's start back from its committed offset by the rewind
    /// window (a partition with nothing committed starts at the beginning anyway). Blocking:
    /// called inside `block_in_place`.
    fn rewind(&self, list: &mut TopicPartitionList) {
        if self.rewind_records == 0 {
            return;
        }
        // Not `committed()`: nothing is assigned yet, and it asks about the assignment.
        let committed = match self
            .consumer
            .committed_offsets(list.clone(), Duration::from_secs(5))
        {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(error = %e, "reading the committed offsets to rewind failed; resuming at them");
                return;
            }
        };
        for element in committed.elements_for_topic(&self.message_topic) {
            if let Offset::Offset(next) = element.offset() {
                let from = (next - self.rewind_records).max(0);
                if list
                    .set_partition_offset(
                        &self.message_topic,
                        element.partition(),
                        Offset::Offset(from),
                    )
                    .is_ok()
                {
                    tracing::info!(
                        partition = element.partition(),
                        committed = next,
                        from,
                        "rewinding the message log: rows a restored database lost are written again"
                    );
                }
            }
        }
    }

    /// What an earlier instance committed was written by it: progress starts there.
    fn note_committed(&self) {
        let committed =
            tokio::task::block_in_place(|| self.consumer.committed(Duration::from_secs(5)));
        match committed {
            Ok(list) => {
                for element in list.elements_for_topic(&self.message_topic) {
                    if let Offset::Offset(next) = element.offset() {
                        self.progress.advance(element.partition(), next);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the committed offsets failed"),
        }
    }
}
