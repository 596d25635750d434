//! The nemesis suite: the promise under faults.
//!
//! Switchboard's promise is that once a client has `sent`, the message is stored exactly once
//! under that `seq`, delivered in `seq` order, and never lost. Each test here starts a whole
//! stack, runs a [`Workload`] of clients that behave like real ones (several direct and group
//! conversations, multi-device, spread over the socket servers; a send without an answer, an
//! `unavailable` error or a reconnect makes them resend the same `client_msg_id`), injects one
//! fault while they send, heals it, and then checks the whole history ([`Workload::check`]):
//!
//! - every `sent` (`seq`, `message_id`) is in history exactly once, with its sender and id;
//! - no `client_msg_id` ever got two different (`seq`, `message_id`);
//! - each conversation's stored seqs are exactly 1..N, and every stored message was
//!   acknowledged to its sender;
//! - on every connection, live delivery is in `seq` order;
//! - every send is acknowledged within [`ACK_BOUND_AFTER_HEAL`] of the heal;
//! - no acknowledged message is in the `dead_letters` table, and no other message there
//!   conflicted with an acknowledged conversation and `seq` (a late append the log fence
//!   refused is expected; every dead letter and the message service's
//!   `switchboard_ingest_conflicts_total` are printed).
//!
//! The coincident-fault tests (issue 23) inject two faults at once (a paused lease holder and
//! a Redis failover to a lagging replica; a broker restart and a Redis master kill;
//! PostgreSQL and the Redis master killed; a Redis master restarted empty under a conversation
//! of more than 10,000 messages), some with a larger workload ([`WorkloadOptions`]).
//!
//! The time to recover is printed per fault (`nemesis[...]` lines): the longest stretch with
//! no acknowledgement at all, the slowest single send, and how long after the heal the backlog
//! of sends made before it took to clear.
//!
//! `SWITCHBOARD_SOAK=1` adds a longer run with every fault in sequence
//! (`every_fault_in_sequence_soak`), also run by `./scripts/bench.sh`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard_config::names::{
    SB_CLIENT_RATE_BURST, SB_CLIENT_RATE_PER_SEC, SB_LOCK_TTL_MS, SB_PRODUCE_TIMEOUT_MS,
    SB_USER_FRAMES_PER_MIN,
};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::registry::Assignment;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::http::metric;
use switchboard_test_support::netcut::{self, CUT_USER};
use switchboard_test_support::{ManagedProcess, NetCut, Stack, StackOptions};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{api, create_conversation, history, http, token_for};

/// A send with no answer for this long is sent again (same `client_msg_id`).
const RESEND_AFTER: Duration = Duration::from_secs(2);
/// How soon a send answered `unavailable` is retried.
const RETRY_UNAVAILABLE_AFTER: Duration = Duration::from_millis(250);
/// Sends a device keeps unanswered before it stops starting new ones.
const MAX_IN_FLIGHT: usize = 20;
/// Time between a device's new sends.
const PACE: Duration = Duration::from_millis(120);
/// Every send must be acknowledged this long after the fault heals.
const ACK_BOUND_AFTER_HEAL: Duration = Duration::from_secs(45);
/// Sending goes on this long before the fault and after the heal.
const WARM_UP: Duration = Duration::from_secs(3);
const AFTER_HEAL: Duration = Duration::from_secs(4);

type FaultFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One conversation of the workload.
#[derive(Clone, Debug)]
struct Conversation {
    id: String,
    members: Vec<String>,
}

/// One client device: a user's connection, re-established through the registry after a drop.
#[derive(Clone, Debug)]
struct Device {
    name: String,
    user: String,
    token: String,
    /// Where it first connects (devices are spread over the socket servers by index).
    first_url: String,
    /// The conversations it sends to, in turn.
    conversations: Vec<String>,
    /// False for a device that only receives (a large group's quiet members).
    sends: bool,
    /// Time between its new sends.
    pace: Duration,
    /// Sends it keeps unanswered before it stops starting new ones.
    max_in_flight: usize,
    /// Sends it makes before it stops (a filler); `None`: until the run stops generating.
    quota: Option<usize>,
    /// Whether its sends count in the recovery times (a filler's, made before the warm-up,
    /// do not).
    timed: bool,
}

impl Device {
    /// A device that sends to `conversations` at [`PACE`] until the run stops.
    fn sender(
        name: String,
        user: &str,
        token: &str,
        first_url: String,
        conversations: Vec<String>,
    ) -> Device {
        Device {
            name,
            user: user.to_owned(),
            token: token.to_owned(),
            first_url,
            conversations,
            sends: true,
            pace: PACE,
            max_in_flight: MAX_IN_FLIGHT,
            quota: None,
            timed: true,
        }
    }
}

/// What the workload holds besides the six users' conversations.
#[derive(Clone, Copy, Debug, Default)]
struct WorkloadOptions {
    /// A group of [`CROWD_MEMBERS`] + 1 members (ana and `m00`...) with [`CROWD_DEVICES`]
    /// devices of their own over the socket servers, [`CROWD_SENDERS`] of which send.
    crowd: bool,
    /// A direct conversation between `zed` and ben filled with this many messages before the
    /// warm-up (by [`FILLERS`] devices of zed pipelining sends), then sent to by ben and zed
    /// at the ordinary pace during the run.
    filled: Option<usize>,
}

/// The crowd group's members besides ana.
const CROWD_MEMBERS: usize = 50;
/// The crowd members with a device (one each), spread over the socket servers.
const CROWD_DEVICES: usize = 16;
/// The crowd devices that send (to the crowd group only); the rest only receive, so the
/// fan-out stays within what 2 shared cores carry.
const CROWD_SENDERS: usize = 4;
/// The filler's devices, and how many sends each keeps in flight.
const FILLERS: usize = 4;
const FILLER_IN_FLIGHT: usize = 100;

/// (conversation, sender, client_msg_id).
type AckKey = (String, String, String);

/// What every device saw, shared.
#[derive(Default, Debug)]
struct Ledger {
    /// (conversation, sender, client_msg_id) → the acknowledged (seq, message_id).
    acks: HashMap<AckKey, (u64, String)>,
    /// (first sent, acknowledged) of every distinct send.
    ack_times: Vec<(Instant, Instant)>,
    sends: usize,
    resends: usize,
    unavailable: usize,
    reconnects: usize,
    anomalies: Vec<String>,
}

