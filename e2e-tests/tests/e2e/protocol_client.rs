//! docs/protocol.md is enough to write a client: the independent Python client in
//! `clients/python` (written from the document alone, stdlib + the pinned `websockets`) runs
//! `scenario.py` against the whole local stack: tokens (dev route and HS256 minted from the
//! shared secret), registry assignment, every WebSocket frame, REST conversations, history,
//! members and roles, presence, the error codes, and the promises (seq from 1 without gaps or
//! repeats, idempotent resends, resync after a reconnect). Any mismatch fails the test with the
//! script's report.

use std::process::Command;

use switchboard_config::names::{SB_ALLOWED_ORIGINS, SB_JWT_SECRET};
use switchboard_test_support::{repo_root, Stack, StackOptions};

fn venv_python() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".cache/switchboard/venv/bin/python")
}

const SCENARIO_JWT_SECRET: &str = "the-python-scenario-mints-with-this-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_independent_client_written_from_the_protocol_document_works() {
    // An origin allowlist, so the scenario can check that a page from elsewhere is refused.
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        extra_env: vec![
            (
                SB_ALLOWED_ORIGINS.to_owned(),
                "http://chat.example.com".to_owned(),
            ),
            // The scenario mints HS256 tokens with the standard library (the shared-secret
            // mode; the stack's default is Ed25519, which the stdlib cannot sign).
            (SB_JWT_SECRET.to_owned(), SCENARIO_JWT_SECRET.to_owned()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();

    let python = venv_python();
    assert!(
        python.exists(),
        "the venv is not at {} (scripts/install-deps.sh creates it)",
        python.display()
    );
    let has_websockets = Command::new(&python)
        .args([
            "-c",
            "import websockets; assert websockets.__version__ == '13.1'",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_websockets,
        "websockets==13.1 is not in the venv (scripts/install-deps.sh installs it)"
    );

    let script = repo_root().join("clients/python/scenario.py");
    let base_url = stack.nginx_url();
    let secret = SCENARIO_JWT_SECRET.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--base-url", &base_url, "--secret", &secret])
            .args(["--allowed-origin", "http://chat.example.com"])
            .args(["--disallowed-origin", "http://evil.example.com"])
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("scenario.py runs")
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
        "the client written from docs/protocol.md disagrees with the system:\n{report}"
    );
}
