//! The public OpenAPI document (`GET /api/v1/openapi.json`): this service's routes, the
//! server API, attachments, search and push devices, and the registry's and the webhook
//! dispatcher's routes that nginx serves under the same origin.

use actix_web::HttpResponse;

use super::{blocks, conversations, history, members, presence};

/// The public REST API of the message service, generated from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        conversations::create,
        conversations::list,
        conversations::get_conversation,
        history::history,
        members::add_member,
        members::remove_member,
        members::set_role,
        conversations::accept,
        conversations::invitations,
        blocks::blocks,
        blocks::block,
        blocks::unblock,
        presence::presence
    ),
    modifiers(&BearerAuth)
)]
struct PublicApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
    }
}

/// `GET /api/v1/openapi.json`: the whole public REST API (this service's routes and the
/// registry's), for client generators and for schemathesis (the `openapi` e2e test).
pub fn public_openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = PublicApi::openapi();
    doc.merge(switchboard_protocol::registry::public_openapi());
    doc.merge(crate::server_api::openapi());
    // The webhook dispatcher's endpoint API (nginx routes /server/v1/webhooks to it).
    doc.merge(switchboard_protocol::webhooks::openapi());
    doc.merge(<crate::push_devices::PushDevicesApi as OpenApi>::openapi());
    doc.merge(crate::attachments::openapi());
    doc.merge(crate::search::openapi());
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("Switchboard REST API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Errors are {\"error\":{\"code\",\"message\"}} with the stable codes of docs/protocol.md.",
        ))
        .build();
    doc
}

pub(super) async fn openapi_json() -> HttpResponse {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        public_openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOC.as_str())
}