/// A send waiting for its answer.
#[derive(Clone, Debug)]
struct Outstanding {
    conversation_id: String,
    body: String,
    first_sent: Instant,
    /// When to send it again if still unanswered.
    resend_at: Instant,
}

struct Workload {
    conversations: Vec<Conversation>,
    devices: Vec<Device>,
    /// Devices that fill a conversation before the run ([`WorkloadOptions::filled`]).
    fillers: Vec<Device>,
    tokens: HashMap<String, String>,
    nginx_url: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl Workload {
    /// Six users: four direct conversations and one group of four; two users with a second
    /// device; eight devices spread over the socket servers. `options` adds a large group and
    /// a conversation filled before the run.
    async fn prepare(stack: &Stack, options: WorkloadOptions) -> Workload {
        let mut users: Vec<String> = ["ana", "ben", "cai", "dee", "eli", "fay"]
            .iter()
            .map(|u| (*u).to_owned())
            .collect();
        let crowd: Vec<String> = if options.crowd {
            (0..CROWD_MEMBERS).map(|i| format!("m{i:02}")).collect()
        } else {
            Vec::new()
        };
        users.extend(crowd.iter().cloned());
        if options.filled.is_some() {
            users.push("zed".into());
        }
        let tokens: HashMap<String, String> = users
            .iter()
            .map(|u| (u.clone(), token_for(stack, u)))
            .collect();
        let http = http();
        let mut conversations = Vec::new();
        for (a, b) in [
            ("ana", "ben"),
            ("cai", "dee"),
            ("eli", "fay"),
            ("ben", "cai"),
        ] {
            let id = create_conversation(
                &http,
                stack,
                &tokens[a],
                serde_json::json!({"kind": "direct", "members": [b]}),
            )
            .await;
            conversations.push(Conversation {
                id,
                members: vec![a.into(), b.into()],
            });
        }
        let group = ["ana", "cai", "eli", "fay"];
        let id = create_conversation(
            &http,
            stack,
            &tokens["ana"],
            serde_json::json!({"kind": "group", "name": "nemesis", "members": ["cai", "eli", "fay"]}),
        )
        .await;
        conversations.push(Conversation {
            id,
            members: group.iter().map(|m| (*m).to_owned()).collect(),
        });
        let mut crowd_id = None;
        if options.crowd {
            let id = create_conversation(
                &http,
                stack,
                &tokens["ana"],
                serde_json::json!({"kind": "group", "name": "crowd", "members": crowd}),
            )
            .await;
            let mut members = vec!["ana".to_owned()];
            members.extend(crowd.iter().cloned());
            conversations.push(Conversation {
                id: id.clone(),
                members,
            });
            crowd_id = Some(id);
        }
        let mut filled_id = None;
        if options.filled.is_some() {
            let id = create_conversation(
                &http,
                stack,
                &tokens["zed"],
                serde_json::json!({"kind": "direct", "members": ["ben"]}),
            )
            .await;
            conversations.push(Conversation {
                id: id.clone(),
                members: vec!["zed".into(), "ben".into()],
            });
            filled_id = Some(id);
        }

        let server_url = |i: usize| stack.socket_servers[i % stack.socket_servers.len()].ws_url();
        let mut device_users: Vec<&str> =
            vec!["ana", "ben", "cai", "dee", "eli", "fay", "ana", "dee"];
        if options.filled.is_some() {
            device_users.push("zed");
        }
        let mut devices: Vec<Device> = device_users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                Device::sender(
                    format!("{user}#{i}"),
                    user,
                    &tokens[*user],
                    server_url(i),
                    conversations
                        .iter()
                        .filter(|c| c.members.iter().any(|m| m == user))
                        .map(|c| c.id.clone())
                        .collect(),
                )
            })
            .collect();
        if let Some(crowd_id) = &crowd_id {
            for (i, user) in crowd.iter().take(CROWD_DEVICES).enumerate() {
                let mut device = Device::sender(
                    format!("{user}#{}", devices.len()),
                    user,
                    &tokens[user],
                    server_url(devices.len()),
                    vec![crowd_id.clone()],
                );
                device.sends = i < CROWD_SENDERS;
                devices.push(device);
            }
        }
        let fillers = filled_id
            .iter()
            .zip(options.filled)
            .flat_map(|(id, count)| {
                (0..FILLERS).map(move |i| (id.clone(), i, count.div_ceil(FILLERS)))
            })
            .map(|(id, i, quota)| Device {
                name: format!("zed-filler#{i}"),
                user: "zed".into(),
                token: tokens["zed"].clone(),
                first_url: server_url(i),
                conversations: vec![id],
                sends: true,
                // As fast as the answers come back, many in flight.
                pace: Duration::from_millis(1),
                max_in_flight: FILLER_IN_FLIGHT,
                quota: Some(quota),
                timed: false,
            })
            .collect();
        Workload {
            conversations,
            devices,
            fillers,
            tokens,
            nginx_url: stack.nginx_url(),
            ledger: Arc::new(Mutex::new(Ledger::default())),
        }
    }

    /// Runs the filler devices until each has had its quota acknowledged (bounded by 3
    /// minutes), before the workload starts.
    async fn fill(&self) {
        if self.fillers.is_empty() {
            return;
        }
        let started = Instant::now();
        let (_generating_tx, generating) = watch::channel(true);
        let deadline = Arc::new(Mutex::new(started + Duration::from_secs(180)));
        let fillers: Vec<_> = self
            .fillers
            .iter()
            .cloned()
            .map(|device| {
                tokio::spawn(run_device(
                    device,
                    self.nginx_url.clone(),
                    self.ledger.clone(),
                    generating.clone(),
                    deadline.clone(),
                ))
            })
            .collect();
        for filler in fillers {
            filler.await.unwrap();
        }
        let ledger = self.ledger.lock().unwrap();
        eprintln!(
            "nemesis: filled with {} acknowledged sends in {:.1?} ({} resends, {} unavailable)",
            ledger.acks.len(),
            started.elapsed(),
            ledger.resends,
            ledger.unavailable
        );
    }

    /// Starts every device; they send until `generating` turns false, then until every send
    /// is answered or `deadline`.
    fn start(
        &self,
        generating: watch::Receiver<bool>,
        deadline: Arc<Mutex<Instant>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.devices
            .iter()
            .cloned()
            .map(|device| {
                tokio::spawn(run_device(
                    device,
                    self.nginx_url.clone(),
                    self.ledger.clone(),
                    generating.clone(),
                    deadline.clone(),
                ))
            })
            .collect()
    }

    /// Reads every conversation back and returns each broken promise, one line each.
    async fn check(&self, stack: &Stack) -> Vec<String> {
        let (mut anomalies, acks) = {
            let ledger = self.ledger.lock().unwrap();
            (ledger.anomalies.clone(), ledger.acks.clone())
        };
        let http = http();
        for conversation in &self.conversations {
            let token = &self.tokens[&conversation.members[0]];
            let acked: Vec<(&AckKey, &(u64, String))> = acks
                .iter()
                .filter(|((c, _, _), _)| *c == conversation.id)
                .collect();
            let highest = acked.iter().map(|(_, (s, _))| *s).max().unwrap_or(0);
            // The store trails the log: wait (bounded) until it holds the highest ack.
            let deadline = Instant::now() + Duration::from_secs(30);
            let stored = loop {
                let stored = history(&http, stack, token, &conversation.id, 0).await;
                let top = stored
                    .last()
                    .and_then(|m| m["seq"].as_u64())
                    .unwrap_or_default();
                if top >= highest || Instant::now() > deadline {
                    break stored;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let seqs: Vec<u64> = stored.iter().filter_map(|m| m["seq"].as_u64()).collect();
            if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
                anomalies.push(format!(
                    "{}: stored seqs are not 1..{}: {}",
                    conversation.id,
                    seqs.len(),
                    describe_gaps(&seqs)
                ));
            }
            let by_seq: HashMap<u64, &serde_json::Value> = stored
                .iter()
                .filter_map(|m| Some((m["seq"].as_u64()?, m)))
                .collect();
            let mut acked_ids: HashMap<(String, String), u64> = HashMap::new();
            for ((_, sender, cmid), (seq, message_id)) in &acked {
                acked_ids.insert((sender.clone(), cmid.clone()), *seq);
                match by_seq.get(seq) {
                    None => anomalies.push(format!(
                        "{}: {sender}'s {cmid} was acknowledged as seq {seq} ({message_id}) but seq {seq} is not stored",
                        conversation.id
                    )),
                    Some(m) => {
                        let same = m["message_id"] == **message_id
                            && m["client_msg_id"] == **cmid
                            && m["sender_id"] == **sender;
                        if !same {
                            anomalies.push(format!(
                                "{}: {sender}'s {cmid} was acknowledged as seq {seq} ({message_id}) but seq {seq} holds {} from {} ({})",
                                conversation.id, m["client_msg_id"], m["sender_id"], m["message_id"]
                            ));
                        }
                    }
                }
            }
            for m in &stored {
                let key = (
                    m["sender_id"].as_str().unwrap_or_default().to_owned(),
                    m["client_msg_id"].as_str().unwrap_or_default().to_owned(),
                );
                if !acked_ids.contains_key(&key) {
                    anomalies.push(format!(
                        "{}: stored seq {} ({} from {}) was never acknowledged to its sender",
                        conversation.id, m["seq"], key.1, key.0
                    ));
                }
            }
        }
        anomalies.extend(check_dead_letters(stack, &acks).await);
        anomalies
    }

    fn report(&self, name: &str, fault_at: Instant, healed_at: Instant) {
        let ledger = self.ledger.lock().unwrap();
        let mut acked: Vec<Instant> = ledger.ack_times.iter().map(|(_, a)| *a).collect();
        acked.sort();
        // Sends never acknowledged: the silence lasts until the run gave up on them.
        let unanswered = ledger.sends.saturating_sub(ledger.acks.len());
        if unanswered > 0 {
            acked.push(Instant::now());
        }
        let longest_silence = acked
            .windows(2)
            .filter(|w| w[1] >= fault_at)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let slowest_send = ledger
            .ack_times
            .iter()
            .map(|(s, a)| *a - *s)
            .max()
            .unwrap_or_default();
        let backlog_cleared = ledger
            .ack_times
            .iter()
            .filter(|(s, _)| *s < healed_at)
            .map(|(_, a)| a.saturating_duration_since(healed_at))
            .max()
            .unwrap_or_default();
        let backlog = if unanswered > 0 {
            format!("backlog never cleared ({unanswered} sends never acknowledged)")
        } else {
            format!("backlog cleared {backlog_cleared:.1?} after the heal")
        };
        eprintln!(
            "nemesis[{name}]: fault lasted {:.1?}; longest time with no ack {:.1?}; slowest send {:.1?}; \
             {backlog}; {} sends, {} acknowledged, {} resends, {} unavailable, {} reconnects, {} anomalies",
            healed_at - fault_at,
            longest_silence,
            slowest_send,
            ledger.sends,
            ledger.acks.len(),
            ledger.resends,
            ledger.unavailable,
            ledger.reconnects,
            ledger.anomalies.len(),
        );
    }
}

