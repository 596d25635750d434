//! Least privilege between the services (issue 24 item 11): the internet-facing socket server
//! holds nothing that mints a user's token, and its credential opens only the routes a socket
//! server needs. Read from the running process's own environment, so the test checks what a
//! compromised socket server would really have.

use std::collections::HashMap;

use switchboard_config::names::{
    SB_CLUSTER_SECRET, SB_JWT_PRIVATE_KEY_FILE, SB_JWT_PUBLIC_KEY_FILE, SB_JWT_SECRET,
    SB_SERVICE_SECRET,
};
use switchboard_protocol::token::{TokenKeys, TokenPolicy};
use switchboard_test_support::{ServiceRole, Stack, StackOptions};

use crate::client::{Connect, WsClient};

/// The environment a running process was started with.
fn environ(pid: u32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/<pid>/environ");
    raw.split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_servers_credentials_cannot_mint_tokens_or_call_the_membership_routes() {
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 0,
        managers: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let server = &stack.socket_servers[0];
    let env = environ(server.process.pid());

    // 1. Nothing that mints: no HS256 secret, no private key, no shared cluster secret.
    for name in [SB_JWT_SECRET, SB_JWT_PRIVATE_KEY_FILE, SB_CLUSTER_SECRET] {
        assert!(!env.contains_key(name), "a socket server holds {name}");
    }
    let public_path = env
        .get(SB_JWT_PUBLIC_KEY_FILE)
        .expect("the socket server verifies with a public key");
    let public_pem = std::fs::read(public_path).unwrap();
    let theirs = TokenKeys::without_keys(TokenPolicy::default())
        .with_ed25519(Some(&public_pem), None)
        .unwrap();
    assert!(!theirs.can_mint());
    assert!(theirs
        .mint(
            &switchboard_protocol::UserId::parse("victim").unwrap(),
            chrono::Duration::hours(1)
        )
        .is_err());

    // The best forgery it could try: HS256 keyed with the public key's text (algorithm
    // confusion). Refused at the upgrade; a real token from the registry's key opens.
    let forged = TokenKeys::new(&public_pem)
        .mint(
            &switchboard_protocol::UserId::parse("victim").unwrap(),
            chrono::Duration::hours(1),
        )
        .unwrap()
        .0;
    match WsClient::try_connect(&format!("{}?token={forged}", server.ws_url()), None)
        .await
        .unwrap()
    {
        Connect::Refused(status, _) => assert_eq!(status, 401),
        Connect::Open(_) => panic!("a token forged from the public key opened a socket"),
    }
    let real = stack
        .token_keys()
        .mint(
            &switchboard_protocol::UserId::parse("victim").unwrap(),
            chrono::Duration::hours(1),
        )
        .unwrap()
        .0;
    assert!(matches!(
        WsClient::try_connect(&format!("{}?token={real}", server.ws_url()), None)
            .await
            .unwrap(),
        Connect::Open(_)
    ));

    // 2. Its credential, exactly as its environment holds it, opens only its own routes.
    assert_eq!(env.get(SB_SERVICE_SECRET).map(String::len), Some(48));
    let own = [
        ("x-cluster-service", "socket-server"),
        ("x-cluster-secret", env[SB_SERVICE_SECRET].as_str()),
    ];
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, url: String, headers: &[(&str, &str)]| {
        let mut request = http.request(method, url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send()
    };
    let ms = stack.message_service.as_ref().unwrap().url();
    let manager = stack.managers[0].url();
    // The membership routes (the managers' only): 403, a wrong role.
    for path in [
        "/internal/v1/conversations/c1/members",
        "/internal/v1/users/victim/contacts?max_group=10",
    ] {
        let status = call(reqwest::Method::GET, format!("{ms}{path}"), &own)
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403, "{path}");
    }
    let status = call(
        reqwest::Method::POST,
        format!("{ms}/internal/v1/conversations/c1/settled-last-seq?after_seq=0&partitions=1"),
        &own,
    )
    .await
    .unwrap()
    .status();
    assert_eq!(status, 403, "settled-last-seq");
    // Claiming to be a manager with the socket server's secret: 401.
    let posing = [
        ("x-cluster-service", "socket-manager"),
        ("x-cluster-secret", env[SB_SERVICE_SECRET].as_str()),
    ];
    let status = call(
        reqwest::Method::GET,
        format!("{ms}/internal/v1/conversations/c1/members"),
        &posing,
    )
    .await
    .unwrap()
    .status();
    assert_eq!(status, 401);
    // Its own route at a manager is open (an unknown server's heartbeat: 404, not 401/403).
    let status = call(
        reqwest::Method::POST,
        format!("{manager}/internal/v1/handlers/not-registered/heartbeat"),
        &own,
    )
    .await
    .unwrap()
    .status();
    assert!(status != 401 && status != 403, "heartbeat: {status}");
    // A manager's credential may not register a socket server at the registry.
    let manager_cred = stack.credential(ServiceRole::SocketManager);
    let [(h1, v1), (h2, v2)] = manager_cred.headers();
    let registration = serde_json::json!({
        "server_id": "intruder", "url": "ws://127.0.0.1:1/ws",
        "health_url": "http://127.0.0.1:1/live", "max_connections": 10
    });
    let status = http
        .post(format!(
            "{}/api/v1/socket-servers",
            stack.registries[0].url()
        ))
        .header(h1, v1)
        .header(h2, v2)
        .json(&registration)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
    // The published shared default opens nothing in a per-service cluster.
    let status = call(
        reqwest::Method::GET,
        format!("{ms}/internal/v1/conversations/c1/members"),
        &[
            ("x-cluster-service", "socket-manager"),
            ("x-cluster-secret", "switchboard-dev-cluster-secret"),
        ],
    )
    .await
    .unwrap()
    .status();
    assert_eq!(status, 401);
}
