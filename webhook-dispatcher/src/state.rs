//! What the endpoint API's handlers share ([`ApiState`]): the store, the API keys that may
//! manage endpoints, the SSRF guard's networks, the limits, and the wake-up of the delivery
//! workers.

use std::sync::Arc;

use switchboard_service_kit::api_keys::ApiKeys;
use tokio::sync::Notify;

use crate::ssrf::AllowNets;
use crate::store::Store;

/// The endpoint API's state, one per application.
pub struct ApiState {
    pub store: Store,
    pub keys: ApiKeys,
    pub allow: AllowNets,
    pub max_endpoints: i64,
    pub secret_overlap: std::time::Duration,
    /// Wakes the delivery supervisor, so a new or re-enabled endpoint gets its worker now.
    pub wake: Arc<Notify>,
}
