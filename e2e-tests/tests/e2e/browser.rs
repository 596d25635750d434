//! The demo web client (on the client SDK, `nginx/html/sdk`) in a real (headless) browser:
//! `web-tests/chat.test.mjs` drives Chromium pages through nginx against a full stack,
//! including a SIGKILL of the socket server one page is on, sends while offline and across a
//! reload (the SDK's outbox: delivered once), and a page on the HTTP fallback (SSE + POST).
//! Needs `/usr/bin/chromium` and `web-tests/node_modules` (playwright-core):
//! `scripts/install-deps.sh` installs both. Missing, the test fails; it never skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use switchboard_test_support::{Stack, StackOptions};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds itself at 110 s; this is the backstop.
const NODE_TIMEOUT: Duration = Duration::from_secs(150);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e-tests has a parent directory")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_chats_reloads_and_survives_a_socket_server_kill() {
    let root = repo_root();
    let web_tests = root.join("web-tests");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-deps.sh (installs Debian's chromium)"
    );
    assert!(
        web_tests.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: run scripts/install-deps.sh (npm ci --prefix web-tests)",
        web_tests.display()
    );

    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let pids: Map<String, Value> = stack
        .socket_servers
        .iter()
        .map(|s| (s.server_id.clone(), Value::from(s.process.pid())))
        .collect();

    let child = tokio::process::Command::new("node")
        .arg(web_tests.join("chat.test.mjs"))
        .current_dir(&web_tests)
        .env("BASE_URL", stack.nginx_url())
        .env("SERVER_PIDS", Value::Object(pids).to_string())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node (is Node.js installed?)");
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chat.test.mjs ran longer than {NODE_TIMEOUT:?}"))
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "web-tests/chat.test.mjs failed ({}); logs in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status,
        stack.log_dir().display()
    );
    assert!(
        stdout.contains("1 passed, 0 failed"),
        "chat.test.mjs exited 0 without reporting a pass:\n{stdout}"
    );
}
