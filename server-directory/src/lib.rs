//! The directory of socket servers, kept in Redis, shared by the registry (assigns), the socket
//! servers (keep their own score exact) and the health checker (evicts).
//!
//! Keys, all under the configured prefix `P`:
//! - `P servers`: sorted set, member = server id, score = load = live connections plus
//!   outstanding reservations. A min-heap: the least-loaded server is rank 0.
//! - `P server:{id}`: hash with `url`, `health_url`, `max_connections`, `last_heartbeat_ms`.
//! - `P reserved:{id}`: hash of reservation counts by expiry: field = the end of an expiry
//!   bucket (ms), value = reservations expiring by then. A reservation expires up to one bucket
//!   (a thirty-second of its lifetime) late, and a server holds a few dozen fields whatever its
//!   assignment rate. (The sorted set of one member per reservation that this replaced,
//!   `P reservations:{id}`, cost Redis an insert per assignment, on the master and on each
//!   replica; `remove` still deletes it.)
//!
//! Why reservations: a burst of 1,000 assigns arrives before any client connects, so a plain
//! "take the minimum" would hand the whole burst to one server. The assign script picks the
//! least-loaded server with room *and* bumps its score by one in the same atomic step, leaving a
//! reservation. When a client connects, the server consumes one reservation (the one expiring
//! first) instead of bumping the score again. Reservations that never turn into connections
//! expire, and the server's periodic reconcile sets its score back to `live + unexpired
//! reservations`, so neither a lost decrement nor an abandoned assignment leaves drift.
//!
//! The directory is the one owner of "this socket server is alive": a server registers here
//! once (through the registry), its reconcile is its one heartbeat, and a health checker's
//! eviction (or the server leaving on drain) removes it here. The socket managers keep no
//! liveness of their own: their janitor reaps the topic and routes of a server linked to them
//! but absent from here ([`ServerDirectory::present`], [`ServerDirectory::servers_key`]).
//!
//! Every mutation is one Lua script, so concurrent registries, servers and health checkers
//! never interleave inside a step. The scripts build per-server key names from the prefix, which
//! is fine for a single master (Sentinel) deployment, not for Redis Cluster.

pub mod health;

use std::sync::LazyLock;

use redis::Script;
use switchboard_protocol::registry::{Assignment, Registration};
use switchboard_protocol::ServerId;
use switchboard_redis::{SentinelRedis, StoreError};

/// One server as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    pub server_id: ServerId,
    pub url: String,
    pub health_url: String,
    pub max_connections: u64,
    /// Live connections plus outstanding reservations.
    pub load: u64,
    pub last_heartbeat_ms: Option<i64>,
}

/// Lua shared by the scripts that read reservations: `unexpired(key, now)` deletes the buckets
/// that ended by `now` and answers the reservations left, how many expired, and the bucket
/// that ends first of those left (nil when none).
const RESERVATIONS_LUA: &str = r#"
local function unexpired(key, now)
  local fields = redis.call('HGETALL', key)
  local left, expired, gone, first = 0, 0, {}, nil
  for i = 1, #fields, 2 do
    local ends, n = tonumber(fields[i]), tonumber(fields[i + 1])
    if ends <= now then
      expired = expired + n
      gone[#gone + 1] = fields[i]
    else
      left = left + n
      if first == nil or ends < tonumber(first) then first = fields[i] end
    end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  return left, expired, first
end
"#;

/// A script whose body uses [`RESERVATIONS_LUA`].
fn with_reservations(body: &str) -> Script {
    Script::new(&format!("{RESERVATIONS_LUA}\n{body}"))
}

static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    with_reservations(
        r#"
        -- KEYS: servers, server hash, reservations. ARGV: id, url, health_url, max, now_ms, live
        redis.call('HSET', KEYS[2], 'url', ARGV[2], 'health_url', ARGV[3],
                   'max_connections', ARGV[4], 'last_heartbeat_ms', ARGV[5])
        local reserved = unexpired(KEYS[3], tonumber(ARGV[5]))
        redis.call('ZADD', KEYS[1], tonumber(ARGV[6]) + reserved, ARGV[1])
        return 1
        "#,
    )
});

