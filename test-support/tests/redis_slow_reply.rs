//! A slow connection is not a dead one. [`SentinelRedis`] drops its connection (and resolves
//! the master again through the Sentinels) when a command times out, because a master that
//! silently went away answers nothing. But a command can also time out behind others on a
//! live connection (a busy master, a starved process: a debug build taking 5,000 WebSockets
//! on two cores did, and every upgrade behind it was refused while the handle re-resolved).
//! Against a real master and Sentinels:
//!
//! - a command that times out while the connection keeps answering the commands ahead of it
//!   keeps the connection (`CLIENT ID` unchanged);
//! - a command that times out while the master answers nothing at all (a script busy for
//!   longer than the timeout) drops it (`CLIENT ID` changed afterwards).

// Tests spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use switchboard_config::lookup::from_pairs;
use switchboard_config::names::{
    SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD, SB_REDIS_SENTINELS, SB_REDIS_TIMEOUT_MS,
};
use switchboard_redis::{RedisConfig, SentinelRedis, StoreError};
use switchboard_test_support::redis_cluster::{MASTER_NAME, REDIS_PASSWORD};
use switchboard_test_support::RedisSentinelCluster;

/// The handle's command timeout in these tests.
const TIMEOUT_MS: u64 = 500;

fn handle(cluster: &RedisSentinelCluster) -> SentinelRedis {
    let sentinels = cluster.sentinels_env();
    let timeout = TIMEOUT_MS.to_string();
    let vars = [
        (SB_REDIS_SENTINELS, sentinels.as_str()),
        (SB_REDIS_MASTER_NAME, MASTER_NAME),
        (SB_REDIS_PASSWORD, REDIS_PASSWORD),
        (SB_REDIS_TIMEOUT_MS, timeout.as_str()),
    ];
    let config = RedisConfig::from_lookup(&from_pairs(&vars)).unwrap();
    SentinelRedis::new(config)
}

/// The server-side id of the handle's connection, once the master answers.
async fn client_id(redis: &SentinelRedis) -> i64 {
    for _ in 0..40 {
        if let Ok(id) = redis.query::<i64>(redis::cmd("CLIENT").arg("ID")).await {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the master never answered CLIENT ID");
}

/// `BLPOP` on a key nobody pushes to: the connection's next reply comes `secs` later.
fn blpop(redis: &SentinelRedis, key: &str, secs: f64) -> redis::Cmd {
    let mut cmd = redis::cmd("BLPOP");
    cmd.arg(redis.key(key)).arg(secs);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_behind_others_times_out_without_dropping_the_connection_a_silent_master_drops_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisSentinelCluster::start(dir.path()).await.unwrap();
    let redis = handle(&cluster);
    let first = client_id(&redis).await;

    // Behind a slow reply: `ahead` holds the connection for 400 ms (within the 500 ms
    // timeout) and answers; `behind`, sent 100 ms later, waits for it and then blocks for
    // 450 ms itself, so it times out at 600 ms, after `ahead`'s reply came back.
    let ahead_cmd = blpop(&redis, "slow:ahead", 0.4);
    let behind_cmd = blpop(&redis, "slow:behind", 0.45);
    let ahead = redis.query::<Option<(String, String)>>(&ahead_cmd);
    let behind = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.query::<Option<(String, String)>>(&behind_cmd).await
    };
    let (ahead, behind) = tokio::join!(ahead, behind);
    assert!(matches!(ahead, Ok(None)), "{ahead:?}");
    assert!(
        matches!(&behind, Err(StoreError::Unavailable(m)) if m.contains("timed out")),
        "{behind:?}"
    );
    assert_eq!(
        client_id(&redis).await,
        first,
        "a connection that kept answering was dropped on a timeout"
    );

    // A master busy in a script for 1.2 s answers nobody: the command times out with nothing
    // else answered meanwhile, and the handle starts over on a new connection.
    let master = cluster.current_master_port().await.unwrap();
    let busy = tokio::spawn(async move {
        let client =
            redis::Client::open(format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{master}/")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("EVAL")
            .arg(
                "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] \
                 while true do local n = redis.call('TIME') \
                 if n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]) * 1000 then break end end \
                 return 1",
            )
            .arg(0)
            .arg(1200)
            .query_async::<i64>(&mut conn)
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stalled = redis.query::<String>(&redis::cmd("PING")).await;
    assert!(
        matches!(&stalled, Err(StoreError::Unavailable(m)) if m == "command timed out"),
        "{stalled:?}"
    );
    busy.await.unwrap().expect("the busy script ran");
    assert_ne!(
        client_id(&redis).await,
        first,
        "a connection that answered nothing within the timeout was kept"
    );
}
