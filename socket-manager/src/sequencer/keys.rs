//! The sequence key family (`lock:conv:`, `seq:`, `seq-epoch:`, `pending:`, `idem:`): the only
//! code that builds these keys.

use switchboard_service_kit::redis_sentinel::StoreError;

use super::Sequencer;

impl Sequencer {
    pub(super) fn lock_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("lock:conv:{conversation_id}"))
    }

    pub(super) fn pending_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("pending:{conversation_id}"))
    }

    pub(super) fn counter_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("seq:{conversation_id}"))
    }

    /// The highest `seq` numbered in `conversation_id`: the counter, read on the master;
    /// `None` when there is none (nothing numbered yet, or the conversation was idle past the
    /// counter's expiry: ask the log's store). After a failover it may lag the log until the
    /// next send's lease reseeds it.
    pub async fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        self.redis
            .query(redis::cmd("GET").arg(self.counter_key(conversation_id)))
            .await
    }

    /// The replication id of the master on which the counter was last checked against the
    /// log: a counter is only used on the master that checked it.
    pub(super) fn epoch_key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("seq-epoch:{conversation_id}"))
    }

    pub(super) fn idempotency_key(
        &self,
        conversation_id: &str,
        sender_id: &str,
        client_msg_id: &str,
    ) -> String {
        self.redis.key(&format!(
            "idem:{conversation_id}:{sender_id}:{client_msg_id}"
        ))
    }
}
