//! Ended sessions: `P sessions-ended:{user}` holds the moment (seconds since the epoch) every
//! session of the user was ended; tokens whose `iat` is at or before it are refused. Written
//! by the socket managers (the end-sessions route), read by the socket servers at the
//! upgrade and on an in-band `refresh`.
//!
//! The key expires [`SessionMarks::end`]'s `ttl_secs` after it is written (the deployment's
//! longest token lifetime, `SB_TOKEN_MAX_LIFETIME_SECS`): by then every token it refuses has
//! expired on its own, so a missing mark refuses nothing that is still valid. It only ever
//! rises: a second end moves it forward (and renews it), never back.

use switchboard_protocol::UserId;
use switchboard_redis::{SentinelRedis, StoreError};

/// KEYS: the mark. ARGV: the new mark (seconds), its ttl (seconds). Keeps the later of the two
/// marks and renews the ttl; answers the mark now in force.
static END: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local now = tonumber(redis.call('GET', KEYS[1]) or '0')
        local mark = math.max(now, tonumber(ARGV[1]))
        redis.call('SET', KEYS[1], mark, 'EX', ARGV[2])
        return mark
        ",
    )
});

#[derive(Clone)]
pub struct SessionMarks {
    redis: SentinelRedis,
}

impl SessionMarks {
    pub fn new(redis: SentinelRedis) -> Self {
        SessionMarks { redis }
    }

    fn key(&self, user: &str) -> String {
        self.redis.key(&format!("sessions-ended:{user}"))
    }

    /// Ends every session of `user` issued at or before `at_secs`; answers the mark in force
    /// (a later one, if another end already wrote it).
    pub async fn end(&self, user: &UserId, at_secs: i64, ttl_secs: u64) -> Result<i64, StoreError> {
        let mut invocation = END.prepare_invoke();
        invocation
            .key(self.key(user))
            .arg(at_secs)
            .arg(ttl_secs.max(1));
        self.redis.invoke::<i64>(&invocation).await
    }

    /// The user's mark, if their sessions were ended within the last token lifetime. Read
    /// once more before answering unavailable: its callers refuse a session they cannot check
    /// (fail closed), and a read that timed out behind a burst of others (thousands of upgrades
    /// at once on a busy machine) mostly answers the second time.
    pub async fn ended_before(&self, user: &UserId) -> Result<Option<i64>, StoreError> {
        let get = redis::cmd("GET").arg(self.key(user)).clone();
        match self.redis.query(&get).await {
            Err(StoreError::Unavailable(_)) => self.redis.query(&get).await,
            answered => answered,
        }
    }
}

/// Whether a token issued at `iat` is refused under `mark`.
pub fn refused(iat: i64, mark: Option<i64>) -> bool {
    mark.is_some_and(|mark| iat <= mark)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_issued_at_or_before_the_mark_is_refused() {
        assert!(!refused(100, None));
        assert!(refused(99, Some(100)));
        assert!(refused(100, Some(100)));
        assert!(!refused(101, Some(100)));
    }

    /// Against real Redis: the mark only rises, and it expires.
    #[tokio::test(flavor = "current_thread")]
    async fn the_mark_only_rises_and_expires() {
        let redis = switchboard_test_support::shared::fresh_redis("socket-manager", "sessions");
        let marks = SessionMarks::new(redis.clone());
        let (ann, bob) = (UserId::parse("ann").unwrap(), UserId::parse("bob").unwrap());
        assert_eq!(marks.ended_before(&ann).await.unwrap(), None);
        assert_eq!(marks.end(&ann, 200, 60).await.unwrap(), 200);
        assert_eq!(marks.end(&ann, 100, 60).await.unwrap(), 200);
        assert_eq!(marks.ended_before(&ann).await.unwrap(), Some(200));
        assert_eq!(marks.ended_before(&bob).await.unwrap(), None);
        marks.end(&bob, 300, 1).await.unwrap();
        let ttl: i64 = redis
            .query(redis::cmd("TTL").arg(marks.key(&bob)))
            .await
            .unwrap();
        assert!((0..=1).contains(&ttl), "ttl {ttl}");
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(marks.ended_before(&bob).await.unwrap(), None);
    }
}
