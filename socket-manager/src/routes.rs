//! The cluster-internal API socket servers call (register, batch, heartbeat, renew,
//! deregister), and the message service's end-sessions and server-send routes. Every route
//! needs the cluster secret. A batch's work is [`crate::batch`]'s.

use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::internal::{
    RenewReply, RenewRequest, ServerBatch, ServerRegistered, ServerRegistration, BATCH_ID_HEADER,
};
use switchboard_protocol::{ErrorCode, ServerId};
use switchboard_service_kit::http::ApiError;
use tracing::Instrument;

use crate::janitor::Reap;
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

/// Links a socket server to the managers: its topic exists and its reports are routed to it
/// from here on. Idempotent, and no liveness: whether the server is alive is the directory's
/// (the janitor reaps a server gone from it). Refused (503, retry) while the server is being
/// reaped, so it is never linked half-way through its own removal.
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
    let server = body.into_inner().server_id;
    if !state.sequencer.servers.register(server.as_str()).await? {
        return Err(ApiError::unavailable(
            "this socket server's topic and routes are being removed: register again shortly",
        ));
    }
    let kafka = &state.sequencer.kafka;
    let topic = kafka.config.handler_topic(server.as_str());
    kafka
        .ensure_topic(&topic, 1)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    tracing::info!(%server, %topic, "socket server linked");
    Ok(HttpResponse::Ok().json(ServerRegistered {
        server_id: server,
        topic,
    }))
}

/// A socket server going away (on drain, after it left the directory): the janitor's reap,
/// at once.
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
    crate::janitor::reap(&state, &server, Reap::Deregistered).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Kept for socket servers of earlier releases, which heartbeat here: it renews nothing (a
/// server's liveness is the directory's) and answers whether the server is linked, 404 telling
/// one that was reaped to register again.
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
    if state.sequencer.servers.is_registered(&path).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            "handler unknown or reaped: register again",
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
    // The request's step of the sender's trace (the `request` span, `service_kit::ops`): each
    // send's records carry it, so ingest and delivery continue that trace.
    let trace = switchboard_service_kit::ops::request_trace(&req);
    let work = crate::batch::answer_batch(state.clone(), server, body.into_inner().items, trace)
        .instrument(span);
    let reply = state
        .runtime
        .spawn(work)
        .await
        .map_err(|e| ApiError::unavailable(format!("the batch's task failed: {e}")))??;
    Ok(HttpResponse::Ok().json(reply))
}
