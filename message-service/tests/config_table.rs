//! The message service's environment variables: one table, distinct `SB_` names, every one documented
//! in docs/configuration.md with its real default, and listed by `message-service --help`.

use message_service::config::HELP_TABLES;
use switchboard_config::env::{check_cli, check_defaults, check_service_tables};
use switchboard_config::lookup::from_pairs;
use switchboard_config::names::{SB_DEV_MODE, SB_GROUP_ADD_POLICY, SB_PRESENCE_POLICY};
use switchboard_config::tables::message_service::TABLE;

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

/// The consent policies take only their documented values; anything else stops the binary
/// at startup naming the variable (a typo must not silently leave the open default).
#[test]
fn consent_policies_refuse_unknown_values() {
    use message_service::config::{GroupAddPolicy, PresencePolicy};
    use message_service::MessageServiceConfig;
    let read = |vars: &'static [(&'static str, &'static str)]| {
        let vars = from_pairs(vars);
        MessageServiceConfig::from_lookup(&move |name: &str| {
            vars(name).or_else(|| (name == SB_DEV_MODE).then(|| "true".to_owned()))
        })
    };
    let defaults = read(&[]).unwrap();
    assert_eq!(defaults.group_add_policy, GroupAddPolicy::Open);
    assert_eq!(defaults.presence_policy, PresencePolicy::Shared);
    assert_eq!(defaults.db_rest_statement_timeout_ms, 5000);
    let strict = read(&[
        (SB_GROUP_ADD_POLICY, "invite"),
        (SB_PRESENCE_POLICY, "accepted"),
    ])
    .unwrap();
    assert_eq!(strict.group_add_policy, GroupAddPolicy::Invite);
    assert_eq!(strict.presence_policy, PresencePolicy::Accepted);
    let err = read(&[(SB_GROUP_ADD_POLICY, "closed")]).unwrap_err();
    assert!(err.to_string().contains(SB_GROUP_ADD_POLICY), "{err}");
    let err = read(&[(SB_PRESENCE_POLICY, "everyone")]).unwrap_err();
    assert!(err.to_string().contains(SB_PRESENCE_POLICY), "{err}");
}
