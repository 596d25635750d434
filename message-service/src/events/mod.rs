//! Message events (issue 28 part 1): edits, deletes for everyone, reactions and replies.
//!
//! Every one of them is a record of the message log numbered in the conversation's sequence
//! by the same path as a message (the managers' lease, idempotency, epoch, `acks=all`,
//! fan-out), and a row of `messages` (`kind`, `target_id`, `payload`; migration
//! `0010_message_events.sql`). Three parts, a submodule each:
//!
//! - **The check before numbering** (`check`: `POST /internal/v1/conversations/{id}/events/check`,
//!   socket managers only): whether each event may be done: the sender is an active member;
//!   the target is a message of this conversation (ingest may trail the sender's `sent` by a
//!   fetch wait, so a target not stored yet is waited for, up to [`TARGET_WAIT`]; one whose
//!   id was minted less than [`IN_FLIGHT`] ago is then answered `unavailable`, to be
//!   retried, rather than `message_not_found`) and not deleted; an edit is the author's,
//!   within `SB_EDIT_WINDOW_SECS` of the message and under
//!   `SB_MAX_EDITS`; a delete is the author's or a group owner's or admin's (then marked
//!   `moderated` in the record); a reaction's emoji keeps the message within
//!   `SB_MAX_REACTIONS_PER_MESSAGE` distinct emoji. A refusal reaches the sender as an `error`
//!   frame with a stable code; nothing is numbered. A resend of an event already stored is
//!   admitted whatever the limits say now, so it gets its original `sent`. These limits are
//!   admission limits: events in flight together (two devices editing at once) are checked
//!   against the same stored state, so they may overshoot by what was in flight.
//! - **Applying them at ingest** (`at_ingest`, [`apply`]), in the batch's transaction, in `seq`
//!   order, once (an event row is applied while `applied IS NULL`, then marked; a redelivered
//!   record's row is already there and is skipped by the insert). The rules follow from the log
//!   alone, so every device that replays the same sequence ends in the same state as history: the
//!   target must be a message of the conversation and not deleted; an edit must be its author's; a
//!   delete its author's or `moderated`. An event that fails them (a delete numbered before an edit
//!   of the same message) is kept with `applied = false`: its `seq` stays taken, and it changes
//!   nothing. A delete erases the message's body, its edits' texts and its reactions from
//!   PostgreSQL, and marks its attachments for the sweeper. A batch without events runs none of
//!   this.
//! - **History** (`history`, [`page`]): messages in their current state (`edited_at`,
//!   `deleted`, `reply_to`, `reactions` with the caller's own marked) and, with
//!   `?events=true`, the raw events of the same `seq` range.

use std::time::Duration;

use switchboard_config::lookup::{lookup_or, process_env, ConfigError, Lookup};
use switchboard_config::names::{SB_EDIT_WINDOW_SECS, SB_MAX_EDITS, SB_MAX_REACTIONS_PER_MESSAGE};

mod at_ingest;
mod check;
mod history;

pub use at_ingest::{any_rich, apply, insert_rich};
pub use check::{configure, verdicts};
pub use history::{page, Page};

/// How long the check waits for a target message that ingest has not stored yet (the sender
/// had its `sent`, so it is in the log): history trails the log by about a fetch wait.
pub const TARGET_WAIT: Duration = Duration::from_secs(2);

/// How long after its id was minted a target the store does not hold may still be on its
/// way through the log (answered `unavailable`, not `message_not_found`).
pub const IN_FLIGHT: Duration = Duration::from_secs(30);

/// The limits the check applies before an event is numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// `None`: edits at any age.
    pub edit_window: Option<Duration>,
    pub max_edits: u32,
    pub max_reactions_per_message: u32,
}

impl EventLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let window: u64 = lookup_or(lookup, SB_EDIT_WINDOW_SECS, 900)?;
        Ok(EventLimits {
            edit_window: (window > 0).then(|| Duration::from_secs(window)),
            max_edits: lookup_or(lookup, SB_MAX_EDITS, 20)?,
            max_reactions_per_message: lookup_or(lookup, SB_MAX_REACTIONS_PER_MESSAGE, 20)?,
        })
    }
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            edit_window: Some(Duration::from_secs(900)),
            max_edits: 20,
            max_reactions_per_message: 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_events_in_history() {
        let doc = serde_json::to_value(crate::routes::public_openapi()).unwrap();
        let history = &doc["paths"]["/api/v1/conversations/{id}/messages"]["get"];
        let params: Vec<&str> = history["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(params.contains(&"events"), "{params:?}");
        let schemas = &doc["components"]["schemas"];
        for field in ["reply_to", "edited_at", "deleted", "reactions"] {
            assert!(
                schemas["StoredMessage"]["properties"].get(field).is_some(),
                "StoredMessage.{field}"
            );
        }
        assert!(schemas["MessagePage"]["properties"].get("events").is_some());
        assert!(schemas["MessageEvent"]["properties"]
            .get("applied")
            .is_some());
        assert!(schemas["ReactionCount"]["properties"]
            .get("users")
            .is_some());
    }

    #[test]
    fn limits_read_their_variables() {
        let env = |name: &str| match name {
            SB_EDIT_WINDOW_SECS => Some("0".to_owned()),
            SB_MAX_EDITS => Some("3".to_owned()),
            _ => None,
        };
        let limits = EventLimits::from_lookup(&env).unwrap();
        assert_eq!(limits.edit_window, None, "0: no window");
        assert_eq!(limits.max_edits, 3);
        assert_eq!(limits.max_reactions_per_message, 20);
        assert_eq!(
            EventLimits::from_lookup(&|_| None).unwrap(),
            EventLimits::default()
        );
        let bad = |name: &str| (name == SB_MAX_EDITS).then(|| "many".to_owned());
        assert!(EventLimits::from_lookup(&bad).is_err());
    }
}
