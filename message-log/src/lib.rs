//! The records Switchboard writes to Kafka, in one place so producers and consumers never
//! disagree: pure types (serde only, no I/O; the client settings are `switchboard-kafka`),
//! with typed ids ([`ConversationId`], [`MessageId`], [`UserId`], ...), timestamps
//! ([`Timestamp`]) and enums, all checked when a record is read (a record that fails is
//! unreadable, and its reader dead-letters it; the JSON is the same plain strings).
//!
//! Topics:
//! - the message log (default `sb.messages`), partitioned explicitly by conversation
//!   ([`log_partition`]), so one conversation's records stay in one partition in `seq` order;
//!   a record is a [`LogEnvelope`] of [`LogRecord`]s. The message service consumes it into SQL.
//! - one topic per socket handler (`sb.handler.<handler id>`): a [`HandlerEnvelope`] of
//!   [`HandlerRecord`]s, each carrying one frame and every local recipient of it on that
//!   handler: one record per target handler, not one per device.
//! - the events topic (default `sb.events`): [`Event`]s (receipts, presence, and the message
//!   service's membership changes) for other consumers (the message service, the webhook
//!   dispatcher).
//!
//! A producer retry may write a record twice; readers drop the repeat by the project's own
//! keys.

use serde::{Deserialize, Serialize};
use switchboard_protocol::frames::ReceiptKind;
pub use switchboard_protocol::frames::RecordKind;
use switchboard_protocol::trace_context::TraceParent;
use switchboard_protocol::{ConversationId, ConversationKind, MessageId, Timestamp, UserId};

/// One record of the message log: a message with its assigned `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub message_id: MessageId,
    pub sender_id: UserId,
    /// The sender's idempotency key as sent (the manager checked it against
    /// [`switchboard_protocol::ClientMsgId`]'s rule); text, so the store is what refuses a
    /// value it cannot hold.
    pub client_msg_id: String,
    pub body: String,
    /// When the manager accepted it (RFC 3339 UTC with milliseconds on the wire).
    pub created_at: Timestamp,
    /// The conversation's log epoch it was numbered under (see [`LogFence`]): the store takes
    /// a record numbered above a later epoch's floor for a late append of a deposed lease
    /// holder, and refuses it. 0 in records written before epochs existed.
    #[serde(default)]
    pub epoch: u64,
    /// The attachment ids the send referenced, verified by the manager before it numbered the
    /// message (docs/architecture.md, "Attachments"). Additive: absent means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
    /// What the record does to an earlier message (issue 28): a reply (`kind` message), an
    /// edit (`body` is the new text), a delete or a reaction. Numbered in the same sequence as
    /// messages. Additive: absent is a plain message, as every record written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RecordEvent>,
    /// The W3C trace context of the send that made it (`00-<trace id>-<parent id>-<flags>`):
    /// the process that reads it continues that trace (docs/architecture.md, "Tracing"). In
    /// the body, not a Kafka header, for the reason [`LogEnvelope::trace`] gives. Additive and
    /// lenient: absent, or not a valid `traceparent`, reads as `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "switchboard_protocol::trace_context::lenient"
    )]
    pub traceparent: Option<TraceParent>,
}

/// The part of a [`LogRecord`] that refers to an earlier message of its conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEvent {
    /// `message`: a message replying to `target_id`; `edit`, `delete`, `reaction`: an event
    /// that changes it.
    #[serde(default)]
    pub kind: RecordKind,
    /// The `message_id` of the earlier message.
    pub target_id: MessageId,
    /// `reaction`: the sender's emoji; absent removes the sender's reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// `delete`: made by a group's owner or admin who is not the author (the role was checked
    /// when it was numbered; roles change, the log does not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderated: bool,
}

impl LogRecord {
    /// The record's kind: [`RecordKind::Message`] unless it is an event.
    pub fn kind(&self) -> RecordKind {
        self.event.as_ref().map_or(RecordKind::Message, |e| e.kind)
    }
}

/// A fence in the message log: from here on (in log order) the conversation's numbers above
/// what the log held before this record belong to `epoch` or a later one.
///
/// A socket manager that checks a sequence counter against the log (a new conversation, or a
/// Redis master that may have lost numbers) asks the message service, which takes the next
/// epoch from PostgreSQL, appends this record to the conversation's partition and waits for
/// ingest to reach it. Ingest then records the fence's *floor*: the highest `seq` stored from
/// everything before it. A record of an older epoch that lands after the fence with a `seq`
/// above that floor was numbered by a holder that lost its lease in a failover and whose append
/// was still in flight: it was never acknowledged (its finish could not succeed), and the
/// number has been handed out again under the new epoch, so the store refuses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFence {
    pub conversation_id: ConversationId,
    pub epoch: u64,
}

