//! The attachment settings (`message_service::attachments::config`): distinct names, each
//! documented in docs/configuration.md with the default the code really uses.

use message_service::attachments::config::AttachmentsConfig;
use switchboard_config::env::{check_defaults, check_documented, check_names};
use switchboard_config::names::SB_S3_ENDPOINT;
use switchboard_config::tables::attachments::{ENV, TABLE};

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
    assert!(DOC.contains(&format!("### {}", TABLE.title)));
    assert!(!ENV.is_empty());
}

/// The only test of this file that touches the environment.
#[test]
fn documented_defaults_are_the_code_defaults() {
    check_defaults(&[TABLE], &[], AttachmentsConfig::from_env).unwrap();
}

#[test]
fn an_endpoint_needs_its_credentials() {
    let lookup = |name: &str| (name == SB_S3_ENDPOINT).then(|| "http://127.0.0.1:1".to_owned());
    assert!(AttachmentsConfig::from_lookup(&lookup).is_err());
}
