//! The REST API's OpenAPI document (generated from the handlers, served through nginx at
//! `/api/v1/openapi.json`) lists every public route, and schemathesis, driving every route
//! with generated valid and invalid input, finds no server error.

use std::process::Command;

use switchboard_test_support::{Stack, StackOptions};

use crate::client::{create_conversation, http, token_for};

/// Every public REST route, as `METHOD path`.
const PUBLIC_ROUTES: &[&str] = &[
    "GET /api/v1/socket-server",
    "GET /api/v1/socket-servers",
    "POST /api/v1/dev/token",
    "POST /api/v1/conversations",
    "GET /api/v1/conversations",
    "GET /api/v1/conversations/{id}",
    "GET /api/v1/conversations/{id}/messages",
    "POST /api/v1/conversations/{id}/accept",
    "GET /api/v1/invitations",
    "GET /api/v1/blocks",
    "PUT /api/v1/blocks/{user_id}",
    "DELETE /api/v1/blocks/{user_id}",
    "POST /api/v1/conversations/{id}/members",
    "DELETE /api/v1/conversations/{id}/members/{user_id}",
    "PUT /api/v1/conversations/{id}/members/{user_id}/role",
    "GET /api/v1/presence",
    "POST /api/v1/conversations/{id}/attachments",
    "GET /api/v1/conversations/{id}/attachments/{attachment_id}",
    "GET /api/v1/search",
    "POST /api/v1/push/devices",
    "GET /api/v1/push/devices",
    "DELETE /api/v1/push/devices/{id}",
    // The server API (API keys; a user token gets 401 there, which schemathesis accepts).
    "POST /server/v1/conversations",
    "GET /server/v1/conversations/{id}",
    "PUT /server/v1/conversations/{id}/members/{user_id}",
    "DELETE /server/v1/conversations/{id}/members/{user_id}",
    "GET /server/v1/conversations/{id}/messages",
    "POST /server/v1/conversations/{id}/messages",
    "GET /server/v1/presence",
    "POST /server/v1/users/{user_id}/sessions/end",
    // The webhook dispatcher's endpoint API (described in protocol/src/webhooks.rs).
    "POST /server/v1/webhooks",
    "GET /server/v1/webhooks",
    "GET /server/v1/webhooks/{id}",
    "DELETE /server/v1/webhooks/{id}",
    "POST /server/v1/webhooks/{id}/rotate-secret",
    "POST /server/v1/webhooks/{id}/enable",
];

fn schemathesis() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".cache/switchboard/venv/bin/schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_lists_every_route_and_schemathesis_finds_no_server_error() {
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        // The document lists /server/v1/webhooks: nginx must have the dispatcher behind it.
        webhook_dispatcher: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let url = format!("{}/api/v1/openapi.json", stack.nginx_url());
    let doc: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    let mut listed: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            listed.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    listed.sort();
    let mut expected: Vec<String> = PUBLIC_ROUTES.iter().map(|r| r.to_string()).collect();
    expected.sort();
    assert_eq!(
        listed, expected,
        "the document lists exactly the public routes"
    );

    // Some data for the generated requests to hit.
    let token = token_for(&stack, "alice");
    create_conversation(
        &http,
        &stack,
        &token,
        serde_json::json!({"kind":"group","name":"g","members":["bob"]}),
    )
    .await;

    let bin = schemathesis();
    assert!(
        bin.exists(),
        "schemathesis is not installed at {} (scripts/install-deps.sh installs it)",
        bin.display()
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args([
                "run",
                &url,
                "--checks",
                "not_a_server_error",
                "--header",
                &format!("Authorization: Bearer {token}"),
                "--max-examples",
                "30",
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "2",
                "--seed",
                "1",
                "--request-timeout",
                "10",
                "--generation-allow-x00",
                "true",
            ])
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found server errors:\n{report}"
    );
}
