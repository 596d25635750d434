//! Members of each conversation mirrored into Redis (`P members:{id}`), so socket managers
//! check membership and find recipients without a database round trip. SQL (the message
//! service) stays the source of truth: a manager that finds no mirrored set asks the message
//! service, which refills it.
//!
//! A change deletes the mirror and gives `P members-version:{id}` a new, never repeated value;
//! a refill only writes when the version is still the one it read *before* its SQL read.
//! Without that, a refill that read SQL just before a removal could put the removed member
//! back for good; with it, a change is seen by every manager's next lookup. The mirror also
//! expires ([`MIRROR_TTL_SECS`]) as a backstop.
//!
//! The version expires too ([`VERSION_TTL_SECS`] after the last change, read or refill), so a
//! conversation nobody touches costs no Redis memory. That keeps removals safe because a
//! missing version is never taken for one that was read: [`MembershipMirror::version`]
//! creates a fresh one when none exists, and a refill whose version is gone (expired, or
//! lost in a failover) refuses, so the next lookup reads SQL again. Versions are unique
//! (milliseconds and a random part), so a version that expired and was created again never
//! equals one a slow refill read before (the "ABA" a counter restarting at 1 would allow).
//! The one exception is [`Version::new_conversation`]: a conversation created in the same
//! request has never had a version, and its refill writes only while there is still none.
//!
//! The message service applies each change with [`MembershipMirror::invalidate_at`], which
//! writes the change's SQL membership version into the mirror's version (`v<n>-...`) and
//! does nothing when the version already carries it: so it re-applies recent changes until it
//! is sure Redis kept them (a failover can lose an acknowledged write), and a removal cannot
//! be lost with them.

use switchboard_protocol::ConversationId;
use switchboard_redis::{SentinelRedis, StoreError};

/// Seconds a mirrored set lives without a refill.
pub const MIRROR_TTL_SECS: u64 = 600;

/// Seconds a version lives after its conversation's last change, read or refill: far longer
/// than any refill takes between its version read and its write.
pub const VERSION_TTL_SECS: u64 = 7 * 86_400;

/// KEYS: mirror, version. ARGV: the version read before the SQL read ("" only for a
/// conversation created in the same request), the mirror's ttl, the version's ttl, then the
/// members. Writes the set only if the version is still the one read (a missing version
/// matches only ""); answers 1 if written.
static REFILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local now = redis.call('GET', KEYS[2]) or ''
        if now ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[1])
        if #ARGV > 3 then
          redis.call('SADD', KEYS[1], unpack(ARGV, 4))
          redis.call('EXPIRE', KEYS[1], ARGV[2])
        end
        if now ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
        return 1
        ",
    )
});

/// KEYS: version. ARGV: a fresh version, its ttl. The version, created (with `ARGV[1]`)
/// when there is none, its lifetime renewed either way.
static VERSION: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local now = redis.call('GET', KEYS[1])
        if not now then
          now = ARGV[1]
          redis.call('SET', KEYS[1], now, 'EX', ARGV[2])
        else
          redis.call('EXPIRE', KEYS[1], ARGV[2])
        end
        return now
        ",
    )
});

/// KEYS: mirror, version. ARGV: the change's SQL membership version, a fresh version, the
/// version's ttl. Forgets the mirror and sets the version `v<sql>-<fresh>` unless the current
/// version already carries this SQL version or a later one (then the mirror reflects the
/// change: its set is only written by refills that read that version before reading SQL).
/// Answers 1 if it invalidated.
static INVALIDATE_AT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local now = redis.call('GET', KEYS[2])
        local applied = now and string.match(now, '^v(%d+)%-')
        if applied and tonumber(applied) >= tonumber(ARGV[1]) then return 0 end
        redis.call('DEL', KEYS[1])
        redis.call('SET', KEYS[2], 'v' .. ARGV[1] .. '-' .. ARGV[2], 'EX', ARGV[3])
        return 1
        ",
    )
});

