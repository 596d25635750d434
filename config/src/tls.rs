//! TLS settings that every dependency's client shares, without a TLS stack: a CA file is a
//! setting ([`CaFile`]), read and checked when the configuration is read, so a missing or
//! empty one stops the service at startup naming its variable; [`explain`] makes a connection
//! error that is about TLS name the settings to fix. Building the clients (rustls, librdkafka)
//! stays with the crates that connect.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::lookup::{lookup_optional, ConfigError, Lookup};

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
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::from_pairs;

    /// Any name will do: the error names the setting it was given.
    const SETTING: &str = crate::names::SB_POSTGRES_CA_FILE;
    const REDIS_CA: &str = crate::names::SB_REDIS_TLS_CA_FILE;

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
            let vars = [(SETTING, path)];
            let found = CaFile::from_lookup(&from_pairs(&vars), SETTING);
            found
        };
        assert_eq!(read(&good).unwrap().unwrap().path, good);
        assert_eq!(read(&junk).unwrap_err().name, SETTING);
        let missing = read("/nonexistent/ca.pem").unwrap_err();
        assert!(missing.to_string().contains(SETTING), "{missing}");
        assert_eq!(CaFile::from_lookup(&|_| None, SETTING).unwrap(), None);
    }

    #[test]
    fn tls_errors_name_the_setting() {
        let explained = explain("invalid peer certificate: UnknownIssuer", &[REDIS_CA]);
        assert!(
            explained.contains(&format!("check {REDIS_CA}")),
            "{explained}"
        );
        assert_eq!(
            explain("Connection refused (os error 111)", &[REDIS_CA]),
            "Connection refused (os error 111)"
        );
    }
}
