//! The variables every service reads (common, Redis, logging): distinct `SB_` (or standard)
//! names, each documented in docs/configuration.md with the default the code really uses.

use switchboard_config::env::{check_defaults, check_documented, check_names};
use switchboard_config::names::SB_DEV_MODE;
use switchboard_config::tables::COMMON;
use switchboard_service_kit::config::CommonConfig;

const DOC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/configuration.md"
));

#[test]
fn names_are_distinct_and_documented() {
    let problems = check_names(COMMON);
    assert!(problems.is_empty(), "{problems:#?}");
    let problems = check_documented(DOC, COMMON);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The only test of this file that touches the environment.
#[test]
fn documented_defaults_are_the_code_defaults() {
    check_defaults(COMMON, &[(SB_DEV_MODE, "true")], CommonConfig::from_env).unwrap();
}
