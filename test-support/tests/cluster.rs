//! A real Redis master + 2 replicas + 3 Sentinels: a key written before the master is
//! killed is read back from the promoted replica.

use std::time::{Duration, Instant};

use switchboard_test_support::RedisSentinelCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_replicated_data() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisSentinelCluster::start(dir.path()).await.unwrap();
    assert_eq!(cluster.master_name(), "switchboard");
    assert_eq!(cluster.sentinels_env().split(',').count(), 3);

    let mut conn = cluster.master_connection().await;
    let _: () = redis::cmd("SET")
        .arg("sb:test:key")
        .arg("survives")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Replication is asynchronous: make sure both replicas have the write.
    let acked: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 2);

    let old = cluster.kill_master().await.unwrap();
    let killed_at = Instant::now();
    let new = cluster
        .wait_for_failover(old, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!("failover :{old} -> :{new} in {:?}", killed_at.elapsed());
    assert_ne!(new, old);
    assert_eq!(cluster.current_master_port().await.unwrap(), new);

    let mut conn = cluster.master_connection().await;
    let value: String = redis::cmd("GET")
        .arg("sb:test:key")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "survives");
    // The new master takes writes.
    let _: () = redis::cmd("SET")
        .arg("sb:test:after")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
}
