//! The fast tier: the registry in-process (`Application::build` on port 0, the way
//! zero-to-production's `spawn_app` does it) against one real Redis with Sentinels, started
//! once for this test binary (`switchboard_test_support::shared`). Each test has its own key
//! prefix, so tests share Redis without seeing each other. Seconds, not the minutes of the
//! whole-stack tests.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

use registry::config::HELP_TABLES;
use registry::{Application, RegistryConfig};
use switchboard_config::names::{
    SB_ASSIGN_BURST_PER_IP, SB_ASSIGN_RATE_PER_IP, SB_PUBLIC_SERVER_LIST, SB_REGISTRY_HTTP_WORKERS,
    SB_RESERVATIONS_PER_IP,
};
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
            server_id: switchboard_protocol::ServerId::parse(server_id).unwrap(),
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

/// One `GET /api/v1/socket-server`, as a client asks for a server.
async fn ask_for_a_server(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.get(format!("{url}/api/v1/socket-server"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn no_servers_means_503_no_capacity() {
    let url = spawn_app(config("empty")).await;
    let resp = ask_for_a_server(&reqwest::Client::new(), &url).await;
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
        let a: Assignment = ask_for_a_server(&http, &url).await.json().await.unwrap();
        got.push(a.server_id);
    }
    got.sort();
    assert_eq!(
        got,
        ["a", "a", "b", "b"],
        "least loaded first, reservations count"
    );
    // Both are full of reservations now.
    let resp = ask_for_a_server(&http, &url).await;
    assert_eq!(resp.status(), 503);
}

/// Concurrent requests share assign scripts (the registry's group commit): a burst exactly
/// fills every server, none past its capacity, and the next request finds no room. With
/// several HTTP workers each runs scripts of its own at the same time, and Redis keeps them
/// from handing out the same slot twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_fills_every_server_exactly() {
    for workers in [1, 3] {
        let name = format!("burst-{workers}");
        let url = spawn_app(build(vars(&name).with(SB_REGISTRY_HTTP_WORKERS, workers))).await;
        // A client per request, so requests arrive on connections of their own and the
        // HTTP workers share them out.
        for id in ["a", "b", "c"] {
            assert_eq!(register(&reqwest::Client::new(), &url, id, 10).await, 201);
        }
        let requests = (0..30).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let resp = ask_for_a_server(&reqwest::Client::new(), &url).await;
                assert_eq!(resp.status(), 200);
                resp.json::<Assignment>()
                    .await
                    .unwrap()
                    .server_id
                    .into_string()
            })
        });
        let mut per_server = std::collections::BTreeMap::new();
        for request in requests {
            *per_server.entry(request.await.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(
            per_server.into_iter().collect::<Vec<_>>(),
            [
                ("a".to_owned(), 10),
                ("b".to_owned(), 10),
                ("c".to_owned(), 10)
            ],
            "{workers} HTTP worker(s)"
        );
        let resp = ask_for_a_server(&reqwest::Client::new(), &url).await;
        assert_eq!(resp.status(), 503, "{workers} HTTP worker(s)");
    }
}

/// The worker count is checked when the registry starts: zero is refused, by name.
#[test]
fn zero_http_workers_is_refused() {
    let vars = vars("zero-workers").with(SB_REGISTRY_HTTP_WORKERS, 0);
    let err = RegistryConfig::from_lookup(&|name: &str| vars.get(name)).unwrap_err();
    assert!(
        err.to_string().contains(SB_REGISTRY_HTTP_WORKERS),
        "unclear error: {err}"
    );
}