/// What one Kafka record of the message log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogItem {
    /// Messages (an envelope, or a single record).
    Messages(Decoded<LogRecord>),
    /// A fence (see [`LogFence`]).
    Fence(LogFence),
}

/// The wire shape of a fence record: `{"fence":{...}}`, which no envelope or record matches.
#[derive(Serialize, Deserialize)]
struct FenceRecord {
    fence: LogFence,
}

/// Encodes a fence for the message log.
pub fn encode_log_fence(fence: &LogFence) -> Vec<u8> {
    serde_json::to_vec(&FenceRecord {
        fence: fence.clone(),
    })
    .expect("a fence encodes")
}

/// Reads one Kafka record of the message log: a fence, an envelope or a single record.
pub fn decode_log_item(payload: &[u8]) -> Result<LogItem, serde_json::Error> {
    if payload.starts_with(b"{\"fence\"") {
        return serde_json::from_slice::<FenceRecord>(payload).map(|f| LogItem::Fence(f.fence));
    }
    decode_log_envelope(payload).map(LogItem::Messages)
}

/// One Kafka record of the message log: every message a manager appended to one partition in
/// one flush. Batching many messages into one broker record is what keeps the broker's cost
/// per message low (tansu stores each record with its own `INSERT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEnvelope {
    /// The flush that wrote it (a ULID): the manager's `appended` log lines name it, and the
    /// message service's `read from the log` lines, so one grep follows a message. In the
    /// body, not a Kafka header: tansu stores each header as a row of its own, one more
    /// statement on its single storage task per record (measured: docs/performance.md run 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub records: Vec<LogRecord>,
}

/// The messages of one message-log Kafka record, an envelope or (as written before envelopes)
/// a single record, with the envelope's trace id (`None` for a single record).
pub fn decode_log_envelope(payload: &[u8]) -> Result<Decoded<LogRecord>, serde_json::Error> {
    decode_records(payload)
}

/// What one Kafka record held: its flush's trace id, if it names one, and its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    pub trace: Option<String>,
    pub records: Vec<T>,
}

/// An envelope of `T`s (`{"trace":...,"records":[...]}`, the shape of [`LogEnvelope`] and
/// [`HandlerEnvelope`]), or one `T` on its own.
fn decode_records<T: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<Decoded<T>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Records<T> {
        #[serde(default)]
        trace: Option<String>,
        records: Vec<T>,
    }
    match serde_json::from_slice::<Records<T>>(payload) {
        Ok(envelope) => Ok(Decoded {
            trace: envelope.trace,
            records: envelope.records,
        }),
        Err(envelope_error) => serde_json::from_slice::<T>(payload)
            .map(|record| Decoded {
                trace: None,
                records: vec![record],
            })
            .map_err(|_| envelope_error),
    }
}

/// The message-log partition of a conversation. The log is partitioned explicitly (not by
/// the client library's key hash) so that one envelope holds one partition's messages; FNV-1a
/// is stable across processes, versions and client libraries.
pub fn log_partition(conversation_id: &ConversationId, partitions: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in conversation_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % partitions.max(1).unsigned_abs()) as i32
}

/// One Kafka record of a handler's topic: every frame a manager routed to that handler in one
/// flush, in the order it routed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerEnvelope {
    /// The routing flush that wrote it (see [`LogEnvelope::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub records: Vec<HandlerRecord>,
}

/// The frames of one handler-topic Kafka record (an envelope, or a single record), with the
/// envelope's trace id.
pub fn decode_handler_envelope(
    payload: &[u8],
) -> Result<Decoded<HandlerRecord>, serde_json::Error> {
    decode_records(payload)
}

