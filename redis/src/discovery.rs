//! Finding the master: ask a Sentinel for the address of the master it monitors, connect to
//! it, and check with `ROLE` that it really is the master (a demoted one may still be named for
//! a moment during a failover). Credential and TLS failures are explained with the setting to
//! fix.

use redis::aio::MultiplexedConnection;
use redis::RedisError;
use switchboard_config::names::{SB_REDIS_PASSWORD, SB_REDIS_SENTINEL_PASSWORD};

use super::config::{host_port, RedisConfig};

pub(super) async fn ask_sentinel(
    sentinel: &str,
    config: &RedisConfig,
) -> Result<(String, u16), String> {
    master_addr(
        sentinel_connection(sentinel, config).await?,
        &config.master_name,
    )
    .await
}

pub(super) async fn sentinel_connection(
    sentinel: &str,
    config: &RedisConfig,
) -> Result<MultiplexedConnection, String> {
    let (host, port) = host_port(sentinel)?;
    let tls = config.tls.sentinels;
    config
        .tls
        .client(tls, &config.sentinel_auth, &host, port)?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| explain_auth_error(e, "the Sentinel", SB_REDIS_SENTINEL_PASSWORD))
        .map_err(|e| config.tls.explain(tls, e))
}

/// A connection error, with what to fix when it is about credentials.
fn explain_auth_error(e: RedisError, whom: &str, setting: &str) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("invalid password")
        || lower.contains("authentication")
    {
        format!("{whom} refused our credentials ({text}); check {setting}")
    } else {
        text
    }
}

/// The master `master_name` as this Sentinel knows it.
pub(super) async fn master_addr(
    mut conn: MultiplexedConnection,
    master_name: &str,
) -> Result<(String, u16), String> {
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master_name)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    addr.ok_or_else(|| format!("does not know master {master_name}"))
}

pub(super) async fn connect_master(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> Result<(MultiplexedConnection, String), String> {
    let tls = config.tls.servers;
    let client = config.tls.client(tls, &config.auth, host, port)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| explain_auth_error(e, "the Redis master", SB_REDIS_PASSWORD))
        .map_err(|e| config.tls.explain(tls, e))?;
    let role: redis::Value = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let is_master = match &role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
        ),
        _ => false,
    };
    if !is_master {
        return Err("not a master (yet)".into());
    }
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let replid = info
        .lines()
        .find_map(|l| l.strip_prefix("master_replid:"))
        .map(|id| id.trim().to_owned())
        .ok_or("INFO replication has no master_replid")?;
    Ok((conn, replid))
}
