//! Reading one variable: a [`Lookup`] of variables by name (the process environment, or a
//! test's map), the typed readers over it (`lookup_*`, and `env_*` over the process
//! environment), and the [`ConfigError`] that names a bad variable. Every config of the
//! workspace is built from these (`config` re-exports them); they import nothing else of the
//! crate, so any module may use them without an import circle through `config`.

use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Where a config reads its variables from: a variable's value by name, `None` when unset.
/// `from_env` is `from_lookup` with [`process_env`]; tests pass a map of their own, so the
/// same parsing and defaults serve both.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as a [`Lookup`]: `std::env::var`, unset (or not Unicode) as `None`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Fixed `(name, value)` pairs as a [`Lookup`], for tests and tools that configure a part
/// without the process environment; of two pairs with one name, the later wins (so a caller
/// can append overrides to a base list).
pub fn from_pairs<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Reads `name` from `lookup`, or `default` when unset or empty.
pub fn lookup_or<T>(lookup: Lookup<'_>, name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match lookup(name) {
        Some(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|e: T::Err| ConfigError {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

/// Reads a string variable from `lookup`; `None` when unset or empty.
pub fn lookup_optional(lookup: Lookup<'_>, name: &str) -> Option<String> {
    lookup(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Reads a string variable from `lookup` with a default.
pub fn lookup_string(lookup: Lookup<'_>, name: &str, default: &str) -> String {
    match lookup(name) {
        Some(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Reads a duration given in milliseconds from `lookup`.
pub fn lookup_millis(
    lookup: Lookup<'_>,
    name: &str,
    default_ms: u64,
) -> Result<Duration, ConfigError> {
    lookup_or(lookup, name, default_ms).map(Duration::from_millis)
}

/// Reads a boolean from `lookup`: `1`, `true`, `yes`, `on` are true; `0`, `false`, `no`, `off`
/// are false.
pub fn lookup_bool(lookup: Lookup<'_>, name: &str, default: bool) -> Result<bool, ConfigError> {
    match lookup(name) {
        Some(value) if !value.trim().is_empty() => match value.trim().to_ascii_lowercase().as_str()
        {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError {
                name: name.to_owned(),
                value,
                reason: "expected true or false".into(),
            }),
        },
        _ => Ok(default),
    }
}

/// Reads `name`, or `default` when unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    lookup_or(&process_env, name, default)
}

/// Reads a string variable; `None` when unset or empty.
pub fn env_optional(name: &str) -> Option<String> {
    lookup_optional(&process_env, name)
}

/// Reads a string variable with a default.
pub fn env_string(name: &str, default: &str) -> String {
    lookup_string(&process_env, name, default)
}

/// Reads a duration given in milliseconds.
pub fn env_millis(name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
    lookup_millis(&process_env, name, default_ms)
}

/// Reads a boolean: `1`, `true`, `yes`, `on` are true; `0`, `false`, `no`, `off` are false.
pub fn env_bool(name: &str, default: bool) -> Result<bool, ConfigError> {
    lookup_bool(&process_env, name, default)
}
