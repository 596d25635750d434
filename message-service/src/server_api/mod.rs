//! The server API (`/server/v1/...`, docs/server-api.md): what an application's own backend
//! calls, authenticated by API keys (`switchboard_service_kit::api_keys`, `Authorization:
//! Bearer sbk_...`) with a scope per route; a user token is 401 here, as an API key is on
//! `/api`.
//!
//! The backend speaks for its users, so none of the client API's consent rules apply:
//! conversations are made for named users, members are added and removed directly and
//! idempotently (`PUT`/`DELETE`), and history and presence are read without a membership
//! check. Messages go through a socket manager's sequencer like any client send
//! ([`managers`]), with an `Idempotency-Key`.
//!
//! - [`extract`]: the API key with its scope and rate (an extractor every handler takes), ids.
//! - [`conversations`]: create, read, and put and delete members.
//! - [`messages`]: history, and posts through the managers.
//! - [`users`]: presence, and ending a user's sessions.

mod conversations;
mod extract;
mod managers;
mod messages;
mod users;

use actix_web::web;
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::server_api::{ServerCreateConversation, ServerPost, ServerPosted};

pub use managers::Managers;

pub fn configure(cfg: &mut web::ServiceConfig, managers: Managers) {
    cfg.app_data(web::Data::new(managers))
        .route(
            "/server/v1/conversations",
            web::post().to(conversations::create),
        )
        .route(
            "/server/v1/conversations/{id}",
            web::get().to(conversations::get_conversation),
        )
        .route(
            "/server/v1/conversations/{id}/members/{user_id}",
            web::put().to(conversations::put_member),
        )
        .route(
            "/server/v1/conversations/{id}/members/{user_id}",
            web::delete().to(conversations::delete_member),
        )
        .route(
            "/server/v1/conversations/{id}/messages",
            web::get().to(messages::history),
        )
        .route(
            "/server/v1/conversations/{id}/messages",
            web::post().to(messages::post_message),
        )
        .route("/server/v1/presence", web::get().to(users::presence))
        .route(
            "/server/v1/users/{user_id}/sessions/end",
            web::post().to(users::end_sessions),
        );
}

/// The managers' client, from the service's settings and cluster credential.
pub fn managers(config: &crate::MessageServiceConfig) -> Managers {
    Managers::new(
        config.manager_urls.clone(),
        config
            .common
            .cluster
            .credential(ServiceRole::MessageService),
    )
}

/// The server API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        conversations::create,
        conversations::get_conversation,
        conversations::put_member,
        conversations::delete_member,
        messages::history,
        messages::post_message,
        users::presence,
        users::end_sessions
    ),
    components(schemas(ServerCreateConversation, ServerPost, ServerPosted)),
    modifiers(&ApiKeyAuth)
)]
struct ServerApiDoc;

struct ApiKeyAuth;

impl utoipa::Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("sbk_<id>_<secret>")
                        .description(Some(
                            "A server API key (docs/server-api.md); each route names its scope.",
                        ))
                        .build(),
                ),
            );
    }
}

/// The server API's routes, to merge into the service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    ServerApiDoc::openapi()
}
