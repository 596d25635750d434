//! The cluster-internal API socket servers call (register, batch, heartbeat, renew,
//! deregister), and the message service's end-sessions and server-send routes. Every route
//! needs the cluster secret. A batch's work is [`crate::batch`]'s.

use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_protocol::internal::{
    RenewReply, RenewRequest, ServerBatch, ServerRegistered, ServerRegistration, BATCH_ID_HEADER,
};
use switchboard_protocol::{ErrorCode, ServerId};
use switchboard_service_kit::cluster_auth::ServiceRole;
use switchboard_service_kit::http::ApiError;
use tracing::Instrument;

use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/internal/v1/handlers", web::post().to(register))
        .route("/internal/v1/handlers/{id}", web::delete().to(deregister))
        .route("/internal/v1/handlers/{id}/batch", web::post().to(batch))
        .route(
            "/internal/v1/handlers/{id}/heartbeat",
            web::post().to(heartbeat),
        )
        .route("/internal/v1/handlers/{id}/renew", web::post().to(renew))
        .route(
            crate::end_sessions::PATH,
            web::post().to(crate::end_sessions::end_sessions),
        )
        .route(
            crate::server_send::PATH,
            web::post().to(crate::server_send::server_send),
        );
}

/// The id a socket server names itself by: it becomes a Kafka topic name, so the rule is
/// [`ServerId`]'s.
fn valid_server_id(id: &str) -> Result<ServerId, ApiError> {
    ServerId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ServerRegistration>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    valid_server_id(&body.server_id)?;
    let kafka = &state.sequencer.kafka;
    let topic = kafka.config.handler_topic(&body.server_id);
    kafka
        .ensure_topic(&topic, 1)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    state.sequencer.servers.register(&body.server_id).await?;
    tracing::info!(server = %body.server_id, %topic, "socket server registered");
    Ok(HttpResponse::Ok().json(ServerRegistered {
        server_id: body.server_id.clone(),
        topic,
    }))
}

async fn deregister(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    let server = path.into_inner();
    valid_server_id(&server)?;
    let topic = state.sequencer.kafka.config.handler_topic(&server);
    let offline = state.sequencer.servers.forget(&server).await?;
    crate::presence::announce(state.clone(), Vec::new(), offline);
    if state.config.delete_server_topics {
        if let Err(e) = state.sequencer.kafka.delete_topic(&topic).await {
            tracing::warn!(error = %e, %topic, "deleting the socket server's topic failed");
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn heartbeat(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    if state.sequencer.servers.heartbeat(&path).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            "handler unknown or expired: register again",
        ))
    }
}

async fn renew(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<RenewRequest>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    let users: Vec<&str> = body.users.iter().map(String::as_str).collect();
    let mut restored = Vec::new();
    for chunk in users.chunks(1000) {
        restored.extend(state.sequencer.servers.renew(&path, chunk).await?);
    }
    crate::presence::announce(state.clone(), restored, Vec::new());
    Ok(HttpResponse::Ok().json(RenewReply {
        renewed: users.len(),
    }))
}

/// A batch of reports and client frames from one socket server. Connection reports are applied
/// first (so a device that connected and then sent in the same batch is routed to), then the
/// sends of each conversation run in order under that conversation's lock, conversations in
/// parallel.
async fn batch(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<ServerBatch>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    let server = valid_server_id(&path.into_inner())?;
    let batch_id = req
        .headers()
        .get(BATCH_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::debug_span!("batch", batch = %batch_id, %server);
    // Answered on the message path's runtime: every await in a batch (the numbering flush,
    // Redis replies, broker acks) is woken by a task of that runtime, and each wake that
    // crossed to this HTTP worker's thread cost a context switch. As a task of its own, a
    // batch also runs to its end when the socket server gives up waiting: its leases are
    // released and its pending numbers cleared rather than left for the next holder.
    let work =
        crate::batch::answer_batch(state.clone(), server, body.into_inner().items).instrument(span);
    let reply = state
        .runtime
        .spawn(work)
        .await
        .map_err(|e| ApiError::unavailable(format!("the batch's task failed: {e}")))??;
    Ok(HttpResponse::Ok().json(reply))
}
