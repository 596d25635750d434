//! `POST /internal/v1/users/{user_id}/sessions/end` (a cluster credential, the message
//! service's): ends every session of a user on every socket server within a second, and
//! refuses the tokens issued until now (logout everywhere, a ban, a password change).
//!
//! 1. The user's mark (`switchboard_chat_state::sessions`) is raised to now, in seconds, for
//!    `SB_TOKEN_MAX_LIFETIME_SECS`: from here on every socket server refuses, at the upgrade
//!    and in a `refresh`, a token of the user whose `iat` is at or before it.
//! 2. Every live socket server gets an [`EndSessions`] control on its handler topic (the
//!    topic it already consumes for deliveries, which every manager can write), and closes
//!    the user's connections opened with such tokens (4403). Every live server, not only the
//!    ones the user is mapped to: a device whose upgrade read the mark just before it was
//!    written, on a server the user had no device on yet, must be reached too.
//!
//! The answer comes once the broker has acknowledged every control, so a 200 means each
//! server will act on it as soon as it reads its topic (well within the second); a 503 (Redis
//! or the broker unavailable) is safe to retry. Calling again moves the mark to the later
//! time (it never goes back).

use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_chat_state::sessions::SessionMarks;
use switchboard_credentials::cluster::ServiceRole;
use switchboard_message_log::HandlerRecord;
use switchboard_protocol::sessions::{EndSessions, SessionsEnded};
use switchboard_protocol::UserId;
use switchboard_service_kit::http::ApiError;

use crate::state::AppState;

/// The route, registered by `routes::configure`.
pub const PATH: &str = "/internal/v1/users/{user_id}/sessions/end";

pub(crate) async fn end_sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // The app backends' server API (in the message service) is the one caller.
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::MessageService])?;
    let user_id = UserId::parse(path.as_str()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let user = user_id.as_str();
    let sequencer = &state.sequencer;
    let marks = SessionMarks::new(sequencer.redis.clone());
    let now = chrono::Utc::now().timestamp();
    let mark = marks
        .end(&user_id, now, state.config.token_max_lifetime_secs)
        .await?;

    // Live: linked to the managers (a topic) and in the directory (not evicted).
    let registered = sequencer.servers.registered_servers().await?;
    let present = state.directory.present(&registered).await?;
    let live: Vec<String> = registered
        .into_iter()
        .zip(present)
        .filter_map(|(server, present)| present.then_some(server))
        .collect();
    // A record with no recipients: a server that does not know the control delivers it to
    // nobody.
    let record = HandlerRecord {
        recipients: Vec::new(),
        skip_connection: None,
        frame: EndSessions {
            user_id: user_id.clone(),
            ended_before: mark,
        }
        .to_json(),
        accepted_at_ms: None,
        order: None,
        message_id: None,
        traceparent: None,
    };
    let payload = serde_json::to_vec(&record).expect("a HandlerRecord always serializes");
    let kafka = &sequencer.kafka;
    let produced = futures_util::future::join_all(live.iter().map(|server| {
        let topic = kafka.config.handler_topic(server);
        let payload = &payload;
        async move { (kafka.produce(&topic, user, payload).await, topic) }
    }))
    .await;
    let failed: Vec<String> = produced
        .into_iter()
        .filter_map(|(result, topic)| {
            result.err().map(|e| {
                tracing::warn!(error = %e, %topic, user, "end-sessions control not written");
                topic
            })
        })
        .collect();
    if !failed.is_empty() {
        return Err(ApiError::unavailable(format!(
            "the mark is set, but {} of {} socket servers could not be told: retry",
            failed.len(),
            live.len()
        )));
    }
    tracing::info!(
        user,
        ended_before = mark,
        servers = live.len(),
        "sessions ended"
    );
    Ok(HttpResponse::Ok().json(SessionsEnded {
        user_id,
        ended_before: mark,
        servers: live.len(),
    }))
}
