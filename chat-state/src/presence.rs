//! Presence: which socket servers hold which users' devices, and when a user was last seen.
//! The socket managers write it as socket servers report connections; the managers read it to
//! route, the message service to answer `GET /api/v1/presence`.
//!
//! Keys, under the prefix `P` (their names keep the original design's "handler", the socket
//! server as the managers see it: the strings are shared with running deployments):
//! - `P handlers`: set of registered socket server ids (for the janitor).
//! - `P handler:{id}`: a key with a short TTL the socket server renews by heartbeat; when it
//!   expires, the server is dead and the janitor removes its topic and mappings.
//! - `P userh:{user}`: sorted set of socket server ids scored by expiry (ms). Expiry is per
//!   member, so one server's stale entry cannot outlive the server's renewals; readers ignore
//!   expired members. A user is online while it has an unexpired member. Scripts read it
//!   through [`SERVERS_OF_LUA`], so its layout stays this module's.
//! - `P handler_users:{id}`: the reverse index, so cleanup does not scan every user.
//! - `P lastseen:{user}`: when the user's last device went away (ms since the epoch).
//! - `P janitor`: the lease of the one manager that sweeps dead socket servers.

use std::collections::HashMap;

use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};

/// KEYS: user's servers, server's users, user's last seen. ARGV: server, now, expiry, user,
/// ttl. Returns 1 when the user was offline everywhere before.
const CONNECTED_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[4])
if before == 0 then return 1 end
return 0
";

/// Same keys and arguments. Returns 1 when the user is now offline everywhere, after
/// recording the last-seen time.
const DISCONNECTED_SCRIPT: &str = r"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SET', KEYS[3], ARGV[2])
  return 1
end
return 0
";

/// Lua for a script that looks recipients up as it goes (the socket manager's numbering
/// script): `servers_of(prefix, users, now)` answers, for each of `users` in order, the
/// socket servers holding one of its devices, read as [`ServerMap::servers_for`] reads them
/// (`prefix` is the key prefix, `now` the time in ms). [`group_by_server`] turns the answer
/// into routes. The keys are built inside the script, as the directory's scripts do: fine for
/// one master (Sentinel), not for Redis Cluster.
pub const SERVERS_OF_LUA: &str = r"
local function servers_of(prefix, users, now)
  local found = {}
  for i, user in ipairs(users) do
    found[i] = redis.call('ZRANGEBYSCORE', prefix .. 'userh:' .. user, now, '+inf')
  end
  return found
end
";

/// Routes from a lookup: `found[i]` are the socket servers holding `users[i]`; answers server →
/// the users it holds, in the order of `users`.
pub fn group_by_server(users: &[String], found: Vec<Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut by_server: HashMap<String, Vec<String>> = HashMap::new();
    for (user, servers) in users.iter().zip(found) {
        for server in servers {
            by_server.entry(server).or_default().push(user.clone());
        }
    }
    by_server
}

/// Now, in ms since the epoch: the clock mapping expiries are compared with.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Which socket servers hold which users' devices, and the servers' liveness: the writes and
/// route lookups of this module's keys.
#[derive(Clone)]
pub struct ServerMap {
    redis: SentinelRedis,
    pub user_ttl_ms: i64,
    pub server_ttl_ms: i64,
}

fn user_servers_key(redis: &SentinelRedis, user: &str) -> String {
    redis.key(&format!("userh:{user}"))
}

fn last_seen_key(redis: &SentinelRedis, user: &str) -> String {
    redis.key(&format!("lastseen:{user}"))
}

/// `(online, last_seen_ms)` of each user at `now_ms`.
pub async fn read(
    redis: &SentinelRedis,
    users: &[String],
    now_ms: i64,
) -> Result<Vec<(bool, Option<i64>)>, StoreError> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for user in users {
        pipe.zcount(user_servers_key(redis, user), now_ms, "+inf")
            .get(last_seen_key(redis, user));
    }
    let flat: Vec<redis::Value> = redis.query_pipe(&pipe).await?;
    Ok(flat
        .chunks(2)
        .map(|pair| {
            let online = matches!(pair[0], redis::Value::Int(n) if n > 0);
            let last_seen = match &pair[1] {
                redis::Value::BulkString(b) => {
                    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
                }
                _ => None,
            };
            (online, last_seen)
        })
        .collect())
}

