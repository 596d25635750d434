//! Registry handlers. Errors are [`ApiError`]s, so every failure is the JSON error body.
//! The public ones (`assign`, `list`, `dev_token`) are described for OpenAPI in
//! `switchboard_protocol::registry::public_openapi`: a change to their statuses or bodies
//! goes there too.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{TimeZone, Utc};
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::registry::{
    DevTokenRequest, DevTokenResponse, Registration, ServerInfo, ServerList,
};
use switchboard_protocol::token::TokenError;
use switchboard_protocol::ErrorCode;
use switchboard_protocol::ServerId;
use switchboard_service_kit::http::ApiError;
use switchboard_service_kit::limits;

use crate::assigner::Assigner;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/socket-server", web::get().to(assign))
        .route("/api/v1/socket-servers", web::get().to(list))
        .route("/api/v1/socket-servers", web::post().to(register))
        .route(
            "/api/v1/socket-servers/{server_id}",
            web::delete().to(deregister),
        )
        .route("/api/v1/dev/token", web::post().to(dev_token))
        .route("/internal/v1/tunnels/{ip}", web::get().to(tunnel));
}

/// A socket URL as the asking client must use it: when TLS is terminated in front of the
/// registry (the proxy says `X-Forwarded-Proto: https`), a `ws://` URL, which an HTTPS page
/// may not open, becomes `wss://` (the same proxy terminates TLS for the socket path). A
/// server may also advertise `wss://` itself (`SB_SOCKET_PUBLIC_URL`).
fn url_for_client(req: &HttpRequest, url: String) -> String {
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        });
    match url.strip_prefix("ws://") {
        Some(rest) if https => format!("wss://{rest}"),
        _ => url,
    }
}

/// nginx's `auth_request` for its `/ws/<ip>` tunnel (docker-compose, nginx/compose.conf):
/// 204 when a registered socket server advertises a URL whose path is `/ws/<ip>`, else 403.
/// So the tunnel reaches registered socket servers only, never any host on the network.
async fn tunnel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ip = path.into_inner();
    let servers = state.directory.list().await?;
    if tunnel_allowed(servers.iter().map(|r| r.url.as_str()), &ip) {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "no registered socket server at this address",
        ))
    }
}

/// Whether one of `urls` (advertised socket URLs) is a tunnel URL `<scheme>://<host>/ws/<ip>`
/// for this `ip`, which must be an IPv4 address literal.
fn tunnel_allowed<'a>(urls: impl IntoIterator<Item = &'a str>, ip: &str) -> bool {
    if ip.parse::<std::net::Ipv4Addr>().is_err() {
        return false;
    }
    let wanted = format!("/ws/{ip}");
    urls.into_iter().any(|url| {
        let Some((_, rest)) = url.split_once("://") else {
            return false;
        };
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        path == wanted
    })
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The least-loaded socket server, with a slot reserved for a few seconds.
async fn assign(
    req: HttpRequest,
    state: web::Data<AppState>,
    assigner: web::Data<Assigner>,
) -> Result<HttpResponse, ApiError> {
    if let Some(ip) = limits::client_ip(&req, &state.config.common.trusted_proxies) {
        let now = std::time::Instant::now();
        if !state.assign_rate.allow(ip, now) || !state.reservations.try_take(ip, now) {
            state.assignments.with_label_values(&["rate_limited"]).inc();
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many assignments from your address, retry in a few seconds",
            ));
        }
    }
    let found = assigner.assign().await;
    let outcome = match &found {
        Ok(Some(_)) => "assigned",
        Ok(None) => "no_capacity",
        Err(_) => "error",
    };
    state.assignments.with_label_values(&[outcome]).inc();
    match found? {
        Some(mut assignment) => {
            assignment.url = url_for_client(&req, assignment.url);
            Ok(HttpResponse::Ok()
                .insert_header(("cache-control", "no-store"))
                .json(assignment))
        }
        None => Err(ApiError::new(
            ErrorCode::NoCapacity,
            "no socket server has room for another connection",
        )),
    }
}

