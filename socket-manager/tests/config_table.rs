//! The socket manager's environment variables: one table, distinct `SB_` names, every one documented
//! in docs/configuration.md with its real default, and listed by `socket-manager --help`.

use socket_manager::config::HELP_TABLES;
use switchboard_config::env::{check_cli, check_defaults, check_service_tables};
use switchboard_config::names::{SB_DEV_MODE, SB_MAX_BODY_BYTES, SB_USER_BYTES_BURST};
use switchboard_config::tables::socket_manager::TABLE;

const DOC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/configuration.md"
));

#[test]
fn names_are_distinct_and_documented() {
    check_service_tables(DOC, HELP_TABLES, &TABLE).unwrap();
}

/// The only test of this file that touches the environment.
#[test]
fn documented_defaults_are_the_code_defaults() {
    check_defaults(
        HELP_TABLES,
        &[(SB_DEV_MODE, "true")],
        socket_manager::ManagerConfig::from_env,
    )
    .unwrap();
}

#[test]
fn help_lists_every_variable_and_bad_arguments_fail() {
    check_cli(
        env!("CARGO_BIN_EXE_socket-manager"),
        "socket-manager",
        HELP_TABLES,
    )
    .unwrap();
}

/// A body limit whose records could not be produced stops the manager before it starts
/// anything, naming the variable (the rule: docs/configuration.md, Socket manager).
#[test]
fn a_body_limit_too_large_for_one_kafka_record_is_refused_at_startup() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_socket-manager"))
        .env(SB_DEV_MODE, "true")
        .env(SB_MAX_BODY_BYTES, "400000")
        .output()
        .expect("run socket-manager");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(SB_MAX_BODY_BYTES) && stderr.contains("139931"),
        "{stderr}"
    );
}

/// A byte burst smaller than the body limit would refuse every large send for good: the
/// manager stops at startup, naming the variable.
#[test]
fn a_byte_burst_below_the_body_limit_is_refused_at_startup() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_socket-manager"))
        .env(SB_DEV_MODE, "true")
        .env(SB_USER_BYTES_BURST, "1000")
        .output()
        .expect("run socket-manager");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(SB_USER_BYTES_BURST), "{stderr}");
}
