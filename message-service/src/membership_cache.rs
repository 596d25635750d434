//! Members of each conversation mirrored into Redis (`P members:{id}`), so socket managers
//! check membership and find recipients without a database round trip. SQL stays the source
//! of truth: a manager that finds no cached set asks this service, which refills it.

use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};

#[derive(Clone)]
pub struct MembershipCache {
    redis: SentinelRedis,
}

impl MembershipCache {
    pub fn new(redis: SentinelRedis) -> Self {
        MembershipCache { redis }
    }

    pub fn redis(&self) -> &SentinelRedis {
        &self.redis
    }

    fn key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("members:{conversation_id}"))
    }

    /// Replaces the cached set with `members`.
    pub async fn put(&self, conversation_id: &str, members: &[String]) -> Result<(), StoreError> {
        let key = self.key(conversation_id);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key);
        if !members.is_empty() {
            pipe.sadd(&key, members);
        }
        self.redis.query_pipe::<()>(&pipe).await
    }

    /// Forgets the cached set; the next manager lookup refills it from SQL.
    pub async fn invalidate(&self, conversation_id: &str) -> Result<(), StoreError> {
        self.redis
            .query::<()>(redis::cmd("DEL").arg(self.key(conversation_id)))
            .await
    }
}
