//! The variables of `push-gateway-sink` (the reference push gateway and webhook sink, for tests
//! and local use).

use crate::env::{EnvTable, EnvVar};
use crate::names::{SB_PUSH_GATEWAY_SECRET, SB_PUSH_SINK_BIND, SB_PUSH_SINK_REJECT};

/// `SB_PUSH_SINK_BIND`'s default.
pub const DEFAULT_BIND: &str = "127.0.0.1:8502";

/// What `push-gateway-sink` reads.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_PUSH_SINK_BIND,
        default: Some(DEFAULT_BIND),
        doc: "Address the sink listens on (`POST /push`, `GET /pushes`, `DELETE /pushes`; \
              `POST /webhook`, `GET /webhooks`, `DELETE /webhooks`).",
    },
    EnvVar {
        name: SB_PUSH_GATEWAY_SECRET,
        default: None,
        doc: "The notifier's signing secret: pushes whose signature does not verify are \
              answered 401. Unset: signatures are not checked.",
    },
    EnvVar {
        name: SB_PUSH_SINK_REJECT,
        default: None,
        doc: "Pushkeys (comma separated) the sink answers as rejected, so the notifier \
              removes their devices.",
    },
];

/// The `push-gateway-sink` table.
pub const TABLE: EnvTable = EnvTable {
    title: "Reference push gateway",
    vars: ENV,
};