/// Every registered socket server with its load; with `SB_PUBLIC_SERVER_LIST=false` only for
/// callers with a cluster credential (the list names every server and its load).
async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.public_server_list {
        state
            .config
            .common
            .cluster
            .require(&req, &ServiceRole::ALL)
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Forbidden,
                    "the server list is for operators here (SB_PUBLIC_SERVER_LIST=false); \
                     clients get a server from GET /api/v1/socket-server",
                )
            })?;
    }
    let servers = state
        .directory
        .list()
        .await?
        .into_iter()
        .map(|r| ServerInfo {
            server_id: r.server_id,
            url: url_for_client(&req, r.url),
            connections: r.load,
            max_connections: r.max_connections,
            last_heartbeat: r
                .last_heartbeat_ms
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ServerList { servers }))
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Registration>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::SocketServer])?;
    // `server_id` was checked against ServerId's rule as the body was read (it names the
    // server's Kafka topic at the managers too).
    let reg = body.into_inner();
    if !(reg.url.starts_with("ws://") || reg.url.starts_with("wss://")) {
        return Err(ApiError::bad_request("url must be a ws:// or wss:// URL"));
    }
    if !(reg.health_url.starts_with("http://") || reg.health_url.starts_with("https://")) {
        return Err(ApiError::bad_request("health_url must be an http(s) URL"));
    }
    if reg.max_connections == 0 {
        return Err(ApiError::bad_request("max_connections must be positive"));
    }
    state.directory.register(&reg, 0, now_ms()).await?;
    tracing::info!(server_id = %reg.server_id, url = %reg.url, "socket server registered");
    Ok(HttpResponse::Created().json(reg))
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
    let server_id = path.into_inner();
    // An id that is no ServerId was never registered (registration checks the rule).
    let removed = match ServerId::parse(server_id.as_str()) {
        Ok(id) => state.directory.remove(&id).await?,
        Err(_) => false,
    };
    if removed {
        tracing::info!(%server_id, "socket server deregistered");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no socket server {server_id} is registered"),
        ))
    }
}

/// Dev mode only: mints a token for any user id.
async fn dev_token(
    state: web::Data<AppState>,
    body: web::Json<DevTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.common.dev_mode {
        return Err(ApiError::new(
            ErrorCode::DevModeDisabled,
            "dev tokens are only minted when SB_DEV_MODE is on",
        ));
    }
    let user_id = body.into_inner().user_id;
    let ttl = chrono::Duration::seconds(state.config.dev_token_ttl_secs);
    let (token, expires) = state
        .tokens
        .mint(&user_id, ttl)
        .map_err(|e: TokenError| ApiError::bad_request(e.to_string()))?;
    Ok(HttpResponse::Ok().json(DevTokenResponse {
        token,
        user_id,
        expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}

#[cfg(test)]
mod tests {
    use super::{tunnel_allowed, url_for_client};
    use actix_web::test::TestRequest;

    #[test]
    fn socket_urls_are_wss_behind_tls() {
        let url = || "ws://chat.example.com/ws/10.0.0.7".to_string();
        let plain = TestRequest::default().to_http_request();
        assert_eq!(url_for_client(&plain, url()), url());
        let http = TestRequest::default()
            .insert_header(("x-forwarded-proto", "http"))
            .to_http_request();
        assert_eq!(url_for_client(&http, url()), url());
        for proto in ["https", "HTTPS", "https, http"] {
            let tls = TestRequest::default()
                .insert_header(("x-forwarded-proto", proto))
                .to_http_request();
            assert_eq!(
                url_for_client(&tls, url()),
                "wss://chat.example.com/ws/10.0.0.7"
            );
        }
        let tls = TestRequest::default()
            .insert_header(("x-forwarded-proto", "https"))
            .to_http_request();
        let wss = "wss://a.example.com/ws".to_string();
        assert_eq!(url_for_client(&tls, wss.clone()), wss);
    }

    #[test]
    fn the_tunnel_reaches_registered_servers_only() {
        let urls = [
            "ws://localhost:8080/ws/172.18.0.14",
            "wss://chat.example.com/ws/172.18.0.15",
        ];
        assert!(tunnel_allowed(urls, "172.18.0.14"));
        assert!(tunnel_allowed(urls, "172.18.0.15"));
        // Not registered, a prefix of a registered one, or not an address at all.
        assert!(!tunnel_allowed(urls, "172.18.0.1"));
        assert!(!tunnel_allowed(urls, "172.18.0.140"));
        assert!(!tunnel_allowed(urls, "172.18.0"));
        assert!(!tunnel_allowed(
            ["ws://x/ws/172.18.0.14/more"],
            "172.18.0.14"
        ));
        assert!(!tunnel_allowed(["ws://10.0.0.1:9001/ws"], "10.0.0.1"));
        assert!(!tunnel_allowed(urls, "../ws/172.18.0.14"));
        assert!(!tunnel_allowed(std::iter::empty(), "172.18.0.14"));
    }
}
