//! The registry through nginx: assignment, balance, capacity, protected routes, dev tokens.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_test_support::ServiceRole;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{
    assert_balanced, assign, connect_via_registry, eventually, http, scores, spread,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assign_list_and_sequential_clients_spread_evenly() {
    let stack = Stack::start(StackOptions::without_messaging())
        .await
        .unwrap();
    let http = http();
    let urls: HashSet<String> = stack.socket_servers.iter().map(|s| s.ws_url()).collect();

    let first = assign(&http, &stack).await.unwrap();
    assert!(
        urls.contains(&first.url),
        "{} is one of {urls:?}",
        first.url
    );
    assert_eq!(first.max_connections, 100_000);

    // 300 clients, each asking the registry and then connecting.
    let clients = connect_via_registry(&stack, 300, 1).await.unwrap();
    let counts = spread(&clients);
    assert_balanced(&counts, 3, 300);

    let list: Value = http
        .get(format!("{}/api/v1/socket-servers", stack.nginx_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let servers = list["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    let loads: Vec<u64> = servers
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .collect();
    assert!(
        loads.windows(2).all(|w| w[0] <= w[1]),
        "ordered by load: {loads:?}"
    );
    for s in servers {
        for field in ["server_id", "url", "max_connections", "last_heartbeat"] {
            assert!(!s[field].is_null(), "{field} present in {s}");
        }
    }
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_1000_assigns_then_connects_stays_balanced_and_scores_return_exact() {
    let stack = Stack::start(StackOptions::without_messaging())
        .await
        .unwrap();
    let http = http();

    // 1,000 assigns at once, all before any client connects.
    let assigns = (0..1000).map(|_| assign(&http, &stack));
    let assignments: Vec<_> = futures_util::future::join_all(assigns)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let tokens: Vec<String> = (0..1000)
        .map(|i| crate::client::token_for(&stack, &format!("burst{i}")))
        .collect();
    let mut clients = Vec::new();
    for chunk in assignments
        .iter()
        .zip(&tokens)
        .collect::<Vec<_>>()
        .chunks(100)
    {
        let connects = chunk
            .iter()
            .map(|(a, t)| crate::client::WsClient::connect(&a.url, t));
        for c in futures_util::future::join_all(connects).await {
            clients.push(c.unwrap());
        }
    }
    let counts = spread(&clients);
    assert_balanced(&counts, 3, 1000);

    // 100 stay and keep answering the server's heartbeat; 900 leave at once: half
    // politely, half by dropping TCP with no close frame.
    let staying: Vec<_> = clients.split_off(900);
    let expected = spread(&staying);
    let readers: Vec<_> = staying.into_iter().map(|c| c.keep_alive()).collect();
    let mut leaving = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            leaving.push(tokio::spawn(client.close()));
        } else {
            client.drop_tcp();
        }
    }
    futures_util::future::join_all(leaving).await;
    let exact = eventually(Duration::from_secs(10), || async {
        let scores = scores(&stack).await;
        stack.socket_servers.iter().all(|s| {
            let live = expected.get(&s.server_id).copied().unwrap_or(0) as f64;
            scores.get(&s.server_id) == Some(&live)
        })
    })
    .await;
    assert!(
        exact,
        "scores {:?} equal live counts {expected:?}",
        scores(&stack).await
    );
    readers.iter().for_each(|r| r.abort());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_servers_are_never_handed_out_and_all_full_is_503() {
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        health_checkers: 1,
        max_connections: 2,
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    let clients = connect_via_registry(&stack, 4, 1).await.unwrap();
    assert_balanced(&spread(&clients), 2, 4);
    let http = http();
    let resp = http
        .get(format!("{}/api/v1/socket-server", stack.nginx_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_capacity");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_need_the_secret_and_dev_tokens_work() {
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        health_checkers: 1,
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    let http = http();
    let base = stack.nginx_url();
    let registration = json!({
        "server_id": "intruder", "url": "ws://127.0.0.1:1/ws",
        "health_url": "http://127.0.0.1:1/live", "max_connections": 10
    });

    let resp = http
        .post(format!("{base}/api/v1/socket-servers"))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );
    let resp = http
        .delete(format!(
            "{base}/api/v1/socket-servers/{}",
            stack.socket_servers[0].server_id
        ))
        .header("x-cluster-secret", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(scores(&stack)
        .await
        .contains_key(&stack.socket_servers[0].server_id));

    // With the secret: register, see it listed, deregister.
    let resp = http
        .post(format!("{base}/api/v1/socket-servers"))
        .header("x-cluster-service", "socket-server")
        .header(
            "x-cluster-secret",
            stack.credential(ServiceRole::SocketServer).headers()[1].1,
        )
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(scores(&stack).await.contains_key("intruder"));
    let resp = http
        .delete(format!("{base}/api/v1/socket-servers/intruder"))
        .header("x-cluster-service", "socket-server")
        .header(
            "x-cluster-secret",
            stack.credential(ServiceRole::SocketServer).headers()[1].1,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!scores(&stack).await.contains_key("intruder"));

    // Malformed registration body: JSON error, not plain text.
    let resp = http
        .post(format!("{base}/api/v1/socket-servers"))
        .header("x-cluster-service", "socket-server")
        .header(
            "x-cluster-secret",
            stack.credential(ServiceRole::SocketServer).headers()[1].1,
        )
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "bad_request"
    );

    // Dev tokens (dev mode is on in the test stack).
    let resp = http
        .post(format!("{base}/api/v1/dev/token"))
        .json(&json!({"user_id": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user_id"], "alice");
    assert!(chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).is_ok());
    let token = body["token"].as_str().unwrap();
    let client = crate::client::WsClient::connect(&stack.socket_servers[0].ws_url(), token)
        .await
        .unwrap();
    client.close().await;

    let resp = http
        .post(format!("{base}/api/v1/dev/token"))
        .json(&json!({"user_id": "no spaces allowed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.json::<Value>().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("user_id") && message.contains("must be"),
        "the refusal names the id's rule: {body}"
    );
}
