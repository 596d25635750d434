//! The command line every Switchboard binary shares: settings come from the environment, so
//! the only arguments are `--help`/`-h` (what the binary is, how to run it, and every
//! environment variable it reads with its default and meaning), `--version`/`-V`, and, for a
//! tool such as `mint-token`, a few positional arguments. Anything else is an error (exit 2)
//! that names the argument and points at `--help`.

use crate::env::{render_tables, wrap, EnvTable};

/// What a binary says about itself.
#[derive(Debug, Clone, Copy)]
pub struct Cli {
    /// The binary's name, e.g. `registry`.
    pub name: &'static str,
    /// `env!("CARGO_PKG_VERSION")` of the binary's crate.
    pub version: &'static str,
    /// One paragraph: what it is and does.
    pub about: &'static str,
    /// The argument synopsis after the name, e.g. `USER_ID [TTL_SECONDS]`; empty for none.
    pub usage: &'static str,
    /// How many positional arguments it takes at most (0 for a service).
    pub max_positional: usize,
    /// Every environment variable it reads, by group.
    pub env: &'static [EnvTable],
}

/// What the arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run, with these positional arguments.
    Run(Vec<String>),
    Help,
    Version,
    /// A usage error, already worded.
    Error(String),
}

impl Cli {
    /// Decides what `args` (without the program name) ask for.
    pub fn parse(&self, args: impl IntoIterator<Item = String>) -> Action {
        let mut positional = Vec::new();
        for arg in args {
            match arg.as_str() {
                "--help" | "-h" => return Action::Help,
                "--version" | "-V" => return Action::Version,
                _ if arg.starts_with('-') && arg.len() > 1 => {
                    return Action::Error(format!(
                        "{}: unknown option '{arg}'; see '{} --help'",
                        self.name, self.name
                    ))
                }
                _ if positional.len() >= self.max_positional => {
                    return Action::Error(format!(
                        "{}: unexpected argument '{arg}' ({}); see '{} --help'",
                        self.name,
                        if self.max_positional == 0 {
                            "it takes no arguments: settings come from the environment".to_owned()
                        } else {
                            format!("usage: {} {}", self.name, self.usage)
                        },
                        self.name
                    ))
                }
                _ => positional.push(arg),
            }
        }
        Action::Run(positional)
    }

    /// The `--help` text.
    pub fn help(&self) -> String {
        let usage = if self.usage.is_empty() {
            format!("{} [--help | --version]", self.name)
        } else {
            format!(
                "{} {}\n       {} --help | --version",
                self.name, self.usage, self.name
            )
        };
        format!(
            "{} {}\n\n{}\n\nUsage: {usage}\n\nEnvironment (unset or empty means the default; \
             docs/configuration.md has the same tables):\n\n{}",
            self.name,
            self.version,
            wrap(self.about, 100).join("\n"),
            render_tables(self.env)
        )
    }

    /// Handles the process's own arguments: prints help or the version and exits 0, or prints
    /// a usage error and exits 2; otherwise returns the positional arguments. Call it first in
    /// `main`, before logging or reading any configuration.
    pub fn handle_args(&self) -> Vec<String> {
        match self.parse(std::env::args().skip(1)) {
            Action::Run(positional) => positional,
            Action::Help => {
                print!("{}", self.help());
                std::process::exit(0)
            }
            Action::Version => {
                println!("{} {}", self.name, self.version);
                std::process::exit(0)
            }
            Action::Error(message) => {
                eprintln!("{message}");
                std::process::exit(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::EnvVar;
    use crate::names::SB_LOG_FORMAT;

    const TABLES: &[EnvTable] = &[EnvTable {
        title: "Mine",
        vars: &[EnvVar {
            name: SB_LOG_FORMAT,
            default: Some("7"),
            doc: "X.",
        }],
    }];

    fn cli(max_positional: usize) -> Cli {
        Cli {
            name: "demo",
            version: "1.2.3",
            about: "A demo.",
            usage: if max_positional == 0 { "" } else { "USER" },
            max_positional,
            env: TABLES,
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_and_errors() {
        let service = cli(0);
        assert_eq!(service.parse(args(&[])), Action::Run(vec![]));
        assert_eq!(service.parse(args(&["--help"])), Action::Help);
        assert_eq!(service.parse(args(&["-h"])), Action::Help);
        assert_eq!(service.parse(args(&["-V"])), Action::Version);
        assert_eq!(service.parse(args(&["--version"])), Action::Version);
        let Action::Error(e) = service.parse(args(&["--port"])) else {
            panic!("an unknown option is an error")
        };
        assert!(e.contains("'--port'") && e.contains("demo --help"), "{e}");
        let Action::Error(e) = service.parse(args(&["8080"])) else {
            panic!("a service takes no positional argument")
        };
        assert!(e.contains("'8080'") && e.contains("--help"), "{e}");

        let tool = cli(1);
        assert_eq!(tool.parse(args(&["alice"])), Action::Run(args(&["alice"])));
        assert!(matches!(tool.parse(args(&["a", "b"])), Action::Error(_)));
        assert_eq!(tool.parse(args(&["alice", "--help"])), Action::Help);
    }

    #[test]
    fn help_has_about_usage_and_variables() {
        let text = cli(0).help();
        assert!(text.starts_with("demo 1.2.3\n\nA demo.\n\nUsage: demo [--help"));
        assert!(
            text.contains(&format!(
                "Mine:\n  {SB_LOG_FORMAT} (default \"7\")\n      X.\n"
            )),
            "{text}"
        );
    }
}
