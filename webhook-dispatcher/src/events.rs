//! What the topics' records become: webhook events, each with its type, a stable id, the
//! stream it is ordered in and its JSON body.
//!
//! Bodies follow the Standard Webhooks shape `{"type", "timestamp", "data"}`. The id
//! (`webhook-id`) is derived from the record's content, never from where it was read, so a
//! record read again (a restart before its offset was committed, or a producer retry that
//! wrote it twice) gets the same id and is stored once per endpoint:
//! - `message.created`: `evt_<message_id>`, ordered by `seq` per conversation;
//! - `receipt.updated`: `evt_rcpt_<hash of conversation, user, kind, seq>`, ordered by `seq`
//!   per conversation;
//! - `presence.changed`: `evt_pres_<hash of user, status, time>`, in log order per user;
//! - `conversation.created`, `member.added`, `member.removed`: `evt_<event_id>` (fixed by the
//!   message service when the change committed), in log order per conversation.

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard_message_log::{Event, LogRecord};
use switchboard_protocol::frames::ReceiptKind;
use switchboard_protocol::{ConversationId, Timestamp, UserId};

/// The event types, as endpoints subscribe to them.
pub const EVENT_TYPES: &[&str] = &[
    "message.created",
    "receipt.updated",
    "member.added",
    "member.removed",
    "conversation.created",
    "presence.changed",
];

/// One event to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// `webhook-id`.
    pub id: String,
    pub event_type: &'static str,
    /// The stream its order is kept in (`conversation:<id>`, `receipts:<id>`, ...).
    pub ordering_key: String,
    /// Its place in that stream (`seq`; 0 for events kept in log order).
    pub ord: i64,
    /// When it happened: only endpoints registered before it get it.
    pub at: DateTime<Utc>,
    /// The request body.
    pub body: String,
}