/// One script making many assignments picks as one script per assignment would: live servers
/// only, least loaded first, ties to the lower id, the slots it reserved counted, and servers
/// past the first page of 64 read when the first page fills up.
#[tokio::test]
async fn one_script_assigns_as_a_sequence_of_single_assignments() {
    let config = config("assign-many");
    let directory = switchboard_server_directory::ServerDirectory::new(
        switchboard_redis::SentinelRedis::new(config.common.redis.clone()),
    );
    let (stale, ttl) = (config.stale_after_ms, config.reservation_ttl_ms);
    let url = spawn_app(config).await;
    let http = reqwest::Client::new();
    let now = || chrono::Utc::now().timestamp_millis();
    let ids = |found: Vec<Option<Assignment>>| -> Vec<Option<String>> {
        found
            .into_iter()
            .map(|a| a.map(|a| a.server_id.into_string()))
            .collect()
    };

    // A server whose heartbeat is stale sorts first (load 0, lowest id) and is never picked.
    let dead = Registration {
        server_id: switchboard_protocol::ServerId::parse("0dead").unwrap(),
        url: "ws://10.0.0.9:9001/ws".into(),
        health_url: "http://10.0.0.9:9001/live".into(),
        max_connections: 1_000,
    };
    directory
        .register(&dead, 0, now() - 10 * stale)
        .await
        .unwrap();
    assert_eq!(register(&http, &url, "a", 10).await, 201);
    assert_eq!(register(&http, &url, "b", 10).await, 201);
    let first = directory.assign_many(now(), stale, ttl, 1).await.unwrap();
    assert_eq!(
        ids(first),
        [Some("a".to_owned())],
        "a tie goes to the lower id"
    );
    // Loads a=1, b=0: b; then a tie at 1 goes to a; then b; then a tie at 2 goes to a.
    let next = directory.assign_many(now(), stale, ttl, 4).await.unwrap();
    assert_eq!(
        ids(next),
        ["b", "a", "b", "a"].map(|id| Some(id.to_owned()))
    );

    // 70 more servers with room for one each: the first page of 64 (in load order) fills, the
    // rest are read from the next page; then a and b take the remaining slots.
    for i in 0..70 {
        assert_eq!(register(&http, &url, &format!("s{i:02}"), 1).await, 201);
    }
    let many = directory.assign_many(now(), stale, ttl, 90).await.unwrap();
    let assigned: Vec<String> = many
        .iter()
        .flatten()
        .map(|a| a.server_id.to_string())
        .collect();
    let singles: std::collections::BTreeSet<&String> =
        assigned.iter().filter(|id| id.starts_with('s')).collect();
    assert_eq!(singles.len(), 70, "every one-slot server got exactly one");
    assert_eq!(
        assigned.iter().filter(|id| !id.starts_with('s')).count(),
        15,
        "a and b filled up (5 reserved before, 15 now)"
    );
    assert_eq!(
        many.iter().filter(|a| a.is_none()).count(),
        5,
        "then no room"
    );
    assert!(many[..85].iter().all(Option::is_some) && many[85..].iter().all(Option::is_none));
}

#[tokio::test]
async fn registration_needs_the_cluster_secret() {
    let url = spawn_app(config("secret")).await;
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v1/socket-servers"))
        .header(CLUSTER_SECRET_HEADER, "guessed")
        .json(&Registration {
            server_id: switchboard_protocol::ServerId::parse("rogue").unwrap(),
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
        let resp = ask_for_a_server(&http, &url).await;
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

/// `SB_PUBLIC_SERVER_LIST=false`: the list of every server's URL and load answers only a
/// caller with a cluster credential; clients still get a server.
#[tokio::test]
async fn the_server_list_can_be_kept_for_operators() {
    let open = spawn_app(config("list-open")).await;
    let http = reqwest::Client::new();
    assert_eq!(register(&http, &open, "s1", 10).await, 201);
    let listed = http
        .get(format!("{open}/api/v1/socket-servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200, "the contract's default: public");

    let closed = spawn_app(build(
        vars("list-closed").with(SB_PUBLIC_SERVER_LIST, "false"),
    ))
    .await;
    assert_eq!(register(&http, &closed, "s2", 10).await, 201);
    let anonymous = http
        .get(format!("{closed}/api/v1/socket-servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    let body = anonymous.text().await.unwrap();
    assert!(body.contains("\"code\":\"forbidden\""), "{body}");
    let operator = http
        .get(format!("{closed}/api/v1/socket-servers"))
        .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(operator.status(), 200);
    assert_eq!(ask_for_a_server(&http, &closed).await.status(), 200);
}