/// A version no other change has had: the time in milliseconds and 64 random bits.
fn fresh_version() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process, and each instance differs; the clock makes
    // a repeat across processes need the same millisecond too.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!(
        "{}-{:016x}",
        chrono::Utc::now().timestamp_millis(),
        hasher.finish()
    )
}

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
    pub fn key(&self, conversation_id: &ConversationId) -> String {
        self.redis.key(&format!("members:{conversation_id}"))
    }

    fn version_key(&self, conversation_id: &ConversationId) -> String {
        self.redis
            .key(&format!("members-version:{conversation_id}"))
    }

    /// The mirror's version, to read *before* reading the members from SQL for a
    /// [`Self::refill`]; created when there is none (never ""), so a refill whose version
    /// expired meanwhile refuses instead of matching a missing one.
    pub async fn version(&self, conversation_id: &ConversationId) -> Result<Version, StoreError> {
        let mut invocation = VERSION.prepare_invoke();
        invocation
            .key(self.version_key(conversation_id))
            .arg(fresh_version())
            .arg(VERSION_TTL_SECS);
        Ok(Version(self.redis.invoke::<String>(&invocation).await?))
    }

    /// Mirrors `members`, read from SQL after `read_before` was taken, unless the
    /// membership changed since (then the next lookup reads SQL again).
    pub async fn refill(
        &self,
        conversation_id: &ConversationId,
        read_before: &Version,
        members: &[String],
    ) -> Result<(), StoreError> {
        let mut invocation = REFILL.prepare_invoke();
        invocation
            .key(self.key(conversation_id))
            .key(self.version_key(conversation_id))
            .arg(&read_before.0)
            .arg(MIRROR_TTL_SECS)
            .arg(VERSION_TTL_SECS)
            .arg(members);
        self.redis.invoke::<i64>(&invocation).await.map(|_| ())
    }

    /// After a membership change in SQL: forgets the mirror and gives it a new version, so
    /// no refill that read SQL before the change can write it back.
    pub async fn invalidate(&self, conversation_id: &ConversationId) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key(conversation_id))
            .ignore()
            .cmd("SET")
            .arg(self.version_key(conversation_id))
            .arg(fresh_version())
            .arg("EX")
            .arg(VERSION_TTL_SECS)
            .ignore();
        self.redis.query_pipe::<()>(&pipe).await
    }

    /// After the membership change numbered `sql_version` (the message service's
    /// `conversations.members_version`, bumped in the change's transaction): invalidates like
    /// [`Self::invalidate`] unless the mirror's version says this change, or a later one, was
    /// already applied. Safe to repeat, so the message service re-applies every recent change
    /// until it is sure Redis kept it (a write acknowledged by a master that dies before
    /// replicating it is lost in the failover); a repeat costs one script call, not a refill.
    /// Answers whether it invalidated.
    pub async fn invalidate_at(
        &self,
        conversation_id: &ConversationId,
        sql_version: u64,
    ) -> Result<bool, StoreError> {
        let mut invocation = INVALIDATE_AT.prepare_invoke();
        invocation
            .key(self.key(conversation_id))
            .key(self.version_key(conversation_id))
            .arg(sql_version)
            .arg(fresh_version())
            .arg(VERSION_TTL_SECS);
        Ok(self.redis.invoke::<i64>(&invocation).await? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    fn c() -> ConversationId {
        ConversationId::parse(C).unwrap()
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    async fn mirrored(mirror: &MembershipMirror) -> Vec<String> {
        let mut found = mirror
            .mirrored(&ConversationId::parse(C).unwrap())
            .await
            .unwrap();
        found.sort();
        found
    }

    async fn ttl(mirror: &MembershipMirror, key: String) -> i64 {
        mirror
            .redis()
            .query(redis::cmd("TTL").arg(key))
            .await
            .unwrap()
    }

    /// A change applied at its SQL version is applied once: repeating it (the message
    /// service's outbox re-checks recent changes) is a no-op while the mirror's version
    /// carries it, and invalidates again when that version was lost (a failover) or replaced.
    #[tokio::test(flavor = "current_thread")]
    async fn a_change_at_a_sql_version_is_applied_once_and_again_when_lost() {
        let redis = switchboard_test_support::shared::fresh_redis("message-service", "mirror-at");
        let mirror = MembershipMirror::new(redis.clone());
        let read = mirror.version(&c()).await.unwrap();
        mirror
            .refill(&c(), &read, &members(&["ann", "bob"]))
            .await
            .unwrap();

        // bob removed at SQL version 3: invalidated once.
        assert!(mirror.invalidate_at(&c(), 3).await.unwrap());
        assert!(mirrored(&mirror).await.is_empty());
        let after = mirror.version(&c()).await.unwrap();
        mirror
            .refill(&c(), &after, &members(&["ann"]))
            .await
            .unwrap();
        assert!(!mirror.invalidate_at(&c(), 3).await.unwrap(), "a repeat");
        assert!(
            !mirror.invalidate_at(&c(), 2).await.unwrap(),
            "an older change"
        );
        assert_eq!(mirrored(&mirror).await, ["ann"], "the refilled set stays");

        // A failover loses the change: the old version and set are back.
        let _: () = redis
            .query(redis::cmd("SET").arg(mirror.version_key(&c())).arg(&read.0))
            .await
            .unwrap();
        let _: i64 = redis
            .query(redis::cmd("SADD").arg(mirror.key(&c())).arg("bob"))
            .await
            .unwrap();
        assert!(
            mirror.invalidate_at(&c(), 3).await.unwrap(),
            "applied again"
        );
        assert!(mirrored(&mirror).await.is_empty());
        // A later change at a higher version applies.
        assert!(mirror.invalidate_at(&c(), 4).await.unwrap());
    }

    /// Both keys expire; a removal stays in force even when the version it made expires
    /// before a slow refill that read SQL earlier writes: a missing version refuses, and a
    /// version created again never equals the one that refill read.
    #[tokio::test(flavor = "current_thread")]
    async fn the_version_expires_and_a_refill_whose_version_is_gone_refuses() {
        let redis = switchboard_test_support::shared::fresh_redis("message-service", "mirror-ttl");
        let mirror = MembershipMirror::new(redis.clone());

        // A conversation created in this request: written while it has no version.
        mirror
            .refill(
                &c(),
                &Version::new_conversation(),
                &members(&["ann", "bob"]),
            )
            .await
            .unwrap();
        assert_eq!(mirrored(&mirror).await, ["ann", "bob"]);
        assert!(ttl(&mirror, mirror.key(&c())).await > 0);

        // A lookup: the version is created (never ""), with an expiry, and stays the same.
        let read = mirror.version(&c()).await.unwrap();
        assert_ne!(read, Version::new_conversation());
        assert_eq!(mirror.version(&c()).await.unwrap(), read);
        let version_ttl = ttl(&mirror, mirror.version_key(&c())).await;
        assert!(
            version_ttl > (VERSION_TTL_SECS - 10) as i64 && version_ttl <= VERSION_TTL_SECS as i64,
            "{version_ttl}"
        );
        mirror
            .refill(&c(), &read, &members(&["ann", "bob"]))
            .await
            .unwrap();
        assert_eq!(mirrored(&mirror).await, ["ann", "bob"]);

        // A slow refill reads the version and SQL (bob still in) ...
        let slow = mirror.version(&c()).await.unwrap();
        // ... bob is removed: the mirror goes, the version changes ...
        mirror.invalidate(&c()).await.unwrap();
        assert!(ttl(&mirror, mirror.version_key(&c())).await > 0);
        // ... and that version expires (or a failover loses it) before the slow refill writes.
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(mirror.version_key(&c())))
            .await
            .unwrap();
        mirror
            .refill(&c(), &slow, &members(&["ann", "bob"]))
            .await
            .unwrap();
        assert!(
            mirrored(&mirror).await.is_empty(),
            "a missing version refuses the refill: bob stays removed"
        );
        // The next lookup creates a new version, never the one the slow refill read.
        let next = mirror.version(&c()).await.unwrap();
        assert_ne!(next, slow);
        mirror
            .refill(&c(), &slow, &members(&["ann", "bob"]))
            .await
            .unwrap();
        assert!(mirrored(&mirror).await.is_empty());
        mirror
            .refill(&c(), &next, &members(&["ann"]))
            .await
            .unwrap();
        assert_eq!(mirrored(&mirror).await, ["ann"]);

        // "New conversation" writes only while no version was ever made.
        mirror.invalidate(&c()).await.unwrap();
        mirror
            .refill(
                &c(),
                &Version::new_conversation(),
                &members(&["ann", "bob"]),
            )
            .await
            .unwrap();
        assert!(mirrored(&mirror).await.is_empty());
    }
}
