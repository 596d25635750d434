//! The ids that cross service boundaries, each with the one rule that says what a valid one
//! is. A value of these types has been checked: it is safe inside a Redis key (never `:`), a
//! URL path segment (percent-encoded with [`crate::token::path_segment`] where the rule
//! allows more than RFC 3986's unreserved characters) and, for [`ServerId`], a Kafka topic
//! name. A map keyed by one of them is looked up with a `&str` ([`Borrow<str>`]).
//!
//! The wire keeps plain strings (frames and REST bodies are parsed leniently, then checked
//! here, so a bad id gets the documented error code instead of a JSON parse error); code that
//! has checked an id carries it as one of these types.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not an id of a kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is invalid: it must be {rule}")]
pub struct IdError {
    /// The id's field name (`user_id`, `conversation_id`, ...).
    pub kind: &'static str,
    /// The refused text, cut to 64 bytes for messages and logs.
    pub value: String,
    /// The rule, as a client reads it.
    pub rule: &'static str,
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, kind = $kind:literal, rule = $rule:literal, check = $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The rule, for error messages and documentation.
            pub const RULE: &'static str = $rule;

            /// Checks `text` against the rule.
            pub fn parse(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                let check: fn(&str) -> bool = $check;
                if check(&text) {
                    Ok($name(text))
                } else {
                    Err(IdError {
                        kind: $kind,
                        value: text.chars().take(64).collect(),
                        rule: $rule,
                    })
                }
            }

            /// Checks `text`, giving it back whole when it fails (the caller may still need
            /// it, say to echo it in an error frame), so the happy path copies nothing.
            pub fn parse_owned(text: String) -> Result<Self, String> {
                let check: fn(&str) -> bool = $check;
                if check(&text) {
                    Ok($name(text))
                } else {
                    Err(text)
                }
            }

            /// Whether `text` satisfies the rule.
            pub fn is_valid(text: &str) -> bool {
                let check: fn(&str) -> bool = $check;
                check(text)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                $name::parse(text)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                $name::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        // Hash and Eq are the inner string's, so a `HashMap<Id, _>` is looked up by `&str`.
        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::postgres::PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.0.as_str(), buf)
            }
        }

        /// A stored id is checked as it is read: a row that breaks the rule is a decode
        /// error, never an unchecked id.
        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok($name::parse(text)?)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A user: the `sub` of a token. `[A-Za-z0-9_.|@+-]{1,128}`: the SPEC's
    /// `[A-Za-z0-9_.-]{1,64}` widened so identity providers' subjects fit (`auth0|5f7c8e`,
    /// `google-oauth2|1234`, `ann@example.com`, `ann+work@example.com`). Never `:` (it
    /// separates the parts of Redis keys), `/`, `%`, `?`, `#`, whitespace or controls; in a
    /// URL path, percent-encode it ([`crate::token::path_segment`]).
    UserId,
    kind = "user_id",
    rule = "1-128 characters of [A-Za-z0-9_.|@+-]",
    check = |id| {
        (1..=128).contains(&id.len())
            && id.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'|' | b'@' | b'+')
            })
    }
);

string_id!(
    /// A conversation: a ULID the message service makes (26 characters of Crockford
    /// base32), so nothing that could change the meaning of a Redis key or a URL path.
    ConversationId,
    kind = "conversation_id",
    rule = "a ULID (26 characters of Crockford base32)",
    check = |id| id.len() == 26 && is_crockford_ulid(id)
);

string_id!(
    /// A socket server: the server that holds a user's connections and consumes its own
    /// Kafka topic (`<prefix><server id>`). Its characters are the ones Kafka allows in a
    /// topic name. The internal API and the topic keep the original design's word for it,
    /// "handler" (`handler_id`, `sb.handler.<id>`): wire names, not the type's.
    ServerId,
    kind = "handler_id",
    rule = "1-200 characters of [A-Za-z0-9._-] (it names a Kafka topic)",
    check = |id| {
        (1..=200).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }
);

string_id!(
    /// A sender's idempotency key for one message: resending the same one in the same
    /// conversation answers with the first send's `message_id` and `seq`. Any text of 1-128
    /// bytes that PostgreSQL can store (no U+0000).
    ClientMsgId,
    kind = "client_msg_id",
    rule = "1-128 bytes without U+0000",
    check = |id| (1..=128).contains(&id.len()) && !id.contains('\0')
);

