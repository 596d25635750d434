//! Legal sends that are large once escaped (issue 23, item 1). A body of 43,000 U+0001 is
//! 43,000 bytes (under the 64 KiB body limit), and its frame about 258 KB (under the 256 KiB
//! frame limit), but JSON escapes each U+0001 as the six bytes `\u0001`, in the frame, in the
//! log record and in the manager's batch body alike. Sized by their bodies, a few such sends
//! made a log envelope over the producer's `message.max.bytes`: it failed on every attempt,
//! stayed pending, and every later send to the conversation appended it again and failed, with
//! every other conversation's record that shared the envelope. And about 65 of them in one
//! socket server lane made a batch over the manager's 16 MiB JSON limit, so every item of the
//! lane, other users' too, was answered `unavailable`.
//!
//! Both tests hold the conversation's sequence lease for a moment before the sends (a key in
//! Redis, as a slow holder would), so the first batch waits and the sends behind it gather in
//! one lane batch, one conversation batch and one append: the worst case, reached here every
//! time rather than when the timing happens to line up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_config::names::SB_MANAGER_LANES;
use switchboard_protocol::frames::ServerFrame;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{create_conversation, http, token_for, WsClient};

/// The poison body: 43,000 U+0001.
fn poison() -> String {
    "\u{1}".repeat(43_000)
}

/// Every `client_msg_id` answered in `frames`: its `seq`, or the error code it got.
fn answers(frames: &[ServerFrame]) -> HashMap<String, Result<u64, String>> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Sent {
                client_msg_id, seq, ..
            } => Some((client_msg_id.clone(), Ok(*seq))),
            ServerFrame::Error {
                client_msg_id: Some(id),
                code,
                ..
            } => Some((id.clone(), Err(code.as_str().to_owned()))),
            _ => None,
        })
        .collect()
}

/// Collects frames until every id of `ids` is answered (sent or refused) or `within` passes.
async fn answers_for(
    client: &mut WsClient,
    ids: &[String],
    within: Duration,
) -> HashMap<String, Result<u64, String>> {
    let frames = client
        .collect_until(within, |frames| {
            let answered = answers(frames);
            ids.iter().all(|id| answered.contains_key(id))
        })
        .await;
    answers(&frames)
}

/// Asserts every id of `ids` was answered `sent`.
fn assert_all_sent(who: &str, ids: &[String], answered: &HashMap<String, Result<u64, String>>) {
    let wrong: Vec<(&String, Option<&Result<u64, String>>)> = ids
        .iter()
        .map(|id| (id, answered.get(id)))
        .filter(|(_, a)| !matches!(a, Some(Ok(_))))
        .collect();
    assert!(
        wrong.is_empty(),
        "{who}: {} of {} sends not acknowledged: {wrong:?}",
        wrong.len(),
        ids.len()
    );
}

/// Holds `conversation`'s sequence lease for `ttl` under a token no manager has, as a slow
/// holder would: the managers wait for it (up to `SB_LOCK_WAIT_MS`, 3 s) and then number.
async fn hold_lease(stack: &Stack, conversation: &str, ttl: Duration) {
    let mut conn = stack.redis.master_connection().await;
    let key = format!("{}lock:conv:{conversation}", stack.redis_prefix());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("poison-test/slow-holder")
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .expect("set the lease");
}

