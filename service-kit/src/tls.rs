//! TLS to the dependencies: what the Redis, Kafka and PostgreSQL settings share.
//!
//! Each dependency's TLS is optional and off by default (the local stack runs without it), and
//! once on, the server's certificate is always verified: against the public web roots compiled
//! into the binary, or against a private CA given as a PEM file. A CA file is read when the
//! configuration is read, so a missing or empty one stops the service at startup naming its
//! setting; a certificate that does not verify fails the connection, and [`explain`] makes
//! that error name the setting to fix (the log line and the failing `/ready` check carry it).
//!
//! PostgreSQL's settings live here too ([`PostgresTls`]): the message service and the webhook
//! dispatcher both build pools, and both read the same two variables ([`POSTGRES_ENV`]).

use crate::env::{EnvTable, EnvVar};
use crate::lookup::{lookup_optional, process_env, ConfigError, Lookup};

/// A PEM file of CA certificates, read at startup.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    /// Where it was read from (shown in errors and `Debug`).
    pub path: String,
    /// The PEM text.
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CaFile").field(&self.path).finish()
    }
}

impl CaFile {
    /// Reads the file `setting` names in `lookup` (`None` when unset). An unreadable file, or
    /// one without a single PEM certificate, is an error naming `setting`: without this check
    /// it would only fail at the first connection, as an "unknown issuer" far from its cause.
    pub fn from_lookup(lookup: Lookup<'_>, setting: &str) -> Result<Option<CaFile>, ConfigError> {
        let Some(path) = lookup_optional(lookup, setting) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError {
            name: setting.to_owned(),
            value: path.clone(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
        if certificates.is_empty() {
            return Err(invalid(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
        Ok(Some(CaFile { path, pem }))
    }
}

/// Whether a connection error is about TLS: a certificate that did not verify, a handshake
/// that failed, or a server that does not speak TLS where it was expected to.
pub fn is_tls_error(error: &str) -> bool {
    let lower = error.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "unknown issuer",
        "handshake",
        "tls",
        "ssl",
        "notvalidforname",
        "corrupt message",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// `error`, followed by what to check when it is about TLS ([`is_tls_error`]): `settings`
/// are the variables that decide it (the CA file first), e.g. `check SB_REDIS_TLS_CA_FILE`.
pub fn explain(error: &str, settings: &[&str]) -> String {
    if is_tls_error(error) && !settings.is_empty() {
        format!(
            "{error} (TLS: the server's certificate did not verify or the handshake failed; \
             check {})",
            settings.join(" and ")
        )
    } else {
        error.to_owned()
    }
}

pub const SB_POSTGRES_SSLMODE: &str = "SB_POSTGRES_SSLMODE";
pub const SB_POSTGRES_CA_FILE: &str = "SB_POSTGRES_CA_FILE";

/// What [`PostgresTls::from_lookup`] reads (the message service and the webhook dispatcher).
pub const POSTGRES_ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_POSTGRES_SSLMODE,
        default: None,
        doc: "TLS to PostgreSQL, as libpq's sslmode: disable, allow, prefer, require, \
              verify-ca or verify-full (a managed database: verify-full). Unset: the \
              database URL's own sslmode, else verify-full when SB_POSTGRES_CA_FILE is set, \
              else prefer (TLS when the server offers it, unverified).",
    },
    EnvVar {
        name: SB_POSTGRES_CA_FILE,
        default: None,
        doc: "A PEM file of CA certificates that verifies the PostgreSQL server (verify-ca, \
              verify-full), beside the public web roots. Unset: the public web roots only.",
    },
];

/// The PostgreSQL TLS table, for `--help` of the services with a database.
pub const POSTGRES_TABLE: EnvTable = EnvTable {
    title: "PostgreSQL TLS (message service, webhook dispatcher)",
    vars: POSTGRES_ENV,
};

/// libpq's `sslmode` values (sqlx follows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(
                    "expected disable, allow, prefer, require, verify-ca or verify-full".into(),
                )
            }
        })
    }
}

/// `SB_POSTGRES_SSLMODE` and `SB_POSTGRES_CA_FILE`, applied to a database URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresTls {
    pub sslmode: Option<SslMode>,
    pub ca_file: Option<CaFile>,
}

impl PostgresTls {
    /// Reads [`POSTGRES_ENV`] from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads [`POSTGRES_ENV`] from `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let sslmode = lookup_optional(lookup, SB_POSTGRES_SSLMODE)
            .map(|value| {
                value.parse().map_err(|reason| ConfigError {
                    name: SB_POSTGRES_SSLMODE.to_owned(),
                    value,
                    reason,
                })
            })
            .transpose()?;
        Ok(PostgresTls {
            sslmode,
            ca_file: CaFile::from_lookup(lookup, SB_POSTGRES_CA_FILE)?,
        })
    }

    /// `url` with these settings as its `sslmode` and `sslrootcert` query parameters (which
    /// sqlx and libpq read), replacing the URL's own where a setting is given. A CA file
    /// without a mode means `verify-full`, as the CA is there to verify with.
    pub fn apply(&self, url: &str) -> String {
        let sslmode = self
            .sslmode
            .or(match (&self.ca_file, has_param(url, "sslmode")) {
                (Some(_), false) => Some(SslMode::VerifyFull),
                _ => None,
            });
        let mut replace: Vec<(&str, String)> = Vec::new();
        if let Some(mode) = sslmode {
            replace.push(("sslmode", mode.as_str().to_owned()));
        }
        if let Some(ca) = &self.ca_file {
            replace.push(("sslrootcert", ca.path.clone()));
        }
        if replace.is_empty() {
            return url.to_owned();
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if !replace.iter().any(|(name, _)| *name == key) {
                out.append_pair(&key, &value);
            }
        }
        for (key, value) in &replace {
            out.append_pair(key, value);
        }
        format!("{base}?{}", out.finish())
    }

    /// [`Self::from_env`] applied to `url`: the one call a pool makes before parsing its URL.
    pub fn url_from_env(url: &str) -> Result<String, ConfigError> {
        Ok(Self::from_env()?.apply(url))
    }

    /// A connection error, naming these settings when it is about TLS ([`explain`]).
    pub fn explain(error: &str) -> String {
        explain(error, &[SB_POSTGRES_CA_FILE, SB_POSTGRES_SSLMODE])
    }
}

