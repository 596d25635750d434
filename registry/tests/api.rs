//! The fast tier: the registry in-process (`Application::build` on port 0, the way
//! zero-to-production's `spawn_app` does it) against one real Redis with Sentinels, started
//! once for this test binary (`switchboard_test_support::shared`). Each test has its own key
//! prefix, so tests share Redis without seeing each other. Seconds, not the minutes of the
//! whole-stack tests.

use registry::config::{
    HELP_TABLES, SB_ASSIGN_BURST_PER_IP, SB_ASSIGN_RATE_PER_IP, SB_RESERVATIONS_PER_IP,
};
use registry::{Application, RegistryConfig};
use switchboard_protocol::registry::{Assignment, Registration, CLUSTER_SECRET_HEADER};
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::shared::{self, Vars, CLUSTER_SECRET};

/// The fast tier's registry variables for a new test (`shared::registry_vars`).
fn vars(name: &str) -> Vars {
    shared::registry_vars(&shared::unique(name))
}

/// The registry's config from `vars`, read by its own `from_lookup`.
fn build(vars: Vars) -> RegistryConfig {
    vars.config(HELP_TABLES, RegistryConfig::from_lookup)
}

fn config(name: &str) -> RegistryConfig {
    build(vars(name))
}

/// A running registry: its base URL; it stops when the test's runtime ends.
async fn spawn_app(config: RegistryConfig) -> String {
    let app = Application::build(config).await.expect("registry builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(CancellationToken::new()));
    url
}

async fn register(http: &reqwest::Client, url: &str, server_id: &str, max: u64) -> u16 {
    http.post(format!("{url}/api/v1/socket-servers"))
        .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
        .json(&Registration {
            server_id: server_id.into(),
            url: format!("ws://10.0.0.1:9001/ws/{server_id}"),
            health_url: "http://10.0.0.1:9001/live".into(),
            max_connections: max,
        })
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn no_servers_means_503_no_capacity() {
    let url = spawn_app(config("empty")).await;
    let resp = reqwest::get(format!("{url}/api/v1/socket-server"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_capacity");
}

#[tokio::test]
async fn assignments_spread_over_servers_and_reserve_slots() {
    let url = spawn_app(config("spread")).await;
    let http = reqwest::Client::new();
    assert_eq!(register(&http, &url, "a", 2).await, 201);
    assert_eq!(register(&http, &url, "b", 2).await, 201);
    let mut got = Vec::new();
    for _ in 0..4 {
        let a: Assignment = http
            .get(format!("{url}/api/v1/socket-server"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        got.push(a.server_id);
    }
    got.sort();
    assert_eq!(
        got,
        ["a", "a", "b", "b"],
        "least loaded first, reservations count"
    );
    // Both are full of reservations now.
    let resp = http
        .get(format!("{url}/api/v1/socket-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn registration_needs_the_cluster_secret() {
    let url = spawn_app(config("secret")).await;
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v1/socket-servers"))
        .header(CLUSTER_SECRET_HEADER, "guessed")
        .json(&Registration {
            server_id: "rogue".into(),
            url: "ws://10.0.0.66/ws".into(),
            health_url: "http://10.0.0.66/live".into(),
            max_connections: 10,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn one_address_is_rate_limited_and_capped_on_reservations() {
    let limited = build(
        vars("limits")
            .with(SB_ASSIGN_RATE_PER_IP, 1)
            .with(SB_ASSIGN_BURST_PER_IP, 5)
            .with(SB_RESERVATIONS_PER_IP, 3),
    );
    let url = spawn_app(limited).await;
    let http = reqwest::Client::new();
    assert_eq!(register(&http, &url, "big", 1000).await, 201);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = http
            .get(format!("{url}/api/v1/socket-server"))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    // Three reservations, then the cap (429) while the bucket still has tokens, then the
    // bucket is empty (429 too).
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn the_openapi_description_covers_the_public_routes() {
    let doc = registry::public_openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    assert_eq!(
        paths,
        [
            "/api/v1/dev/token",
            "/api/v1/socket-server",
            "/api/v1/socket-servers"
        ]
    );
}
