//! Presence: which socket servers hold which users' devices, and when a user was last seen.
//! The socket managers write it as socket servers report connections; the managers read it to
//! route, the message service to answer `GET /api/v1/presence`.
//!
//! Whether a socket server is alive is not kept here: the directory
//! (`switchboard-server-directory`, its heartbeat refreshed by the server's reconcile, its
//! evictions made by the health checkers) is the one owner of that fact. This module keeps
//! what the managers hang on a server (the set of servers with a topic, and the routes), and
//! the steps that remove them when the server is gone from the directory ([`ServerMap::claim`],
//! [`ServerMap::forget`]).
//!
//! Keys, under the prefix `P` (their names keep the original design's "handler", the socket
//! server as the managers see it: the strings are shared with running deployments):
//! - `P handlers`: set of the socket servers linked to the managers (each has a topic): added
//!   by a registration with a manager, removed when the server is reaped.
//! - `P reaping:{id}`: present while a manager removes the server's topic and routes (the
//!   janitor after the server left the directory, or its deregistration); a registration
//!   waits for it to go, so a server that comes back is never linked half-way through its own
//!   removal. Lifetime [`REAP_MARK_MS`], in case the manager reaping dies.
//! - `P userh:{user}`: sorted set of socket server ids scored by expiry (ms). Expiry is per
//!   member, so one server's stale entry cannot outlive the server's renewals; readers ignore
//!   expired members. A user is online while it has an unexpired member. Scripts read it
//!   through [`SERVERS_OF_LUA`], so its layout stays this module's.
//! - `P handler_users:{id}`: the reverse index, so cleanup does not scan every user.
//! - `P lastseen:{user}`: when the user's last device went away (ms since the epoch).
//! - `P janitor`: the lease of the one manager that sweeps servers gone from the directory.
//!
//! (`P handler:{id}`, a liveness key each server renewed by a heartbeat to the managers, is
//! gone: it was a second record of the directory's fact, with a second eviction.)

use std::collections::HashMap;

use switchboard_redis::{SentinelRedis, StoreError};

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

/// KEYS: servers with a topic, the server's reaping mark. ARGV: server. Links the server
/// (returns 1), unless it is being reaped (returns 0: try again once the reap is over).
const REGISTER_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

/// KEYS: servers with a topic, the server's reaping mark. ARGV: server, the mark's lifetime
/// (ms), and, for a reap of a server gone from the directory, the directory's sorted set (an
/// argument, not a declared key: the managers may only read it, and Redis checks a script's
/// declared keys as written). Returns 1 when the caller is to reap the server: with the
/// directory's key, only if the server is still absent from it (checked in the same step, so a
/// server that registered again meanwhile is left alone) and still linked (another janitor
/// may have reaped it); without, always (the server deregistered itself).
const CLAIM_SCRIPT: &str = r"
if #ARGV == 3 then
  if redis.call('ZSCORE', ARGV[3], ARGV[1]) then return 0 end
  if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
