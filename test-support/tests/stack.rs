//! Smoke test of the whole [`Stack`] (needs the service binaries: `cargo build --workspace
//! --bins`). Ignored by default because the e2e-tests crate covers the system; run with
//! `cargo test -p switchboard-test-support --test stack -- --ignored`.

use std::time::Duration;

use switchboard_test_support::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the service binaries; the e2e-tests crate covers the full stack"]
async fn small_stack_starts_and_lists_its_socket_servers() {
    let mut stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 2,
        health_checkers: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let idx = stack.start_socket_server(&[]).await.unwrap();
    assert_eq!(idx, 1);
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/socket-servers", stack.nginx_url());
    let mut listed = 0;
    for _ in 0..50 {
        let body: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        listed = body["servers"].as_array().map_or(0, Vec::len);
        if listed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, 2);
    stack.shutdown(Duration::from_secs(5)).await;
}
