//! The server API's key variables (the message service, the webhook dispatcher). Parsed by
//! service-kit's `ApiKeys`.

use crate::env::EnvVar;
use crate::names::{SB_API_KEYS, SB_API_KEYS_FILE};

/// The variables, for the tables of the services that take API keys (each titles its own:
/// [`super::message_service::API_KEYS_TABLE`], [`super::webhook_dispatcher::API_KEYS_TABLE`]).
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_API_KEYS_FILE,
        default: None,
        doc: "A JSON file of the server API's keys: [{\"id\", \"sha256\" (hex of the whole \
              key's SHA-256), \"scopes\" (messages:write, conversations:write, read, \
              users:disconnect, webhooks:manage), \"rate_per_sec\" (default 50; 0: no limit), \
              \"burst\" (default the rate)}]; `mint-api-key` prints an entry. Re-read within a \
              second when it changes (rotation without restarts). Unset with SB_API_KEYS unset: \
              no keys, every /server request is 401.",
    },
    EnvVar {
        name: SB_API_KEYS,
        default: None,
        doc: "The same JSON as SB_API_KEYS_FILE, inline (read once at start). Setting both is \
              a configuration error.",
    },
];
