//! The message-event variables of the message service (edits, deletes, reactions). Parsed by
//! `message_service::events`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{SB_EDIT_WINDOW_SECS, SB_MAX_EDITS, SB_MAX_REACTIONS_PER_MESSAGE};

/// The message-event variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_EDIT_WINDOW_SECS,
        default: Some("900"),
        doc: "How long after a message was sent its author may edit it, in seconds; later \
              edits are refused `edit_window_closed`. 0: no limit.",
    },
    EnvVar {
        name: SB_MAX_EDITS,
        default: Some("20"),
        doc: "How many times one message may be edited; further edits are refused \
              `too_many_edits`.",
    },
    EnvVar {
        name: SB_MAX_REACTIONS_PER_MESSAGE,
        default: Some("20"),
        doc: "Distinct emoji one message may carry as reactions (each user has one reaction \
              per message); a reaction with a new emoji past it is refused \
              `too_many_reactions`.",
    },
];

/// The message-event table (docs/configuration.md, "Message events (message service)").
pub const TABLE: EnvTable = EnvTable {
    title: "Message events (message service)",
    vars: ENV,
};
