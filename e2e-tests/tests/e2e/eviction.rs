//! Eviction by agreement: a health checker cut off from a socket server cannot evict it while
//! another checker still reaches it (issue 24, item 14).

use std::time::{Duration, Instant};

use switchboard_config::names::{
    SB_FAILURE_THRESHOLD, SB_HEALTH_BIND, SB_PROBE_INTERVAL_MS, SB_PROBE_TIMEOUT_MS,
};
use switchboard_test_support::netcut::{self, CUT_USER};
use switchboard_test_support::redis_cluster::service_redis_env;
use switchboard_test_support::{bin_path, free_port, ManagedProcess, NetCut, Stack, StackOptions};

use crate::client::{eventually, scores};

/// The port a server's health URL (as registered in the directory) points at.
async fn health_port(stack: &Stack, server_id: &str) -> u16 {
    let mut conn = stack.redis.master_connection().await;
    let url: String = redis::cmd("HGET")
        .arg(format!("{}server:{server_id}", stack.redis_prefix()))
        .arg("health_url")
        .query_async(&mut conn)
        .await
        .expect("the server's health url");
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("a health url with an authority");
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a health url with a port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_cut_off_from_a_server_does_not_evict_it_while_another_sees_it() {
    let mut cut = match netcut::ensure_user(CUT_USER).and_then(NetCut::prepare) {
        Ok(cut) => cut,
        Err(e) => {
            eprintln!("eviction test skipped: cannot cut a process off the network here: {e:#}");
            return;
        }
    };
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        health_checkers: 1,
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    // A second checker, as the user the cut applies to, with the stack's checker settings.
    let port = free_port();
    let mut env = stack.service_env();
    env.extend([
        (SB_HEALTH_BIND.to_owned(), format!("127.0.0.1:{port}")),
        (SB_PROBE_INTERVAL_MS.to_owned(), "500".to_owned()),
        (SB_PROBE_TIMEOUT_MS.to_owned(), "400".to_owned()),
        (SB_FAILURE_THRESHOLD.to_owned(), "2".to_owned()),
    ]);
    env.extend(service_redis_env("health-checker"));
    let _cut_checker = ManagedProcess::spawn_as(
        "health-checker-cut",
        bin_path("health-checker"),
        &[] as &[&str],
        &env,
        stack.log_dir(),
        Some(cut.user()),
    )
    .unwrap();
    switchboard_test_support::wait_http_ok(
        &format!("http://127.0.0.1:{port}/ready"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let victim = stack.socket_servers[0].server_id.clone();
    let probed = health_port(&stack, &victim).await;
    cut.cut(&[probed]).unwrap();
    // Ten probe rounds, five times the failure threshold: alone, the cut checker would have
    // evicted the server within the first second.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            scores(&stack).await.contains_key(&victim),
            "the server was evicted by the checker that could not reach it (logs in {})",
            stack.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped = cut.heal();
    assert!(
        dropped > 0,
        "the cut dropped no packet: no partition happened"
    );

    // When every checker loses it, it goes as before.
    stack.socket_servers[0].process.kill9();
    let gone = eventually(Duration::from_secs(8), || async {
        !scores(&stack).await.contains_key(&victim)
    })
    .await;
    assert!(gone, "a dead server is evicted once the checkers agree");
}