fn has_param(url: &str, name: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, q)| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// A self-signed test CA (public part only: nothing secret).
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBmzCCAUGgAwIBAgIUPI6UN4xevT0avJswt/d3Ql5bKB4wCgYIKoZIzj0EAwIw\nIzEhMB8GA1UEAwwYc3dpdGNoYm9hcmQgdW5pdCB0ZXN0IENBMB4XDTI2MTIwNzAx\nMDI0OVoXDTM2MTIwNDAxMDI0OVowIzEhMB8GA1UEAwwYc3dpdGNoYm9hcmQgdW5p\ndCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsMLtt8OzC6ntgS8p\nL610y+31N64jqkApvxy0rLmgQRavrI27TWbyuLsCw7A2nEmxiB8uYYJIM4M/V40b\n6C/Zn6NTMFEwHQYDVR0OBBYEFKZCKgbz53f0Cz2zXKVJfX+8UfJWMB8GA1UdIwQY\nMBaAFKZCKgbz53f0Cz2zXKVJfX+8UfJWMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI\nzj0EAwIDSAAwRQIhAIql0F2rnJXPuIwAtHuY9TgY00N/67iXjaV5Bh/ixj7pAiAG\nZb+1ZHtRKPPgt3kYTL0IjpIbuFFrZKZ98Ul9A2nrwg==\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_ca_file_is_read_at_startup_and_a_bad_one_names_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, PEM).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let good = good.display().to_string();
        let junk = junk.display().to_string();

        let read = |path: &str| {
            let vars = [(SB_POSTGRES_CA_FILE, path)];
            let found = CaFile::from_lookup(&lookup(&vars), SB_POSTGRES_CA_FILE);
            found
        };
        assert_eq!(read(&good).unwrap().unwrap().path, good);
        assert_eq!(read(&junk).unwrap_err().name, SB_POSTGRES_CA_FILE);
        let missing = read("/nonexistent/ca.pem").unwrap_err();
        assert!(
            missing.to_string().contains(SB_POSTGRES_CA_FILE),
            "{missing}"
        );
        assert_eq!(
            CaFile::from_lookup(&|_| None, SB_POSTGRES_CA_FILE).unwrap(),
            None
        );
    }

    #[test]
    fn postgres_settings_become_url_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, PEM).unwrap();
        let ca = ca.display().to_string();
        let url = "postgres://sb@db.example.com:5432/sb";

        let unset = PostgresTls::from_lookup(&|_| None).unwrap();
        assert_eq!(unset.apply(url), url, "nothing set: the URL as given");

        let vars = [(SB_POSTGRES_CA_FILE, ca.as_str())];
        let with_ca = PostgresTls::from_lookup(&lookup(&vars)).unwrap();
        let applied = with_ca.apply(url);
        assert!(applied.contains("sslmode=verify-full"), "{applied}");
        assert!(applied.contains("sslrootcert="), "{applied}");
        // The URL's own mode stands when the setting is unset.
        let own = with_ca.apply(&format!("{url}?sslmode=verify-ca&application_name=x"));
        assert!(own.contains("sslmode=verify-ca"), "{own}");
        assert!(own.contains("application_name=x"), "{own}");

        let vars = [(SB_POSTGRES_SSLMODE, "require")];
        let require = PostgresTls::from_lookup(&lookup(&vars)).unwrap();
        let replaced = require.apply(&format!("{url}?sslmode=disable"));
        assert_eq!(replaced, format!("{url}?sslmode=require"));

        let vars = [(SB_POSTGRES_SSLMODE, "sometimes")];
        let bad = PostgresTls::from_lookup(&lookup(&vars)).unwrap_err();
        assert_eq!(bad.name, SB_POSTGRES_SSLMODE);
    }

    #[test]
    fn tls_errors_name_the_setting() {
        let explained = explain(
            "invalid peer certificate: UnknownIssuer",
            &["SB_REDIS_TLS_CA_FILE"],
        );
        assert!(
            explained.contains("check SB_REDIS_TLS_CA_FILE"),
            "{explained}"
        );
        assert_eq!(
            explain(
                "Connection refused (os error 111)",
                &["SB_REDIS_TLS_CA_FILE"]
            ),
            "Connection refused (os error 111)"
        );
    }
}
