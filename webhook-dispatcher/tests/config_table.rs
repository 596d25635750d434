//! The dispatcher's environment variables: one table, distinct `SB_` names, every one
//! documented in docs/configuration.md with its real default, and listed by
//! `webhook-dispatcher --help`.
use switchboard_config::env::{check_cli, check_defaults, check_service_tables};
use switchboard_config::lookup::from_pairs;
use switchboard_config::names::{SB_WEBHOOK_ALLOW_NETS, SB_WEBHOOK_DB_SCHEMA};
use switchboard_config::tables::webhook_dispatcher::TABLE;
use webhook_dispatcher::config::HELP_TABLES;

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
        &[],
        webhook_dispatcher::DispatcherConfig::from_env,
    )
    .unwrap();
}

#[test]
fn help_lists_every_variable_and_bad_arguments_fail() {
    check_cli(
        env!("CARGO_BIN_EXE_webhook-dispatcher"),
        "webhook-dispatcher",
        HELP_TABLES,
    )
    .unwrap();
}

/// A bad allow-list or schema name stops the binary at startup, naming the variable.
#[test]
fn bad_allow_nets_and_schema_names_are_refused() {
    let read = |vars: &'static [(&'static str, &'static str)]| {
        webhook_dispatcher::DispatcherConfig::from_lookup(&from_pairs(vars))
    };
    assert!(read(&[]).is_ok());
    let err = read(&[(SB_WEBHOOK_ALLOW_NETS, "10.0.0.0/8,everything")]).unwrap_err();
    assert!(err.to_string().contains(SB_WEBHOOK_ALLOW_NETS), "{err}");
    let err = read(&[(SB_WEBHOOK_DB_SCHEMA, "public; DROP TABLE x")]).unwrap_err();
    assert!(err.to_string().contains(SB_WEBHOOK_DB_SCHEMA), "{err}");
}
