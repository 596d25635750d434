//! The environment variables a binary reads, as data: each service lists its variables in one
//! table ([`EnvTable`]) next to its `from_env`, `--help` prints the tables
//! ([`render_tables`]), and tests check the tables against `docs/configuration.md` and against
//! the defaults `from_env` really uses ([`check_names`], [`check_documented`],
//! [`check_defaults`]), so neither the help nor the doc can drift from the code.

use std::fmt::Debug;
use std::fmt::Write as _;

/// One environment variable a binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name, e.g. `SB_REGISTRY_BIND`.
    pub name: &'static str,
    /// The value used when the variable is unset or empty, exactly as one would write it in
    /// the environment; `None` when unset means something other than a fixed value (the doc
    /// says what).
    pub default: Option<&'static str>,
    /// What it means, in a sentence or two.
    pub doc: &'static str,
}

/// A titled group of variables: one service's own, or a group every service shares.
#[derive(Debug, Clone, Copy)]
pub struct EnvTable {
    pub title: &'static str,
    pub vars: &'static [EnvVar],
}

/// Names that do not start with `SB_` but are read on purpose (standard names of the
/// ecosystem).
pub const STANDARD_NAMES: &[&str] = &[crate::names::RUST_LOG];

/// The tables as plain text for `--help`: a heading per table, then one entry per variable
/// with its default and its meaning, wrapped to 100 columns.
pub fn render_tables(tables: &[EnvTable]) -> String {
    let mut out = String::new();
    for table in tables {
        let _ = writeln!(out, "{}:", table.title);
        for var in table.vars {
            let default = match var.default {
                Some(d) => format!("default {d:?}"),
                None => "default: unset".to_owned(),
            };
            let _ = writeln!(out, "  {} ({default})", var.name);
            for line in wrap(var.doc, 94) {
                let _ = writeln!(out, "      {line}");
            }
        }
        out.push('\n');
    }
    out
}

/// `text` in lines of at most `width` columns, broken between words.
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Problems with the names of `tables` taken together: a name twice, or one that neither
/// starts with `SB_` nor is in [`STANDARD_NAMES`], or a variable with an empty doc. Empty
/// when all is well.
pub fn check_names(tables: &[EnvTable]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for var in tables.iter().flat_map(|t| t.vars) {
        if !seen.insert(var.name) {
            problems.push(format!("{} is listed twice", var.name));
        }
        if !var.name.starts_with(crate::names::PREFIX) && !STANDARD_NAMES.contains(&var.name) {
            problems.push(format!("{} does not start with SB_", var.name));
        }
        if var.doc.trim().is_empty() {
            problems.push(format!("{} has no description", var.name));
        }
    }
    problems
}

/// Problems with how `doc` (the text of `docs/configuration.md`) documents `tables`: every
/// variable needs a table row (a line starting with ``| `NAME` |``) that shows its default in
/// backticks, or says `unset` when it has none. Empty when all is well.
pub fn check_documented(doc: &str, tables: &[EnvTable]) -> Vec<String> {
    let mut problems = Vec::new();
    for var in tables.iter().flat_map(|t| t.vars) {
        let prefix = format!("| `{}` |", var.name);
        let Some(row) = doc.lines().find(|l| l.trim_start().starts_with(&prefix)) else {
            problems.push(format!("{} has no row in docs/configuration.md", var.name));
            continue;
        };
        let shown = match var.default {
            Some(d) => row.contains(&format!("`{d}`")),
            None => row.contains("unset"),
        };
        if !shown {
            problems.push(format!(
                "the row of {} does not show its default {:?}: {row}",
                var.name, var.default
            ));
        }
    }
    problems
}

