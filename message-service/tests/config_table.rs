//! The message service's environment variables: one table, distinct `SB_` names, every one documented
//! in docs/configuration.md with its real default, and listed by `message-service --help`.

use message_service::config::{HELP_TABLES, TABLE};
use switchboard_service_kit::env::{check_cli, check_defaults, check_service_tables};

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
        &[("SB_DEV_MODE", "true")],
        message_service::MessageServiceConfig::from_env,
    )
    .unwrap();
}

#[test]
fn help_lists_every_variable_and_bad_arguments_fail() {
    check_cli(
        env!("CARGO_BIN_EXE_message-service"),
        "message-service",
        HELP_TABLES,
    )
    .unwrap();
}
