//! Planning one batch from a socket server: the pure part of `POST .../batch`, kept apart
//! from Redis and Kafka so its rules have fast tests. A batch is split into
//!
//! - presence changes, the last report per user winning (a device that connected and left
//!   in one batch leaves the user as the last report says);
//! - sends grouped per conversation, each group in batch order (the sequencer numbers a group
//!   in that order, under one lease), with each send's place in the batch;
//! - signals (typing and receipts), each with its place;
//! - answers that need nobody: `pong`, `bad_request` for a send without a conversation or
//!   with a `client_msg_id` outside [`ClientMsgId`]'s rule, and `not_a_member` for a
//!   conversation id that is no [`ConversationId`] (it names no conversation the sender is in).
//!
//! This is where a client's raw frame ([`ClientFrame`], plain strings) becomes typed: the ids a
//! send or signal carries on from here are checked.
//! - the edge's send checks, made again ([`SendLimits`]): a body over `SB_MAX_BODY_BYTES`
//!   (`too_large`), a body with U+0000 (`bad_request`), a record too large for one produce
//!   (`too_large`). The socket servers refuse these first; a send that gets here anyway (an
//!   edge with other limits, a client of the internal API) is still never numbered, since a
//!   record no produce accepts would be appended again and again and never acknowledged.

use std::collections::HashMap;

use switchboard_protocol::frames::{
    is_storable_text, ClientFrame, ReceiptKind, RecordKind, ServerFrame,
};
use switchboard_protocol::internal::ServerItem;
use switchboard_protocol::{ClientMsgId, ConversationId, ErrorCode, ServerId, UserId};

use crate::events::ClientEvent;
use crate::sequencer::SendRequest;

/// The manager's checks of a send's size and text, before it is numbered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLimits {
    /// `SB_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// The most encoded bytes one log record may take
    /// ([`switchboard_kafka::RECORD_MAX_BYTES`]).
    pub max_record_bytes: usize,
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `text` as a JSON string, in bytes: what it takes in a record once serde has escaped it.
fn encoded_len(text: &str) -> usize {
    let mut counter = Counter(0);
    // Writing a string to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, text);
    counter.0
}

/// The most a send's log record can take, encoded: its variable texts as serde escapes them,
/// and [`RECORD_OVERHEAD_BYTES`](crate::config::RECORD_OVERHEAD_BYTES) for the rest.
fn record_len(sender: &str, client_msg_id: &str, body: &str) -> usize {
    encoded_len(body)
        + encoded_len(client_msg_id)
        + encoded_len(sender)
        + crate::config::RECORD_OVERHEAD_BYTES
}