/// The last fence's alarms: prints every record ingest put in `dead_letters` (a conflict,
/// two messages given one seq; a late append the log fence refused; a record the database
/// refused) and the message service's conflict counter, and returns an anomaly for each dead
/// letter that is an acknowledged message (its `message_id`), or that conflicted with an
/// acknowledged message's conversation and seq. A record the fence refused (`fenced:`) under
/// an acknowledged seq is not one: it was never acknowledged, and refusing it is the fence's
/// job (docs/architecture.md, "The message path").
async fn check_dead_letters(stack: &Stack, acks: &HashMap<AckKey, (u64, String)>) -> Vec<String> {
    let mut anomalies = Vec::new();
    let Some(postgres) = stack.postgres.as_ref() else {
        return anomalies;
    };
    let by_message_id: HashMap<&str, (&AckKey, u64)> = acks
        .iter()
        .map(|(key, (seq, id))| (id.as_str(), (key, *seq)))
        .collect();
    let by_seq: HashMap<(&str, u64), (&AckKey, &str)> = acks
        .iter()
        .map(|(key, (seq, id))| ((key.0.as_str(), *seq), (key, id.as_str())))
        .collect();
    let json = postgres
        .query(
            "SELECT coalesce(json_agg(json_build_object('topic', topic, 'partition', partition, \
             'offset', \"offset\", 'item', item, 'record', record, 'error', error) ORDER BY id), \
             '[]') FROM dead_letters",
        )
        .await
        .expect("reading dead_letters");
    let letters: Vec<serde_json::Value> =
        serde_json::from_str(&json).expect("dead_letters as JSON");
    for letter in &letters {
        let at = format!(
            "{}/{}@{}#{}",
            letter["topic"].as_str().unwrap_or_default(),
            letter["partition"],
            letter["offset"],
            letter["item"]
        );
        let error = letter["error"].as_str().unwrap_or_default();
        let raw = letter["record"].as_str().unwrap_or_default();
        eprintln!("nemesis: dead letter at {at}: {error}; record {raw}");
        let Ok(record) = serde_json::from_str::<serde_json::Value>(raw) else {
            continue;
        };
        let message_id = record["message_id"].as_str().unwrap_or_default();
        let conversation = record["conversation_id"].as_str().unwrap_or_default();
        if let Some(((_, sender, cmid), seq)) = by_message_id.get(message_id) {
            anomalies.push(format!(
                "{conversation}: {sender}'s {cmid}, acknowledged as seq {seq} ({message_id}), is in dead_letters at {at}: {error}"
            ));
        } else if let Some(((_, sender, cmid), acked_id)) = record["seq"]
            .as_u64()
            .and_then(|seq| by_seq.get(&(conversation, seq)))
        {
            if error.starts_with("fenced:") {
                // The log fence at work: a deposed holder's late append, never acknowledged,
                // under a number the next epoch handed out again; the store refused it.
                eprintln!(
                    "nemesis: the fence refused {message_id} under {sender}'s acknowledged seq {} in {conversation} (not an anomaly)",
                    record["seq"]
                );
                continue;
            }
            anomalies.push(format!(
                "{conversation}: seq {} was given to two messages: {sender}'s {cmid} ({acked_id}) acknowledged, and {message_id} from {} ({}) in dead_letters at {at}: {error}",
                record["seq"], record["sender_id"], record["client_msg_id"]
            ));
        }
    }
    if let Some(ms) = stack.message_service.as_ref() {
        let http = http();
        let conflicts = metric(&http, &ms.url(), "switchboard_ingest_conflicts_total").await;
        let dead = metric(&http, &ms.url(), "switchboard_ingest_dead_letters_total").await;
        eprintln!(
            "nemesis: {} dead letters in the table; the message service counted {conflicts} conflicts \
             and {dead} dead letters since it last started",
            letters.len()
        );
    }
    // How many counters a failover had rolled back (each raised to the settled log): evidence
    // that a Redis fault really lost numbers. A killed manager's count is gone with it.
    let mut raised = 0.0;
    for manager in &stack.managers {
        if manager.process.is_running() {
            raised += metric(
                &http(),
                &manager.url(),
                "switchboard_manager_counters_raised_total",
            )
            .await;
        }
    }
    eprintln!("nemesis: the running managers raised {raised} counters to the settled log");
    anomalies
}