static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        -- KEYS: servers, server hash, reservations, the reservations' former sorted set.
        -- ARGV: id
        local removed = redis.call('ZREM', KEYS[1], ARGV[1])
        redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
        return removed
        "#,
    )
});

static ASSIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        -- KEYS: servers. ARGV: prefix, now_ms, stale_ms, reservation_ttl_ms, assignments
        -- asked for. Answers one row per assignment (false: no room).
        -- Each assignment takes the least-loaded live server with room (ties to the lower id,
        -- the sorted set's own order), counting the slots this call already reserved. Servers
        -- are read a page at a time in that order, a further page only when a server on it
        -- could beat the best one found; a server's hash is read only when it could be the
        -- best, so a lone assignment reads as few as a scan for the first fit would.
        local prefix = ARGV[1]
        local now = tonumber(ARGV[2])
        local stale = tonumber(ARGV[3])
        local ttl = tonumber(ARGV[4])
        local candidates = {}
        local fetched, exhausted, last_load, last_id = 0, false, nil, nil
        local function fetch_page()
          local page = redis.call('ZRANGE', KEYS[1], fetched, fetched + 63, 'WITHSCORES')
          fetched = fetched + 64
          if #page < 128 then exhausted = true end
          for i = 1, #page, 2 do
            last_id = page[i]
            last_load = tonumber(page[i + 1])
            candidates[#candidates + 1] = {id = last_id, load = last_load, taken = 0}
          end
        end
        local function live(c)
          if c.live == nil then
            local h = redis.call('HMGET', prefix .. 'server:' .. c.id,
                                 'url', 'max_connections', 'last_heartbeat_ms')
            local heartbeat = tonumber(h[3] or '0')
            c.live = (h[1] and h[2] and (stale <= 0 or now - heartbeat <= stale)) and true or false
            c.url, c.max, c.max_text = h[1], tonumber(h[2] or '0'), h[2]
          end
          return c.live
        end
        local function before(a, b)
          return a.load < b.load or (a.load == b.load and a.id < b.id)
        end
        fetch_page()
        local out = {}
        for r = 1, tonumber(ARGV[5]) do
          local best
          while true do
            best = nil
            for _, c in ipairs(candidates) do
              if (best == nil or before(c, best)) and live(c) and c.load < c.max then
                best = c
              end
            end
            -- Servers not read yet come after the last one read, in load-then-id order.
            if exhausted or (best ~= nil and not before({load = last_load, id = last_id}, best)) then
              break
            end
            fetch_page()
          end
          if best == nil then
            out[#out + 1] = false
          else
            out[#out + 1] = {best.id, best.url, tostring(best.load), best.max_text}
            best.taken = best.taken + 1
            best.load = best.load + 1
          end
        end
        -- Every reservation made now expires at the end of the same bucket.
        local bucket = math.max(1, math.floor(ttl / 32))
        local expiry = math.ceil((now + ttl) / bucket) * bucket
        for _, c in ipairs(candidates) do
          if c.taken > 0 then
            redis.call('HINCRBY', prefix .. 'reserved:' .. c.id, expiry, c.taken)
            redis.call('ZINCRBY', KEYS[1], c.taken, c.id)
          end
        end
        return out
        "#,
    )
});

static CONNECTED: LazyLock<Script> = LazyLock::new(|| {
    with_reservations(
        r#"
        -- KEYS: servers, reservations. ARGV: id, now_ms
        if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
        local left, expired, first = unexpired(KEYS[2], tonumber(ARGV[2]))
        local delta = 1 - expired
        if left > 0 then
          -- Consume one from the bucket that expires first.
          if redis.call('HINCRBY', KEYS[2], first, -1) <= 0 then
            redis.call('HDEL', KEYS[2], first)
          end
          delta = delta - 1
        end
        if delta ~= 0 then redis.call('ZINCRBY', KEYS[1], delta, ARGV[1]) end
        return 1
        "#,
    )
});

static DISCONNECTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        -- KEYS: servers. ARGV: id
        local load = redis.call('ZSCORE', KEYS[1], ARGV[1])
        if not load then return 0 end
        if tonumber(load) >= 1 then redis.call('ZINCRBY', KEYS[1], -1, ARGV[1]) end
        return 1
        "#,
    )
});

static RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    with_reservations(
        r#"
        -- KEYS: servers, server hash, reservations. ARGV: id, live, now_ms
        if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
        local load = tonumber(ARGV[2]) + unexpired(KEYS[3], tonumber(ARGV[3]))
        redis.call('ZADD', KEYS[1], 'XX', load, ARGV[1])
        redis.call('HSET', KEYS[2], 'last_heartbeat_ms', ARGV[3])
        return 1
        "#,
    )
});

static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        -- KEYS: servers. ARGV: prefix. Returns id, load, url, health_url, max, heartbeat ...
        local out = {}
        local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
        for i = 1, #all, 2 do
          local h = redis.call('HMGET', ARGV[1] .. 'server:' .. all[i],
                               'url', 'health_url', 'max_connections', 'last_heartbeat_ms')
          if h[1] then
            table.insert(out, all[i])
            table.insert(out, all[i + 1])
            table.insert(out, h[1])
            table.insert(out, h[2] or '')
            table.insert(out, h[3] or '0')
            table.insert(out, h[4] or '')
          end
        end
        return out
        "#,
    )
});

/// Typed access to the directory. Cheap to clone.
#[derive(Clone)]
pub struct ServerDirectory {
    redis: SentinelRedis,
    servers_key: String,
}

impl ServerDirectory {
    pub fn new(redis: SentinelRedis) -> Self {
        let servers_key = redis.key("servers");
        ServerDirectory { redis, servers_key }
    }

    pub fn redis(&self) -> &SentinelRedis {
        &self.redis
    }

    fn hash_key(&self, id: &str) -> String {
        self.redis.key(&format!("server:{id}"))
    }

    fn reservations_key(&self, id: &str) -> String {
        self.redis.key(&format!("reserved:{id}"))
    }

    /// Where reservations were kept before they were counted per expiry bucket.
    fn former_reservations_key(&self, id: &str) -> String {
        self.redis.key(&format!("reservations:{id}"))
    }

    /// Adds or refreshes a server; its load becomes `live` plus outstanding reservations.
    pub async fn register(
        &self,
        reg: &Registration,
        live: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut inv = REGISTER.prepare_invoke();
        inv.key(&self.servers_key)
            .key(self.hash_key(&reg.server_id))
            .key(self.reservations_key(&reg.server_id))
            .arg(reg.server_id.as_str())
            .arg(&reg.url)
            .arg(&reg.health_url)
            .arg(reg.max_connections)
            .arg(now_ms)
            .arg(live);
        let _: i64 = self.redis.invoke(&inv).await?;
        Ok(())
    }

    /// Removes a server and everything kept for it. `true` if it was in the set (so of two
    /// health checkers evicting at once, exactly one sees `true`).
    pub async fn remove(&self, server_id: &ServerId) -> Result<bool, StoreError> {
        let mut inv = REMOVE.prepare_invoke();
        inv.key(&self.servers_key)
            .key(self.hash_key(server_id))
            .key(self.reservations_key(server_id))
            .key(self.former_reservations_key(server_id))
            .arg(server_id.as_str());
        let removed: i64 = self.redis.invoke(&inv).await?;
        Ok(removed == 1)
    }

