//! The conversation's counter outside a lease: read as the last `seq` (a receipt is checked
//! against it) and, when there is none, kept from the message service's last stored `seq`.

use switchboard_protocol::ConversationId;
use switchboard_redis::StoreError;

use super::scripts::SEQ_IDLE_TTL_SECS;
use super::Sequencer;

impl Sequencer {
    /// The highest `seq` numbered in `conversation_id`: the counter, read on the master;
    /// `None` when there is none (nothing numbered yet, or the conversation was idle past the
    /// counter's expiry: ask the log's store). After a failover it may lag the log until the
    /// next send's lease reseeds it.
    pub async fn last_seq(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<Option<u64>, StoreError> {
        self.redis
            .query(redis::cmd("GET").arg(self.keys.counter(conversation_id)))
            .await
    }

    /// Keeps `seq`, the message service's last stored seq, as the conversation's counter when
    /// it has none (`SET NX`, with the counter's idle expiry), so the receipts that follow read
    /// it from Redis instead of asking the message service each time. Safe because a counter
    /// is only ever numbered from after a check against the fenced log on this master: with no
    /// epoch beside it, the next send has it checked (and raised to the log's floor, which is at
    /// least this stored seq); and `NX` never lowers a counter a holder wrote meanwhile (a reseed
    /// that read it missing then finds it moved, refuses, and checks again).
    pub async fn remember_last_seq(
        &self,
        conversation_id: &ConversationId,
        seq: u64,
    ) -> Result<(), StoreError> {
        let _: Option<String> = self
            .redis
            .query(
                redis::cmd("SET")
                    .arg(self.keys.counter(conversation_id))
                    .arg(seq)
                    .arg("NX")
                    .arg("EX")
                    .arg(SEQ_IDLE_TTL_SECS),
            )
            .await?;
        Ok(())
    }
}