/// The table checks of one service (its `tests/config_table.rs`): [`check_names`] and
/// [`check_documented`] over every table it reads, and a section of `doc` titled after its
/// own table (`own`).
pub fn check_service_tables(doc: &str, tables: &[EnvTable], own: &EnvTable) -> Result<(), String> {
    let mut problems = check_names(tables);
    problems.extend(check_documented(doc, tables));
    if !doc.contains(&format!("## {}", own.title)) {
        problems.push(format!(
            "docs/configuration.md has no section `## {}`",
            own.title
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Runs the built binary `exe` (named `name`) the way an operator would: `--help` exits 0 and
/// lists every variable of `tables`, `-V` prints `name` and the version, and an unknown
/// argument exits 2 naming itself and pointing at `--help`.
pub fn check_cli(exe: &str, name: &str, tables: &[EnvTable]) -> Result<(), String> {
    let run = |arg: &str| {
        std::process::Command::new(exe)
            .arg(arg)
            .output()
            .map_err(|e| format!("running {exe} {arg}: {e}"))
    };
    let help = run("--help")?;
    if !help.status.success() {
        return Err(format!("{name} --help: {help:?}"));
    }
    let text = String::from_utf8_lossy(&help.stdout);
    let missing: Vec<&str> = tables
        .iter()
        .flat_map(|t| t.vars)
        .map(|v| v.name)
        .filter(|n| !text.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(format!("{name} --help does not list {missing:?}:\n{text}"));
    }
    let version = run("-V")?;
    if !version.status.success()
        || !String::from_utf8_lossy(&version.stdout).starts_with(&format!("{name} "))
    {
        return Err(format!("{name} -V: {version:?}"));
    }
    let bad = run("--bogus")?;
    let err = String::from_utf8_lossy(&bad.stderr);
    if bad.status.code() != Some(2) || !err.contains("--bogus") || !err.contains("--help") {
        return Err(format!("{name} --bogus: {bad:?}"));
    }
    Ok(())
}

/// Checks that the defaults in `tables` are the ones `read` (a `from_env`) really uses: reads
/// the config once with every variable of the tables unset and once with each set to its
/// documented default, and compares the two (by their `Debug` output). `pinned` variables
/// are set to the given value both times (say `SB_DEV_MODE=true`, so the published default
/// secrets are accepted).
///
/// It changes the process environment: call it from a test binary of its own, from one test.
pub fn check_defaults<C: Debug, E: Debug>(
    tables: &[EnvTable],
    pinned: &[(&str, &str)],
    read: impl Fn() -> Result<C, E>,
) -> Result<(), String> {
    let vars: Vec<&EnvVar> = tables.iter().flat_map(|t| t.vars).collect();
    let set_pinned = || {
        for (name, value) in pinned {
            std::env::set_var(name, value);
        }
    };
    for var in &vars {
        std::env::remove_var(var.name);
    }
    set_pinned();
    let unset = format!("{:?}", read().map_err(|e| format!("with defaults: {e:?}"))?);
    for var in &vars {
        if let Some(default) = var.default {
            std::env::set_var(var.name, default);
        }
    }
    set_pinned();
    let explicit = format!(
        "{:?}",
        read().map_err(|e| format!("set explicitly: {e:?}"))?
    );
    for var in &vars {
        std::env::remove_var(var.name);
    }
    if unset == explicit {
        Ok(())
    } else {
        Err(format!(
            "a documented default differs from the code's:\n unset: {unset}\n table: {explicit}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[EnvVar] = &[
        EnvVar {
            name: "SB_A",
            default: Some("1"),
            doc: "The first.",
        },
        EnvVar {
            name: "SB_B",
            default: None,
            doc: "The second.",
        },
    ];

    #[test]
    fn names_are_checked() {
        let table = EnvTable {
            title: "A",
            vars: A,
        };
        assert!(check_names(&[table]).is_empty());
        let problems = check_names(&[table, table]);
        assert!(problems.iter().any(|p| p.contains("SB_A is listed twice")));
        let bad = EnvTable {
            title: "bad",
            vars: &[EnvVar {
                name: "PORT",
                default: None,
                doc: "",
            }],
        };
        assert_eq!(check_names(&[bad]).len(), 2);
    }

    #[test]
    fn the_doc_must_show_each_row_and_default() {
        let table = EnvTable {
            title: "A",
            vars: A,
        };
        let good = "| `SB_A` | `1` | first |\n| `SB_B` | unset | second |\n";
        assert!(check_documented(good, &[table]).is_empty());
        let wrong_default = "| `SB_A` | `2` | first |\n| `SB_B` | unset | second |\n";
        assert_eq!(check_documented(wrong_default, &[table]).len(), 1);
        let missing = "| `SB_A` | `1` | first |\nSB_B is mentioned in prose only\n";
        assert_eq!(check_documented(missing, &[table]).len(), 1);
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let text = render_tables(&[EnvTable {
            title: "A",
            vars: A,
        }]);
        assert!(text.contains("SB_A (default \"1\")"), "{text}");
        assert!(text.contains("SB_B (default: unset)"), "{text}");
        assert!(text.contains("The second."), "{text}");
    }
}
