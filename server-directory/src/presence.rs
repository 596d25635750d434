//! Who is online: the user-to-handler mappings the socket managers keep, read here so the
//! message service answers `GET /api/v1/presence` from the same keys.
//!
//! - `P userh:{user}`: sorted set of handler ids holding a device of the user, scored by
//!   expiry (ms); a user is online while it has an unexpired member.
//! - `P lastseen:{user}`: when the user's last device went away (ms since the epoch).

use switchboard_service_kit::redis_sentinel::{SentinelRedis, StoreError};

pub fn user_handlers_key(redis: &SentinelRedis, user: &str) -> String {
    redis.key(&format!("userh:{user}"))
}

pub fn last_seen_key(redis: &SentinelRedis, user: &str) -> String {
    redis.key(&format!("lastseen:{user}"))
}

/// `(online, last_seen_ms)` for each user.
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
        pipe.zcount(user_handlers_key(redis, user), now_ms, "+inf")
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