fn describe_gaps(seqs: &[u64]) -> String {
    let mut problems = Vec::new();
    let mut expected = 1;
    for &s in seqs {
        if s != expected {
            problems.push(format!("expected {expected}, found {s}"));
        }
        expected = s + 1;
    }
    problems.truncate(10);
    problems.join("; ")
}

/// Asks the registry (through nginx) for a socket server, retrying for up to 20 s.
async fn assign_url(http: &reqwest::Client, nginx_url: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(resp) = http
            .get(format!("{nginx_url}/api/v1/socket-server"))
            .send()
            .await
        {
            if resp.status() == 200 {
                if let Ok(a) = resp.json::<Assignment>().await {
                    return Some(a.url);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn run_device(
    device: Device,
    nginx_url: String,
    ledger: Arc<Mutex<Ledger>>,
    generating: watch::Receiver<bool>,
    deadline: Arc<Mutex<Instant>>,
) {
    let http = http();
    let mut outstanding: BTreeMap<String, Outstanding> = BTreeMap::new();
    let mut url = device.first_url.clone();
    let mut sent_count = 0usize;
    let mut connections = 0usize;
    let past_deadline = || Instant::now() > *deadline.lock().unwrap();
    let quota_left = |sent: usize| device.quota.is_none_or(|q| sent < q);
    // Done generating: the run stopped, or a filler made its quota.
    let done = |sent: usize, outstanding: &BTreeMap<String, Outstanding>| {
        (!*generating.borrow() || !quota_left(sent)) && outstanding.is_empty()
    };
    loop {
        if past_deadline() || done(sent_count, &outstanding) {
            break;
        }
        let request = format!("{url}?token={}", device.token);
        let ws = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(request),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                url = assign_url(&http, &nginx_url)
                    .await
                    .unwrap_or(device.first_url.clone());
                continue;
            }
        };
        connections += 1;
        if connections > 1 {
            ledger.lock().unwrap().reconnects += 1;
        }
        let (mut sink, mut stream) = ws.split();
        // Per connection: the last seq delivered live in each conversation.
        let mut delivered: HashMap<String, u64> = HashMap::new();
        // A reconnect resends everything unanswered.
        for o in outstanding.values_mut() {
            o.resend_at = Instant::now();
        }
        let mut pace = tokio::time::interval(device.pace);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        let mut turn = 0usize;
        'connection: loop {
            tokio::select! {
                frame = stream.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break 'connection,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                        ledger.lock().unwrap().anomalies.push(format!("{}: unreadable frame {text}", device.name));
                        continue;
                    };
                    on_frame(&device, frame, &mut outstanding, &mut delivered, &ledger);
                }
                _ = pace.tick(), if device.sends
                    && *generating.borrow()
                    && quota_left(sent_count)
                    && outstanding.len() < device.max_in_flight =>
                {
                    let conversation_id = device.conversations[turn % device.conversations.len()].clone();
                    turn += 1;
                    sent_count += 1;
                    let cmid = format!("{}-{sent_count}", device.name);
                    let now = Instant::now();
                    outstanding.insert(cmid.clone(), Outstanding {
                        conversation_id: conversation_id.clone(),
                        body: format!("{} says {sent_count}", device.user),
                        first_sent: now,
                        resend_at: now,
                    });
                    ledger.lock().unwrap().sends += 1;
                }
                _ = check.tick() => {
                    if past_deadline() || done(sent_count, &outstanding) {
                        let _ = sink.send(Message::Close(None)).await;
                        break 'connection;
                    }
                }
            }
            // Send whatever is due: new sends (resend_at = now) and resends.
            let now = Instant::now();
            let due: Vec<String> = outstanding
                .iter()
                .filter(|(_, o)| o.resend_at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for cmid in due {
                let o = outstanding.get_mut(&cmid).expect("due send is outstanding");
                let first = o.resend_at == o.first_sent;
                o.resend_at = now + RESEND_AFTER;
                let frame = serde_json::json!({
                    "type": "send",
                    "conversation_id": o.conversation_id,
                    "client_msg_id": cmid,
                    "body": o.body,
                });
                if !first {
                    ledger.lock().unwrap().resends += 1;
                }
                if sink.send(Message::Text(frame.to_string())).await.is_err() {
                    break 'connection;
                }
            }
        }
        // The connection is gone (or the run is over): find a live server through the registry.
        if past_deadline() || done(sent_count, &outstanding) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        url = assign_url(&http, &nginx_url)
            .await
            .unwrap_or(device.first_url.clone());
    }
    let mut ledger = ledger.lock().unwrap();
    for (cmid, o) in outstanding {
        ledger.anomalies.push(format!(
            "{}: {cmid} to {} was never acknowledged (first sent {:.1?} before the end)",
            device.name,
            o.conversation_id,
            o.first_sent.elapsed()
        ));
    }
}

