//! The state every HTTP handler of the message service shares, as `web::Data<AppState>`:
//! the two database pools, token keys, the members mirror, the settled check, the settings,
//! attachments and the event limits. Built once by `Application::build`.

use switchboard_chat_state::membership::MembershipMirror;
use switchboard_protocol::token::TokenKeys;

use crate::config::MessageServiceConfig;
use crate::{attachments, events, settled, store};

pub(crate) struct AppState {
    /// The REST pool: public routes.
    pub store: store::Store,
    /// The ingest pool: cluster-only routes (the socket managers' send path).
    pub internal: store::Store,
    pub tokens: TokenKeys,
    pub cache: MembershipMirror,
    pub settled: settled::Settled,
    pub config: MessageServiceConfig,
    /// Attachments on the object store (off when `SB_S3_ENDPOINT` is unset).
    pub attachments: attachments::Attachments,
    /// The edit window, edit and reaction limits checked before an event is numbered.
    pub events: events::EventLimits,
}
