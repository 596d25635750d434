//! Bodies of the message service's REST API (docs/protocol.md, "REST"): conversations,
//! members and roles, history, presence. The service answers with these types and clients
//! (the e2e tests, loadgen) can read them typed.

use serde::{Deserialize, Serialize};

use crate::frames::PresenceStatus;
use crate::{ConversationId, MessageId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub members: Vec<String>,
    /// Groups only: each member's role (`owner`, `admin` or `member`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roles: std::collections::BTreeMap<String, Role>,
    /// Groups only: users invited who have not accepted yet (not members: they neither send
    /// nor receive). Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invited: Vec<String>,
}

/// A member's role in a group. The owner (the creator) and admins add and remove members;
/// only the owner names admins; anyone may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// The role stored as `text` (anything unknown is a plain member).
    pub fn parse(text: &str) -> Role {
        match text {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            _ => Role::Member,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// May add and remove members.
    pub fn manages_members(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConversationSummary {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    /// The members, by user id; at most the first 100 (see `member_count`).
    pub members: Vec<String>,
    /// How many members the conversation has (`members` may list fewer).
    #[serde(default)]
    pub member_count: i64,
    pub last_seq: i64,
    /// Messages past the later of the caller's `read_seq` and the caller's own last message.
    pub unread: i64,
    /// Every member's cumulative receipts, so a client can draw delivered/read marks after
    /// a reconnect without waiting for new `receipt` frames.
    pub receipts: Vec<MemberReceipt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberReceipt {
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredMessage {
    #[schema(value_type = String)]
    pub conversation_id: ConversationId,
    #[schema(value_type = String)]
    pub message_id: MessageId,
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    /// The current text: the last edit's, or empty for a deleted message.
    pub body: String,
    pub created_at: String,
    /// The message it answers (`send`'s `reply_to`). Additive: absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// When it was last edited (RFC 3339). Absent: never edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    /// Deleted for everyone: a tombstone, its body erased from the store. Absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Its reactions, one entry per emoji (most used first). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
}

/// How many members reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: i64,
    /// Whether the caller's reaction is this one.
    pub me: bool,
    /// Who reacted with it (by user id), so a client can apply later reaction events.
    pub users: Vec<String>,
}

/// An edit, delete or reaction as numbered in the conversation's sequence (history with
/// `?events=true`, for clients that replay them; `message` is the live frame's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageEvent {
    pub seq: i64,
    pub event_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    /// `edit`, `delete` or `reaction`.
    pub kind: String,
    /// The message it changes.
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// `edit`: the new text (erased once the message is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `reaction`: the sender's emoji from now on; absent: the sender removed theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// False when it changed nothing: its message was deleted before it, or (never for an
    /// event its sender was told `sent` about in the ordinary course) it did not qualify.
    pub applied: bool,
    pub created_at: String,
}

/// `POST /api/v1/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateConversation {
    /// `direct` or `group`.
    pub kind: String,
    /// Groups: 1-200 bytes.
    #[serde(default)]
    pub name: Option<String>,
    /// The other members (the caller is always one).
    #[serde(default)]
    pub members: Vec<String>,
}

/// `POST /api/v1/conversations/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddMember {
    /// Checked as the body is read: a bad one is a `bad_request` naming the rule.
    #[schema(value_type = String)]
    pub user_id: UserId,
}

/// `PUT /api/v1/conversations/{id}/members/{user_id}/role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetRole {
    pub role: Role,
}

/// `GET /api/v1/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A group invite the caller has not answered (`GET /api/v1/invitations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invitation {
    #[schema(value_type = String)]
    pub conversation_id: ConversationId,
    pub name: Option<String>,
    pub invited_by: Option<String>,
}

/// `GET /api/v1/invitations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvitationList {
    pub invitations: Vec<Invitation>,
}

/// `GET /api/v1/blocks`: the users the caller blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockList {
    pub blocked: Vec<String>,
}

/// `GET /api/v1/conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<StoredMessage>,
    /// With `?events=true`: the edits, deletes and reactions numbered in the same `seq` range
    /// as `messages`, in `seq` order. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<MessageEvent>>,
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Presence {
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// `online` while a device is connected, else `offline`.
    #[schema(value_type = String)]
    pub status: PresenceStatus,
    /// RFC 3339: now while online, else when the last device left (null: never seen).
    pub last_seen: Option<String>,
}

/// `GET /api/v1/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PresenceList {
    pub presence: Vec<Presence>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_documented_shape() {
        let direct = Conversation {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            kind: "direct".into(),
            name: None,
            members: vec!["alice".into(), "bob".into()],
            roles: Default::default(),
            invited: Vec::new(),
        };
        let json = serde_json::to_value(&direct).unwrap();
        assert!(
            json.get("roles").is_none() && json.get("invited").is_none(),
            "a direct conversation has no roles or invites: {json}"
        );
        assert_eq!(
            serde_json::from_value::<Conversation>(json).unwrap(),
            direct
        );

        let group: Conversation = serde_json::from_str(
            r#"{"id":"g","kind":"group","name":"team","members":["a","b"],"roles":{"a":"owner","b":"member"}}"#,
        )
        .unwrap();
        assert_eq!(group.roles["a"], Role::Owner);
        assert!(group.roles["a"].manages_members() && !group.roles["b"].manages_members());

        let presence = PresenceList {
            presence: vec![Presence {
                user_id: "bob".parse().unwrap(),
                status: PresenceStatus::Online,
                last_seen: None,
            }],
        };
        assert_eq!(
            serde_json::to_string(&presence).unwrap(),
            r#"{"presence":[{"user_id":"bob","status":"online","last_seen":null}]}"#
        );
    }

    #[test]
    fn roles_parse_as_stored() {
        for role in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(Role::parse(role.as_str()), role);
        }
        assert_eq!(Role::parse("something else"), Role::Member);
    }
}
