//! Switchboard's configuration vocabulary, a leaf crate (nothing of the workspace below it):
//! what a variable is called, what it means and defaults to, and how one is read, so that
//! every crate (services, `switchboard-kafka`, the test harness) configures itself without
//! pulling in the service kit and its web stack.
//!
//! - [`names`]: every environment variable's name as a constant (`names::SB_...`): the only
//!   place a name is spelled.
//! - [`tables`]: each part's table of its variables (default, meaning) for `--help`, the docs
//!   and the tests that keep them in step.
//! - [`cli`]: `--help` (the tables of what a binary reads) / `--version` and argument
//!   errors, the same for every binary.
//! - [`env`]: the table types ([`env::EnvVar`], [`env::EnvTable`]), `--help` rendering and the
//!   checks of the tables against the docs and the code.
//! - [`lookup`]: reading one variable (from the environment or a test's map) and the
//!   [`lookup::ConfigError`] that names a bad one.
//! - [`secret`]: [`secret::Secret`], a configured secret that redacts itself in `Debug` and
//!   `Display`.
//! - [`tls`]: the CA-file setting ([`tls::CaFile`], checked at startup) and TLS error messages
//!   that name the setting to fix; the TLS clients themselves are built elsewhere.
//!
//! Parsing a service's settings into its typed config (`from_lookup`) stays in the crate that
//! owns them.

pub mod cli;
pub mod env;
pub mod lookup;
pub mod names;
pub mod secret;
pub mod tables;
pub mod tls;
