//! Message events end to end (issue 28 part 1): edits, deletes for everyone, reactions and
//! replies are numbered in the conversation's sequence like messages and delivered like them.
//!
//! - `events_racing_a_burst_end_the_same_everywhere`: a group's devices edit, delete and react
//!   while other devices send bursts; every connected device (its own acknowledged records
//!   plus what it received, each connection in `seq` order), history's current state and an
//!   offline device that catches up through `after_seq` alone reach the state the
//!   acknowledged records give; a non-author's edit and delete are refused with `not_author`
//!   and never numbered; a deleted message's body (and its edits' texts) is gone from
//!   PostgreSQL, its search entry and every later history read; the edit limit, the reaction
//!   limit, the edit window, a deleted or unknown target are refused with their codes.
//! - `manager_kill_during_edits_and_reactions_loses_nothing`: devices that send, edit, react,
//!   reply and delete (resending on `unavailable` or silence, as the nemesis suite's do) while
//!   the manager holding a conversation's lease is killed with SIGKILL; then the history
//!   checker extended to events: every acknowledged record stored once under its `seq`, seqs
//!   1..N, nothing stored unacknowledged, live delivery in `seq` order, the state every
//!   device reaches equal to history's and to the acknowledged records', no acknowledged
//!   record in `dead_letters`. 0 anomalies.
//! - `message_service_kill_during_reactions_loses_nothing`: the same workload and checks with
//!   the message service killed (SIGKILL) for 3 s and restarted: events are answered
//!   `unavailable` and resent meanwhile, and the restarted ingest reads its rewind window
//!   again, so every event in it is delivered twice and must apply once.
//!
//! The client rule the tests follow (docs/protocol.md, "Message events"): apply records in
//! `seq` order; an event whose message is unknown or deleted changes nothing; a history page
//! (`?events=true`) gives its messages in their current state, then its events, which are
//! applied in order (applying one already reflected changes nothing in the end).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use switchboard_config::names::{SB_EDIT_WINDOW_SECS, SB_MAX_EDITS, SB_MAX_REACTIONS_PER_MESSAGE};
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::frames::{ClientFrame, RecordKind, ServerFrame};
use switchboard_protocol::ErrorCode;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{api, create_conversation, http, token_for, WsClient};

// ---------------------------------------------------------------------------------------
// The client model: records, the state they give, and what to compare.

/// One numbered record of a conversation as a client learns it.
#[derive(Debug, Clone, PartialEq)]
enum Rec {
    Message {
        seq: u64,
        id: String,
        sender: String,
        body: String,
        reply_to: Option<String>,
    },
    Event {
        seq: u64,
        id: String,
        sender: String,
        kind: RecordKind,
        target: String,
        body: Option<String>,
        emoji: Option<String>,
    },
}

impl Rec {
    fn seq(&self) -> u64 {
        match self {
            Rec::Message { seq, .. } | Rec::Event { seq, .. } => *seq,
        }
    }

    fn id(&self) -> &str {
        match self {
            Rec::Message { id, .. } | Rec::Event { id, .. } => id,
        }
    }

    /// A `message` or `event` frame of `conversation_id`.
    fn of_frame(frame: &ServerFrame, conversation_id: &str) -> Option<Rec> {
        match frame {
            ServerFrame::Message {
                conversation_id: c,
                message_id,
                seq,
                sender_id,
                body,
                reply_to,
                ..
            } if c == conversation_id => Some(Rec::Message {
                seq: *seq,
                id: message_id.to_string(),
                sender: sender_id.to_string(),
                body: body.clone(),
                reply_to: reply_to.as_ref().map(ToString::to_string),
            }),
            ServerFrame::Event {
                conversation_id: c,
                event_id,
                seq,
                sender_id,
                kind,
                message_id,
                body,
                emoji,
                ..
            } if c == conversation_id => Some(Rec::Event {
                seq: *seq,
                id: event_id.to_string(),
                sender: sender_id.to_string(),
                kind: *kind,
                target: message_id.to_string(),
                body: body.clone(),
                emoji: emoji.clone(),
            }),
            _ => None,
        }
    }

    /// What `user`'s own frame became once `sent` answered `(seq, id)`.
    fn of_own(frame: &ClientFrame, user: &str, seq: u64, id: &str) -> Rec {
        let event = |kind, target: &String, body, emoji| Rec::Event {
            seq,
            id: id.to_owned(),
            sender: user.to_owned(),
            kind,
            target: target.clone(),
            body,
            emoji,
        };
        match frame {
            ClientFrame::Send { body, reply_to, .. } => Rec::Message {
                seq,
                id: id.to_owned(),
                sender: user.to_owned(),
                body: body.clone(),
                reply_to: reply_to.clone(),
            },
            ClientFrame::Edit {
                message_id, body, ..
            } => event(RecordKind::Edit, message_id, Some(body.clone()), None),
            ClientFrame::Delete { message_id, .. } => {
                event(RecordKind::Delete, message_id, None, None)
            }
            ClientFrame::React {
                message_id, emoji, ..
            } => event(RecordKind::Reaction, message_id, None, emoji.clone()),
            other => panic!("not a numbered frame: {other:?}"),
        }
    }
}

/// A message as a client keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
struct MessageState {
    body: String,
    reply_to: Option<String>,
    edited: bool,
    deleted: bool,
    /// user → emoji.
    reactions: BTreeMap<String, String>,
}

/// What is compared: body, deleted, edited (of a message not deleted), reply, and per emoji
/// who reacted with it.
type View = BTreeMap<
    String,
    (
        String,
        bool,
        bool,
        Option<String>,
        BTreeMap<String, BTreeSet<String>>,
    ),
>;

#[derive(Debug, Clone, Default)]
struct Model {
    messages: BTreeMap<String, MessageState>,
}

