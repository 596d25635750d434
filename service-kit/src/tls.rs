//! TLS to PostgreSQL ([`PostgresTls`]): libpq's `sslmode` and a CA file, applied to a database
//! URL. The message service and the webhook dispatcher both build pools, and both read the same
//! two variables (the table [`switchboard_config::tables::postgres`]).
//!
//! Each dependency's TLS is optional and off by default (the local stack runs without it), and
//! once on, the server's certificate is always verified: against the public web roots compiled
//! into the binary, or against a private CA given as a PEM file. The CA file is
//! [`CaFile`], which Redis and Kafka share, read when the configuration is read; a certificate
//! that does not verify fails the connection, and [`PostgresTls::explain`] makes that error name
//! the settings to fix.

use switchboard_config::lookup::{lookup_optional, process_env, ConfigError, Lookup};
use switchboard_config::names::{SB_POSTGRES_CA_FILE, SB_POSTGRES_SSLMODE};
use switchboard_config::tls::{explain, CaFile};

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
    /// Reads [`ENV`](switchboard_config::tables::postgres::ENV) from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads [`ENV`](switchboard_config::tables::postgres::ENV) from `lookup`.
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
    use switchboard_config::lookup::from_pairs;

    /// A self-signed test CA (public part only: nothing secret).
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBmzCCAUGgAwIBAgIUPI6UN4xevT0avJswt/d3Ql5bKB4wCgYIKoZIzj0EAwIw\nIzEhMB8GA1UEAwwYc3dpdGNoYm9hcmQgdW5pdCB0ZXN0IENBMB4XDTI2MTIwNzAx\nMDI0OVoXDTM2MTIwNDAxMDI0OVowIzEhMB8GA1UEAwwYc3dpdGNoYm9hcmQgdW5p\ndCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsMLtt8OzC6ntgS8p\nL610y+31N64jqkApvxy0rLmgQRavrI27TWbyuLsCw7A2nEmxiB8uYYJIM4M/V40b\n6C/Zn6NTMFEwHQYDVR0OBBYEFKZCKgbz53f0Cz2zXKVJfX+8UfJWMB8GA1UdIwQY\nMBaAFKZCKgbz53f0Cz2zXKVJfX+8UfJWMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI\nzj0EAwIDSAAwRQIhAIql0F2rnJXPuIwAtHuY9TgY00N/67iXjaV5Bh/ixj7pAiAG\nZb+1ZHtRKPPgt3kYTL0IjpIbuFFrZKZ98Ul9A2nrwg==\n-----END CERTIFICATE-----\n";

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
        let with_ca = PostgresTls::from_lookup(&from_pairs(&vars)).unwrap();
        let applied = with_ca.apply(url);
        assert!(applied.contains("sslmode=verify-full"), "{applied}");
        assert!(applied.contains("sslrootcert="), "{applied}");
        // The URL's own mode stands when the setting is unset.
        let own = with_ca.apply(&format!("{url}?sslmode=verify-ca&application_name=x"));
        assert!(own.contains("sslmode=verify-ca"), "{own}");
        assert!(own.contains("application_name=x"), "{own}");

        let vars = [(SB_POSTGRES_SSLMODE, "require")];
        let require = PostgresTls::from_lookup(&from_pairs(&vars)).unwrap();
        let replaced = require.apply(&format!("{url}?sslmode=disable"));
        assert_eq!(replaced, format!("{url}?sslmode=require"));

        let vars = [(SB_POSTGRES_SSLMODE, "sometimes")];
        let bad = PostgresTls::from_lookup(&from_pairs(&vars)).unwrap_err();
        assert_eq!(bad.name, SB_POSTGRES_SSLMODE);
    }
}
