//! The socket server's environment variables: one table, distinct `SB_` names, every one documented
//! in docs/configuration.md with its real default, and listed by `socket-server --help`.

use socket_server::config::HELP_TABLES;
use switchboard_config::env::{check_cli, check_defaults, check_service_tables};
use switchboard_config::names::SB_DEV_MODE;
use switchboard_config::tables::socket_server::TABLE;

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
        socket_server::SocketServerConfig::from_env,
    )
    .unwrap();
}

#[test]
fn help_lists_every_variable_and_bad_arguments_fail() {
    check_cli(
        env!("CARGO_BIN_EXE_socket-server"),
        "socket-server",
        HELP_TABLES,
    )
    .unwrap();
}