impl ServerMap {
    pub fn new(redis: SentinelRedis, user_ttl_ms: i64, server_ttl_ms: i64) -> Self {
        ServerMap {
            redis,
            user_ttl_ms,
            server_ttl_ms,
        }
    }

    fn alive_key(&self, server: &str) -> String {
        self.redis.key(&format!("handler:{server}"))
    }

    fn user_key(&self, user: &str) -> String {
        user_servers_key(&self.redis, user)
    }

    fn reverse_key(&self, server: &str) -> String {
        self.redis.key(&format!("handler_users:{server}"))
    }

    pub async fn register(&self, server: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.sadd(self.redis.key("handlers"), server)
            .ignore()
            .cmd("SET")
            .arg(self.alive_key(server))
            .arg(now_ms())
            .arg("PX")
            .arg(self.server_ttl_ms)
            .ignore();
        self.redis.query_pipe(&pipe).await
    }

    /// Renews the server's liveness key; `false` if it had already expired (the janitor may
    /// have cleaned up: the server must register again).
    pub async fn heartbeat(&self, server: &str) -> Result<bool, StoreError> {
        let renewed: bool = self
            .redis
            .query(
                redis::cmd("SET")
                    .arg(self.alive_key(server))
                    .arg(now_ms())
                    .arg("PX")
                    .arg(self.server_ttl_ms)
                    .arg("XX"),
            )
            .await
            .map(|v: Option<String>| v.is_some())?;
        Ok(renewed)
    }

    /// A first device of each user arrived on `server`. Returns the users who were offline
    /// everywhere before (their presence changes).
    pub async fn connected(&self, server: &str, users: &[&str]) -> Result<Vec<String>, StoreError> {
        self.apply(CONNECTED_SCRIPT, server, users).await
    }

    /// The last device of each user left `server`. Returns the users now offline everywhere
    /// (their last-seen time is recorded).
    pub async fn disconnected(
        &self,
        server: &str,
        users: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        self.apply(DISCONNECTED_SCRIPT, server, users).await
    }

    /// Re-reports users the server still holds, extending their mappings; no presence change
    /// unless a mapping had been lost.
    pub async fn renew(&self, server: &str, users: &[&str]) -> Result<Vec<String>, StoreError> {
        self.apply(CONNECTED_SCRIPT, server, users).await
    }

