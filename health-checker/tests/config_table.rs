//! The health checker's environment variables: one table, distinct `SB_` names, every one documented
//! in docs/configuration.md with its real default, and listed by `health-checker --help`.

use std::process::Command;

use health_checker::config::{HELP_TABLES, TABLE};
use switchboard_service_kit::env::{check_defaults, check_documented, check_names};

const DOC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/configuration.md"
));

#[test]
fn names_are_distinct_and_documented() {
    let problems = check_names(HELP_TABLES);
    assert!(problems.is_empty(), "{problems:#?}");
    let problems = check_documented(DOC, HELP_TABLES);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        DOC.contains(&format!("## {}", TABLE.title)),
        "docs/configuration.md has a section per service"
    );
}

/// The only test of this file that touches the environment.
#[test]
fn documented_defaults_are_the_code_defaults() {
    check_defaults(
        HELP_TABLES,
        &[("SB_DEV_MODE", "true")],
        health_checker::HealthCheckerConfig::from_env,
    )
    .unwrap();
}

#[test]
fn help_lists_every_variable_and_bad_arguments_fail() {
    let help = Command::new(env!("CARGO_BIN_EXE_health-checker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8(help.stdout).unwrap();
    for var in HELP_TABLES.iter().flat_map(|t| t.vars) {
        assert!(
            text.contains(var.name),
            "--help does not list {}:\n{text}",
            var.name
        );
    }
    let version = Command::new(env!("CARGO_BIN_EXE_health-checker"))
        .arg("-V")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("health-checker "));
    let bad = Command::new(env!("CARGO_BIN_EXE_health-checker"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--bogus") && err.contains("--help"), "{err}");
}