/// `INFO memory`'s `used_memory` on the Redis master.
async fn redis_used_memory(stack: &Stack) -> u64 {
    let mut conn = stack.redis.master_connection().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Numbers still waiting for their append to be acknowledged (`sb:pending:*` keys).
async fn pending_keys(stack: &Stack) -> Vec<String> {
    let mut conn = stack.redis.master_connection().await;
    redis::cmd("KEYS")
        .arg(format!("{}pending:*", stack.redis_prefix()))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn escaped_bodies_stall_neither_their_conversation_nor_anyone_elses() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let http = http();
    let [mallory_t, carol_t] = ["mallory", "carol"].map(|u| token_for(&stack, u));
    let group = create_conversation(
        &http,
        &stack,
        &mallory_t,
        serde_json::json!({"kind":"group","name":"poisoned","members":["alice","bob"]}),
    )
    .await;
    let other = create_conversation(
        &http,
        &stack,
        &mallory_t,
        serde_json::json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let carols = create_conversation(
        &http,
        &stack,
        &carol_t,
        serde_json::json!({"kind":"direct","members":["dave"]}),
    )
    .await;
    // Mallory and carol on the same socket server; bob, a member, listening on another.
    let ws = stack.socket_servers[0].ws_url();
    let mut mallory = WsClient::connect(&ws, &mallory_t).await.unwrap();
    let mut carol = WsClient::connect(&ws, &carol_t).await.unwrap();
    let bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &token_for(&stack, "bob"))
        .await
        .unwrap()
        .keep_alive();
    // Every conversation has numbered once (members mirrored, counters checked).
    for conversation in [&group, &other] {
        let id = format!("warm-{conversation}");
        mallory.send_message(conversation, &id, "hello").await;
        let answered = answers_for(
            &mut mallory,
            std::slice::from_ref(&id),
            Duration::from_secs(10),
        )
        .await;
        assert_all_sent("warm-up", &[id], &answered);
    }
    carol.send_message(&carols, "warm", "hello").await;
    assert_all_sent(
        "carol's warm-up",
        &["warm".to_owned()],
        &answers_for(&mut carol, &["warm".to_owned()], Duration::from_secs(10)).await,
    );
    let memory_before = redis_used_memory(&stack).await;

    // Carol sends steadily from the same socket server all along.
    let carol_ids: Vec<String> = (0..40).map(|i| format!("carol-{i}")).collect();
    let carol_task = {
        let (carols, ids) = (carols.clone(), carol_ids.clone());
        tokio::spawn(async move {
            for id in &ids {
                carol
                    .send_message(&carols, id, &format!("steady {id}"))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answers_for(&mut carol, &ids, Duration::from_secs(20)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Six poison sends back to back, then a plain one to the same group and one elsewhere.
    hold_lease(&stack, &group, Duration::from_millis(1_000)).await;
    let body = poison();
    let poison_ids: Vec<String> = (0..6).map(|i| format!("poison-{i}")).collect();
    for id in &poison_ids {
        mallory.send_message(&group, id, &body).await;
    }
    let started = Instant::now();
    mallory
        .send_message(&group, "after-same", "still here?")
        .await;
    mallory
        .send_message(&other, "after-other", "and here?")
        .await;
    let mut ids = poison_ids.clone();
    ids.extend(["after-same".to_owned(), "after-other".to_owned()]);
    let answered = answers_for(&mut mallory, &ids, Duration::from_secs(10)).await;
    assert_all_sent("mallory, within 10 s", &ids, &answered);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The group's numbers are in order: six poison, then the plain one.
    let seqs: Vec<u64> = ids[..7]
        .iter()
        .map(|id| *answered[id].as_ref().unwrap())
        .collect();
    assert_eq!(seqs, (2..=8).collect::<Vec<u64>>(), "{answered:?}");

    let carols_answers = carol_task.await.unwrap();
    assert_all_sent(
        "carol, on the same socket server",
        &carol_ids,
        &carols_answers,
    );

    // Nothing is left pending in Redis, and its memory did not grow with the failures.
    let settled = crate::client::eventually(Duration::from_secs(10), || async {
        pending_keys(&stack).await.is_empty()
    })
    .await;
    assert!(
        settled,
        "pending numbers left: {:?}",
        pending_keys(&stack).await
    );
    let memory_after = redis_used_memory(&stack).await;
    assert!(
        memory_after < memory_before + 16 * 1024 * 1024,
        "Redis used_memory grew from {memory_before} to {memory_after}"
    );
    bob.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lane_full_of_escaped_bodies_is_posted_in_batches_the_manager_accepts() {
    // One lane per socket server: the connections below share it, as thousands of
    // connections share each of the 64 lanes of a busy server.
    let stack = Stack::start(StackOptions {
        extra_env: vec![(SB_MANAGER_LANES.into(), "1".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let users = ["mallory", "trudy", "oscar"];
    let group = create_conversation(
        &http,
        &stack,
        &token_for(&stack, users[0]),
        serde_json::json!({"kind":"group","name":"heavy","members":users[1..]}),
    )
    .await;
    let ws = stack.socket_servers[0].ws_url();
    let mut clients = Vec::new();
    for user in users {
        clients.push(
            WsClient::connect(&ws, &token_for(&stack, user))
                .await
                .unwrap(),
        );
    }
    clients[0].send_message(&group, "warm", "hello").await;
    assert_all_sent(
        "warm-up",
        &["warm".to_owned()],
        &answers_for(
            &mut clients[0],
            &["warm".to_owned()],
            Duration::from_secs(10),
        )
        .await,
    );

    // 72 poison sends, 24 from each connection: about 18.6 MB of JSON, more than the
    // manager's 16 MiB in one batch; they gather in one while the first batch waits.
    hold_lease(&stack, &group, Duration::from_millis(1_000)).await;
    let body = poison();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let (group, body) = (group.clone(), body.clone());
            tokio::spawn(async move {
                let ids: Vec<String> = (0..24).map(|i| format!("heavy-{c}-{i}")).collect();
                for id in &ids {
                    client.send_message(&group, id, &body).await;
                }
                let answered = answers_for(&mut client, &ids, Duration::from_secs(60)).await;
                (ids, answered)
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for (c, task) in tasks.into_iter().enumerate() {
        let (ids, answered) = task.await.unwrap();
        let unavailable = answered
            .values()
            .filter(|a| matches!(a, Err(code) if code == "unavailable"))
            .count();
        assert_eq!(unavailable, 0, "connection {c}: {answered:?}");
        assert_all_sent(&format!("connection {c}"), &ids, &answered);
        seqs.extend(ids.iter().map(|id| *answered[id].as_ref().unwrap()));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=73).collect::<Vec<u64>>(), "each numbered once");
}
