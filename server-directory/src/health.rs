//! Eviction by agreement: the health checkers' verdicts on each socket server.
//!
//! One checker must not evict on its own: a checker cut off from a server (or CPU-starved past
//! its probe timeout) would evict servers that every client still reaches. So each probe round,
//! every checker records its verdict on every server ([`Verdict`]) in one script, and a server
//! is evicted only when the checkers agree: no live checker's fresh verdict is `up`, and more
//! than half of the live checkers say `down` (each reached its own failure threshold). With a
//! single checker that is the old rule; with two, both must have lost the server.
//!
//! Keys, under the configured prefix `P` (this module is their only writer):
//! - `P checkers`: sorted set, member = a checker's id (a ULID per process), score = when it
//!   last voted (Redis's clock, ms). Checkers silent for longer than the freshness window are
//!   not live and do not count.
//! - `P health:{id}`: hash per server, field = checker id, value = `"{verdict}:{ms}"`; expires
//!   two freshness windows after the last vote, so an evicted server's verdicts go with it.
//!
//! Times come from Redis (`TIME` inside the script), so checkers' clocks never disagree.

use std::sync::LazyLock;

use redis::Script;
use switchboard_redis::{SentinelRedis, StoreError};

/// One checker's verdict on one server this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The probe succeeded.
    Up,
    /// The probe failed, fewer times in a row than the threshold.
    Miss,
    /// The probe failed the threshold's number of times in a row: this checker would evict.
    Down,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Up => "up",
            Verdict::Miss => "miss",
            Verdict::Down => "down",
        }
    }
}

/// KEYS[1]: checkers; then one `health:{id}` per server. ARGV: checker id, freshness window
/// (ms), then each server's verdict. Answers the (1-based) places of the servers the live
/// checkers agree are down.
static VOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local fresh = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - fresh)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local agreed = {}
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[i + 1] .. ':' .. now)
  redis.call('PEXPIRE', KEYS[i], fresh * 2)
  local down, up = 0, false
  for _, id in ipairs(live) do
    local v = redis.call('HGET', KEYS[i], id)
    local verdict, at = string.match(v or '', '^(%a+):(%d+)$')
    if verdict and tonumber(at) > now - fresh then
      if verdict == 'up' then up = true elseif verdict == 'down' then down = down + 1 end
    end
  end
  if not up and down * 2 > #live then agreed[#agreed + 1] = i - 1 end
end
return agreed
",
    )
});

/// The checkers' verdicts. Cheap to clone.
#[derive(Clone)]
pub struct HealthVotes {
    redis: SentinelRedis,
    checkers_key: String,
}

impl HealthVotes {
    pub fn new(redis: SentinelRedis) -> Self {
        let checkers_key = redis.key("checkers");
        HealthVotes {
            redis,
            checkers_key,
        }
    }

    /// Records `checker`'s verdict on each server and answers the servers the live checkers
    /// agree are down (see the module docs). `fresh`: how long a verdict, and a checker's
    /// liveness, count (a few probe intervals).
    pub async fn vote(
        &self,
        checker: &str,
        verdicts: &[(String, Verdict)],
        fresh: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        if verdicts.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = VOTE.prepare_invoke();
        inv.key(&self.checkers_key);
        for (server, _) in verdicts {
            inv.key(self.redis.key(&format!("health:{server}")));
        }
        inv.arg(checker).arg(fresh.as_millis() as u64);
        for (_, verdict) in verdicts {
            inv.arg(verdict.as_str());
        }
        let agreed: Vec<usize> = self.redis.invoke(&inv).await?;
        Ok(agreed
            .into_iter()
            .filter_map(|place| verdicts.get(place.checked_sub(1)?))
            .map(|(server, _)| server.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FRESH: Duration = Duration::from_millis(1_500);

    fn votes(name: &str) -> HealthVotes {
        HealthVotes::new(switchboard_test_support::shared::fresh_redis(
            "health-checker",
            name,
        ))
    }

    fn on(server: &str, verdict: Verdict) -> Vec<(String, Verdict)> {
        vec![(server.to_owned(), verdict)]
    }

    /// A checker cut off from a server cannot evict it while another checker still reaches it;
    /// once every live checker has lost it, it goes; a lone checker decides alone.
    #[tokio::test(flavor = "current_thread")]
    async fn eviction_needs_the_live_checkers_to_agree() {
        let votes = votes("health-votes");
        // Two checkers: A is cut off from s1, B still reaches it.
        assert!(votes
            .vote("B", &on("s1", Verdict::Up), FRESH)
            .await
            .unwrap()
            .is_empty());
        let a = votes
            .vote("A", &on("s1", Verdict::Down), FRESH)
            .await
            .unwrap();
        assert!(a.is_empty(), "B sees s1 up: no eviction");
        // B's probes start failing: a miss is not yet a vote to evict.
        assert!(votes
            .vote("B", &on("s1", Verdict::Miss), FRESH)
            .await
            .unwrap()
            .is_empty());
        let b = votes
            .vote("B", &on("s1", Verdict::Down), FRESH)
            .await
            .unwrap();
        assert_eq!(b, ["s1"], "both lost it");
        // Another server, with A alone alive once B's votes are stale.
        assert!(votes
            .vote("B", &on("s2", Verdict::Up), FRESH)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(FRESH + Duration::from_millis(100)).await;
        let alone = votes
            .vote("A", &on("s2", Verdict::Down), FRESH)
            .await
            .unwrap();
        assert_eq!(alone, ["s2"], "B is not live any more: A decides alone");
    }

    /// Three checkers: two of three saying down is a majority unless the third sees it up.
    #[tokio::test(flavor = "current_thread")]
    async fn a_majority_of_live_checkers_evicts_unless_one_sees_the_server_up() {
        let votes = votes("health-majority");
        let round = |checker: &'static str, verdicts: Vec<(String, Verdict)>| {
            let votes = votes.clone();
            async move { votes.vote(checker, &verdicts, FRESH).await.unwrap() }
        };
        let both = |a: Verdict, b: Verdict| vec![("s1".to_owned(), a), ("s2".to_owned(), b)];
        assert!(round("B", both(Verdict::Miss, Verdict::Up))
            .await
            .is_empty());
        assert!(round("C", both(Verdict::Miss, Verdict::Miss))
            .await
            .is_empty());
        let one_of_three = round("A", both(Verdict::Down, Verdict::Down)).await;
        assert!(one_of_three.is_empty(), "one of three");
        assert_eq!(round("C", both(Verdict::Down, Verdict::Down)).await, ["s1"]);
    }
}