/// One record on a handler's topic: a server frame and who on that handler gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRecord {
    /// Users whose every local device gets the frame.
    pub recipients: Vec<String>,
    /// A connection on this handler that must not get it (the sending device, which gets
    /// `sent` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_connection: Option<u64>,
    /// The serialized server frame, forwarded verbatim.
    pub frame: String,
    /// For `message` frames: when the message was accepted (ms since the epoch), so the
    /// handler can measure end-to-end delivery latency without parsing the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at_ms: Option<i64>,
    /// For `message` frames: the conversation and `seq`, so the handler can restore `seq`
    /// order when two managers' records for one conversation land out of order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<(ConversationId, u64)>,
    /// For `message` frames: the message id, so the handler's log names it without parsing
    /// the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// The W3C trace context of the send whose frame it carries (`message` and `event` frames) (`00-<trace id>-<parent id>-<flags>`):
    /// the process that reads it continues that trace (docs/architecture.md, "Tracing"). In
    /// the body, not a Kafka header, for the reason [`LogEnvelope::trace`] gives. Additive and
    /// lenient: absent, or not a valid `traceparent`, reads as `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "switchboard_protocol::trace_context::lenient"
    )]
    pub traceparent: Option<TraceParent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const M: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";
    const M0: &str = "01BX5ZZKBKACTAV9WEVGEMMVS0";

    fn id<I: std::str::FromStr>(text: &str) -> I
    where
        I::Err: std::fmt::Debug,
    {
        text.parse().unwrap()
    }

    #[test]
    fn handler_record_round_trips_and_omits_empty_skip() {
        let record = HandlerRecord {
            recipients: vec!["bob".into()],
            skip_connection: None,
            frame: r#"{"type":"pong"}"#.into(),
            accepted_at_ms: None,
            order: None,
            message_id: None,
            traceparent: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("skip_connection"));
        assert_eq!(
            serde_json::from_str::<HandlerRecord>(&json).unwrap(),
            record
        );
    }

    #[test]
    fn envelopes_and_single_records_both_decode() {
        let record = LogRecord {
            conversation_id: id(C),
            seq: 1,
            message_id: id(M),
            sender_id: id("u"),
            client_msg_id: "x".into(),
            body: "hi".into(),
            created_at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
            epoch: 3,
            attachments: Vec::new(),
            event: None,
            traceparent: None,
        };
        let single = serde_json::to_vec(&record).unwrap();
        assert_eq!(
            decode_log_envelope(&single).unwrap().records,
            vec![record.clone()]
        );
        let envelope = serde_json::to_vec(&LogEnvelope {
            trace: Some("01J0TRACE".into()),
            records: vec![record.clone(), record.clone()],
        })
        .unwrap();
        assert_eq!(decode_log_envelope(&envelope).unwrap().records.len(), 2);
        let decoded = decode_log_envelope(&envelope).unwrap();
        assert_eq!(decoded.trace.as_deref(), Some("01J0TRACE"));
        assert_eq!(decode_log_envelope(&single).unwrap().trace, None);
        assert!(decode_log_envelope(b"{}").is_err());
        // A timestamp is checked when read: a record with another kind of text is unreadable
        // (ingest dead-letters it with its payload), never stored with a made-up time.
        let text = String::from_utf8(single).unwrap();
        let bad = text.replace("2026-01-01T00:00:00.000Z", "yesterday");
        assert!(decode_log_envelope(bad.as_bytes()).is_err());
        assert!(decode_handler_envelope(b"[").is_err());
    }

    #[test]
    fn events_are_additive_and_old_records_are_messages() {
        let old = br#"{"conversation_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","seq":1,"message_id":"01BX5ZZKBKACTAV9WEVGEMMVRZ","sender_id":"u","client_msg_id":"x","body":"hi","created_at":"2026-01-01T00:00:00.000Z"}"#;
        let record = &decode_log_envelope(old).unwrap().records[0];
        assert_eq!(record.kind(), RecordKind::Message);
        assert!(!serde_json::to_string(record).unwrap().contains("event"));
        let mut edit = record.clone();
        edit.event = Some(RecordEvent {
            kind: RecordKind::Edit,
            target_id: id(M0),
            emoji: None,
            moderated: false,
        });
        let json = serde_json::to_value(&edit).unwrap();
        assert_eq!(
            json["event"],
            serde_json::json!({"kind":"edit","target_id":M0})
        );
        let back: LogRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.kind(), RecordKind::Edit);
        assert_eq!(back, edit);
    }

    #[test]
    fn a_records_traceparent_is_additive_and_lenient() {
        let old = r#"{"conversation_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","seq":1,"message_id":"01BX5ZZKBKACTAV9WEVGEMMVRZ","sender_id":"u","client_msg_id":"x","body":"hi","created_at":"2026-01-01T00:00:00.000Z"}"#;
        let record = decode_log_envelope(old.as_bytes())
            .unwrap()
            .records
            .remove(0);
        assert_eq!(record.traceparent, None, "an older record has none");
        assert!(!serde_json::to_string(&record)
            .unwrap()
            .contains("traceparent"));
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let traced = old.replace('}', &format!(r#","traceparent":"{value}"}}"#));
        let read = decode_log_envelope(traced.as_bytes())
            .unwrap()
            .records
            .remove(0);
        assert_eq!(
            read.traceparent.map(|t| t.to_string()).as_deref(),
            Some(value)
        );
        assert!(serde_json::to_string(&read).unwrap().contains(value));
        // A bad value does not make the record unreadable: it reads as no trace.
        let bad = old.replace('}', r#","traceparent":"00-zz"}"#);
        let read = decode_log_envelope(bad.as_bytes())
            .unwrap()
            .records
            .remove(0);
        assert_eq!(read.traceparent, None);
        let handler = r#"{"recipients":["bob"],"frame":"{}","traceparent":"garbage"}"#;
        let read = decode_handler_envelope(handler.as_bytes()).unwrap();
        assert_eq!(read.records[0].traceparent, None);
    }

    #[test]
    fn fences_and_records_without_an_epoch_decode() {
        let fence = LogFence {
            conversation_id: id(C),
            epoch: 7,
        };
        let encoded = encode_log_fence(&fence);
        assert_eq!(decode_log_item(&encoded).unwrap(), LogItem::Fence(fence));
        // Written before epochs existed: epoch 0.
        let old = br#"{"records":[{"conversation_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","seq":1,"message_id":"01BX5ZZKBKACTAV9WEVGEMMVRZ","sender_id":"u","client_msg_id":"x","body":"hi","created_at":"2026-01-01T00:00:00.000Z"}]}"#;
        match decode_log_item(old).unwrap() {
            LogItem::Messages(decoded) => assert_eq!(decoded.records[0].epoch, 0),
            other => panic!("{other:?}"),
        }
        assert!(decode_log_item(b"{\"fence\":{}}").is_err());
    }

    #[test]
    fn events_keep_their_wire_shape() {
        let receipt = Event::Receipt {
            conversation_id: id(C),
            user_id: id("bob"),
            kind: ReceiptKind::Read,
            seq: 4,
        };
        assert_eq!(
            serde_json::to_value(&receipt).unwrap(),
            serde_json::json!({"type":"receipt","conversation_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","user_id":"bob","kind":"read","seq":4})
        );
        let presence: Event = serde_json::from_str(
            r#"{"type":"presence","user_id":"bob","online":false,"at":"2026-01-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert!(matches!(presence, Event::Presence { online: false, .. }));
        assert!(serde_json::from_str::<Event>(
            r#"{"type":"receipt","conversation_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","user_id":"b","kind":"seen","seq":1}"#
        )
        .is_err());
        let added: Event = serde_json::from_str(
            r#"{"type":"member_added","event_id":"e1","conversation_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","user_id":"bob","at":"2026-01-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert!(matches!(added, Event::MemberAdded { .. }));
        let created = Event::ConversationCreated {
            event_id: "e2".into(),
            conversation_id: id(C),
            kind: ConversationKind::Group,
            name: None,
            created_by: id("alice"),
            members: vec![id("alice")],
            at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
        };
        let json = serde_json::to_value(&created).unwrap();
        assert_eq!(json["type"], "conversation_created");
        assert!(json.get("name").is_none());
    }

    #[test]
    fn log_partitions_are_stable_and_in_range() {
        assert_eq!(log_partition(&id(C), 8), log_partition(&id(C), 8));
        for i in 0..100 {
            let p = log_partition(&id(&format!("01ARZ3NDEKTSV4RRFFQ69G{i:04}")), 8);
            assert!((0..8).contains(&p));
        }
        assert_eq!(log_partition(&id(C), 1), 0);
        assert_eq!(log_partition(&id(C), 0), 0);
    }
}

/// A record of the events topic: things other consumers (the message service, analytics)
/// want to know that are not messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A member's cumulative delivered/read position in a conversation.
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        kind: ReceiptKind,
        seq: u64,
    },
    /// A user's first device came online or last device went away.
    Presence {
        user_id: UserId,
        online: bool,
        at: Timestamp,
    },
    /// A conversation was created, with its members at creation (invitees are not members
    /// yet: each becomes one with a [`Event::MemberAdded`] when they accept). Written by the
    /// message service after the change committed (its `event_outbox`), keyed by
    /// conversation; `event_id` is fixed when the change commits, so a record written twice
    /// is recognisably the same event.
    ConversationCreated {
        event_id: String,
        conversation_id: ConversationId,
        kind: ConversationKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        created_by: UserId,
        members: Vec<UserId>,
        at: Timestamp,
    },
    /// A user became an active member of a conversation (added, or accepted an invite).
    MemberAdded {
        event_id: String,
        conversation_id: ConversationId,
        user_id: UserId,
        at: Timestamp,
    },
    /// An active member left or was removed.
    MemberRemoved {
        event_id: String,
        conversation_id: ConversationId,
        user_id: UserId,
        at: Timestamp,
    },
}
