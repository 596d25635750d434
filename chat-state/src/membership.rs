//! Members of each conversation mirrored into Redis (`P members:{id}`), so socket managers
//! check membership and find recipients without a database round trip. SQL (the message
//! service) stays the source of truth: a manager that finds no mirrored set asks the message
//! service, which refills it.
//!
//! A change deletes the mirror and bumps `P members-version:{id}`; a refill only writes when
//! the version is still the one it read *before* its SQL read. Without that, a refill that
//! read SQL just before a removal could put the removed member back for good; with it, a
//! change is seen by every manager's next lookup. The mirror also expires
//! ([`MIRROR_TTL_SECS`]) as a backstop.

use switchboard_protocol::ConversationId;
use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};

/// Seconds a mirrored set lives without a refill.
pub const MIRROR_TTL_SECS: u64 = 600;

/// KEYS: mirror, version. ARGV: the version read before the SQL read ("" for none), ttl,
/// then the members. Writes the set only if no change happened since; answers 1 if written.
static REFILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local now = redis.call('GET', KEYS[2]) or ''
        if now ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[1])
        if #ARGV > 2 then
          redis.call('SADD', KEYS[1], unpack(ARGV, 3))
          redis.call('EXPIRE', KEYS[1], ARGV[2])
        end
        return 1
        ",
    )
});

/// A mirror version as read before a SQL read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(String);

impl Version {
    /// The version of a conversation that was just created (never changed).
    pub fn new_conversation() -> Version {
        Version(String::new())
    }
}

#[derive(Clone)]
pub struct MembershipMirror {
    redis: SentinelRedis,
}

impl MembershipMirror {
    pub fn new(redis: SentinelRedis) -> Self {
        MembershipMirror { redis }
    }

    pub fn redis(&self) -> &SentinelRedis {
        &self.redis
    }

    /// The mirrored members of a conversation; empty when nothing is mirrored (a cold
    /// mirror, or no such conversation): then ask the source of truth.
    pub async fn mirrored(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<Vec<String>, StoreError> {
        self.redis
            .query(redis::cmd("SMEMBERS").arg(self.key(conversation_id)))
            .await
    }

    /// The mirrored set's key: a set of user ids, absent when cold (a script reading it
    /// treats an empty set as "ask the source of truth", as [`Self::mirrored`]'s callers do).
    pub fn key(&self, conversation_id: &str) -> String {
        self.redis.key(&format!("members:{conversation_id}"))
    }

    fn version_key(&self, conversation_id: &str) -> String {
        self.redis
            .key(&format!("members-version:{conversation_id}"))
    }

    /// The mirror's version, to read *before* reading the members from SQL for a
    /// [`Self::refill`].
    pub async fn version(&self, conversation_id: &str) -> Result<Version, StoreError> {
        let now: Option<String> = self
            .redis
            .query(redis::cmd("GET").arg(self.version_key(conversation_id)))
            .await?;
        Ok(Version(now.unwrap_or_default()))
    }

    /// Mirrors `members`, read from SQL after `read_before` was taken, unless the
    /// membership changed since (then the next lookup reads SQL again).
    pub async fn refill(
        &self,
        conversation_id: &str,
        read_before: &Version,
        members: &[String],
    ) -> Result<(), StoreError> {
        let mut invocation = REFILL.prepare_invoke();
        invocation
            .key(self.key(conversation_id))
            .key(self.version_key(conversation_id))
            .arg(&read_before.0)
            .arg(MIRROR_TTL_SECS)
            .arg(members);
        self.redis.invoke::<i64>(&invocation).await.map(|_| ())
    }

    /// After a membership change in SQL: forgets the mirror and bumps its version, so no
    /// refill that read SQL before the change can write it back.
    pub async fn invalidate(&self, conversation_id: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key(conversation_id))
            .incr(self.version_key(conversation_id), 1)
            .ignore();
        self.redis.query_pipe::<()>(&pipe).await
    }
}
