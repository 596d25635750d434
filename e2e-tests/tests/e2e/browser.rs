//! The demo web client (on the client SDK, `nginx/html/sdk`) in a real (headless) browser:
//! `web-tests/chat.test.mjs` drives Chromium pages through nginx against a full stack,
//! including a SIGKILL of the socket server one page is on, sends while offline and across a
//! reload (the SDK's outbox: delivered once), and a page on the HTTP fallback (SSE + POST).
//! `web-tests/rich.test.mjs` drives the rich messages (issue 28 part 4) on a stack with the
//! object store (Garage): edits, replies, reactions and deletes seen live by the other user,
//! an image uploaded with progress through the pre-signed URL, its thumbnail and download on
//! the other side, and the same final state after a reload. The two tests run one at a time
//! (each starts a whole stack and a browser; the machine they run on is small).
//! Needs `/usr/bin/chromium` and `web-tests/node_modules` (playwright-core):
//! `scripts/install-deps.sh` installs both. Missing, the test fails; it never skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use switchboard_test_support::{Stack, StackOptions};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The scripts bound themselves at 110 s; this is the backstop.
const NODE_TIMEOUT: Duration = Duration::from_secs(150);

/// One browser test at a time (tokio's lock is not poisoned by a failed test).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e-tests has a parent directory")
        .to_owned()
}

/// `web-tests/`, after checking that Chromium and playwright-core are installed.
fn web_tests_dir() -> PathBuf {
    let web_tests = repo_root().join("web-tests");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-deps.sh (installs Debian's chromium)"
    );
    assert!(
        web_tests.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: run scripts/install-deps.sh (npm ci --prefix web-tests)",
        web_tests.display()
    );
    web_tests
}

/// The socket servers' ids → pids (`SERVER_PIDS`: the scripts kill the one a page is on).
fn server_pids(stack: &Stack) -> String {
    let pids: Map<String, Value> = stack
        .socket_servers
        .iter()
        .map(|s| (s.server_id.clone(), Value::from(s.process.pid())))
        .collect();
    Value::Object(pids).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_chats_reloads_and_survives_a_socket_server_kill() {
    let _one = ONE_AT_A_TIME.lock().await;
    let web_tests = web_tests_dir();
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    run_script(&web_tests, "chat.test.mjs", &stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_edits_replies_reacts_deletes_and_sends_images() {
    let _one = ONE_AT_A_TIME.lock().await;
    let web_tests = web_tests_dir();
    let stack = Stack::start(StackOptions {
        object_store: true,
        socket_servers: 2,
        registries: 1,
        health_checkers: 1,
        managers: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    // The page PUTs files to the store's pre-signed URLs across origins: the stack's bucket
    // allows nginx's origin (test-support's object_store::put_bucket_cors, as compose's
    // garage-setup and a deployment do, docs/deploy.md).
    run_script(&web_tests, "rich.test.mjs", &stack).await;
}

/// Runs one `web-tests` script against `stack` and fails with its output unless it passed.
async fn run_script(web_tests: &Path, script: &str, stack: &Stack) {
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new("node")
        .arg(web_tests.join(script))
        .current_dir(web_tests)
        .env("BASE_URL", stack.nginx_url())
        .env("SERVER_PIDS", server_pids(stack))
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node (is Node.js installed?)");
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran longer than {NODE_TIMEOUT:?}"))
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("{script} took {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        output.status.success(),
        "web-tests/{script} failed ({}); logs in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status,
        stack.log_dir().display()
    );
    assert!(
        stdout.contains("1 passed, 0 failed"),
        "{script} exited 0 without reporting a pass:\n{stdout}"
    );
}