fn on_frame(
    device: &Device,
    frame: ServerFrame,
    outstanding: &mut BTreeMap<String, Outstanding>,
    delivered: &mut HashMap<String, u64>,
    ledger: &Mutex<Ledger>,
) {
    match frame {
        ServerFrame::Sent {
            client_msg_id,
            conversation_id,
            message_id,
            seq,
            ..
        } => {
            let now = Instant::now();
            let mut ledger = ledger.lock().unwrap();
            let key = (
                String::from(conversation_id),
                device.user.clone(),
                client_msg_id.clone(),
            );
            match ledger.acks.get(&key) {
                Some(earlier) if *earlier != (seq, message_id.to_string()) => {
                    let line = format!(
                        "{}: {client_msg_id} was acknowledged twice differently: {earlier:?} then {:?}",
                        device.name,
                        (seq, &message_id)
                    );
                    ledger.anomalies.push(line);
                }
                Some(_) => {}
                None => {
                    ledger.acks.insert(key, (seq, message_id.into()));
                }
            }
            if let Some(o) = outstanding.remove(&client_msg_id) {
                if device.timed {
                    ledger.ack_times.push((o.first_sent, now));
                }
            }
        }
        ServerFrame::Error {
            code,
            client_msg_id: Some(cmid),
            message,
        } => match code {
            ErrorCode::Unavailable | ErrorCode::RateLimited => {
                ledger.lock().unwrap().unavailable += 1;
                if let Some(o) = outstanding.get_mut(&cmid) {
                    o.resend_at = Instant::now() + RETRY_UNAVAILABLE_AFTER;
                }
            }
            other => {
                outstanding.remove(&cmid);
                ledger.lock().unwrap().anomalies.push(format!(
                    "{}: {cmid} refused with {other:?}: {message}",
                    device.name
                ));
            }
        },
        ServerFrame::Message {
            conversation_id,
            seq,
            ..
        } => {
            let last = delivered.entry(conversation_id.to_string()).or_insert(0);
            if seq <= *last {
                ledger.lock().unwrap().anomalies.push(format!(
                    "{}: live delivery out of order in {conversation_id}: seq {seq} after {last}",
                    device.name
                ));
            }
            *last = (*last).max(seq);
        }
        _ => {}
    }
}

/// Runs the workload on `stack`, calls `fault` after the warm-up (it returns once the fault
/// is healed), keeps sending a little, then checks the history and asserts no anomaly.
async fn run_nemesis<F>(name: &str, stack: &mut Stack, fault: F)
where
    F: for<'a> FnOnce(&'a mut Stack) -> FaultFuture<'a>,
{
    run_nemesis_with(name, stack, WorkloadOptions::default(), fault).await;
}

/// [`run_nemesis`] with a larger workload (`options`); a filled conversation is filled first.
async fn run_nemesis_with<F>(name: &str, stack: &mut Stack, options: WorkloadOptions, fault: F)
where
    F: for<'a> FnOnce(&'a mut Stack) -> FaultFuture<'a>,
{
    let workload = Workload::prepare(stack, options).await;
    workload.fill().await;
    let (generating_tx, generating) = watch::channel(true);
    // Until the heal, no device gives up.
    let deadline = Arc::new(Mutex::new(Instant::now() + Duration::from_secs(600)));
    let devices = workload.start(generating, deadline.clone());
    tokio::time::sleep(WARM_UP).await;
    let fault_at = Instant::now();
    fault(stack).await;
    let healed_at = Instant::now();
    *deadline.lock().unwrap() = healed_at + ACK_BOUND_AFTER_HEAL;
    tokio::time::sleep(AFTER_HEAL).await;
    // The REST API answers its first request after the heal (a message service that kept its
    // connection to a dead Redis master until first use answered 503 here, even a minute
    // later; Sentinel is now watched, so seconds after the heal is enough).
    // Presence reads Redis.
    let (status, body) = api(
        &http(),
        stack,
        &workload.tokens["ana"],
        reqwest::Method::GET,
        "/api/v1/presence?user_id=ben",
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "nemesis[{name}]: the first REST request after the heal answered {status}: {body}"
    );
    generating_tx.send(false).unwrap();
    for device in devices {
        device.await.unwrap();
    }
    workload.report(name, fault_at, healed_at);
    let anomalies = workload.check(stack).await;
    assert!(
        anomalies.is_empty(),
        "nemesis[{name}]: {} anomalies (logs in {}):\n{}",
        anomalies.len(),
        stack.log_dir().display(),
        anomalies.join("\n")
    );
}

/// How many messages the conversation of the empty-restart test holds before the fault.
const FILLED_WITH: usize = 10_400;

/// [`nemesis_options`] with the per-connection frame rate raised and the per-user quotas off,
/// so the fillers are not throttled: they stand in for a history that took months, not
/// seconds, to accumulate (each is one connection of the same user pipelining sends).
fn filler_options() -> StackOptions {
    let mut options = nemesis_options();
    options.extra_env.extend([
        (SB_CLIENT_RATE_PER_SEC.into(), "5000".into()),
        (SB_CLIENT_RATE_BURST.into(), "5000".into()),
        (SB_USER_FRAMES_PER_MIN.into(), "0".into()),
    ]);
    options
}