/// Why a send's body is refused (the same codes and words as the edge's), if it is.
fn refuse_body(
    limits: &SendLimits,
    sender: &str,
    client_msg_id: &str,
    body: &str,
) -> Option<(ErrorCode, String)> {
    if body.len() > limits.max_body_bytes {
        return Some((
            ErrorCode::TooLarge,
            format!(
                "body is {} bytes; the limit is {}",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    if !is_storable_text(body) {
        return Some((
            ErrorCode::BadRequest,
            "body contains U+0000 (NUL), which cannot be stored".into(),
        ));
    }
    let encoded = record_len(sender, client_msg_id, body);
    if encoded > limits.max_record_bytes {
        return Some((
            ErrorCode::TooLarge,
            format!(
                "the message takes {encoded} bytes once encoded; the limit is {}",
                limits.max_record_bytes
            ),
        ));
    }
    None
}

/// A frame that takes a number (`send`, `edit`, `delete`, `react`), in the shape of a send:
/// an event is a send with a [`ClientEvent`] (an edit's new text is its body; a delete's and a
/// reaction's body is empty).
struct RawNumbered {
    conversation_id: String,
    client_msg_id: String,
    body: String,
    attachments: Vec<String>,
    event: Option<ClientEvent>,
}

impl RawNumbered {
    /// `None` for a frame that takes no number.
    fn of(frame: ClientFrame) -> Option<RawNumbered> {
        let event = |kind, target_id, emoji| {
            Some(ClientEvent {
                kind,
                target_id,
                emoji,
            })
        };
        Some(match frame {
            ClientFrame::Send {
                conversation_id,
                client_msg_id,
                body,
                attachments,
                reply_to,
            } => RawNumbered {
                conversation_id,
                client_msg_id,
                body,
                attachments,
                event: reply_to.and_then(|target| event(RecordKind::Message, target, None)),
            },
            ClientFrame::Edit {
                conversation_id,
                client_msg_id,
                message_id,
                body,
            } => RawNumbered {
                conversation_id,
                client_msg_id,
                body,
                attachments: Vec::new(),
                event: event(RecordKind::Edit, message_id, None),
            },
            ClientFrame::Delete {
                conversation_id,
                client_msg_id,
                message_id,
            } => RawNumbered {
                conversation_id,
                client_msg_id,
                body: String::new(),
                attachments: Vec::new(),
                event: event(RecordKind::Delete, message_id, None),
            },
            ClientFrame::React {
                conversation_id,
                client_msg_id,
                message_id,
                emoji,
            } => RawNumbered {
                conversation_id,
                client_msg_id,
                body: String::new(),
                attachments: Vec::new(),
                event: event(RecordKind::Reaction, message_id, emoji),
            },
            _ => return None,
        })
    }
}

/// A typing notice or a receipt from one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signal {
    /// The frame's place in the batch (its answer goes there).
    pub index: usize,
    pub connection_id: u64,
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    /// `None`: typing.
    pub receipt: Option<(ReceiptKind, u64)>,
}

/// What one batch asks for; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct BatchPlan {
    /// One slot per item: filled now for answers that need nobody, later for the rest.
    pub replies: Vec<Option<ServerFrame>>,
    pub online: Vec<UserId>,
    pub offline: Vec<UserId>,
    /// Per conversation, its sends in batch order with their places.
    pub sends: HashMap<ConversationId, Vec<(usize, SendRequest)>>,
    pub signals: Vec<Signal>,
}

/// Splits the items `server` posted; see the module docs.
#[tracing::instrument(level = "debug", skip_all, fields(%server, items = items.len()))]
pub(crate) fn plan(server: &ServerId, items: Vec<ServerItem>, limits: &SendLimits) -> BatchPlan {
    let (online, offline) = presence_changes(&items);
    let mut plan = BatchPlan {
        replies: vec![None; items.len()],
        online,
        offline,
        ..BatchPlan::default()
    };
    for (index, item) in items.into_iter().enumerate() {
        let ServerItem::Frame {
            connection_id,
            user_id,
            frame,
        } = item
        else {
            continue;
        };
        // A conversation id that is no ULID names no conversation the sender is in: the
        // answer a real but foreign conversation gets.
        // The refusal is the frame the sender gets (see `send_request`).
        #[allow(clippy::result_large_err)]
        let signal = |conversation_id: String, receipt| match ConversationId::parse(conversation_id)
        {
            Ok(conversation_id) => Ok(Signal {
                index,
                connection_id,
                user_id: user_id.clone(),
                conversation_id,
                receipt,
            }),
            Err(_) => Err(not_a_member(None)),
        };
        match frame {
            frame @ (ClientFrame::Send { .. }
            | ClientFrame::Edit { .. }
            | ClientFrame::Delete { .. }
            | ClientFrame::React { .. }) => {
                let Some(numbered) = RawNumbered::of(frame) else {
                    continue;
                };
                match send_request(server, connection_id, user_id, numbered, limits) {
                    Ok(send) => plan
                        .sends
                        .entry(send.conversation_id.clone())
                        .or_default()
                        .push((index, send)),
                    Err(refused) => plan.replies[index] = Some(refused),
                }
            }
            ClientFrame::Typing { conversation_id } => {
                plan.push_signal(index, signal(conversation_id, None));
            }
            ClientFrame::Delivered {
                conversation_id,
                seq,
            } => plan.push_signal(
                index,
                signal(conversation_id, Some((ReceiptKind::Delivered, seq))),
            ),
            ClientFrame::Read {
                conversation_id,
                seq,
            } => plan.push_signal(
                index,
                signal(conversation_id, Some((ReceiptKind::Read, seq))),
            ),
            ClientFrame::Ping => plan.replies[index] = Some(ServerFrame::Pong),
            // The socket server answers a refresh itself; one forwarded here came from a
            // server that does not know it.
            ClientFrame::Refresh { .. } => {
                plan.replies[index] = Some(ServerFrame::error(
                    ErrorCode::BadRequest,
                    "this server cannot refresh a token: reconnect with a new one",
                ))
            }
        }
    }
    plan
}

impl BatchPlan {
    /// A signal to check, or the refusal its place gets now.
    // The refusal is the frame the sender gets (see `send_request`).
    #[allow(clippy::result_large_err)]
    fn push_signal(&mut self, index: usize, signal: Result<Signal, ServerFrame>) {
        match signal {
            Ok(signal) => self.signals.push(signal),
            Err(refused) => self.replies[index] = Some(refused),
        }
    }
}

/// `not_a_member`, tagged with the refused send's `client_msg_id`, if any.
fn not_a_member(client_msg_id: Option<String>) -> ServerFrame {
    ServerFrame::Error {
        code: ErrorCode::NotAMember,
        message: "you are not a member of this conversation".into(),
        client_msg_id,
    }
}

/// The users who came online and went offline in `items`, the last report per user winning.
fn presence_changes(items: &[ServerItem]) -> (Vec<UserId>, Vec<UserId>) {
    let mut presence: HashMap<&UserId, bool> = HashMap::new();
    for item in items {
        match item {
            ServerItem::Connected { user_id, .. } => {
                presence.insert(user_id, true);
            }
            ServerItem::Disconnected { user_id, .. } => {
                presence.insert(user_id, false);
            }
            ServerItem::Frame { .. } => {}
        }
    }
    let (mut online, mut offline) = (Vec::new(), Vec::new());
    for (user, is_online) in presence {
        if is_online {
            online.push(user.clone());
        } else {
            offline.push(user.clone());
        }
    }
    (online, offline)
}

/// A numbered frame checked (its ids, body, attachments and event) into a send, or the error
/// frame that refuses it.
// The refusal is the frame the sender gets, built once per refused send: boxing it would only
// add an allocation.
#[allow(clippy::result_large_err)]
fn send_request(
    server: &ServerId,
    connection_id: u64,
    sender_id: UserId,
    numbered: RawNumbered,
    limits: &SendLimits,
) -> Result<SendRequest, ServerFrame> {
    let RawNumbered {
        conversation_id,
        client_msg_id,
        body,
        attachments,
        event,
    } = numbered;
    let client_msg_id = match ClientMsgId::parse_owned(client_msg_id) {
        Ok(id) if !conversation_id.is_empty() => id,
        refused => {
            return Err(ServerFrame::Error {
                code: ErrorCode::BadRequest,
                message: "conversation_id and client_msg_id (1-128 bytes) are required".into(),
                client_msg_id: Some(refused.map_or_else(|text| text, String::from)),
            });
        }
    };
    let checked = match refuse_body(limits, &sender_id, client_msg_id.as_str(), &body)
        .or_else(|| crate::attachments::refuse_ids(&attachments))
    {
        Some(refused) => Err(refused),
        None => event.map(ClientEvent::check).transpose(),
    };
    let event = match checked {
        Ok(event) => event,
        Err((code, message)) => {
            return Err(ServerFrame::Error {
                code,
                message,
                client_msg_id: Some(client_msg_id.into_string()),
            })
        }
    };
    // Conversation ids are ULIDs: any other text names no conversation the sender is in (the
    // answer a real but foreign conversation gets too).
    let Ok(conversation_id) = ConversationId::parse(conversation_id) else {
        return Err(not_a_member(Some(client_msg_id.into_string())));
    };
    Ok(SendRequest {
        server_id: server.clone(),
        connection_id,
        sender_id,
        conversation_id,
        client_msg_id,
        body,
        attachments,
        event,
        // Set by `batch::answer_batch`, from the request's trace.
        traceparent: None,
    })
}

/// `items` grouped by their connection (`connection_of`), groups in order of first
/// appearance, each in batch order.
pub(crate) fn by_connection<T>(items: Vec<T>, connection_of: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut place: HashMap<u64, usize> = HashMap::new();
    for item in items {
        let at = *place.entry(connection_of(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(item);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const C2: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";

    /// The defaults: a 64 KiB body, a record that fits one produce.
    const LIMITS: SendLimits = SendLimits {
        max_body_bytes: 65_536,
        max_record_bytes: switchboard_kafka::RECORD_MAX_BYTES,
    };

    fn plan(server: &ServerId, items: Vec<ServerItem>) -> BatchPlan {
        super::plan(server, items, &LIMITS)
    }

    fn frame(connection_id: u64, user: &str, frame: ClientFrame) -> ServerItem {
        ServerItem::Frame {
            connection_id,
            user_id: user.parse().unwrap(),
            frame,
        }
    }

    fn conversation(id: &str) -> ConversationId {
        ConversationId::parse(id).unwrap()
    }

    fn send(conversation: &str, client_msg_id: &str) -> ClientFrame {
        ClientFrame::Send {
            conversation_id: conversation.into(),
            client_msg_id: client_msg_id.into(),
            body: "hi".into(),
            attachments: Vec::new(),
            reply_to: None,
        }
    }

    #[test]
    fn the_last_presence_report_per_user_wins() {
        let items = vec![
            ServerItem::Connected {
                connection_id: 1,
                user_id: "ann".parse().unwrap(),
            },
            ServerItem::Disconnected {
                connection_id: 1,
                user_id: "ann".parse().unwrap(),
            },
            ServerItem::Disconnected {
                connection_id: 2,
                user_id: "bob".parse().unwrap(),
            },
            ServerItem::Connected {
                connection_id: 3,
                user_id: "bob".parse().unwrap(),
            },
        ];
        let plan = plan(&ServerId::parse("h1").unwrap(), items);
        assert_eq!(plan.online, vec!["bob".to_owned()]);
        assert_eq!(plan.offline, vec!["ann".to_owned()]);
        assert!(plan.replies.iter().all(Option::is_none));
    }

    #[test]
    fn sends_group_per_conversation_in_batch_order_with_their_places() {
        let items = vec![
            frame(1, "ann", send(C1, "a")),
            frame(2, "bob", send(C2, "b")),
            frame(1, "ann", ClientFrame::Ping),
            frame(2, "bob", send(C1, "c")),
            frame(1, "ann", send(C1, "d")),
        ];
        let plan = plan(&ServerId::parse("h1").unwrap(), items);
        let c1: Vec<(usize, &str, &str)> = plan.sends[&conversation(C1)]
            .iter()
            .map(|(i, s)| (*i, s.sender_id.as_str(), s.client_msg_id.as_str()))
            .collect();
        assert_eq!(c1, vec![(0, "ann", "a"), (3, "bob", "c"), (4, "ann", "d")]);
        assert_eq!(plan.sends[&conversation(C2)].len(), 1);
        assert!(plan.sends[&conversation(C1)]
            .iter()
            .all(|(_, s)| s.server_id == "h1"));
        assert_eq!(plan.replies[2], Some(ServerFrame::Pong));
        assert_eq!(plan.replies.iter().filter(|r| r.is_some()).count(), 1);
    }

    #[test]
    fn bad_sends_are_answered_at_once_and_never_numbered() {
        let long = "m".repeat(129);
        let items = vec![
            frame(1, "ann", send("", "a")),
            frame(1, "ann", send(C1, "")),
            frame(1, "ann", send(C1, &long)),
            frame(1, "ann", send(C1, "ok")),
            frame(1, "ann", send("no-such-conversation", "x")),
        ];
        let plan = plan(&ServerId::parse("h1").unwrap(), items);
        assert!(
            matches!(
                &plan.replies[4],
                Some(ServerFrame::Error { code: ErrorCode::NotAMember, client_msg_id: Some(id), .. }) if id == "x"
            ),
            "a conversation id that is no ULID names no conversation: {:?}",
            plan.replies[4]
        );
        for (i, wanted) in [(0, "a"), (1, ""), (2, long.as_str())] {
            match &plan.replies[i] {
                Some(ServerFrame::Error {
                    code: ErrorCode::BadRequest,
                    client_msg_id: Some(id),
                    ..
                }) => assert_eq!(id, wanted),
                other => panic!("item {i}: {other:?}"),
            }
        }
        assert_eq!(plan.sends[&conversation(C1)].len(), 1);
        assert_eq!(plan.sends[&conversation(C1)][0].0, 3);
    }

    #[test]
    fn typing_and_receipts_become_signals_with_their_kind() {
        let items = vec![
            frame(
                7,
                "ann",
                ClientFrame::Typing {
                    conversation_id: C1.into(),
                },
            ),
            frame(
                7,
                "ann",
                ClientFrame::Read {
                    conversation_id: C1.into(),
                    seq: 4,
                },
            ),
            frame(
                8,
                "bob",
                ClientFrame::Delivered {
                    conversation_id: C2.into(),
                    seq: 9,
                },
            ),
        ];
        let plan = plan(&ServerId::parse("h1").unwrap(), items);
        let places: Vec<(usize, u64)> = plan
            .signals
            .iter()
            .map(|s| (s.index, s.connection_id))
            .collect();
        assert_eq!(places, vec![(0, 7), (1, 7), (2, 8)]);
        let kinds: Vec<Option<(ReceiptKind, u64)>> =
            plan.signals.iter().map(|s| s.receipt).collect();
        assert_eq!(
            kinds,
            vec![
                None,
                Some((ReceiptKind::Read, 4)),
                Some((ReceiptKind::Delivered, 9))
            ]
        );
        assert!(plan.sends.is_empty());
        let groups: Vec<Vec<usize>> = by_connection(plan.signals, |s| s.connection_id)
            .iter()
            .map(|g| g.iter().map(|s| s.index).collect())
            .collect();
        assert_eq!(
            groups,
            vec![vec![0, 1], vec![2]],
            "per connection, in batch order"
        );
    }

    fn send_body(client_msg_id: &str, body: String) -> ServerItem {
        frame(
            1,
            "ann",
            ClientFrame::Send {
                conversation_id: C1.into(),
                client_msg_id: client_msg_id.into(),
                body,
                attachments: Vec::new(),
                reply_to: None,
            },
        )
    }

    #[test]
    fn sends_the_edge_would_refuse_are_refused_again_and_never_numbered() {
        let items = vec![
            send_body("big", "x".repeat(65_537)),
            send_body("nul", "a\0b".into()),
            // Legal: 43,000 bytes, 258,000 once escaped, one record fits a produce.
            send_body("poison", "\u{1}".repeat(43_000)),
            send_body("limit", "\u{1}".repeat(65_536)),
        ];
        let plan = plan(&ServerId::parse("h1").unwrap(), items);
        let code = |i: usize| match &plan.replies[i] {
            Some(ServerFrame::Error {
                code,
                client_msg_id: Some(id),
                ..
            }) => Some((*code, id.clone())),
            None => None,
            other => panic!("item {i}: {other:?}"),
        };
        assert_eq!(code(0), Some((ErrorCode::TooLarge, "big".into())));
        assert_eq!(code(1), Some((ErrorCode::BadRequest, "nul".into())));
        assert_eq!(code(2), None);
        assert_eq!(code(3), None);
        let numbered: Vec<&str> = plan.sends[&conversation(C1)]
            .iter()
            .map(|(_, s)| s.client_msg_id.as_str())
            .collect();
        assert_eq!(numbered, ["poison", "limit"]);
    }

    #[test]
    fn a_send_whose_record_would_not_fit_one_produce_is_too_large() {
        // A manager whose body limit lets through more than a record can carry.
        let loose = SendLimits {
            max_body_bytes: 1 << 20,
            max_record_bytes: switchboard_kafka::RECORD_MAX_BYTES,
        };
        let body = "\u{1}".repeat(200_000); // 1.2 MB escaped
        let items = vec![
            send_body("escaped", body),
            send_body("plain", "x".repeat(200_000)),
        ];
        let plan = super::plan(&ServerId::parse("h1").unwrap(), items, &loose);
        assert!(
            matches!(&plan.replies[0], Some(ServerFrame::Error { code: ErrorCode::TooLarge, client_msg_id: Some(id), .. }) if id == "escaped"),
            "{:?}",
            plan.replies[0]
        );
        assert_eq!(plan.replies[1], None);
        assert!(record_len("ann", "c", "\u{1}") >= 6 + crate::config::RECORD_OVERHEAD_BYTES);
    }
}