    /// `count` assignments in one script. Each picks the least-loaded server with room and a
    /// fresh heartbeat and reserves a slot on it (`None`: every server is full, or there are
    /// none), as if they ran one after another: the slots reserved for the earlier ones count
    /// for the later ones.
    pub async fn assign_many(
        &self,
        now_ms: i64,
        stale_after_ms: i64,
        reservation_ttl_ms: i64,
        count: usize,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut inv = ASSIGN.prepare_invoke();
        inv.key(&self.servers_key)
            .arg(self.redis.config().key_prefix.as_str())
            .arg(now_ms)
            .arg(stale_after_ms)
            .arg(reservation_ttl_ms)
            .arg(count);
        let rows: Vec<Option<(String, String, String, String)>> = self.redis.invoke(&inv).await?;
        if rows.len() != count {
            return Err(StoreError::Unavailable(format!(
                "the assign script answered {} rows for {count} assignments",
                rows.len()
            )));
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                // A server registered under an id that is no ServerId (before the registry
                // checked the rule) can hold no connection anyone routes to: no assignment.
                row.and_then(|(server_id, url, load, max)| {
                    Some(Assignment {
                        server_id: ServerId::parse(server_id).ok()?,
                        url,
                        connections: parse_count(&load),
                        max_connections: parse_count(&max),
                    })
                })
            })
            .collect())
    }

    /// A client connected: consume a reservation, or count one more if there was none.
    pub async fn connected(&self, server_id: &ServerId, now_ms: i64) -> Result<(), StoreError> {
        let mut inv = CONNECTED.prepare_invoke();
        inv.key(&self.servers_key)
            .key(self.reservations_key(server_id))
            .arg(server_id.as_str())
            .arg(now_ms);
        let _: i64 = self.redis.invoke(&inv).await?;
        Ok(())
    }

    /// A client left.
    pub async fn disconnected(&self, server_id: &ServerId) -> Result<(), StoreError> {
        let mut inv = DISCONNECTED.prepare_invoke();
        inv.key(&self.servers_key).arg(server_id.as_str());
        let _: i64 = self.redis.invoke(&inv).await?;
        Ok(())
    }

    /// Sets the load to the exact `live` count plus unexpired reservations and records a
    /// heartbeat. `false` when the server is not registered (evicted, or lost in a failover):
    /// the caller should register again.
    pub async fn reconcile(
        &self,
        server_id: &ServerId,
        live: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut inv = RECONCILE.prepare_invoke();
        inv.key(&self.servers_key)
            .key(self.hash_key(server_id))
            .key(self.reservations_key(server_id))
            .arg(server_id.as_str())
            .arg(live)
            .arg(now_ms);
        let present: i64 = self.redis.invoke(&inv).await?;
        Ok(present == 1)
    }

    /// Every registered server, least loaded first.
    pub async fn list(&self) -> Result<Vec<ServerRecord>, StoreError> {
        let mut inv = LIST.prepare_invoke();
        inv.key(&self.servers_key)
            .arg(self.redis.config().key_prefix.as_str());
        let flat: Vec<String> = self.redis.invoke(&inv).await?;
        // An entry whose id is no ServerId (registered before the registry checked the rule)
        // is left out: nothing can route to it, and it ages out unheartbeated.
        Ok(flat
            .chunks_exact(6)
            .filter_map(|row| {
                Some(ServerRecord {
                    server_id: ServerId::parse(row[0].as_str()).ok()?,
                    load: parse_count(&row[1]),
                    url: row[2].clone(),
                    health_url: row[3].clone(),
                    max_connections: parse_count(&row[4]),
                    last_heartbeat_ms: row[5].parse().ok(),
                })
            })
            .collect())
    }

    /// Whether each of `server_ids` is in the directory, in order (one `ZMSCORE`).
    pub async fn present(&self, server_ids: &[String]) -> Result<Vec<bool>, StoreError> {
        if server_ids.is_empty() {
            return Ok(Vec::new());
        }
        let scores: Vec<Option<f64>> = self
            .redis
            .query(redis::cmd("ZMSCORE").arg(&self.servers_key).arg(server_ids))
            .await?;
        Ok(scores.into_iter().map(|s| s.is_some()).collect())
    }

    /// The key of the sorted set of registered servers, for a script of another key family
    /// that must check a server's absence in the same atomic step (the managers' reap claim,
    /// `switchboard_chat_state::presence::ServerMap::claim`). Readers only: every write to the
    /// directory stays in this crate.
    pub fn servers_key(&self) -> &str {
        &self.servers_key
    }

    /// The load of one server, `None` if it is not in the set.
    pub async fn load(&self, server_id: &ServerId) -> Result<Option<u64>, StoreError> {
        let score: Option<f64> = self
            .redis
            .query(
                redis::cmd("ZSCORE")
                    .arg(&self.servers_key)
                    .arg(server_id.as_str()),
            )
            .await?;
        Ok(score.map(|s| s.max(0.0) as u64))
    }
}

