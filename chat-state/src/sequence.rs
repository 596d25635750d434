//! The sequence key family: each conversation's sequence lease, counter, counter epoch and
//! pending numbers, and the idempotency records of numbered messages. Written and read by the
//! socket managers' sequencer only (its Lua scripts get these keys as `KEYS`); the key names
//! are built here and nowhere else.
//!
//! Keys, under the prefix `P`:
//! - `P lock:conv:{c}`: the fenced sequence lease, a token `"{manager}/{ulid}"` with a PX
//!   expiry.
//! - `P seq:{c}`: the conversation's counter, the highest `seq` numbered.
//! - `P seq-epoch:{c}`: `"{replid} {epoch}"`, the master on which the counter was last checked
//!   against the log, and the log epoch it was checked under.
//! - `P pending:{c}`: hash of numbers taken but not yet known to be in the log (seq →
//!   `"{epoch}|{message JSON}"`).
//! - `P idem:{c}:{sender}:{client_msg_id}`: a send's idempotency record,
//!   `"{seq} {message_id} {created_at}"`.
//! - `P idem:server-api-namespace`: the secret that namespaces server-API idempotency keys into
//!   `client_msg_id`s; `P idem:server-api:{c}:{client_msg_id}`: what such a key was first used
//!   for (a hash of sender and body).

use switchboard_protocol::ConversationId;
use switchboard_redis::SentinelRedis;

/// The names of the sequence key family under one deployment's prefix.
#[derive(Clone)]
pub struct SequenceKeys {
    redis: SentinelRedis,
}

impl SequenceKeys {
    pub fn new(redis: SentinelRedis) -> Self {
        SequenceKeys { redis }
    }

    /// The conversation's sequence lease.
    pub fn lease(&self, conversation_id: &ConversationId) -> String {
        self.redis.key(&format!("lock:conv:{conversation_id}"))
    }

    /// The numbers of the conversation taken but not yet known to be in the log.
    pub fn pending(&self, conversation_id: &ConversationId) -> String {
        self.redis.key(&format!("pending:{conversation_id}"))
    }

    /// The conversation's counter (the highest `seq` numbered).
    pub fn counter(&self, conversation_id: &ConversationId) -> String {
        self.redis.key(&format!("seq:{conversation_id}"))
    }

    /// The replication id of the master on which the counter was last checked against the
    /// log, with the log epoch: a counter is only used on the master that checked it.
    pub fn epoch(&self, conversation_id: &ConversationId) -> String {
        self.redis.key(&format!("seq-epoch:{conversation_id}"))
    }

    /// One send's idempotency record.
    pub fn idempotency(
        &self,
        conversation_id: &ConversationId,
        sender_id: &str,
        client_msg_id: &str,
    ) -> String {
        self.redis.key(&format!(
            "idem:{conversation_id}:{sender_id}:{client_msg_id}"
        ))
    }

    /// A `SCAN MATCH` pattern for every idempotency record of the conversation.
    pub fn idempotency_pattern(&self, conversation_id: &ConversationId) -> String {
        format!("{}*", self.redis.key(&format!("idem:{conversation_id}")))
    }

    /// The secret every manager shares to namespace server-API idempotency keys.
    pub fn server_api_namespace(&self) -> String {
        self.redis.key("idem:server-api-namespace")
    }

    /// What a server-API idempotency key (namespaced into `client_msg_id`) was first used for.
    pub fn server_api_request(
        &self,
        conversation_id: &ConversationId,
        client_msg_id: &str,
    ) -> String {
        self.redis.key(&format!(
            "idem:server-api:{conversation_id}:{client_msg_id}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key strings are shared with running deployments (and the managers' Redis ACLs):
    /// they must never change.
    #[test]
    fn the_key_names_stay_as_deployed() {
        let mut config = switchboard_test_support::shared::redis_config("socket-manager", "x");
        config.key_prefix = "P:".into();
        let keys = SequenceKeys::new(SentinelRedis::new(config));
        // A conversation id as the keys hold it (a ULID; `C` below).
        const C: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let c = &ConversationId::parse(C).unwrap();
        assert_eq!(keys.lease(c), format!("P:lock:conv:{C}"));
        assert_eq!(keys.pending(c), format!("P:pending:{C}"));
        assert_eq!(keys.counter(c), format!("P:seq:{C}"));
        assert_eq!(keys.epoch(c), format!("P:seq-epoch:{C}"));
        assert_eq!(keys.idempotency(c, "u", "m"), format!("P:idem:{C}:u:m"));
        assert_eq!(keys.idempotency_pattern(c), format!("P:idem:{C}*"));
        assert_eq!(keys.server_api_namespace(), "P:idem:server-api-namespace");
        assert_eq!(
            keys.server_api_request(c, "m"),
            format!("P:idem:server-api:{C}:m")
        );
    }
}