/// Tests shorten the lease and the produce timeout so a pause outlives them quickly.
fn nemesis_options() -> StackOptions {
    StackOptions {
        extra_env: vec![
            (SB_LOCK_TTL_MS.into(), "3000".into()),
            (SB_PRODUCE_TIMEOUT_MS.into(), "2000".into()),
        ],
        ..StackOptions::default()
    }
}

/// The manager holding some conversation's sequence lease right now, found from the lease
/// token (`"{manager bind address}/{ulid}"`), waiting up to 10 s for one to be held.
async fn lease_holder(stack: &Stack) -> usize {
    lease_holder_other_than(stack, None, Duration::from_secs(10))
        .await
        .expect("no sequence lease was ever seen held")
}

/// The first manager other than `not` seen holding a sequence lease within `within`.
async fn lease_holder_other_than(
    stack: &Stack,
    not: Option<usize>,
    within: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + within;
    let mut redis = stack.redis.try_master_connection().await.ok()?;
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}lock:conv:*", stack.redis_prefix()))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        for key in keys {
            let token: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            if let Some(token) = token {
                if let Some(i) = stack.managers.iter().enumerate().position(|(i, m)| {
                    Some(i) != not && token.starts_with(&format!("127.0.0.1:{}/", m.port))
                }) {
                    eprintln!("nemesis: {} holds {key}", stack.managers[i].name);
                    return Some(i);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pause(process: &ManagedProcess) {
    process.signal(libc::SIGSTOP);
}

fn resume(process: &ManagedProcess) {
    process.signal(libc::SIGCONT);
}

// ---------------------------------------------------------------------------------------
// The faults, each returning once it has healed.

/// kill -9 of the first socket server: devices 0, 3 and 6 are there, all of them senders.
async fn kill_senders_socket_server(stack: &mut Stack) {
    stack.socket_servers[0].process.kill9();
}

async fn kill_lease_holder(stack: &mut Stack) {
    let holder = lease_holder(stack).await;
    stack.managers[holder].process.kill9();
}

/// SIGSTOP of the lease holder for 5 s, past its 3 s lease.
async fn pause_lease_holder_past_its_lease(stack: &mut Stack) {
    let holder = lease_holder(stack).await;
    pause(&stack.managers[holder].process);
    tokio::time::sleep(Duration::from_secs(5)).await;
    resume(&stack.managers[holder].process);
}

/// SIGSTOP of the broker for 7 s, past the 2 s produce timeout: appends in doubt.
async fn pause_broker(stack: &mut Stack) {
    let broker = &stack.broker.as_ref().unwrap().process;
    broker.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(7)).await;
    broker.signal(libc::SIGCONT);
}

async fn restart_broker(stack: &mut Stack) {
    let broker = stack.broker.as_mut().unwrap();
    broker.restart(Duration::from_secs(2)).await.unwrap();
}

/// How long a failover may take: Sentinel's `down-after-milliseconds` (2 s) and election,
/// or, when its first choice was not eligible yet, a second attempt after twice the
/// failover timeout (20 s).
const FAILOVER_WITHIN: Duration = Duration::from_secs(45);
/// How long a restarted Redis server may take to be an online replica again.
const REJOIN_WITHIN: Duration = Duration::from_secs(30);

/// The Redis master now and its two replicas.
async fn redis_roles(stack: &Stack) -> (u16, u16, u16) {
    let master = stack.redis.current_master_port().await.unwrap();
    let replicas: Vec<u16> = stack
        .redis
        .server_ports()
        .into_iter()
        .filter(|p| *p != master)
        .collect();
    (master, replicas[0], replicas[1])
}

/// `CONFIG SET replica-priority` on the Redis server on `port`.
async fn set_replica_priority(port: u16, priority: u32) {
    let mut conn = switchboard_test_support::redis_cluster::connect(port)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-priority")
        .arg(priority)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Starts the killed Redis servers `killed` again as replicas of `master` and waits until
/// `master` has both replicas online (the layout the next fault expects).
async fn rejoin_redis(stack: &mut Stack, killed: &[u16], master: u16) {
    for port in killed {
        stack.redis.restart_as_replica(*port, master).await.unwrap();
    }
    stack
        .redis
        .wait_replicas_online(master, 2, REJOIN_WITHIN)
        .await
        .unwrap();
}

/// Replica B paused (it falls behind), replica A made unpromotable (`replica-priority 0`,
/// once every Sentinel has seen it) while it keeps acknowledging (`WAIT 1`), kill -9 of the
/// master, B resumed: Sentinel promotes B, which never saw the latest numbers. The killed
/// master is started again as B's replica (Sentinel points A at B); A's priority is restored.
async fn kill_redis_master_while_one_replica_lags(stack: &mut Stack) {
    let (master, a, b) = redis_roles(stack).await;
    pause(stack.redis.server_process(b).unwrap());
    let paused_at = Instant::now();
    set_replica_priority(a, 0).await;
    stack
        .redis
        .wait_sentinels_see_priority(a, 0, Duration::from_secs(20))
        .await
        .unwrap();
    // At least 3 s of numbers B never saw.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused_at.elapsed())).await;
    eprintln!(
        "nemesis: :{b} paused {:.1?}, :{a} unpromotable; kill -9 of the master :{master}",
        paused_at.elapsed()
    );
    stack.redis.server_process(master).unwrap().kill9();
    resume(stack.redis.server_process(b).unwrap());
    let promoted = stack
        .redis
        .wait_for_promotion(master, FAILOVER_WITHIN)
        .await
        .unwrap();
    assert_eq!(
        promoted, b,
        "Sentinel promoted :{promoted}, not the lagging :{b}"
    );
    rejoin_redis(stack, &[master], b).await;
    set_replica_priority(a, 100).await;
}

async fn sentinel_failover(stack: &mut Stack) {
    let master = stack.redis.current_master_port().await.unwrap();
    let sentinel = stack.redis.sentinel_ports()[0];
    let mut conn = switchboard_test_support::redis_cluster::connect(sentinel)
        .await
        .unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(stack.redis.master_name())
        .query_async(&mut conn)
        .await
        .unwrap();
    stack
        .redis
        .wait_for_failover(master, Duration::from_secs(30))
        .await
        .unwrap();
}

async fn kill_message_service(stack: &mut Stack) {
    stack.message_service.as_ref().unwrap().process.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.restart_message_service().await.unwrap();
}

/// PostgreSQL down (killed, not paused: inserts must be refused), then SIGTERM of the message
/// service; both start again.
async fn stop_message_service_while_postgres_is_down(stack: &mut Stack) {
    stack.postgres.as_ref().unwrap().process.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ms = &stack.message_service.as_ref().unwrap().process;
    ms.sigterm();
    let _ = ms.wait_exit(Duration::from_secs(15)).await;
    stack
        .postgres
        .as_mut()
        .unwrap()
        .restart(Duration::ZERO)
        .await
        .unwrap();
    stack.restart_message_service().await.unwrap();
}

async fn restart_postgres(stack: &mut Stack) {
    stack
        .postgres
        .as_mut()
        .unwrap()
        .restart(Duration::from_secs(3))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Coincident faults (issue 23): two at once, each healed.

/// (a) The lease-holding manager H paused (SIGSTOP) with numbers taken and appends in flight;
/// replica B paused beforehand so it never saw the latest numbers; kill -9 of the master and
/// of the replica A that acknowledged them; B resumed and promoted; the killed servers
/// started again as B's replicas (B takes writes only then); the other manager takes
/// conversations on B; then H resumes, its in-flight appends landing late.
async fn pause_lease_holder_while_redis_fails_over_to_a_lagging_replica(stack: &mut Stack) {
    let (master, a, b) = redis_roles(stack).await;
    pause(stack.redis.server_process(b).unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let holder = lease_holder(stack).await;
    pause(&stack.managers[holder].process);
    let holder_paused_at = Instant::now();
    stack.redis.server_process(master).unwrap().kill9();
    stack.redis.server_process(a).unwrap().kill9();
    resume(stack.redis.server_process(b).unwrap());
    eprintln!(
        "nemesis: {} paused; master :{master} and replica :{a} killed; lagging :{b} resumed",
        stack.managers[holder].name
    );
    let promoted = stack
        .redis
        .wait_for_promotion(master, FAILOVER_WITHIN)
        .await
        .unwrap();
    assert_eq!(
        promoted, b,
        "Sentinel promoted :{promoted}, not the lagging :{b}"
    );
    eprintln!(
        "nemesis: :{b} promoted {:.1?} after the kill",
        holder_paused_at.elapsed()
    );
    rejoin_redis(stack, &[master, a], b).await;
    match lease_holder_other_than(stack, Some(holder), Duration::from_secs(20)).await {
        Some(other) => eprintln!(
            "nemesis: {} took a lease on :{b} {:.1?} after the pause",
            stack.managers[other].name,
            holder_paused_at.elapsed()
        ),
        None => eprintln!("nemesis: no other manager took a lease on :{b} within 20 s"),
    }
    // Past its lease in any case; then its late appends and finishes go out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    resume(&stack.managers[holder].process);
    eprintln!(
        "nemesis: {} resumed after {:.1?}",
        stack.managers[holder].name,
        holder_paused_at.elapsed()
    );
}

/// (b) kill -9 of the Redis master and a broker restart (kill -9, 2 s down) together; the
/// killed master rejoins as a replica of the promoted one.
async fn restart_broker_while_redis_master_killed(stack: &mut Stack) {
    let master = stack.redis.kill_master().await.unwrap();
    restart_broker(stack).await;
    let promoted = stack
        .redis
        .wait_for_failover(master, FAILOVER_WITHIN)
        .await
        .unwrap();
    rejoin_redis(stack, &[master], promoted).await;
}

/// (c) kill -9 of PostgreSQL and of the Redis master together: the new master's counters
/// must be checked against the settled log, which needs the message service and so
/// PostgreSQL. PostgreSQL stays down 6 s, then both are healed.
async fn kill_postgres_and_redis_master(stack: &mut Stack) {
    stack.postgres.as_ref().unwrap().process.kill9();
    let killed_at = Instant::now();
    let master = stack.redis.kill_master().await.unwrap();
    let promoted = stack
        .redis
        .wait_for_failover(master, FAILOVER_WITHIN)
        .await
        .unwrap();
    eprintln!(
        "nemesis: :{promoted} promoted {:.1?} after the kills",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(killed_at.elapsed())).await;
    stack
        .postgres
        .as_mut()
        .unwrap()
        .restart(Duration::ZERO)
        .await
        .unwrap();
    rejoin_redis(stack, &[master], promoted).await;
}

/// (d) kill -9 of the Redis master and its immediate restart, empty, on the same port: what
/// `restart: unless-stopped` does to a Redis without persistence. It is back before the
/// Sentinels notice (no failover), and its replicas resync to its empty dataset: counters,
/// idempotency records, leases, pending numbers and the directory are all gone.
async fn restart_redis_master_empty(stack: &mut Stack) {
    let master = stack.redis.current_master_port().await.unwrap();
    let before = dbsize(master).await;
    let down = stack.redis.restart_empty(master).await.unwrap();
    let after = dbsize(master).await;
    eprintln!(
        "nemesis: Redis master :{master} killed and back, empty, in {down:.1?} ({before} keys before, {after} after)"
    );
    stack
        .redis
        .wait_replicas_online(master, 2, REJOIN_WITHIN)
        .await
        .unwrap();
    let now = stack.redis.current_master_port().await.unwrap();
    assert_eq!(
        now, master,
        "the Sentinels failed over to :{now}: the restart was not fast enough to test an empty master"
    );
}

/// `DBSIZE` of the Redis server on `port`.
async fn dbsize(port: u16) -> u64 {
    let mut conn = switchboard_test_support::redis_cluster::connect(port)
        .await
        .unwrap();
    redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap()
}

/// One test per fault.
macro_rules! nemesis_test {
    ($test:ident, $name:literal, $fault:ident) => {
        nemesis_test!(
            $test,
            $name,
            $fault,
            nemesis_options(),
            WorkloadOptions::default()
        );
    };
    ($test:ident, $name:literal, $fault:ident, $stack:expr, $workload:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            let mut stack = Stack::start($stack).await.unwrap();
            run_nemesis_with($name, &mut stack, $workload, |stack| {
                Box::pin($fault(stack))
            })
            .await;
        }
    };
}

nemesis_test!(
    nemesis_senders_socket_server_killed,
    "sender's socket server kill -9",
    kill_senders_socket_server
);
nemesis_test!(
    nemesis_lease_holding_manager_killed,
    "lease-holding manager kill -9",
    kill_lease_holder
);
nemesis_test!(
    nemesis_lease_holding_manager_paused_past_its_lease,
    "lease-holding manager SIGSTOP 5 s",
    pause_lease_holder_past_its_lease
);
nemesis_test!(
    nemesis_broker_paused_past_the_produce_timeout,
    "broker SIGSTOP 7 s",
    pause_broker
);
nemesis_test!(
    nemesis_broker_killed_and_restarted,
    "broker kill -9 + restart",
    restart_broker
);
nemesis_test!(
    nemesis_redis_master_killed_while_a_replica_lags,
    "Redis master kill -9, the lagging replica promoted",
    kill_redis_master_while_one_replica_lags
);
nemesis_test!(
    nemesis_sentinel_failover,
    "SENTINEL FAILOVER",
    sentinel_failover
);
nemesis_test!(
    nemesis_message_service_killed,
    "message service kill -9",
    kill_message_service
);
nemesis_test!(
    nemesis_message_service_stopped_while_postgres_is_down,
    "message service SIGTERM while PostgreSQL is down",
    stop_message_service_while_postgres_is_down
);
nemesis_test!(
    nemesis_postgres_killed_and_restarted,
    "PostgreSQL kill -9 + restart",
    restart_postgres
);
nemesis_test!(
    nemesis_lease_holder_paused_while_redis_fails_over_to_a_lagging_replica,
    "lease holder SIGSTOP + Redis master and acking replica kill -9, lagging replica promoted",
    pause_lease_holder_while_redis_fails_over_to_a_lagging_replica,
    nemesis_options(),
    WorkloadOptions {
        crowd: true,
        ..WorkloadOptions::default()
    }
);
nemesis_test!(
    nemesis_broker_restarted_while_redis_master_killed,
    "broker kill -9 + restart and Redis master kill -9",
    restart_broker_while_redis_master_killed,
    nemesis_options(),
    WorkloadOptions {
        crowd: true,
        ..WorkloadOptions::default()
    }
);
nemesis_test!(
    nemesis_postgres_and_redis_master_killed,
    "PostgreSQL kill -9 and Redis master kill -9",
    kill_postgres_and_redis_master
);
nemesis_test!(
    nemesis_redis_master_restarted_empty_under_a_10000_message_conversation,
    "Redis master kill -9 + immediate restart empty",
    restart_redis_master_empty,
    filler_options(),
    WorkloadOptions {
        filled: Some(FILLED_WITH),
        ..WorkloadOptions::default()
    }
);

/// Every fault above, one after another on one stack while the workload runs, with a few
/// seconds of calm between them. Minutes long, so only with `SWITCHBOARD_SOAK=1` (and in
/// `./scripts/bench.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_every_fault_in_sequence_soak() {
    if std::env::var_os("SWITCHBOARD_SOAK").is_none() {
        eprintln!("nemesis soak skipped: set SWITCHBOARD_SOAK=1 to run it");
        return;
    }
    let mut stack = Stack::start(nemesis_options()).await.unwrap();
    run_nemesis("every fault in sequence", &mut stack, |stack| {
        Box::pin(async move {
            let calm = Duration::from_secs(5);
            eprintln!("nemesis soak: manager holding a lease: SIGSTOP 5 s");
            pause_lease_holder_past_its_lease(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: broker: SIGSTOP 7 s");
            pause_broker(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: broker: kill -9 + restart");
            restart_broker(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: Redis master: kill -9, the lagging replica promoted");
            kill_redis_master_while_one_replica_lags(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: PostgreSQL: kill -9 + restart");
            restart_postgres(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: message service: kill -9 + restart");
            kill_message_service(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: manager holding a lease: kill -9");
            kill_lease_holder(stack).await;
            tokio::time::sleep(calm).await;
            eprintln!("nemesis soak: a sender's socket server: kill -9");
            kill_senders_socket_server(stack).await;
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// A network partition (iptables, see `switchboard_test_support::netcut`).

/// How long the partition lasts.
const CUT_FOR: Duration = Duration::from_secs(10);

/// Every port a socket server reaches Redis (servers and Sentinels) and the managers on.
fn redis_and_manager_ports(stack: &Stack) -> Vec<u16> {
    let mut ports = stack.redis.server_ports();
    ports.extend(stack.redis.sentinel_ports());
    ports.extend(stack.managers.iter().map(|m| m.port));
    ports
}

/// One socket server, run as the unprivileged user `sbcut`, loses Redis and the managers
/// for 10 s: every packet between it and them is dropped, both ways, established connections
/// included (its lanes, heartbeats and Redis connections hang). Its clients, the health
/// checkers' probes, nginx and the broker still reach it. Needs root and iptables
/// (`scripts/install-deps.sh`); skipped with a message where they are missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_socket_server_cut_off_from_redis_and_managers() {
    let mut cut = match netcut::ensure_user(CUT_USER).and_then(NetCut::prepare) {
        Ok(cut) => cut,
        Err(e) => {
            eprintln!(
                "nemesis partition skipped: cannot cut a process off the network here: {e:#}"
            );
            return;
        }
    };
    // Two servers as root, a third as `sbcut`: devices 2 and 5 (cai#2, fay#5) start there.
    let mut stack = Stack::start(StackOptions {
        socket_servers: 2,
        ..nemesis_options()
    })
    .await
    .unwrap();
    let victim = stack.start_socket_server_as(cut.user(), &[]).await.unwrap();
    run_nemesis(
        "socket server cut off from Redis and the managers 10 s",
        &mut stack,
        move |stack| {
            Box::pin(async move {
                let ports = redis_and_manager_ports(stack);
                eprintln!(
                    "nemesis: cutting {} off from ports {ports:?}",
                    stack.socket_servers[victim].server_id
                );
                cut.cut(&ports).unwrap();
                tokio::time::sleep(CUT_FOR).await;
                let dropped = cut.heal();
                eprintln!("nemesis: healed; the cut dropped {dropped} packets");
                assert!(
                    dropped > 0,
                    "the cut dropped no packet: no partition happened"
                );
            })
        },
    )
    .await;
}
