//! The registry's environment variables: one table, distinct `SB_` names, every one documented
//! in docs/configuration.md with its real default, and listed by `registry --help`.

use std::process::Command;

use registry::config::HELP_TABLES;
use switchboard_config::env::{check_cli, check_defaults, check_service_tables};
use switchboard_config::names::{SB_DEV_MODE, SB_JWT_SECRET};
use switchboard_config::tables::registry::TABLE;

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
        registry::RegistryConfig::from_env,
    )
    .unwrap();
}

#[test]
fn help_lists_every_variable_and_bad_arguments_fail() {
    check_cli(env!("CARGO_BIN_EXE_registry"), "registry", HELP_TABLES).unwrap();
}

#[test]
fn mint_token_has_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_mint-token"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("USER_ID [TTL_SECONDS]") && text.contains(SB_JWT_SECRET));
    let extra = Command::new(env!("CARGO_BIN_EXE_mint-token"))
        .args(["alice", "60", "surplus"])
        .output()
        .unwrap();
    assert_eq!(extra.status.code(), Some(2));
}
