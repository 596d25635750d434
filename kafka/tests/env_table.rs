//! The Kafka variables: distinct `SB_` names, each documented in docs/configuration.md with the
//! default the code really uses.

use switchboard_config::env::{check_defaults, check_documented, check_names};
use switchboard_config::tables::kafka::TABLE;
use switchboard_kafka::KafkaConfig;

const DOC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/configuration.md"
));

#[test]
fn names_are_distinct_and_documented() {
    let problems = check_names(&[TABLE]);
    assert!(problems.is_empty(), "{problems:#?}");
    let problems = check_documented(DOC, &[TABLE]);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The only test of this file that touches the environment.
#[test]
fn documented_defaults_are_the_code_defaults() {
    check_defaults(&[TABLE], &[], KafkaConfig::from_env).unwrap();
}
