//! REST of SPEC section 5, and the consent and limits of issue 24 (docs/protocol.md,
//! "Conversations and history"), one file a resource. Every public handler authenticates
//! with [`AuthUser`](crate::auth::AuthUser); membership is enforced here (403
//! `not_a_member`). Public handlers use the REST pool (`AppState::store`, with a statement
//! timeout); cluster-only ones ([`internal`]) the ingest pool (`AppState::internal`), so a
//! storm of client requests cannot hold up the socket managers.
//!
//! - [`conversations`]: create, list, read one, accept, open invitations.
//! - [`members`]: a group's members and roles.
//! - [`history`]: a conversation's messages (and events) by pages.
//! - [`blocks`]: the caller's block list.
//! - [`presence`]: who of the caller's contacts is online.
//! - [`internal`]: the socket managers' membership, settled-log and contacts lookups.
//! - [`consent`]: the block check and per-minute quotas the creating routes share.
//! - [`openapi`]: the public OpenAPI document.

mod blocks;
mod consent;
mod conversations;
mod history;
mod internal;
mod members;
mod openapi;
mod presence;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/v1/conversations",
        web::post().to(conversations::create),
    )
    .route("/api/v1/conversations", web::get().to(conversations::list))
    .route(
        "/api/v1/conversations/{id}",
        web::get().to(conversations::get_conversation),
    )
    .route(
        "/api/v1/conversations/{id}/messages",
        web::get().to(history::history),
    )
    .route(
        "/api/v1/conversations/{id}/members",
        web::post().to(members::add_member),
    )
    .route(
        "/api/v1/conversations/{id}/members/{user_id}",
        web::delete().to(members::remove_member),
    )
    .route(
        "/api/v1/conversations/{id}/members/{user_id}/role",
        web::put().to(members::set_role),
    )
    .route(
        "/api/v1/conversations/{id}/accept",
        web::post().to(conversations::accept),
    )
    .route(
        "/api/v1/invitations",
        web::get().to(conversations::invitations),
    )
    .route("/api/v1/blocks", web::get().to(blocks::blocks))
    .route("/api/v1/blocks/{user_id}", web::put().to(blocks::block))
    .route(
        "/api/v1/blocks/{user_id}",
        web::delete().to(blocks::unblock),
    )
    .route(
        "/internal/v1/conversations/{id}/members",
        web::get().to(internal::members),
    )
    .route(
        "/internal/v1/conversations/{id}/settled-last-seq",
        web::post().to(internal::settled_last_seq),
    )
    .route("/api/v1/presence", web::get().to(presence::presence))
    .route("/api/v1/openapi.json", web::get().to(openapi::openapi_json))
    .route(
        "/internal/v1/users/{id}/contacts",
        web::get().to(internal::contacts),
    );
    crate::attachments::configure(cfg);
    crate::events::configure(cfg);
    crate::search::configure(cfg);
}

/// The whole public OpenAPI document, where other modules' tests look for it.
#[cfg(test)]
pub(crate) use openapi::public_openapi;
