//! `devstack --help` describes the stack and lists the variables devstack reads, and each of
//! them has a row in docs/configuration.md.

use std::process::Command;

const DOC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/configuration.md"
));

#[test]
fn devstack_help_lists_documented_variables() {
    let help = Command::new(env!("CARGO_BIN_EXE_devstack"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8(help.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.contains(" (default"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"DEVSTACK_LISTEN_ADDR"), "{text}");
    for name in names {
        assert!(
            DOC.contains(&format!("| `{name}` |")),
            "{name} has no row in docs/configuration.md"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_devstack"))
        .arg("now")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