else
  redis.call('SREM', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
";

/// How long a reaping mark lasts at most: a reap (deleting one topic, a server's routes) takes
/// well under it; if the manager reaping dies, the server may register again after it.
pub const REAP_MARK_MS: i64 = 60_000;

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

/// Which socket servers hold which users' devices, and which servers are linked to the
/// managers: the writes and route lookups of this module's keys.
#[derive(Clone)]
pub struct ServerMap {
    redis: SentinelRedis,
    pub user_ttl_ms: i64,
    /// How long a server may be missing from the directory before the janitor reaps it
    /// (`SB_HANDLER_TTL_MS`).
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

    fn reaping_key(&self, server: &str) -> String {
        self.redis.key(&format!("reaping:{server}"))
    }

    fn user_key(&self, user: &str) -> String {
        user_servers_key(&self.redis, user)
    }

    fn reverse_key(&self, server: &str) -> String {
        self.redis.key(&format!("handler_users:{server}"))
    }

    /// Links `server` to the managers (it has a topic from now on). `false` while the server
    /// is being reaped: register again once that is over.
    pub async fn register(&self, server: &str) -> Result<bool, StoreError> {
        let linked: i64 = self
            .redis
            .query(
                redis::cmd("EVAL")
                    .arg(REGISTER_SCRIPT)
                    .arg(2)
                    .arg(self.redis.key("handlers"))
                    .arg(self.reaping_key(server))
                    .arg(server),
            )
            .await?;
        Ok(linked == 1)
    }

    /// Whether `server` is linked to the managers (registered and not reaped since).
    pub async fn is_registered(&self, server: &str) -> Result<bool, StoreError> {
        self.redis
            .query(
                redis::cmd("SISMEMBER")
                    .arg(self.redis.key("handlers"))
                    .arg(server),
            )
            .await
    }

    /// Starts reaping `server`: unlinks it and marks it as being reaped, so it cannot register
    /// again until [`Self::forget`] has removed its routes. `absent_from`: the directory's
    /// sorted set (its key as the directory names it); then only a server absent from it, and
    /// still linked, is claimed (`false` otherwise: it came back, or was reaped already).
    /// `None`: the server deregistered itself, claimed whatever the directory says. The caller
    /// then deletes the server's topic and calls [`Self::forget`].
    pub async fn claim(&self, server: &str, absent_from: Option<&str>) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM_SCRIPT)
            .arg(2)
            .arg(self.redis.key("handlers"))
            .arg(self.reaping_key(server))
            .arg(server)
            .arg(REAP_MARK_MS);
        if let Some(directory) = absent_from {
            cmd.arg(directory);
        }
        let claimed: i64 = self.redis.query(&cmd).await?;
        Ok(claimed == 1)
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

    /// Every registered socket server: the ones with a topic, until the janitor reaps one gone
    /// from the directory (a dead server's user mappings last as long, so a lookup reaches it
    /// as long too).
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

    /// Removes every mapping of `server`, unlinks it and clears its reaping mark (the last
    /// step of a reap: from here on it may register again); returns the users now offline
    /// everywhere.
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
            .srem(self.redis.key("handlers"), server)
            .ignore()
            .del(self.reaping_key(server))
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

    /// A reap of a server gone from the directory: claimed only while the server is absent
    /// from the directory's set and still linked; while it runs, the server cannot link again;
    /// `forget` ends it (routes gone, users offline, the server free to link again). A
    /// deregistration claims whatever the directory says.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reap_is_claimed_only_while_the_server_is_absent_and_blocks_its_link() {
        use switchboard_test_support::shared;
        shared::warm_up();
        let id = shared::unique("reap-claim");
        let redis = SentinelRedis::new(shared::redis_config("socket-manager", &id));
        // The directory is the registry's and the health checkers' to write; the managers'
        // user only reads it (the claim must work under that user).
        let registry = SentinelRedis::new(shared::redis_config("registry", &id));
        let servers = ServerMap::new(redis.clone(), 60_000, 60_000);
        let directory = registry.key("servers");
        assert!(servers.register("h1").await.unwrap());
        servers.connected("h1", &["alice"]).await.unwrap();
        let _: () = registry
            .query(redis::cmd("ZADD").arg(&directory).arg(0).arg("h1"))
            .await
            .unwrap();
        assert!(
            !servers.claim("h1", Some(&directory)).await.unwrap(),
            "present in the directory: not reaped"
        );
        let _: () = registry
            .query(redis::cmd("ZREM").arg(&directory).arg("h1"))
            .await
            .unwrap();
        assert!(servers.claim("h1", Some(&directory)).await.unwrap());
        assert!(
            !servers.claim("h1", Some(&directory)).await.unwrap(),
            "claimed once: a second janitor finds it unlinked"
        );
        assert!(!servers.is_registered("h1").await.unwrap());
        assert!(
            !servers.register("h1").await.unwrap(),
            "no link while the reap runs"
        );
        assert_eq!(servers.forget("h1").await.unwrap(), ["alice"]);
        assert!(servers
            .servers_for(&["alice".to_owned()])
            .await
            .unwrap()
            .is_empty());
        assert!(servers.register("h1").await.unwrap(), "linked again after");
        assert!(servers.is_registered("h1").await.unwrap());
        assert!(servers.claim("h1", None).await.unwrap(), "a deregistration");
        assert!(servers.registered_servers().await.unwrap().is_empty());
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
