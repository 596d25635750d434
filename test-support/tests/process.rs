//! ManagedProcess and free_port against real (tiny) processes.

use std::collections::HashSet;
use std::time::Duration;

use switchboard_config::names::PREFIX;
use switchboard_test_support::ports::is_free;
use switchboard_test_support::{free_port, ManagedProcess};

#[test]
fn ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let unique: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len());
    for port in ports {
        assert!(is_free("127.0.0.1", port));
    }
}

#[tokio::test]
async fn logs_output_and_reports_exit() {
    let dir = tempfile::tempdir().unwrap();
    let p = ManagedProcess::spawn(
        "echo",
        "/bin/sh",
        &["-c", "echo hello-$GREETING; exit 3"],
        &[("GREETING".into(), "world".into())],
        dir.path(),
    )
    .unwrap();
    let status = p.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert_eq!(status.code(), Some(3));
    let log = p.log_tail(5);
    assert!(log.contains("hello-world"), "{log}");
    assert!(!p.is_running());
}

#[tokio::test]
async fn sigterm_kill9_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let a = ManagedProcess::spawn("a", "/bin/sleep", &["30"], &[], dir.path()).unwrap();
    assert!(a.is_running());
    a.sigterm();
    assert!(a.wait_exit(Duration::from_secs(5)).await.is_some());

    let b = ManagedProcess::spawn("b", "/bin/sleep", &["30"], &[], dir.path()).unwrap();
    b.kill9();
    assert!(!b.is_running());
    b.kill9(); // idempotent
    b.sigterm(); // no-op once reaped

    let c = ManagedProcess::spawn("c", "/bin/sleep", &["30"], &[], dir.path()).unwrap();
    let pid = c.pid();
    drop(c);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn missing_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        ManagedProcess::spawn::<&str>("x", "/nope/registry", &[], &[], dir.path()).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

/// A harness that is SIGKILLed takes its children with it (PR_SET_PDEATHSIG): this test
/// runs its own binary as a "harness" (the ignored helper below), which spawns `sleep`; then
/// it SIGKILLs the harness and checks the `sleep` is gone too.
#[tokio::test]
async fn children_die_with_a_killed_harness() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // A variable of ours by its prefix: the harness passes those on to the services it starts.
    let leak_check = format!("{PREFIX}LEAK_CHECK");
    let harness = ManagedProcess::spawn(
        "harness",
        std::env::current_exe().unwrap(),
        &["--exact", "helper_harness", "--ignored", "--nocapture"],
        &[
            ("HELPER_PID_FILE".into(), pid_file.display().to_string()),
            (leak_check.clone(), "leaked".into()),
        ],
        dir.path(),
    )
    .unwrap();
    let mut child_pid = None;
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                child_pid = Some(pid);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let child_pid = child_pid.unwrap_or_else(|| panic!("no pid; {}", harness.log_tail(20)));
    let proc_dir = format!("/proc/{child_pid}");
    assert!(std::path::Path::new(&proc_dir).exists());
    // Own process group (Ctrl-C in a terminal reaches only the harness).
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    assert_eq!(fields[2], child_pid.to_string(), "own process group");
    // The harness had SB_LEAK_CHECK set; its child must not inherit SB_* variables.
    let environ = std::fs::read(format!("{proc_dir}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(&leak_check));

    harness.kill9();
    let mut gone = false;
    for _ in 0..100 {
        // The orphan is re-parented and reaped by init (or is a zombie until then).
        let state = std::fs::read_to_string(format!("{proc_dir}/stat")).ok();
        if state.is_none_or(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z')) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the harness's child outlived it");
}

#[tokio::test]
#[ignore = "helper for children_die_with_a_killed_harness"]
async fn helper_harness() {
    let Some(pid_file) = std::env::var_os("HELPER_PID_FILE") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let child = ManagedProcess::spawn("sleep", "/bin/sleep", &["60"], &[], dir.path()).unwrap();
    std::fs::write(pid_file, child.pid().to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}
