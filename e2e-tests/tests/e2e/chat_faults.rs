//! The chat path under faults: an acknowledged (`sent`) message is never lost when a socket
//! server, a socket manager or the broker dies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_config::names::SB_PRODUCE_TIMEOUT_MS;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{
    alice_and_bob, assign, history_with, history_within, http, messages_of, sent_of, WsClient, WAIT,
};

/// What a paced sender saw: `sent` acknowledgements and error codes, by client_msg_id.
#[derive(Default, Debug)]
struct SendLog {
    acknowledged: HashMap<String, (u64, String)>,
    errors: HashMap<String, ErrorCode>,
}

/// Sends `count` messages, one every `pace`, calling `fault` after `fault_after` of them, and
/// waits for an answer (sent or error) to every one.
async fn paced_sends<F, Fut>(
    client: &mut WsClient,
    conversation_id: &str,
    count: usize,
    pace: Duration,
    fault_after: usize,
    fault: F,
) -> SendLog
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut log = SendLog::default();
    let mut fault = Some(fault);
    let record = |frame: ServerFrame, log: &mut SendLog| match frame {
        ServerFrame::Sent {
            client_msg_id,
            seq,
            message_id,
            ..
        } => {
            log.acknowledged
                .insert(client_msg_id, (seq, message_id.into()));
        }
        ServerFrame::Error {
            code,
            client_msg_id: Some(id),
            ..
        } => {
            log.errors.insert(id, code);
        }
        _ => {}
    };
    for i in 0..count {
        if i == fault_after {
            if let Some(f) = fault.take() {
                f().await;
            }
        }
        client
            .send_message(conversation_id, &format!("p{i}"), &format!("payload {i}"))
            .await;
        // Drain whatever arrived meanwhile without blocking the pace.
        let until = Instant::now() + pace;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match client.next_frame(left).await {
                Some(frame) => record(frame, &mut log),
                None => break,
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.acknowledged.len() + log.errors.len() < count && Instant::now() < deadline {
        match client.next_frame(Duration::from_secs(1)).await {
            Some(frame) => record(frame, &mut log),
            None => continue,
        }
    }
    log
}

/// Every acknowledged message is in history with the acknowledged seq and id, and the stored
/// seqs have no gap.
async fn assert_none_lost(stack: &Stack, token: &str, conversation_id: &str, log: &SendLog) {
    let http = http();
    let highest = log
        .acknowledged
        .values()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(0) as usize;
    let stored = history_with(&http, stack, token, conversation_id, highest).await;
    let by_seq: HashMap<u64, &str> = stored
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["message_id"].as_str().unwrap(),
            )
        })
        .collect();
    for (cmid, (seq, id)) in &log.acknowledged {
        assert_eq!(
            by_seq.get(seq).copied(),
            Some(id.as_str()),
            "acknowledged {cmid} (seq {seq}) is stored"
        );
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap in stored seqs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receivers_socket_server_killed_reconnects_and_misses_nothing() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    let bob_task = bob.keep_alive();
    let victim = &stack.socket_servers[1];
    let log = paced_sends(
        &mut alice,
        &conv,
        60,
        Duration::from_millis(20),
        20,
        || async {
            victim.process.kill9();
        },
    )
    .await;
    bob_task.abort();
    assert_eq!(
        log.acknowledged.len(),
        60,
        "alice's server is fine: {:?}",
        log.errors
    );
    // Bob reconnects through the registry (never to the dead server) and fills from history.
    let assignment = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(a) = assign(&http, &stack).await {
                if a.server_id != victim.server_id {
                    return a;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    let mut bob = WsClient::connect(&assignment.url, &bob_t).await.unwrap();
    assert_none_lost(&stack, &bob_t, &conv, &log).await;
    // And he is live again.
    alice.send_message(&conv, "after", "welcome back").await;
    let frames = bob
        .collect_until(Duration::from_secs(10), |f| {
            !messages_of(f, &conv).is_empty()
        })
        .await;
    assert_eq!(messages_of(&frames, &conv)[0].0, 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_socket_manager_under_load_loses_no_acknowledged_message() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (_, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let manager = &stack.managers[0];
    let log = paced_sends(
        &mut alice,
        &conv,
        150,
        Duration::from_millis(10),
        50,
        || async {
            manager.process.kill9();
        },
    )
    .await;
    assert!(
        log.acknowledged.len() >= 100,
        "the other manager takes over: {} acknowledged, errors {:?}",
        log.acknowledged.len(),
        log.errors
    );
    assert_none_lost(&stack, &bob_t, &conv, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_under_load_loses_no_acknowledged_message() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let (_, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut broker = stack.broker.take().unwrap();
    let log = paced_sends(
        &mut alice,
        &conv,
        120,
        Duration::from_millis(25),
        40,
        || async {
            broker.restart(Duration::from_secs(2)).await.unwrap();
        },
    )
    .await;
    stack.broker = Some(broker);
    assert_eq!(
        log.acknowledged.len() + log.errors.len(),
        120,
        "every send is answered: sent or an error, never silence"
    );
    assert!(
        log.errors.values().all(|c| *c == ErrorCode::Unavailable),
        "outage errors are `unavailable`: {:?}",
        log.errors
    );
    assert!(
        log.acknowledged.len() >= 40,
        "sends before and after the outage succeed"
    );
    // Sending works again once the broker is back.
    alice
        .send_message(&conv, "after-restart", "still here")
        .await;
    let frames = alice
        .collect_until(Duration::from_secs(20), |f| {
            f.iter().any(|x| matches!(x, ServerFrame::Sent { client_msg_id, .. } if client_msg_id == "after-restart"))
        })
        .await;
    let mut log = log;
    for f in frames {
        if let ServerFrame::Sent {
            client_msg_id,
            seq,
            message_id,
            ..
        } = f
        {
            log.acknowledged
                .insert(client_msg_id, (seq, message_id.into()));
        }
    }
    assert!(log.acknowledged.contains_key("after-restart"));
    assert_none_lost(&stack, &bob_t, &conv, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_service_death_delays_history_but_loses_nothing() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let (_, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    // A first message seeds the conversation's counter (that lookup needs the store).
    alice.send_message(&conv, "warm", "first").await;
    assert!(!sent_of(&alice.collect_until(WAIT, |f| !sent_of(f).is_empty()).await).is_empty());
    bob.collect_until(WAIT, |f| !messages_of(f, &conv).is_empty())
        .await;
    // The store is down while alice sends: the log keeps everything, live delivery goes on.
    stack.message_service.as_ref().unwrap().process.kill9();
    let log = paced_sends(
        &mut alice,
        &conv,
        40,
        Duration::from_millis(20),
        40,
        || async {},
    )
    .await;
    assert_eq!(
        log.acknowledged.len(),
        40,
        "sends do not need the store: {:?}",
        log.errors
    );
    let frames = bob
        .collect_until(Duration::from_secs(10), |f| {
            messages_of(f, &conv).len() >= 40
        })
        .await;
    assert_eq!(
        messages_of(&frames, &conv).len(),
        40,
        "live delivery goes on"
    );
    // Back up, it resumes from its committed offsets and catches up (after the broker lets
    // the dead consumer's group membership lapse).
    let restarted = std::time::Instant::now();
    stack.restart_message_service().await.unwrap();
    let stored = history_within(&http(), &stack, &bob_t, &conv, 41, Duration::from_secs(60)).await;
    eprintln!(
        "history caught up to {} messages in {:?}",
        stored.len(),
        restarted.elapsed()
    );
    assert_none_lost(&stack, &bob_t, &conv, &log).await;
}

/// A manager that cannot append to the log says so on `/ready` (and says ready again once the
/// broker is back), so no operator or orchestrator is told all is well while sends fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_that_cannot_append_is_not_ready() {
    let mut stack = Stack::start(StackOptions {
        extra_env: vec![(SB_PRODUCE_TIMEOUT_MS.into(), "1000".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let ready = |url: String| {
        let http = http.clone();
        async move {
            http.get(format!("{url}/ready"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let manager = stack.managers[0].url();
    assert_eq!(ready(manager.clone()).await, 200);
    let broker = stack.broker.as_mut().unwrap();
    broker.supervise(false);
    broker.process.kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = 200;
    while Instant::now() < deadline {
        status = ready(manager.clone()).await;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 503, "a manager without a broker is not ready");
    let broker = stack.broker.as_mut().unwrap();
    broker.restart(Duration::ZERO).await.unwrap();
    broker.supervise(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        status = ready(manager.clone()).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "ready again once the broker is back");
}