impl Model {
    /// The client rule: an event whose message is unknown or deleted changes nothing.
    fn apply(&mut self, rec: &Rec) {
        match rec {
            Rec::Message {
                id, body, reply_to, ..
            } => {
                self.messages.entry(id.clone()).or_insert(MessageState {
                    body: body.clone(),
                    reply_to: reply_to.clone(),
                    ..MessageState::default()
                });
            }
            Rec::Event {
                sender,
                kind,
                target,
                body,
                emoji,
                ..
            } => {
                let Some(m) = self.messages.get_mut(target).filter(|m| !m.deleted) else {
                    return;
                };
                match kind {
                    RecordKind::Edit => {
                        m.body = body.clone().unwrap_or_default();
                        m.edited = true;
                    }
                    RecordKind::Delete => {
                        m.deleted = true;
                        m.body.clear();
                        m.reactions.clear();
                    }
                    RecordKind::Reaction => match emoji {
                        Some(e) => {
                            m.reactions.insert(sender.clone(), e.clone());
                        }
                        None => {
                            m.reactions.remove(sender);
                        }
                    },
                    RecordKind::Message => {}
                }
            }
        }
    }

    /// A history page (`?events=true`): its messages in their current state, then its
    /// events in order.
    fn apply_page(&mut self, page: &Value) {
        for m in page["messages"].as_array().expect("messages") {
            let mut state = MessageState {
                body: m["body"].as_str().unwrap_or_default().to_owned(),
                reply_to: m["reply_to"].as_str().map(str::to_owned),
                edited: m.get("edited_at").is_some_and(|e| !e.is_null()),
                deleted: m["deleted"].as_bool().unwrap_or(false),
                reactions: BTreeMap::new(),
            };
            for r in m["reactions"].as_array().into_iter().flatten() {
                for user in r["users"].as_array().into_iter().flatten() {
                    state.reactions.insert(
                        user.as_str().unwrap_or_default().to_owned(),
                        r["emoji"].as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
            self.messages.insert(
                m["message_id"].as_str().unwrap_or_default().to_owned(),
                state,
            );
        }
        for e in page["events"].as_array().expect("events") {
            self.apply(&event_of_json(e));
        }
    }

    fn view(&self) -> View {
        self.messages
            .iter()
            .map(|(id, m)| {
                let mut reactions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for (user, emoji) in &m.reactions {
                    reactions
                        .entry(emoji.clone())
                        .or_default()
                        .insert(user.clone());
                }
                (
                    id.clone(),
                    (
                        m.body.clone(),
                        m.deleted,
                        m.edited && !m.deleted,
                        m.reply_to.clone(),
                        reactions,
                    ),
                )
            })
            .collect()
    }
}

fn event_of_json(e: &Value) -> Rec {
    Rec::Event {
        seq: e["seq"].as_u64().expect("seq"),
        id: e["event_id"].as_str().unwrap_or_default().to_owned(),
        sender: e["sender_id"].as_str().unwrap_or_default().to_owned(),
        kind: RecordKind::parse(e["kind"].as_str().unwrap_or_default()).expect("a kind"),
        target: e["message_id"].as_str().unwrap_or_default().to_owned(),
        body: e["body"].as_str().map(str::to_owned),
        emoji: e["emoji"].as_str().map(str::to_owned),
    }
}

/// The state the records give, applied in `seq` order.
fn reduce<'a>(records: impl IntoIterator<Item = &'a Rec>) -> Model {
    let mut sorted: Vec<&Rec> = records.into_iter().collect();
    sorted.sort_by_key(|r| r.seq());
    let mut model = Model::default();
    for r in sorted {
        model.apply(r);
    }
    model
}

/// One page of history after `after_seq` with the events.
async fn page(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    after_seq: u64,
    limit: usize,
) -> Value {
    let (status, body) = api(
        http,
        stack,
        token,
        Method::GET,
        &format!(
            "/api/v1/conversations/{conversation_id}/messages?after_seq={after_seq}&limit={limit}&events=true"
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "history with events: {body}");
    body
}

/// The highest seq of a page (messages and events), if it holds any.
fn page_top(page: &Value) -> Option<u64> {
    ["messages", "events"]
        .iter()
        .flat_map(|k| page[*k].as_array().into_iter().flatten())
        .filter_map(|r| r["seq"].as_u64())
        .max()
}

/// Catches `model` up through `after_seq` alone: pages of `limit` from `after_seq` until one
/// comes back empty; the highest seq seen.
async fn catch_up(
    model: &mut Model,
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    mut after_seq: u64,
    limit: usize,
) -> u64 {
    loop {
        let p = page(http, stack, token, conversation_id, after_seq, limit).await;
        let Some(top) = page_top(&p) else {
            return after_seq;
        };
        model.apply_page(&p);
        after_seq = top;
    }
}

/// Every record stored after `after_seq`: (seq → the JSON of the message or event, and
/// whether it is an event), waiting (bounded) until the store holds `highest`.
async fn stored_records(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    highest: u64,
) -> BTreeMap<u64, (Value, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = BTreeMap::new();
        let mut after = 0;
        loop {
            let p = page(http, stack, token, conversation_id, after, 1000).await;
            let Some(top) = page_top(&p) else { break };
            for m in p["messages"].as_array().into_iter().flatten() {
                all.insert(m["seq"].as_u64().unwrap_or_default(), (m.clone(), false));
            }
            for e in p["events"].as_array().into_iter().flatten() {
                all.insert(e["seq"].as_u64().unwrap_or_default(), (e.clone(), true));
            }
            after = top;
        }
        let top = all.keys().next_back().copied().unwrap_or_default();
        if top >= highest || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A device's state from the records it holds: those up to its first gap, then history
/// after it (`?after_seq=` with events), as a client does on a gap.
async fn fill_gaps(
    held: &BTreeMap<u64, Rec>,
    highest: u64,
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    who: &str,
) -> Model {
    let contiguous = (1..)
        .take_while(|s| held.contains_key(s))
        .last()
        .unwrap_or(0);
    let mut model = reduce(held.values().filter(|r| r.seq() <= contiguous));
    if contiguous < highest {
        eprintln!(
            "events: {who} missed {} of {highest} records live; fills {conversation_id} after seq {contiguous}",
            highest as usize - held.len()
        );
        catch_up(
            &mut model,
            http,
            stack,
            token,
            conversation_id,
            contiguous,
            1000,
        )
        .await;
    }
    model
}

/// What a numbered frame was answered.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Sent(u64, String),
    Refused(ErrorCode),
}

fn client_msg_id(frame: &ClientFrame) -> String {
    frame.client_msg_id().expect("a numbered frame").to_owned()
}

/// A device of a scripted test: its connection, what it received, its own records.
struct Device {
    user: String,
    ws: WsClient,
    received: Vec<ServerFrame>,
    own: Vec<Rec>,
    answers: HashMap<String, Answer>,
}

impl Device {
    async fn connect(stack: &Stack, server: usize, user: &str) -> Device {
        let token = token_for(stack, user);
        let ws = WsClient::connect(
            &stack.socket_servers[server % stack.socket_servers.len()].ws_url(),
            &token,
        )
        .await
        .expect("connect");
        Device {
            user: user.to_owned(),
            ws,
            received: Vec::new(),
            own: Vec::new(),
            answers: HashMap::new(),
        }
    }

    /// Sends `frames` pipelined and reads until each is answered.
    async fn act(&mut self, frames: Vec<ClientFrame>) {
        let mut waiting: HashMap<String, ClientFrame> = HashMap::new();
        for frame in frames {
            waiting.insert(client_msg_id(&frame), frame.clone());
            self.ws.send_frame(&frame).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !waiting.is_empty() && Instant::now() < deadline {
            let Some(frame) = self.ws.next_frame(Duration::from_secs(1)).await else {
                continue;
            };
            match &frame {
                ServerFrame::Sent {
                    client_msg_id,
                    seq,
                    message_id,
                    ..
                } => {
                    if let Some(sent) = waiting.remove(client_msg_id) {
                        self.own
                            .push(Rec::of_own(&sent, &self.user, *seq, message_id));
                        self.answers.insert(
                            client_msg_id.clone(),
                            Answer::Sent(*seq, message_id.to_string()),
                        );
                    }
                }
                ServerFrame::Error {
                    code,
                    client_msg_id: Some(id),
                    ..
                } => {
                    // A busy machine may answer `unavailable` (a lease wait, a slow check):
                    // resend the same frame, as a client does.
                    if matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited) {
                        if let Some(again) = waiting.get(id).cloned() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            self.ws.send_frame(&again).await;
                        }
                        continue;
                    }
                    waiting.remove(id);
                    self.answers.insert(id.clone(), Answer::Refused(*code));
                }
                _ => self.received.push(frame),
            }
        }
        assert!(
            waiting.is_empty(),
            "{}: unanswered {:?}",
            self.user,
            waiting.keys()
        );
    }

    /// Reads until the device holds every seq up to `highest` of the conversation.
    /// Reads until the device holds every seq up to `highest` of the conversation, or 3 s
    /// pass without a frame (a frame the reorder hold dropped never comes: the device fills
    /// that gap from history).
    async fn read_until(&mut self, conversation_id: &str, highest: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.held(conversation_id).len() < highest as usize && Instant::now() < deadline {
            match self.ws.next_frame(Duration::from_secs(3)).await {
                Some(frame) => self.received.push(frame),
                None => return,
            }
        }
    }

    /// Its records of the conversation by seq: what it received and its own.
    fn held(&self, conversation_id: &str) -> BTreeMap<u64, Rec> {
        self.received
            .iter()
            .filter_map(|f| Rec::of_frame(f, conversation_id))
            .chain(self.own.iter().cloned())
            .map(|r| (r.seq(), r))
            .collect()
    }

    /// The seqs it received live, in arrival order.
    fn live_seqs(&self, conversation_id: &str) -> Vec<u64> {
        self.received
            .iter()
            .filter_map(|f| Rec::of_frame(f, conversation_id))
            .map(|r| r.seq())
            .collect()
    }

    fn answer(&self, client_msg_id: &str) -> &Answer {
        &self.answers[client_msg_id]
    }

    fn sent_id(&self, client_msg_id: &str) -> String {
        match self.answer(client_msg_id) {
            Answer::Sent(_, id) => id.clone(),
            other => panic!("{client_msg_id}: {other:?}"),
        }
    }
}

fn send(conversation_id: &str, cmid: &str, body: &str, reply_to: Option<&str>) -> ClientFrame {
    ClientFrame::Send {
        conversation_id: conversation_id.into(),
        client_msg_id: cmid.into(),
        body: body.into(),
        attachments: Vec::new(),
        reply_to: reply_to.map(str::to_owned),
    }
}

fn edit(conversation_id: &str, cmid: &str, target: &str, body: &str) -> ClientFrame {
    ClientFrame::Edit {
        conversation_id: conversation_id.into(),
        client_msg_id: cmid.into(),
        message_id: target.into(),
        body: body.into(),
    }
}

fn delete(conversation_id: &str, cmid: &str, target: &str) -> ClientFrame {
    ClientFrame::Delete {
        conversation_id: conversation_id.into(),
        client_msg_id: cmid.into(),
        message_id: target.into(),
    }
}

fn react(conversation_id: &str, cmid: &str, target: &str, emoji: Option<&str>) -> ClientFrame {
    ClientFrame::React {
        conversation_id: conversation_id.into(),
        client_msg_id: cmid.into(),
        message_id: target.into(),
        emoji: emoji.map(str::to_owned),
    }
}

/// Waits until history's current state of `message_id` satisfies `done`.
async fn until_message(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation_id: &str,
    message_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = page(http, stack, token, conversation_id, 0, 1000).await;
        let found = p["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["message_id"] == message_id)
            .cloned();
        match found {
            Some(m) if done(&m) => return m,
            other => assert!(
                Instant::now() < deadline,
                "{message_id} never reached the state wanted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------

const EDIT_WINDOW_SECS: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_racing_a_burst_end_the_same_everywhere() {
    let started = Instant::now();
    let stack = Stack::start(StackOptions {
        extra_env: vec![
            (SB_MAX_EDITS.into(), "3".into()),
            (SB_MAX_REACTIONS_PER_MESSAGE.into(), "3".into()),
            (SB_EDIT_WINDOW_SECS.into(), EDIT_WINDOW_SECS.to_string()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let alice_t = token_for(&stack, "alice");
    let conv = create_conversation(
        &http,
        &stack,
        &alice_t,
        json!({"kind": "group", "name": "events", "members": ["bob", "carol", "dave"]}),
    )
    .await;
    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        Method::PUT,
        &format!("/api/v1/conversations/{conv}/members/carol/role"),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut alice1 = Device::connect(&stack, 0, "alice").await;
    let mut alice2 = Device::connect(&stack, 1, "alice").await;
    let mut bob = Device::connect(&stack, 2, "bob").await;
    let mut carol = Device::connect(&stack, 0, "carol").await;
    let mut dave = Device::connect(&stack, 1, "dave").await;

    // Five messages everyone holds before the race; dave then goes offline.
    const SECRET: &str = "secret-original-7f3a";
    const SECRET_EDIT: &str = "secret-edit-7f3a";
    let bodies = ["m0", SECRET, "m2", "m3", "m4"];
    alice1
        .act(
            bodies
                .iter()
                .enumerate()
                .map(|(i, b)| send(&conv, &format!("a-m{i}"), b, None))
                .collect(),
        )
        .await;
    let m: Vec<String> = (0..5).map(|i| alice1.sent_id(&format!("a-m{i}"))).collect();
    let m4_sent_at = Instant::now();
    dave.read_until(&conv, 5).await;
    assert_eq!(dave.held(&conv).len(), 5, "dave holds the first five");
    let dave_model = reduce(dave.held(&conv).values());
    let dave_seen = 5;
    dave.ws.close().await;

    // The race: bursts of sends from bob and carol with their own events mixed in, alice's
    // edits, delete and reaction from two devices, all at once.
    let burst = |who: &str, extra: Vec<(usize, ClientFrame)>| {
        let mut frames: Vec<ClientFrame> = (0..40)
            .map(|i| {
                send(
                    &conv,
                    &format!("{who}-{i}"),
                    &format!("{who} says {i}"),
                    None,
                )
            })
            .collect();
        for (at, frame) in extra.into_iter().rev() {
            frames.insert(at, frame);
        }
        frames
    };
    let bob_frames = burst(
        "b",
        vec![
            (3, react(&conv, "b-r1", &m[2], Some("\u{2764}\u{fe0f}"))),
            (10, edit(&conv, "b-edit-not-mine", &m[0], "bob was here")),
            (15, send(&conv, "b-reply", "re: m3", Some(&m[3]))),
            (20, react(&conv, "b-r2", &m[2], Some("\u{1F600}"))),
            (30, delete(&conv, "b-delete-not-mine", &m[4])),
        ],
    );
    let carol_frames = burst(
        "c",
        vec![
            (2, react(&conv, "c-r1", &m[0], Some("\u{1F44D}"))),
            (12, react(&conv, "c-r2", &m[0], None)),
            (18, react(&conv, "c-r3", &m[2], Some("\u{1F44D}"))),
            (25, delete(&conv, "c-delete-as-admin", &m[3])),
        ],
    );
    let alice1_frames = vec![
        edit(&conv, "a-e1", &m[0], "m0 edited once"),
        edit(&conv, "a-e2", &m[1], SECRET_EDIT),
        delete(&conv, "a-d1", &m[1]),
        react(&conv, "a-r1", &m[2], Some("\u{1F44D}")),
        edit(&conv, "a-e3", &m[0], "m0 edited twice"),
    ];
    let alice2_frames = vec![
        edit(&conv, "a2-e1", &m[4], "m4 edited from another device"),
        react(&conv, "a2-r1", &m[4], Some("\u{1F389}")),
    ];
    tokio::join!(
        bob.act(bob_frames),
        carol.act(carol_frames),
        alice1.act(alice1_frames),
        alice2.act(alice2_frames),
    );

    // A non-author's edit and (a plain member's) delete are refused and never numbered.
    assert_eq!(
        *bob.answer("b-edit-not-mine"),
        Answer::Refused(ErrorCode::NotAuthor)
    );
    assert_eq!(
        *bob.answer("b-delete-not-mine"),
        Answer::Refused(ErrorCode::NotAuthor)
    );
    // The check is the managers' route only; a manager gets a verdict with its code.
    let check_url = format!(
        "{}/internal/v1/conversations/{conv}/events/check",
        stack.message_service.as_ref().unwrap().url()
    );
    let check_body = json!({"items": [
        {"sender_id": "bob", "client_msg_id": "x", "kind": "edit", "target_id": m[0]}
    ]});
    let as_role = |role: Option<ServiceRole>| {
        let request = http.post(&check_url).json(&check_body);
        match role {
            Some(role) => stack.credential(role).apply(request),
            None => request,
        }
        .send()
    };
    assert_eq!(as_role(None).await.unwrap().status(), 401);
    assert_eq!(
        as_role(Some(ServiceRole::SocketServer))
            .await
            .unwrap()
            .status(),
        403
    );
    let verdicts: Value = as_role(Some(ServiceRole::SocketManager))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verdicts["verdicts"][0]["refused"]["code"], "not_author");
    // Everything else was numbered; an admin deletes anyone's message.
    for device in [&alice1, &alice2, &bob, &carol] {
        for (cmid, answer) in &device.answers {
            if !cmid.ends_with("not-mine") {
                assert!(matches!(answer, Answer::Sent(..)), "{cmid}: {answer:?}");
            }
        }
    }

    // The truth: every acknowledged record, in seq order.
    let acked: Vec<Rec> = [&alice1, &alice2, &bob, &carol]
        .iter()
        .flat_map(|d| d.own.iter().cloned())
        .collect();
    let highest = acked.iter().map(Rec::seq).max().unwrap();
    let seqs: BTreeSet<u64> = acked.iter().map(Rec::seq).collect();
    assert_eq!(
        seqs,
        (1..=highest).collect::<BTreeSet<_>>(),
        "acknowledged seqs are 1..{highest}, events and messages in one sequence"
    );
    let truth = reduce(&acked).view();
    assert_eq!(truth[&m[0]].0, "m0 edited twice");
    assert!(truth[&m[1]].1 && truth[&m[3]].1, "m1 and m3 deleted");

    // Every connected device: live frames in seq order, and with its own records every seq
    // once, reaching the same state.
    for device in [&mut alice1, &mut alice2, &mut bob, &mut carol] {
        device.read_until(&conv, highest).await;
        let live = device.live_seqs(&conv);
        assert!(
            live.windows(2).all(|w| w[0] < w[1]),
            "{}: live delivery in seq order: {live:?}",
            device.user
        );
        let held = device.held(&conv);
        for rec in &acked {
            if let Some(h) = held.get(&rec.seq()) {
                assert_eq!(h.id(), rec.id(), "{}: seq {}", device.user, rec.seq());
            }
        }
        // A frame that reached its handler after a later one had waited out the reorder
        // hold was dropped, not delivered out of order: the device fills the gap from
        // history, as every client does.
        let token = token_for(&stack, &device.user);
        let model = fill_gaps(&held, highest, &http, &stack, &token, &conv, &device.user).await;
        assert_eq!(model.view(), truth, "{}'s state", device.user);
    }

    // History: the current state of every message, and the raw events, in one sequence.
    let stored = stored_records(&http, &stack, &alice_t, &conv, highest).await;
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=highest).collect::<Vec<_>>()
    );
    for rec in &acked {
        let (json, is_event) = &stored[&rec.seq()];
        let id = if *is_event {
            &json["event_id"]
        } else {
            &json["message_id"]
        };
        assert_eq!(id, rec.id(), "seq {}", rec.seq());
        assert_eq!(*is_event, matches!(rec, Rec::Event { .. }));
    }
    let mut from_history = Model::default();
    from_history.apply_page(&page(&http, &stack, &alice_t, &conv, 0, 1000).await);
    assert_eq!(from_history.view(), truth, "history's current state");
    // Messages only (the default) is what an old client reads: the same current state.
    let (_, plain) = api(
        &http,
        &stack,
        &alice_t,
        Method::GET,
        &format!("/api/v1/conversations/{conv}/messages?limit=1000"),
        None,
    )
    .await;
    assert!(plain.get("events").is_none());
    let plain_messages = plain["messages"].as_array().unwrap();
    assert_eq!(plain_messages.len(), truth.len());
    let m0 = plain_messages
        .iter()
        .find(|x| x["message_id"] == m[0])
        .unwrap();
    assert_eq!(m0["body"], "m0 edited twice");
    assert!(m0["edited_at"].is_string());
    let reply = plain_messages
        .iter()
        .find(|x| x["body"] == "re: m3")
        .unwrap();
    assert_eq!(reply["reply_to"], m[3]);
    let m2 = plain_messages
        .iter()
        .find(|x| x["message_id"] == m[2])
        .unwrap();
    let me: Vec<&str> = m2["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["me"] == true)
        .map(|r| r["emoji"].as_str().unwrap())
        .collect();
    assert_eq!(me, ["\u{1F44D}"], "alice's own reaction is marked: {m2}");

    // The offline device catches up through after_seq alone, in pages.
    let mut dave_model = dave_model;
    catch_up(
        &mut dave_model,
        &http,
        &stack,
        &token_for(&stack, "dave"),
        &conv,
        dave_seen,
        25,
    )
    .await;
    assert_eq!(dave_model.view(), truth, "dave caught up through after_seq");

    // The deleted message's body and its edit's text are gone from PostgreSQL (rows, search).
    let postgres = stack.postgres.as_ref().expect("postgres");
    let leftover = postgres
        .query(
            "SELECT count(*) FROM messages WHERE body LIKE '%secret-%' OR payload LIKE '%secret-%' \
             OR search @@ to_tsquery('simple', 'secret')"
        )
        .await
        .unwrap();
    assert_eq!(
        leftover.trim(),
        "0",
        "no trace of the deleted message's texts"
    );
    let letters = postgres
        .query("SELECT count(*) FROM dead_letters WHERE record LIKE '%secret-%'")
        .await
        .unwrap();
    assert_eq!(letters.trim(), "0");
    let row = postgres
        .query(&format!(
            "SELECT body || '|' || (deleted_at IS NOT NULL) FROM messages WHERE message_id = '{}'",
            m[1]
        ))
        .await
        .unwrap();
    assert_eq!(row.trim(), "|true", "a tombstone");
    let found = postgres
        .query("SELECT count(*) FROM messages WHERE search @@ to_tsquery('simple', 'twice')")
        .await
        .unwrap();
    assert_eq!(found.trim(), "1", "search follows the edit");
    let m1 = until_message(&http, &stack, &alice_t, &conv, &m[1], |_| true).await;
    assert_eq!(m1["deleted"], true);
    assert_eq!(m1["body"], "");

    // Limits and refusals, on fresh connections (the devices above are not read any more,
    // so they stop answering pings and are closed). The edit limit, on a new message: three
    // edits pass (in flight together, each checked against the stored count), a fourth is
    // refused once they are stored.
    let mut alice3 = Device::connect(&stack, 0, "alice").await;
    alice3.act(vec![send(&conv, "a-m5", "m5", None)]).await;
    let m5 = alice3.sent_id("a-m5");
    until_message(&http, &stack, &alice_t, &conv, &m5, |_| true).await;
    alice3
        .act(
            (1..=3)
                .map(|i| edit(&conv, &format!("a-m5-e{i}"), &m5, &format!("m5 edit {i}")))
                .collect(),
        )
        .await;
    for i in 1..=3 {
        let cmid = format!("a-m5-e{i}");
        assert!(matches!(alice3.answer(&cmid), Answer::Sent(..)), "{cmid}");
    }
    until_message(&http, &stack, &alice_t, &conv, &m5, |x| {
        x["body"] == "m5 edit 3"
    })
    .await;
    let mut alice4 = Device::connect(&stack, 1, "alice").await;
    alice4
        .act(vec![
            edit(&conv, "a-e5", &m5, "one too many"),
            edit(&conv, "a-e6", &m[1], "edit a deleted message"),
            react(&conv, "a-r2", &m[1], Some("\u{1F44D}")),
            edit(
                &conv,
                "a-e7",
                "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "no such message",
            ),
        ])
        .await;
    assert_eq!(
        *alice4.answer("a-e5"),
        Answer::Refused(ErrorCode::TooManyEdits)
    );
    assert_eq!(
        *alice4.answer("a-e6"),
        Answer::Refused(ErrorCode::MessageDeleted)
    );
    assert_eq!(
        *alice4.answer("a-r2"),
        Answer::Refused(ErrorCode::MessageDeleted)
    );
    assert_eq!(
        *alice4.answer("a-e7"),
        Answer::Refused(ErrorCode::MessageNotFound)
    );
    // m2 carries two distinct emoji: a third is taken, a fourth refused.
    let mut alice5 = Device::connect(&stack, 2, "alice").await;
    alice5
        .act(vec![react(&conv, "a2-r2", &m[2], Some("\u{1F525}"))])
        .await;
    assert!(matches!(alice5.answer("a2-r2"), Answer::Sent(..)));
    until_message(&http, &stack, &alice_t, &conv, &m[2], |x| {
        x["reactions"].as_array().is_some_and(|r| r.len() == 3)
    })
    .await;
    let mut bob2 = Device::connect(&stack, 0, "bob").await;
    bob2.act(vec![react(&conv, "b-r3", &m[2], Some("\u{1F31F}"))])
        .await;
    assert_eq!(
        *bob2.answer("b-r3"),
        Answer::Refused(ErrorCode::TooManyReactions)
    );
    // The edit window closes.
    let window = Duration::from_secs(EDIT_WINDOW_SECS + 1);
    if let Some(left) = window.checked_sub(m4_sent_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let mut late = Device::connect(&stack, 2, "alice").await;
    late.act(vec![edit(&conv, "a-e8", &m[4], "too late")]).await;
    assert_eq!(
        *late.answer("a-e8"),
        Answer::Refused(ErrorCode::EditWindowClosed)
    );
    eprintln!("events: done in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// The nemesis test: a manager killed while devices edit and react.

/// What every device of the nemesis test saw, shared.
#[derive(Default)]
struct Ledger {
    /// (conversation, sender, client_msg_id) → the acknowledged record.
    acks: HashMap<(String, String, String), Rec>,
    refused: BTreeMap<String, usize>,
    resends: usize,
    unavailable: usize,
    anomalies: Vec<String>,
}

/// A small deterministic generator (no dependency needed for a test's choices).
struct Dice(u64);

impl Dice {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What a nemesis device knows of a message: its author, and whether it saw it deleted.
#[derive(Clone)]
struct Known {
    conversation: String,
    author: String,
    deleted: bool,
}

/// A frame waiting for its answer.
struct Pending {
    frame: ClientFrame,
    resend_at: Instant,
}

const EMOJI: [&str; 3] = ["\u{1F44D}", "\u{2764}\u{fe0f}", "\u{1F600}"];

/// One device: sends, edits, reacts, replies and deletes until `generating` ends, resending
/// on `unavailable`, `rate_limited` or 3 s of silence; returns what it received.
async fn nemesis_device(
    index: usize,
    user: String,
    url: String,
    token: String,
    conversations: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    generating: Arc<std::sync::atomic::AtomicBool>,
) -> (String, Vec<ServerFrame>) {
    let mut ws = WsClient::connect(&url, &token).await.expect("connect");
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1));
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut received = Vec::new();
    let mut n = 0;
    let mut next_action = Instant::now();
    let mut deadline = None;
    loop {
        let generating_now = generating.load(std::sync::atomic::Ordering::Relaxed);
        if !generating_now {
            let at = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(45));
            if pending.is_empty() || Instant::now() > at {
                if !pending.is_empty() {
                    ledger.lock().unwrap().anomalies.push(format!(
                        "{user}#{index}: {} frames never answered: {:?}",
                        pending.len(),
                        pending.keys().collect::<Vec<_>>()
                    ));
                }
                break;
            }
        }
        if generating_now && Instant::now() >= next_action && pending.len() < 8 {
            next_action = Instant::now() + Duration::from_millis(40);
            n += 1;
            let cmid = format!("{user}#{index}-{n}");
            let conversation = conversations[dice.next(conversations.len())].clone();
            let alive: Vec<(&String, &Known)> = known
                .iter()
                .filter(|(_, k)| k.conversation == conversation && !k.deleted)
                .collect();
            let mine: Vec<&String> = alive
                .iter()
                .filter(|(_, k)| k.author == user)
                .map(|(id, _)| *id)
                .collect();
            // A delete waits until nothing of this device about the message is unanswered,
            // so an edit left in doubt is never resent after its message was deleted.
            let targeted: Vec<&str> = pending
                .values()
                .filter_map(|p| target_of(&p.frame))
                .collect();
            let deletable: Vec<&String> = mine
                .iter()
                .copied()
                .filter(|id| !targeted.contains(&id.as_str()))
                .collect();
            let roll = dice.next(100);
            let frame = if roll < 50 || alive.is_empty() {
                let reply = (roll < 10 && !alive.is_empty())
                    .then(|| alive[dice.next(alive.len())].0.as_str());
                send(&conversation, &cmid, &format!("{cmid} says hi"), reply)
            } else if roll < 65 && !mine.is_empty() {
                let target = mine[dice.next(mine.len())];
                edit(
                    &conversation,
                    &cmid,
                    target,
                    &format!("{cmid} edits {target}"),
                )
            } else if roll < 70 && !deletable.is_empty() {
                delete(&conversation, &cmid, deletable[dice.next(deletable.len())])
            } else {
                let target = alive[dice.next(alive.len())].0;
                let emoji = (dice.next(4) > 0).then(|| EMOJI[dice.next(EMOJI.len())]);
                react(&conversation, &cmid, target, emoji)
            };
            ws.send_frame(&frame).await;
            pending.insert(
                cmid,
                Pending {
                    frame,
                    resend_at: Instant::now() + Duration::from_secs(3),
                },
            );
        }
        // Resend what got no answer.
        let now = Instant::now();
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.resend_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let p = pending.get_mut(&id).expect("pending");
            p.resend_at = now + Duration::from_secs(3);
            let frame = p.frame.clone();
            ledger.lock().unwrap().resends += 1;
            ws.send_frame(&frame).await;
        }
        let Some(frame) = ws.next_frame(Duration::from_millis(20)).await else {
            continue;
        };
        match &frame {
            ServerFrame::Sent {
                client_msg_id,
                conversation_id,
                seq,
                message_id,
                ..
            } => {
                let Some(p) = pending.remove(client_msg_id) else {
                    continue;
                };
                let rec = Rec::of_own(&p.frame, &user, *seq, message_id);
                note_known(&mut known, conversation_id, &rec);
                let mut ledger = ledger.lock().unwrap();
                let key = (
                    conversation_id.to_string(),
                    user.clone(),
                    client_msg_id.clone(),
                );
                if let Some(before) = ledger.acks.get(&key) {
                    if before.seq() != *seq || before.id() != message_id {
                        let anomaly = format!(
                            "{key:?} acknowledged twice: {before:?} then seq {seq} ({message_id})"
                        );
                        ledger.anomalies.push(anomaly);
                    }
                }
                ledger.acks.insert(key, rec);
            }
            ServerFrame::Error {
                code,
                client_msg_id: Some(id),
                ..
            } => match code {
                ErrorCode::Unavailable | ErrorCode::RateLimited => {
                    ledger.lock().unwrap().unavailable += 1;
                    if let Some(p) = pending.get_mut(id) {
                        p.resend_at = Instant::now() + Duration::from_millis(200);
                    }
                }
                // A target deleted meanwhile: a legitimate final answer.
                ErrorCode::MessageDeleted => {
                    pending.remove(id);
                    *ledger
                        .lock()
                        .unwrap()
                        .refused
                        .entry(code.as_str().to_owned())
                        .or_default() += 1;
                }
                other => {
                    let p = pending.remove(id);
                    ledger.lock().unwrap().anomalies.push(format!(
                        "{user}#{index}: {id} refused {}: {:?}",
                        other.as_str(),
                        p.map(|p| p.frame)
                    ));
                }
            },
            _ => {
                for c in &conversations {
                    if let Some(rec) = Rec::of_frame(&frame, c) {
                        note_known(&mut known, c, &rec);
                    }
                }
                received.push(frame);
            }
        }
    }
    ws.close().await;
    (user, received)
}

fn target_of(frame: &ClientFrame) -> Option<&str> {
    match frame {
        ClientFrame::Edit { message_id, .. }
        | ClientFrame::Delete { message_id, .. }
        | ClientFrame::React { message_id, .. } => Some(message_id),
        _ => None,
    }
}

fn note_known(known: &mut BTreeMap<String, Known>, conversation: &str, rec: &Rec) {
    match rec {
        Rec::Message { id, sender, .. } => {
            known.entry(id.clone()).or_insert(Known {
                conversation: conversation.to_owned(),
                author: sender.clone(),
                deleted: false,
            });
        }
        Rec::Event {
            kind: RecordKind::Delete,
            target,
            ..
        } => {
            if let Some(k) = known.get_mut(target) {
                k.deleted = true;
            }
        }
        Rec::Event { .. } => {}
    }
}

/// The manager holding some conversation's lease, from the lease token
/// (`"{manager bind address}/{ulid}"`), waiting up to 10 s.
async fn lease_holder(stack: &Stack) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut redis = stack.redis.try_master_connection().await.expect("redis");
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
                if let Some(i) = stack
                    .managers
                    .iter()
                    .position(|m| token.starts_with(&format!("127.0.0.1:{}/", m.port)))
                {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no lease was ever seen held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fault a nemesis run injects while the devices work.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 of the manager holding a conversation's lease.
    LeaseHolder,
    /// kill -9 of the message service for 3 s, then a restart: the checks fail meanwhile
    /// (events answered `unavailable`, resent), and ingest re-reads its rewind window, so
    /// every event in it is delivered again and must apply once.
    MessageService,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manager_kill_during_edits_and_reactions_loses_nothing() {
    events_nemesis(Fault::LeaseHolder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_service_kill_during_reactions_loses_nothing() {
    events_nemesis(Fault::MessageService).await;
}

async fn events_nemesis(fault: Fault) {
    let mut stack = Stack::start(StackOptions {
        // Edits never run out in this test: the limit is not what it checks.
        extra_env: vec![(SB_MAX_EDITS.into(), "100000".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let users = ["ana", "ben", "cai", "dee"];
    let tokens: HashMap<&str, String> = users.iter().map(|u| (*u, token_for(&stack, u))).collect();
    let group = create_conversation(
        &http,
        &stack,
        &tokens["ana"],
        json!({"kind": "group", "name": "nemesis events", "members": ["ben", "cai", "dee"]}),
    )
    .await;
    let direct = create_conversation(
        &http,
        &stack,
        &tokens["ana"],
        json!({"kind": "direct", "members": ["ben"]}),
    )
    .await;
    let members: HashMap<String, Vec<&str>> = HashMap::from([
        (group.clone(), users.to_vec()),
        (direct.clone(), vec!["ana", "ben"]),
    ]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let generating = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let devices: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let conversations: Vec<String> = members
                .iter()
                .filter(|(_, m)| m.contains(user))
                .map(|(c, _)| c.clone())
                .collect();
            tokio::spawn(nemesis_device(
                i,
                (*user).to_owned(),
                stack.socket_servers[i % stack.socket_servers.len()].ws_url(),
                tokens[user].clone(),
                conversations,
                ledger.clone(),
                generating.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    match fault {
        Fault::LeaseHolder => {
            let holder = lease_holder(&stack).await;
            eprintln!("events nemesis: kill -9 {}", stack.managers[holder].name);
            stack.managers[holder].process.kill9();
        }
        Fault::MessageService => {
            eprintln!("events nemesis: kill -9 the message service for 3 s");
            if let Some(ms) = stack.message_service.as_ref() {
                ms.process.kill9();
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            stack.restart_message_service().await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    generating.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut received: Vec<(String, Vec<ServerFrame>)> = Vec::new();
    for device in devices {
        received.push(device.await.unwrap());
    }

    // The history checker, extended to events.
    let (mut anomalies, acks, refused, resends, unavailable) = {
        let l = ledger.lock().unwrap();
        (
            l.anomalies.clone(),
            l.acks.clone(),
            l.refused.clone(),
            l.resends,
            l.unavailable,
        )
    };
    let mut events_total = 0;
    for (conversation, conversation_members) in &members {
        let acked: Vec<&Rec> = acks
            .iter()
            .filter(|((c, _, _), _)| c == conversation)
            .map(|(_, r)| r)
            .collect();
        events_total += acked
            .iter()
            .filter(|r| matches!(r, Rec::Event { .. }))
            .count();
        let highest = acked.iter().map(|r| r.seq()).max().unwrap_or(0);
        let token = &tokens[conversation_members[0]];
        let stored = stored_records(&http, &stack, token, conversation, highest).await;
        let seqs: Vec<u64> = stored.keys().copied().collect();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            anomalies.push(format!(
                "{conversation}: stored seqs are not 1..{}",
                seqs.len()
            ));
        }
        let by_key: HashMap<(String, String), u64> = acks
            .iter()
            .filter(|((c, _, _), _)| c == conversation)
            .map(|((_, s, id), r)| ((s.clone(), id.clone()), r.seq()))
            .collect();
        for rec in &acked {
            match stored.get(&rec.seq()) {
                None => anomalies.push(format!(
                    "{conversation}: acknowledged seq {} ({}) is not stored",
                    rec.seq(),
                    rec.id()
                )),
                Some((json, is_event)) => {
                    let id = if *is_event {
                        &json["event_id"]
                    } else {
                        &json["message_id"]
                    };
                    if id != rec.id() || *is_event != matches!(rec, Rec::Event { .. }) {
                        anomalies.push(format!(
                            "{conversation}: seq {} was acknowledged as {rec:?} but holds {json}",
                            rec.seq()
                        ));
                    }
                }
            }
        }
        for (seq, (json, _)) in &stored {
            let key = (
                json["sender_id"].as_str().unwrap_or_default().to_owned(),
                json["client_msg_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            if by_key.get(&key) != Some(seq) {
                anomalies.push(format!(
                    "{conversation}: stored seq {seq} ({key:?}) was never acknowledged as it"
                ));
            }
        }
        // The state: the acknowledged records, history's, and every member device's.
        let truth = reduce(acked.iter().copied()).view();
        let mut from_history = Model::default();
        catch_up(
            &mut from_history,
            &http,
            &stack,
            token,
            conversation,
            0,
            1000,
        )
        .await;
        if from_history.view() != truth {
            anomalies.push(format!(
                "{conversation}: history's state differs from the acknowledged records'"
            ));
        }
        for (user, frames) in &received {
            if !conversation_members.contains(&user.as_str()) {
                continue;
            }
            let live: Vec<Rec> = frames
                .iter()
                .filter_map(|f| Rec::of_frame(f, conversation))
                .collect();
            if !live.windows(2).all(|w| w[0].seq() < w[1].seq()) {
                anomalies.push(format!(
                    "{user}: live delivery out of seq order in {conversation}"
                ));
            }
            let mut held: BTreeMap<u64, Rec> = live.into_iter().map(|r| (r.seq(), r)).collect();
            held.extend(
                acks.iter()
                    .filter(|((c, s, _), _)| c == conversation && s == user)
                    .map(|(_, r)| (r.seq(), r.clone())),
            );
            // A gap (a frame dropped as late, or lost with a manager) is filled from
            // history, as a client does.
            let token = &tokens[user.as_str()];
            let model = fill_gaps(&held, highest, &http, &stack, token, conversation, user).await;
            if model.view() != truth {
                anomalies.push(format!(
                    "{user}'s state of {conversation} differs from history's"
                ));
            }
        }
    }
    // No acknowledged record in dead_letters.
    let postgres = stack.postgres.as_ref().expect("postgres");
    let ids: BTreeSet<&str> = acks.values().map(Rec::id).collect();
    let letters = postgres
        .query("SELECT coalesce(string_agg(record, E'\\n'), '') FROM dead_letters")
        .await
        .unwrap();
    for line in letters.lines() {
        if ids.iter().any(|id| line.contains(id)) {
            anomalies.push(format!("an acknowledged record is in dead_letters: {line}"));
        }
    }
    let not_applied = postgres
        .query("SELECT count(*) FROM messages WHERE kind <> 'message' AND applied = false")
        .await
        .unwrap();
    eprintln!(
        "events nemesis[{fault:?}]: {} acknowledged ({events_total} events), {resends} resends, \
         {unavailable} unavailable, refused {refused:?}, {} events changed nothing, {} anomalies",
        acks.len(),
        not_applied.trim(),
        anomalies.len()
    );
    assert!(anomalies.is_empty(), "anomalies:\n{}", anomalies.join("\n"));
    assert!(events_total > 20, "the workload made events");
}