    async fn apply(
        &self,
        script: &str,
        server: &str,
        users: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("EVAL")
                .arg(script)
                .arg(3)
                .arg(user_servers_key(&self.redis, user))
                .arg(self.reverse_key(server))
                .arg(last_seen_key(&self.redis, user))
                .arg(server)
                .arg(now)
                .arg(now + self.user_ttl_ms)
                .arg(*user)
                .arg(self.user_ttl_ms);
        }
        let changed: Vec<i64> = self.redis.query_pipe(&pipe).await?;
        Ok(users
            .iter()
            .zip(changed)
            .filter(|(_, c)| *c == 1)
            .map(|(u, _)| (*u).to_owned())
            .collect())
    }

    /// Where a frame for `users` goes: socket server → the users it is for. Below `broadcast_from`
    /// users, [`Self::servers_for`] (one lookup per user); from it on, every registered
    /// server with all of `users` ([`Self::registered_servers`], one command), and each
    /// server delivers to whichever of them it holds. A large group then costs one `SMEMBERS`
    /// instead of one `ZRANGEBYSCORE` per member, which was half the Redis master's CPU in S3
    /// (docs/performance.md, run 17), at the price of a record for a server holding none of
    /// them.
    pub async fn route(
        &self,
        users: &[String],
        broadcast_from: usize,
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        if users.is_empty() || users.len() < broadcast_from {
            return self.servers_for(users).await;
        }
        Ok(self
            .registered_servers()
            .await?
            .into_iter()
            .map(|server| (server, users.to_vec()))
            .collect())
    }

    /// Every registered socket server: the ones with a topic, until the janitor removes a dead
    /// one (a dead server's user mappings last as long, so a lookup reaches it as long too).
    pub async fn registered_servers(&self) -> Result<Vec<String>, StoreError> {
        self.redis
            .query(redis::cmd("SMEMBERS").arg(self.redis.key("handlers")))
            .await
    }

    /// Socket servers holding a device of any of `users`, with the users each holds.
    pub async fn servers_for(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let now = now_ms();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.user_key(user))
                .arg(now)
                .arg("+inf");
        }
        let found: Vec<Vec<String>> = self.redis.query_pipe(&pipe).await?;
        Ok(group_by_server(users, found))
    }

    /// Socket servers whose liveness key has expired.
    pub async fn dead_servers(&self) -> Result<Vec<String>, StoreError> {
        let all = self.registered_servers().await?;
        if all.is_empty() {
            return Ok(all);
        }
        let mut pipe = redis::pipe();
        for server in &all {
            pipe.exists(self.alive_key(server));
        }
        let alive: Vec<bool> = self.redis.query_pipe(&pipe).await?;
        Ok(all
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(h, _)| h)
            .collect())
    }

    /// Removes every mapping of `server`; returns the users now offline everywhere.
    pub async fn forget(&self, server: &str) -> Result<Vec<String>, StoreError> {
        let users: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(self.reverse_key(server)))
            .await?;
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let mut offline = Vec::new();
        for chunk in refs.chunks(500) {
            offline.extend(self.disconnected(server, chunk).await?);
        }
        let mut pipe = redis::pipe();
        pipe.del(self.reverse_key(server))
            .ignore()
            .del(self.alive_key(server))
            .ignore()
            .srem(self.redis.key("handlers"), server)
            .ignore();
        self.redis.query_pipe::<()>(&pipe).await?;
        Ok(offline)
    }

    /// Takes the janitor role for `ttl_ms`, so of several managers one sweeps at a time.
    pub async fn try_janitor_lease(&self, owner: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let got: Option<String> = self
            .redis
            .query(
                redis::cmd("SET")
                    .arg(self.redis.key("janitor"))
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await?;
        Ok(got.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route lookup against real Redis: users grouped by the handlers holding them, in
    /// the order asked; users offline, or whose mapping expired, are left out.
    #[tokio::test(flavor = "current_thread")]
    async fn route_lookup_groups_users_by_server_and_skips_the_offline() {
        let redis = switchboard_test_support::shared::fresh_redis("socket-manager", "route-lookup");
        let handlers = ServerMap::new(redis.clone(), 60_000, 60_000);
        handlers.connected("h1", &["alice", "bob"]).await.unwrap();
        handlers.connected("h2", &["bob", "erin"]).await.unwrap();
        ServerMap::new(redis.clone(), 1, 60_000)
            .connected("h1", &["dave"])
            .await
            .unwrap();
        // Its one mapping expired 1 ms after it was written.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;

        let users = ["erin", "carol", "dave", "bob", "alice"].map(String::from);
        let mut found: Vec<(String, Vec<String>)> = handlers
            .servers_for(&users)
            .await
            .unwrap()
            .into_iter()
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("h1".to_owned(), vec!["bob".to_owned(), "alice".to_owned()]),
                ("h2".to_owned(), vec!["erin".to_owned(), "bob".to_owned()]),
            ]
        );
        assert!(handlers.servers_for(&[]).await.unwrap().is_empty());
    }

    /// From `broadcast_from` users on, a route goes to every registered handler with all the
    /// users (h3 holds none of them and still gets them; h2, gone, does not); below it, only
    /// to the handlers holding them.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_route_goes_to_every_registered_handler() {
        let redis =
            switchboard_test_support::shared::fresh_redis("socket-manager", "route-broadcast");
        let handlers = ServerMap::new(redis.clone(), 60_000, 60_000);
        for handler in ["h1", "h2", "h3"] {
            handlers.register(handler).await.unwrap();
        }
        handlers.connected("h1", &["alice", "bob"]).await.unwrap();
        handlers.connected("h2", &["carol"]).await.unwrap();
        handlers.forget("h2").await.unwrap();
        let users = ["alice", "bob", "carol"].map(String::from);

        let mut broadcast: Vec<(String, Vec<String>)> = handlers
            .route(&users, 3)
            .await
            .unwrap()
            .into_iter()
            .collect();
        broadcast.sort();
        assert_eq!(
            broadcast,
            [
                ("h1".to_owned(), users.to_vec()),
                ("h3".to_owned(), users.to_vec()),
            ]
        );

        let looked_up: Vec<(String, Vec<String>)> = handlers
            .route(&users, 4)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            looked_up,
            [("h1".to_owned(), vec!["alice".to_owned(), "bob".to_owned()])]
        );
        assert!(handlers.route(&[], 0).await.unwrap().is_empty());
    }
}