fn parse_count(text: &str) -> u64 {
    text.parse::<f64>().map(|v| v.max(0.0) as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(id: &str) -> ServerId {
        ServerId::parse(id).unwrap()
    }

    fn directory(name: &str) -> ServerDirectory {
        ServerDirectory::new(switchboard_test_support::shared::fresh_redis(
            "registry", name,
        ))
    }

    async fn register(directory: &ServerDirectory, id: &str, now_ms: i64) {
        let registration = Registration {
            server_id: ServerId::parse(id).unwrap(),
            url: format!("ws://{id}.test/ws"),
            health_url: format!("http://{id}.test/healthz"),
            max_connections: 100_000,
        };
        directory.register(&registration, 0, now_ms).await.unwrap();
    }

    /// A burst of assignments made at once is one count in one expiry bucket (not a member
    /// per reservation); a connection consumes one of them, and once they expire the load is
    /// the live connections again.
    #[tokio::test(flavor = "current_thread")]
    async fn reservations_are_counted_per_expiry_bucket() {
        let directory = directory("reservation-counts");
        let now = 1_800_000_000_000;
        register(&directory, "a", now).await;
        let assigned = directory.assign_many(now, 0, 1_000, 500).await.unwrap();
        assert!(assigned
            .iter()
            .all(|a| a.as_ref().unwrap().server_id == "a"));
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(500));

        let key = directory.redis().key("reserved:a");
        let buckets: std::collections::HashMap<String, u64> = directory
            .redis()
            .query(redis::cmd("HGETALL").arg(&key))
            .await
            .unwrap();
        assert_eq!(buckets.values().collect::<Vec<_>>(), [&500]);
        let ends: i64 = buckets.keys().next().unwrap().parse().unwrap();
        assert!(
            (now + 1_000..now + 1_000 + 1_000 / 32).contains(&ends),
            "the bucket ends at the lifetime, rounded up to a thirty-second of it: {ends}"
        );

        directory.connected(&sid("a"), now + 10).await.unwrap();
        assert_eq!(
            directory.load(&sid("a")).await.unwrap(),
            Some(500),
            "the connection took a reserved slot"
        );
        assert!(directory
            .reconcile(&sid("a"), 1, now + 2_000)
            .await
            .unwrap());
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(1));
        let left: u64 = directory
            .redis()
            .query(redis::cmd("HLEN").arg(&key))
            .await
            .unwrap();
        assert_eq!(left, 0, "expired buckets are deleted");
    }

    /// A connection consumes the reservation that expires first, and the ones that expired
    /// meanwhile leave the load.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_takes_the_reservation_expiring_first() {
        let directory = directory("reservation-order");
        let now = 1_800_000_000_000;
        register(&directory, "a", now).await;
        directory.assign_many(now, 0, 1_000, 2).await.unwrap();
        directory.assign_many(now + 500, 0, 1_000, 3).await.unwrap();
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(5));

        // The first two expired; of the three left, one is consumed.
        directory.connected(&sid("a"), now + 1_200).await.unwrap();
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(3));
        directory.connected(&sid("a"), now + 1_300).await.unwrap();
        directory.connected(&sid("a"), now + 1_300).await.unwrap();
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(3));
        // None left: a connection counts one more.
        directory.connected(&sid("a"), now + 1_400).await.unwrap();
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(4));
        assert!(directory
            .reconcile(&sid("a"), 4, now + 1_500)
            .await
            .unwrap());
        assert_eq!(directory.load(&sid("a")).await.unwrap(), Some(4));
    }

    #[test]
    fn counts_parse_from_redis_scores() {
        assert_eq!(parse_count("12"), 12);
        assert_eq!(parse_count("3.0"), 3);
        assert_eq!(parse_count("-1"), 0);
        assert_eq!(parse_count("junk"), 0);
    }
}
