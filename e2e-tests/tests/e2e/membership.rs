//! One membership (issue 25 item 2): a socket server's directory entry, its link to the
//! managers and its routes go together after a health checker's eviction, and a server that
//! was only paused comes back with them. The managers hold no liveness of their own (no
//! heartbeat to them): their janitor reaps what the directory dropped.

use std::time::{Duration, Instant};

use switchboard_test_support::{Stack, StackOptions};

use crate::client::{alice_and_bob, eventually, messages_of, scores, WsClient};

/// Whether `server` is linked to the managers (`handlers`) and routes `user` to it (an
/// unexpired member of `userh:{user}`), read from the Redis master.
async fn linked_and_routed(stack: &Stack, server: &str, user: &str) -> (bool, bool) {
    let mut conn = stack.redis.master_connection().await;
    let prefix = stack.redis_prefix();
    let linked: bool = redis::cmd("SISMEMBER")
        .arg(format!("{prefix}handlers"))
        .arg(server)
        .query_async(&mut conn)
        .await
        .expect("sismember");
    let now = chrono::Utc::now().timestamp_millis();
    let routed: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{prefix}userh:{user}"))
        .arg(now)
        .arg("+inf")
        .query_async(&mut conn)
        .await
        .expect("zrangebyscore");
    (linked, routed.iter().any(|s| s == server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_server_loses_entry_link_and_routes_together_and_a_paused_one_comes_back() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (_http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let paused = &stack.socket_servers[1];
    let bob = WsClient::connect(&paused.ws_url(), &bob_t).await.unwrap();
    let bob_task = bob.keep_alive();
    assert!(
        eventually(Duration::from_secs(5), || async {
            linked_and_routed(&stack, &paused.server_id, "bob").await == (true, true)
        })
        .await,
        "bob is routed to his server"
    );

    // Paused: the health checkers evict it, and the managers' janitor reaps its link and
    // routes one grace (SB_HANDLER_TTL_MS, 3 s here) later.
    paused.process.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let evicted = eventually(Duration::from_secs(8), || async {
        !scores(&stack).await.contains_key(&paused.server_id)
    })
    .await;
    assert!(evicted, "evicted from the directory");
    let evicted_after = stopped_at.elapsed();
    // One grace (3 s) after a janitor first sees it absent, at a sweep (every 1.5 s, the two
    // managers taking turns with the lease): about 4.5-7 s on a quiet machine. 15 s because
    // the full suite runs two stacks at once on two cores (8 s was missed there once).
    let reaped = eventually(Duration::from_secs(15), || async {
        linked_and_routed(&stack, &paused.server_id, "bob").await == (false, false)
    })
    .await;
    assert!(
        reaped,
        "link and routes reaped within 15 s of the eviction (evicted {evicted_after:?} after \
         the pause; logs in {})",
        stack.log_dir().display()
    );
    bob_task.abort();

    // Resumed: it finds itself gone from the directory, registers again and links again.
    eprintln!(
        "paused {:?}: evicted after {evicted_after:?}, reaped after {:?}",
        paused.server_id,
        stopped_at.elapsed()
    );
    paused.process.signal(libc::SIGCONT);
    let resumed_at = Instant::now();
    let back = eventually(Duration::from_secs(10), || async {
        scores(&stack).await.contains_key(&paused.server_id)
            && linked_and_routed(&stack, &paused.server_id, "bob").await.0
    })
    .await;
    assert!(back, "back in the directory and linked to the managers");
    // Bob (whose socket the pause may have timed out) connects to it again and is live.
    let mut bob = WsClient::connect(&paused.ws_url(), &bob_t).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            linked_and_routed(&stack, &paused.server_id, "bob").await == (true, true)
        })
        .await,
        "routed again"
    );
    eprintln!("routed again {:?} after the resume", resumed_at.elapsed());
    // Alice connects now (an idle client would have timed out meanwhile). The resumed
    // server's delivery consumer may have to rejoin its group after a pause this long: the
    // message is live once it has.
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    alice
        .send_message(&conv, "after-pause", "welcome back")
        .await;
    let frames = bob
        .collect_until(Duration::from_secs(30), |f| {
            !messages_of(f, &conv).is_empty()
        })
        .await;
    assert_eq!(
        messages_of(&frames, &conv).len(),
        1,
        "delivered live after the comeback: {frames:?}"
    );
}