string_id!(
    /// A message (or a message event: an edit, delete or reaction takes an id of the same
    /// kind): a ULID the manager makes when it numbers it.
    MessageId,
    kind = "message_id",
    rule = "a ULID (26 characters of Crockford base32)",
    check = |id| id.len() == 26 && is_crockford_ulid(id)
);

/// What a conversation is: two users (`direct`, one per pair) or a named group. The same
/// strings on the wire, in log records and in PostgreSQL (`conversations.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }

    /// `direct` or `group`; anything else is `None`.
    pub fn parse(text: &str) -> Option<ConversationKind> {
        match text {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

impl fmt::Display for ConversationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ULID's text form: Crockford base32 (no I, L, O, U), and a first character of at most 7
/// (128 bits in 26 characters).
fn is_crockford_ulid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.first().is_some_and(|b| (b'0'..=b'7').contains(b))
        && bytes.iter().all(|b| {
            let b = b.to_ascii_uppercase();
            b.is_ascii_digit()
                || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_fit_identity_providers_and_never_split_keys() {
        assert!(UserId::is_valid("a.b-c_9"));
        for subject in [
            "auth0|5f7c8e",
            "google-oauth2|1234",
            "ann@example.com",
            "ann+work@example.com",
        ] {
            assert!(UserId::is_valid(subject), "{subject}");
        }
        assert!(UserId::is_valid(&"x".repeat(128)));
        for bad in [
            "", "a:b", "a/b", "a b", "a%2F", "a?b", "a#b", "\u{e9}", "a\0",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(UserId::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn conversation_ids_are_ulids() {
        assert!(ConversationId::is_valid("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(ConversationId::is_valid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
        for bad in [
            "",
            "no-such-conversation",
            "../../internal/v1/users/x",
            "01ARZ3NDEKTSV4RRFFQ69G5FA?",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV/",
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01ARZ3NDEKTSV4RRFFQ69G5FAU",
        ] {
            assert!(!ConversationId::is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn server_ids_are_topic_names() {
        assert!(ServerId::is_valid("socket-1-9001"));
        assert!(ServerId::is_valid("socket-01J0.abc_d"));
        for bad in ["", "a b", "a/b", "a:b", "h\u{e9}"] {
            assert!(!ServerId::is_valid(bad), "{bad}");
        }
        assert!(!ServerId::is_valid(&"h".repeat(201)));
    }

    #[test]
    fn message_ids_are_ulids_and_kinds_are_their_wire_strings() {
        assert!(MessageId::is_valid("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!MessageId::is_valid("m1"));
        for kind in [ConversationKind::Direct, ConversationKind::Group] {
            assert_eq!(ConversationKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert_eq!(ConversationKind::parse("channel"), None);
        let mut by_user = std::collections::HashMap::new();
        by_user.insert(UserId::parse("ann").unwrap(), 1);
        assert_eq!(by_user.get("ann"), Some(&1));
    }

    #[test]
    fn client_msg_ids_are_short_storable_text() {
        assert!(ClientMsgId::is_valid("m1"));
        assert!(ClientMsgId::is_valid("any text, even \u{1F600}"));
        assert!(ClientMsgId::is_valid(&"m".repeat(128)));
        assert!(!ClientMsgId::is_valid(""));
        assert!(!ClientMsgId::is_valid(&"m".repeat(129)));
        assert!(!ClientMsgId::is_valid("m\0"));
    }

    #[test]
    fn ids_are_plain_strings_on_the_wire_and_checked_when_read() {
        let id = ConversationId::parse("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#""01ARZ3NDEKTSV4RRFFQ69G5FAV""#
        );
        assert_eq!(
            serde_json::from_str::<ConversationId>(r#""01ARZ3NDEKTSV4RRFFQ69G5FAV""#).unwrap(),
            id
        );
        let err = serde_json::from_str::<UserId>(r#""a:b""#).unwrap_err();
        assert!(err.to_string().contains("user_id"), "{err}");
    }

    #[test]
    fn a_refused_text_comes_back_whole() {
        let long = "m".repeat(300);
        assert_eq!(ClientMsgId::parse_owned(long.clone()), Err(long));
        assert_eq!(ClientMsgId::parse_owned("m1".into()).unwrap(), "m1");
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        let err = ServerId::parse("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"handler_id "a b" is invalid: it must be 1-200 characters of [A-Za-z0-9._-] (it names a Kafka topic)"#
        );
    }
}