fn body(event_type: &str, at: DateTime<Utc>, data: serde_json::Value) -> String {
    json!({
        "type": event_type,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message of the log.
pub fn message_created(record: &LogRecord) -> WebhookEvent {
    let at = record.created_at.datetime();
    WebhookEvent {
        id: format!("evt_{}", record.message_id),
        event_type: "message.created",
        ordering_key: format!("conversation:{}", record.conversation_id),
        ord: i64::try_from(record.seq).unwrap_or(i64::MAX),
        at,
        body: body(
            "message.created",
            at,
            json!({
                "conversation_id": record.conversation_id,
                "seq": record.seq,
                "message_id": record.message_id,
                "sender_id": record.sender_id,
                "client_msg_id": record.client_msg_id,
                "body": record.body,
                "created_at": record.created_at.to_string(),
            }),
        ),
    }
}

/// An event of the events topic; `at` is the record's time for events that carry none.
pub fn from_event(event: &Event, record_time: DateTime<Utc>) -> WebhookEvent {
    match event {
        Event::Receipt {
            conversation_id,
            user_id,
            kind,
            seq,
        } => receipt_updated(conversation_id, user_id, kind, *seq, record_time),
        Event::Presence {
            user_id,
            online,
            at,
        } => presence_changed(user_id, *online, at),
        Event::ConversationCreated {
            event_id,
            conversation_id,
            kind,
            name,
            created_by,
            members,
            at,
        } => WebhookEvent {
            id: format!("evt_{event_id}"),
            event_type: "conversation.created",
            ordering_key: format!("members:{conversation_id}"),
            ord: 0,
            at: at.datetime(),
            body: body(
                "conversation.created",
                at.datetime(),
                json!({
                    "conversation_id": conversation_id,
                    "kind": kind,
                    "name": name,
                    "created_by": created_by,
                    "members": members,
                }),
            ),
        },
        Event::MemberAdded {
            event_id,
            conversation_id,
            user_id,
            at,
        } => member(
            event_id,
            "member.added",
            conversation_id,
            user_id,
            at.datetime(),
        ),
        Event::MemberRemoved {
            event_id,
            conversation_id,
            user_id,
            at,
        } => member(
            event_id,
            "member.removed",
            conversation_id,
            user_id,
            at.datetime(),
        ),
    }
}

/// A member's receipt, timed by its record (a receipt carries no time of its own).
fn receipt_updated(
    conversation_id: &ConversationId,
    user_id: &UserId,
    kind: &ReceiptKind,
    seq: u64,
    record_time: DateTime<Utc>,
) -> WebhookEvent {
    let kind = match kind {
        ReceiptKind::Delivered => "delivered",
        ReceiptKind::Read => "read",
    };
    WebhookEvent {
        id: format!(
            "evt_rcpt_{}",
            short_hash(&[conversation_id, user_id, kind, &seq.to_string()])
        ),
        event_type: "receipt.updated",
        ordering_key: format!("receipts:{conversation_id}"),
        ord: i64::try_from(seq).unwrap_or(i64::MAX),
        at: record_time,
        body: body(
            "receipt.updated",
            record_time,
            json!({
                "conversation_id": conversation_id,
                "user_id": user_id,
                "kind": kind,
                "seq": seq,
            }),
        ),
    }
}

/// A user's first device came online or last device went away.
fn presence_changed(user_id: &UserId, online: bool, at: &Timestamp) -> WebhookEvent {
    let status = if online { "online" } else { "offline" };
    WebhookEvent {
        id: format!(
            "evt_pres_{}",
            short_hash(&[user_id, status, &at.to_string()])
        ),
        event_type: "presence.changed",
        ordering_key: format!("presence:{user_id}"),
        ord: 0,
        at: at.datetime(),
        body: body(
            "presence.changed",
            at.datetime(),
            json!({"user_id": user_id, "status": status, "at": at.to_string()}),
        ),
    }
}

fn member(
    event_id: &str,
    event_type: &'static str,
    conversation_id: &ConversationId,
    user_id: &UserId,
    at: DateTime<Utc>,
) -> WebhookEvent {
    WebhookEvent {
        id: format!("evt_{event_id}"),
        event_type,
        ordering_key: format!("members:{conversation_id}"),
        ord: 0,
        at,
        body: body(
            event_type,
            at,
            json!({"conversation_id": conversation_id, "user_id": user_id}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::Timestamp;

    #[test]
    fn ids_come_from_the_content_so_a_record_read_twice_is_one_event() {
        const C1: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        const MSG: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";
        let record = LogRecord {
            conversation_id: C1.parse().unwrap(),
            seq: 7,
            message_id: MSG.parse().unwrap(),
            sender_id: "alice".parse().unwrap(),
            client_msg_id: "x".parse().unwrap(),
            body: "hi".into(),
            created_at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
            epoch: 1,
            attachments: Vec::new(),
            event: None,
            traceparent: None,
        };
        let event = message_created(&record);
        assert_eq!(event.id, format!("evt_{MSG}"));
        assert_eq!(event.ord, 7);
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        assert_eq!(body["type"], "message.created");
        assert_eq!(body["data"]["seq"], 7);
        assert_eq!(body["data"]["body"], "hi");

        let receipt = Event::Receipt {
            conversation_id: C1.parse().unwrap(),
            user_id: "bob".parse().unwrap(),
            kind: ReceiptKind::Read,
            seq: 7,
        };
        let a = from_event(&receipt, Utc::now());
        let b = from_event(&receipt, Utc::now() + chrono::Duration::seconds(5));
        assert_eq!(a.id, b.id);
        assert_eq!(a.event_type, "receipt.updated");
        let other = Event::Receipt {
            conversation_id: C1.parse().unwrap(),
            user_id: "bob".parse().unwrap(),
            kind: ReceiptKind::Delivered,
            seq: 7,
        };
        assert_ne!(from_event(&other, Utc::now()).id, a.id);
        for t in EVENT_TYPES {
            assert!(t.contains('.'));
        }
    }
}
