//! What the registry's handlers share ([`AppState`]): the directory, the keys that verify
//! client tokens, the settings, the assign counter and the per-address limits.

use switchboard_protocol::token::TokenKeys;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::limits::{IpLeases, IpRateLimiter};

use crate::config::RegistryConfig;

/// What the handlers share.
pub(crate) struct AppState {
    pub directory: ServerDirectory,
    pub tokens: TokenKeys,
    pub config: RegistryConfig,
    pub assignments: prometheus::IntCounterVec,
    pub assign_rate: IpRateLimiter,
    pub reservations: IpLeases,
}
