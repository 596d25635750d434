//! One message followed through the JSON logs of every process it crosses: with
//! `SB_LOG_FORMAT=json` and debug lines on, its `message_id` appears in the sender's socket
//! server (`sent`, with the batch id it posted under), a manager (`numbered` inside the span
//! of that same batch id, `appended` and `routed` with a flush id), the message service
//! (`read from the log` with the log flush's id, carried in the envelope's `trace` field, and
//! `stored`) and the recipient's socket server (`delivered`, with the routing flush's id).
//!
//! And every one of those lines, in all four processes, names one W3C trace (`trace_id`):
//! the trace of the `traceparent` the sender's socket server made for the batch and sent to
//! the manager, carried on in the log record and the socket server topic's record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use switchboard_config::names::{RUST_LOG, SB_LOG_FORMAT};
use switchboard_protocol::trace_context::TraceParent;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{alice_and_bob, history_with, messages_of, sent_of, WsClient};

/// Every JSON log line of the stack that mentions `needle`, with the file it came from.
fn lines_with(stack: &Stack, needle: &str) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(stack.log_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().filter(|l| l.contains(needle)) {
            if let Ok(json) = serde_json::from_str::<Value>(line) {
                found.push((file.clone(), json));
            }
        }
    }
    found
}

/// The value of `field` in a JSON log line: the event's own fields are flattened to the top;
/// span fields sit in `span`/`spans`.
fn field<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    line.get(field)
        .or_else(|| line.get("span").and_then(|s| s.get(field)))
        .or_else(|| {
            line.get("spans")
                .and_then(Value::as_array)
                .and_then(|spans| spans.iter().find_map(|s| s.get(field)))
        })
        .and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_grep_of_the_json_logs_follows_a_message_end_to_end() {
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        extra_env: vec![
            (SB_LOG_FORMAT.into(), "json".into()),
            (
                RUST_LOG.into(),
                "info,socket_server=debug,socket_manager=debug,message_service=debug,actix_server=warn,rdkafka=warn".into(),
            ),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    alice.send_message(&conv, "traced-1", "follow me").await;
    let frames = alice
        .collect_until(Duration::from_secs(20), |f| !sent_of(f).is_empty())
        .await;
    let (_, message_id) = sent_of(&frames)
        .remove("traced-1")
        .expect("alice's send is answered with sent");
    let got = bob
        .collect_until(Duration::from_secs(20), |f| {
            !messages_of(f, &conv).is_empty()
        })
        .await;
    assert_eq!(messages_of(&got, &conv).len(), 1, "bob gets the message");
    assert_eq!(
        history_with(&http, &stack, &bob_t, &conv, 10).await.len(),
        1
    );

    // Log lines are written as they happen; give the last ones a moment to reach the files.
    let wanted = [
        "sent",
        "numbered",
        "appended",
        "routed",
        "read from the log",
        "stored",
        "delivered",
    ];
    let mut by_message: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for _ in 0..50 {
        by_message.clear();
        for (file, line) in lines_with(&stack, &message_id) {
            let what = line["message"].as_str().unwrap_or_default().to_owned();
            by_message.entry(what).or_default().push((file, line));
        }
        if wanted.iter().all(|w| by_message.contains_key(*w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !by_message.contains_key(*w))
        .collect();
    assert!(
        missing.is_empty(),
        "lines naming {message_id} lack {missing:?}; found {:?}",
        by_message.keys().collect::<Vec<_>>()
    );
    let one = |what: &str| &by_message[what][0];

    // Each line comes from the process it should, and the ids carried in the HTTP header and
    // the Kafka envelopes tie the hops together.
    let (sender_file, sent) = one("sent");
    // The sender's own server gets the record too (for the sender's other devices).
    let (recipient_file, delivered) = by_message["delivered"]
        .iter()
        .find(|(file, _)| file != sender_file)
        .expect("a delivered line on the recipient's server");
    let servers: HashSet<&str> = [sender_file.as_str(), recipient_file.as_str()].into();
    assert_eq!(
        servers.len(),
        2,
        "sender's and recipient's socket servers: {servers:?}"
    );
    assert!(sender_file.starts_with("socket-server"), "{sender_file}");
    assert!(
        recipient_file.starts_with("socket-server"),
        "{recipient_file}"
    );
    assert_eq!(field(sent, "client_msg_id"), Some("traced-1"));
    let batch = field(sent, "batch").expect("the sent line names its batch");

    let (manager_file, numbered) = one("numbered");
    assert!(manager_file.starts_with("socket-manager"), "{manager_file}");
    assert_eq!(field(numbered, "client_msg_id"), Some("traced-1"));
    assert_eq!(
        field(numbered, "batch"),
        Some(batch),
        "the manager's span names the batch id the socket server sent in its header"
    );
    assert_eq!(field(numbered, "conversation_id"), Some(conv.as_str()));

    let (_, appended) = one("appended");
    let (ingest_file, read) = one("read from the log");
    assert!(ingest_file.starts_with("message-service"), "{ingest_file}");
    let log_flush = field(appended, "trace").expect("appended names its flush");
    assert_eq!(
        field(read, "trace"),
        Some(log_flush),
        "the message service reads the log flush's id from the record's header"
    );
    assert!(by_message["stored"].iter().any(|(f, _)| f == ingest_file));

    let routed: HashSet<&str> = by_message["routed"]
        .iter()
        .filter_map(|(_, line)| field(line, "trace"))
        .collect();
    let delivered_by = field(delivered, "trace").expect("delivered names its flush");
    assert!(
        routed.contains(delivered_by),
        "the recipient's server reads the routing flush's id ({delivered_by}) from the record's header; routed: {routed:?}"
    );

    // One trace across the four processes: the one the sender's socket server started.
    let traceparent = field(sent, "traceparent").expect("the sent line names its traceparent");
    let trace_id = TraceParent::parse(traceparent)
        .expect("a valid W3C traceparent")
        .trace_id
        .to_string();
    assert_eq!(field(sent, "trace_id"), Some(trace_id.as_str()));
    let mut processes = HashSet::new();
    for (what, lines) in &by_message {
        if !wanted.contains(&what.as_str()) {
            continue;
        }
        for (file, line) in lines {
            assert_eq!(
                field(line, "trace_id"),
                Some(trace_id.as_str()),
                "{what} in {file} carries the send's trace: {line}"
            );
            processes.insert(file.as_str());
        }
    }
    for process in [sender_file, manager_file, ingest_file, recipient_file] {
        assert!(
            processes.contains(process.as_str()),
            "{process} in {processes:?}"
        );
    }
    let request_trace = numbered["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
        .and_then(|span| span["trace_id"].as_str());
    assert_eq!(
        request_trace,
        Some(trace_id.as_str()),
        "the manager's request span joined the traceparent header's trace: {numbered}"
    );

    // Before the batch: the sender's socket server admitted alice's upgrade inside its
    // `request` span (GET /ws, no query: her token is in no span), and took the frame in its
    // `inbound` step (with the send's client_msg_id), after that span ended with the upgrade.
    let in_sender = |needle: &str, message: &str| {
        lines_with(&stack, needle)
            .into_iter()
            .find(|(file, line)| file == sender_file && line["message"] == message)
            .map(|(_, line)| line)
    };
    let spans_of = |line: &Value| line["spans"].as_array().cloned().unwrap_or_default();
    let named = |spans: &[Value], name: &str| spans.iter().find(|s| s["name"] == name).cloned();
    let admitted = in_sender("upgrade admitted", "upgrade admitted")
        .expect("the sender's socket server logged admitting alice's upgrade");
    let request = named(&spans_of(&admitted), "request").expect("inside the request span");
    assert_eq!(request["method"], "GET", "{admitted}");
    assert_eq!(request["path"], "/ws", "{admitted}");
    assert!(request["trace_id"].as_str().is_some(), "{admitted}");
    assert!(!admitted.to_string().contains("token="), "{admitted}");
    let forwarded = in_sender("traced-1", "forwarded to the managers")
        .expect("the sender's socket server logged taking the frame");
    let spans = spans_of(&forwarded);
    let inbound = named(&spans, "inbound").expect("inside the inbound step's span");
    assert_eq!(inbound["client_msg_id"], "traced-1", "{forwarded}");
    assert!(
        named(&spans, "request").is_none(),
        "no span is held for the session's life: {forwarded}"
    );
}
