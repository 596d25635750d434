//! Faults: a socket server killed or stopped, the Redis master killed.

use std::time::{Duration, Instant};

use switchboard_test_support::{Stack, StackOptions};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::client::{
    assign, connect_via_registry, eventually, http, scores, spread, token_for, WsClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_socket_server_is_evicted_fast_and_never_handed_out_again() {
    let stack = Stack::start(StackOptions::without_messaging())
        .await
        .unwrap();
    let mut clients = connect_via_registry(&stack, 30, 5).await.unwrap();
    assert_eq!(spread(&clients).len(), 3);
    let victim = stack.socket_servers[0].server_id.clone();

    let killed_at = Instant::now();
    stack.socket_servers[0].process.kill9();
    let gone = eventually(Duration::from_secs(5), || async {
        !scores(&stack).await.contains_key(&victim)
    })
    .await;
    assert!(gone, "evicted within 5 s (took {:?})", killed_at.elapsed());

    let http = http();
    for _ in 0..60 {
        let a = assign(&http, &stack).await.unwrap();
        assert_ne!(a.server_id, victim, "a dead server is never handed out");
    }
    // Clients of the other servers are untouched.
    let mut survivors = 0;
    for client in clients.iter_mut().filter(|c| c.server_id != victim) {
        assert!(client.ping_pong().await);
        survivors += 1;
    }
    assert_eq!(survivors, 20);
    // The victim's clients reconnect through the registry and land elsewhere.
    let moved = connect_via_registry(&stack, 10, 10).await.unwrap();
    assert!(moved.iter().all(|c| c.server_id != victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_the_set_before_clients_get_1012() {
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        health_checkers: 1,
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    let leaving = &stack.socket_servers[0];
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(
            WsClient::connect(&leaving.ws_url(), &token_for(&stack, &format!("u{i}")))
                .await
                .unwrap(),
        );
    }
    assert!(scores(&stack).await.contains_key(&leaving.server_id));
    leaving.process.sigterm();
    for client in &mut clients {
        let code = client.close_code(Duration::from_secs(10)).await;
        assert_eq!(code, Some(CloseCode::Restart), "closed with 1012");
        // The moment a client learns of the restart, the server is already out of the set,
        // so a reconnect through the registry cannot land on it.
        assert!(
            !scores(&stack).await.contains_key(&leaving.server_id),
            "left the sorted set before closing clients"
        );
    }
    let http = http();
    for _ in 0..20 {
        assert_ne!(
            assign(&http, &stack).await.unwrap().server_id,
            leaving.server_id
        );
    }
    let status = leaving.process.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_master_failover_heals_without_restarting_services() {
    let stack = Stack::start(StackOptions::without_messaging())
        .await
        .unwrap();
    let pids: Vec<u32> = stack
        .registries
        .iter()
        .map(|s| s.process.pid())
        .chain(stack.socket_servers.iter().map(|s| s.process.pid()))
        .collect();
    let http = http();
    assign(&http, &stack).await.unwrap();

    let old = stack.redis.kill_master().await.unwrap();
    let killed_at = Instant::now();
    let healed = eventually(Duration::from_secs(15), || async {
        let Ok(a) = assign(&http, &stack).await else {
            return false;
        };
        WsClient::connect(&a.url, &token_for(&stack, "after-failover"))
            .await
            .map(drop)
            .is_ok()
    })
    .await;
    assert!(
        healed,
        "assign + connect work again within 15 s of killing the master"
    );
    eprintln!(
        "healed {:?} after killing master :{old}",
        killed_at.elapsed()
    );
    let new = stack.redis.current_master_port().await.unwrap();
    assert_ne!(new, old, "a replica was promoted");
    let now: Vec<u32> = stack
        .registries
        .iter()
        .map(|s| s.process.pid())
        .chain(stack.socket_servers.iter().map(|s| s.process.pid()))
        .collect();
    assert_eq!(pids, now, "no service restarted");
    assert!(stack.socket_servers.iter().all(|s| s.process.is_running()));
    // Every socket server is back in the (new master's) set.
    assert!(
        eventually(Duration::from_secs(5), || async {
            scores(&stack).await.len() == stack.socket_servers.len()
        })
        .await
    );
}
