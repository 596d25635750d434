//! Typed configuration from the environment, or in tests from any [`Lookup`] of variables. Every
//! variable has a default that works for the local stack, so `cargo run -p registry` needs no
//! setup. The variables every service reads are in [`switchboard_config::tables::COMMON`] (the
//! common table, Redis's and logging's); `docs/configuration.md` lists them and each service's
//! own.

use std::time::Duration;

use switchboard_config::lookup::{
    lookup_bool, lookup_optional, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_ALLOWED_ORIGINS, SB_CALLER_KEYS, SB_CLUSTER_SECRET, SB_DEV_MODE, SB_JWT_AUDIENCE,
    SB_JWT_HS256, SB_JWT_ISSUER, SB_JWT_JWKS_CA_FILE, SB_JWT_JWKS_REFRESH_SECS, SB_JWT_JWKS_URL,
    SB_JWT_LEEWAY_SECS, SB_JWT_PRIVATE_KEY_FILE, SB_JWT_PUBLIC_KEY_FILE, SB_JWT_SECRET,
    SB_SERVER_SENDER_PREFIXES, SB_SERVICE_SECRET, SB_TRUSTED_PROXIES,
};
use switchboard_config::secret::Secret;
use switchboard_config::tables::common::{
    DEFAULT_CLUSTER_SECRET, DEFAULT_JWT_SECRET, DEFAULT_TRUSTED_PROXIES,
};
use switchboard_protocol::token::{TokenKeys, TokenPolicy};
use switchboard_redis::RedisConfig;

use crate::cluster_auth::ClusterAuth;
pub use crate::jwks::JwksSource;
use crate::limits::TrustedProxies;

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub redis: RedisConfig,
    /// HS256 secret for client JWTs (`SB_JWT_SECRET`); `None` where HS256 is off, so a
    /// service that only verifies EdDSA or JWKS tokens holds nothing that mints.
    pub jwt_secret: Option<Secret>,
    /// Ed25519 keys in PEM (`SB_JWT_PUBLIC_KEY_FILE`, `SB_JWT_PRIVATE_KEY_FILE`), read at
    /// startup.
    pub jwt_public_key: Option<Vec<u8>>,
    pub jwt_private_key: Option<Vec<u8>>,
    /// This service's credential and the callers it accepts (`SB_SERVICE_SECRET`,
    /// `SB_CALLER_KEYS`, `SB_CLUSTER_SECRET`).
    pub cluster: crate::cluster_auth::ClusterAuth,
    /// Whether `POST /api/v1/dev/token` mints tokens (`SB_DEV_MODE`, off by default).
    pub dev_mode: bool,
    /// What a client token must carry: `SB_JWT_ISSUER`, `SB_JWT_AUDIENCE` (both unset by
    /// default: not checked) and `SB_JWT_LEEWAY_SECS` (default 30).
    pub token_policy: TokenPolicy,
    /// An identity provider's JWKS (`SB_JWT_JWKS_URL`, unset by default), whose RS256/ES256
    /// keys verify tokens beside the HS256 secret; refreshed every `SB_JWT_JWKS_REFRESH_SECS`
    /// (default 300).
    pub jwks: Option<JwksSource>,
    /// Browser origins allowed in (`SB_ALLOWED_ORIGINS`, comma separated, e.g.
    /// `https://chat.example.com`, or `*`). Empty (the default): WebSocket upgrades from any
    /// origin, and no CORS headers on the REST API (same-origin pages only). Set: a browser
    /// page from another origin can neither open a WebSocket (403 `forbidden`, so a foreign
    /// page cannot use a visitor's token) nor read REST answers (no CORS grant). Requests
    /// without an `Origin` header are not from a browser page and are not checked.
    pub allowed_origins: Vec<String>,
    /// The proxies allowed to tell a client's address (`SB_TRUSTED_PROXIES`).
    pub trusted_proxies: crate::limits::TrustedProxies,
}

/// The shortest secret accepted outside dev mode (bytes).
pub const MIN_SECRET_BYTES: usize = 32;

impl CommonConfig {
    /// Reads the shared settings from the process environment ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the shared settings from `lookup`. Outside dev mode, a default or short secret is
    /// refused: anyone could mint tokens or register a socket server with a published one.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let jwks_url = lookup_optional(lookup, SB_JWT_JWKS_URL);
        let jwt_public_key = read_key_file(lookup, SB_JWT_PUBLIC_KEY_FILE)?;
        let jwt_private_key = read_key_file(lookup, SB_JWT_PRIVATE_KEY_FILE)?;
        let other_keys =
            jwks_url.is_some() || jwt_public_key.is_some() || jwt_private_key.is_some();
        let hs256 = hs256_setting(lookup, other_keys)?;
        let dev_mode = lookup_bool(lookup, SB_DEV_MODE, false)?;
        let jwt_secret = if hs256 {
            Some(jwt_secret(lookup, dev_mode)?)
        } else {
            None
        };
        let cluster = cluster_auth(lookup, dev_mode)?;
        let config = CommonConfig {
            redis: RedisConfig::from_lookup(lookup)?,
            jwt_secret,
            jwt_public_key,
            jwt_private_key,
            cluster,
            dev_mode,
            token_policy: token_policy(lookup, hs256)?,
            jwks: jwks_url.map(|url| jwks_source(lookup, url)).transpose()?,
            trusted_proxies: trusted_proxies(lookup)?,
            allowed_origins: allowed_origins(lookup),
        };
        config.require_issuer_and_audience_with_jwks()?;
        config.require_a_verifying_key()?;
        // Checked now rather than at the first token: a key that does not parse is a
        // configuration error, named by its setting.
        config.try_token_keys()?;
        Ok(config)
    }

    /// An identity provider issues tokens for many applications: without both checks, a
    /// token it issued to another application (or another tenant) would open ours.
    fn require_issuer_and_audience_with_jwks(&self) -> Result<(), ConfigError> {
        let Some(jwks) = &self.jwks else {
            return Ok(());
        };
        for (name, value) in [
            (SB_JWT_ISSUER, &self.token_policy.issuer),
            (SB_JWT_AUDIENCE, &self.token_policy.audience),
        ] {
            if value.is_none() {
                return Err(ConfigError {
                    name: name.to_owned(),
                    value: String::new(),
                    reason: format!(
                        "required with {SB_JWT_JWKS_URL} ({}): an identity provider's \
                         tokens for other applications must not verify here",
                        jwks.url
                    ),
                });
            }
        }
        Ok(())
    }

    /// With HS256 off, a public key or a JWKS must verify client tokens.
    fn require_a_verifying_key(&self) -> Result<(), ConfigError> {
        if self.token_policy.hs256 || self.jwt_public_key.is_some() || self.jwks.is_some() {
            return Ok(());
        }
        Err(ConfigError {
            name: SB_JWT_HS256.to_owned(),
            value: "false".to_owned(),
            reason: format!(
                "no key would verify client tokens: keep HS256 on, or set \
                 {SB_JWT_PUBLIC_KEY_FILE} or {SB_JWT_JWKS_URL}"
            ),
        })
    }
}

/// The PEM file a key setting names, read now; `None` when the setting is unset.
fn read_key_file(lookup: Lookup<'_>, name: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    lookup_optional(lookup, name)
        .map(|path| {
            std::fs::read(&path).map_err(|e| ConfigError {
                name: name.to_owned(),
                value: path.clone(),
                reason: format!("cannot read the key file: {e}"),
            })
        })
        .transpose()
}

/// `SB_JWT_HS256`: `auto` is on only where no other key (`other_keys`: a JWKS or an Ed25519
/// key file) is configured.
fn hs256_setting(lookup: Lookup<'_>, other_keys: bool) -> Result<bool, ConfigError> {
    match lookup_string(lookup, SB_JWT_HS256, "auto").as_str() {
        "auto" => Ok(!other_keys),
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ConfigError {
            name: SB_JWT_HS256.to_owned(),
            value: other.to_owned(),
            reason: "must be true, false or auto".to_owned(),
        }),
    }
}

/// `SB_JWT_SECRET`, refused outside dev mode when it is the default or short.
fn jwt_secret(lookup: Lookup<'_>, dev_mode: bool) -> Result<Secret, ConfigError> {
    let secret = lookup_string(lookup, SB_JWT_SECRET, DEFAULT_JWT_SECRET);
    check_secret(SB_JWT_SECRET, &secret, dev_mode)?;
    Ok(Secret::new(secret))
}

/// What a client token must carry (`SB_JWT_ISSUER`, `SB_JWT_AUDIENCE`, `SB_JWT_LEEWAY_SECS`,
/// `SB_SERVER_SENDER_PREFIXES`) and whether HS256 verifies.
fn token_policy(lookup: Lookup<'_>, hs256: bool) -> Result<TokenPolicy, ConfigError> {
    let prefixes = lookup_string(
        lookup,
        SB_SERVER_SENDER_PREFIXES,
        switchboard_protocol::token::DEFAULT_RESERVED_PREFIXES,
    );
    Ok(TokenPolicy {
        issuer: lookup_optional(lookup, SB_JWT_ISSUER),
        audience: lookup_optional(lookup, SB_JWT_AUDIENCE),
        leeway_secs: lookup_or(lookup, SB_JWT_LEEWAY_SECS, 30)?,
        reserved_prefixes: match prefixes.as_str() {
            "none" => Vec::new(),
            prefixes => prefixes
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        },
        hs256,
    })
}

/// The identity provider at `url` (`SB_JWT_JWKS_URL`) with its CA file and refresh interval.
fn jwks_source(lookup: Lookup<'_>, url: String) -> Result<JwksSource, ConfigError> {
    Ok(JwksSource {
        url,
        ca_file: lookup_optional(lookup, SB_JWT_JWKS_CA_FILE),
        refresh: Duration::from_secs(lookup_or(lookup, SB_JWT_JWKS_REFRESH_SECS, 300)?),
    })
}

/// `SB_TRUSTED_PROXIES`, parsed into networks.
fn trusted_proxies(lookup: Lookup<'_>) -> Result<TrustedProxies, ConfigError> {
    let text = lookup_string(lookup, SB_TRUSTED_PROXIES, DEFAULT_TRUSTED_PROXIES);
    TrustedProxies::parse(&text).map_err(|reason| ConfigError {
        name: SB_TRUSTED_PROXIES.to_owned(),
        value: text.clone(),
        reason,
    })
}

/// `SB_ALLOWED_ORIGINS`, comma separated, each without a trailing slash.
fn allowed_origins(lookup: Lookup<'_>) -> Vec<String> {
    lookup_string(lookup, SB_ALLOWED_ORIGINS, "")
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

/// `SB_SERVICE_SECRET`, `SB_CALLER_KEYS` and the shared `SB_CLUSTER_SECRET` (checked only
/// where it is used: as the own credential or as the shared mode's one secret).
fn cluster_auth(lookup: Lookup<'_>, dev_mode: bool) -> Result<ClusterAuth, ConfigError> {
    let cluster = lookup_string(lookup, SB_CLUSTER_SECRET, DEFAULT_CLUSTER_SECRET);
    let own = lookup_optional(lookup, SB_SERVICE_SECRET);
    let caller_keys = lookup_optional(lookup, SB_CALLER_KEYS);
    match &own {
        Some(own) => check_secret(SB_SERVICE_SECRET, own, dev_mode)?,
        None => check_secret(SB_CLUSTER_SECRET, &cluster, dev_mode)?,
    }
    if caller_keys.is_none() {
        check_secret(SB_CLUSTER_SECRET, &cluster, dev_mode)?;
    }
    let cluster = Secret::new(cluster);
    let own = own.map(Secret::new).unwrap_or_else(|| cluster.clone());
    ClusterAuth::new(own, caller_keys.as_deref(), &cluster).map_err(|reason| ConfigError {
        name: SB_CALLER_KEYS.to_owned(),
        value: "(hidden)".to_owned(),
        reason,
    })
}

impl CommonConfig {
    /// The keys that verify client tokens: the secret, the Ed25519 keys and the policy; with
    /// a JWKS source also the task that loads the provider's keys into them and keeps them
    /// fresh, for the service to run among its workers ([`crate::jwks::JwksRefresher::run`]).
    pub fn token_keys(&self) -> (TokenKeys, Option<crate::jwks::JwksRefresher>) {
        let keys = self
            .try_token_keys()
            .expect("the key files were checked when the configuration was read");
        let refresher = self.jwks.as_ref().map(|source| crate::jwks::JwksRefresher {
            source: source.clone(),
            keys: keys.clone(),
        });
        (keys, refresher)
    }
}

impl CommonConfig {
    /// The secret (where HS256 is on) and the Ed25519 keys, without the JWKS.
    fn try_token_keys(&self) -> Result<TokenKeys, ConfigError> {
        let keys = match &self.jwt_secret {
            Some(secret) => {
                TokenKeys::with_policy(secret.expose().as_bytes(), self.token_policy.clone())
            }
            None => TokenKeys::without_keys(self.token_policy.clone()),
        };
        let keys = keys
            .with_ed25519(self.jwt_public_key.as_deref(), None)
            .map_err(|e| ConfigError {
                name: SB_JWT_PUBLIC_KEY_FILE.to_owned(),
                value: "(file)".to_owned(),
                reason: e.to_string(),
            })?;
        keys.with_ed25519(None, self.jwt_private_key.as_deref())
            .map_err(|e| ConfigError {
                name: SB_JWT_PRIVATE_KEY_FILE.to_owned(),
                value: "(file)".to_owned(),
                reason: e.to_string(),
            })
    }
}

/// Refuses a published default or a secret under [`MIN_SECRET_BYTES`] unless `dev_mode`.
pub fn check_secret(name: &str, secret: &str, dev_mode: bool) -> Result<(), ConfigError> {
    if dev_mode {
        return Ok(());
    }
    let reason = if secret == DEFAULT_JWT_SECRET || secret == DEFAULT_CLUSTER_SECRET {
        "it is the published default; set a secret of your own (or SB_DEV_MODE=true for a demo)"
    } else if secret.len() < MIN_SECRET_BYTES {
        "it is shorter than 32 bytes; use a long random secret (or SB_DEV_MODE=true for a demo)"
    } else {
        return Ok(());
    };
    Err(ConfigError {
        name: name.to_owned(),
        value: "(hidden)".to_owned(),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn default_or_short_secrets_are_refused_outside_dev_mode() {
        let long = "0123456789abcdef0123456789abcdef";
        assert!(check_secret(SB_JWT_SECRET, long, false).is_ok());
        assert!(check_secret(SB_JWT_SECRET, DEFAULT_JWT_SECRET, false).is_err());
        assert!(check_secret(SB_CLUSTER_SECRET, DEFAULT_CLUSTER_SECRET, false).is_err());
        assert!(check_secret(SB_JWT_SECRET, "short", false).is_err());
        let refused = check_secret(SB_JWT_SECRET, "short", false).unwrap_err();
        assert!(
            !refused.to_string().contains("short\""),
            "the secret is not echoed"
        );
        assert!(check_secret(SB_JWT_SECRET, DEFAULT_JWT_SECRET, true).is_ok());
        assert!(check_secret(SB_JWT_SECRET, "short", true).is_ok());
    }
}

#[cfg(test)]
mod lookup_tests {
    use super::*;
    use switchboard_config::lookup::from_pairs;
    use switchboard_config::names::{SB_REDIS_PASSWORD, SB_REDIS_PREFIX};

    /// With an identity provider's JWKS, `iss` and `aud` are required and HS256 is off unless
    /// kept on purpose (issue 24, item 13).
    #[test]
    fn a_jwks_requires_issuer_and_audience_and_turns_hs256_off() {
        let base = [
            (SB_DEV_MODE, "true"),
            (
                SB_JWT_JWKS_URL,
                "https://idp.example.com/.well-known/jwks.json",
            ),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars: Vec<(&str, &str)> = base.to_vec();
            vars.extend_from_slice(extra);
            let lookup = from_pairs(&vars);
            CommonConfig::from_lookup(&lookup)
        };
        assert_eq!(with(&[]).unwrap_err().name, SB_JWT_ISSUER);
        assert_eq!(
            with(&[(SB_JWT_ISSUER, "https://idp.example.com/")])
                .unwrap_err()
                .name,
            SB_JWT_AUDIENCE
        );
        let both = [
            (SB_JWT_ISSUER, "https://idp.example.com/"),
            (SB_JWT_AUDIENCE, "switchboard"),
        ];
        assert!(
            !with(&both).unwrap().token_policy.hs256,
            "auto: off with a JWKS"
        );
        let kept = [both[0], both[1], (SB_JWT_HS256, "true")];
        assert!(with(&kept).unwrap().token_policy.hs256, "kept on purpose");
        let bad = [both[0], both[1], (SB_JWT_HS256, "maybe")];
        assert_eq!(with(&bad).unwrap_err().name, SB_JWT_HS256);
        let alone = CommonConfig::from_lookup(&from_pairs(&[(SB_DEV_MODE, "true")])).unwrap();
        assert!(alone.token_policy.hs256, "auto: on without a JWKS");
    }

    #[test]
    fn a_lookup_reads_like_the_environment() {
        let vars = from_pairs(&[
            (SB_DEV_MODE, " yes "),
            (SB_JWT_ISSUER, "  "),
            (SB_JWT_LEEWAY_SECS, "7"),
            (SB_ALLOWED_ORIGINS, "https://a.example/, ,https://b.example"),
            (SB_REDIS_PREFIX, "sb:t1:"),
            (SB_REDIS_PASSWORD, "pw"),
        ]);
        let config = CommonConfig::from_lookup(&vars).unwrap();
        assert!(config.dev_mode);
        assert_eq!(config.token_policy.issuer, None, "blank is unset");
        assert_eq!(config.token_policy.leeway_secs, 7);
        assert_eq!(
            config.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(config.jwt_secret, Some(Secret::new(DEFAULT_JWT_SECRET)));
        assert!(config.cluster.is_shared());
        assert_eq!(config.redis.key_prefix, "sb:t1:");
        assert_eq!(config.redis.master_name, "switchboard");
        assert_eq!(config.redis.sentinel_auth.password.as_deref(), Some("pw"));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let bad_bool = from_pairs(&[(SB_DEV_MODE, "maybe")]);
        let e = CommonConfig::from_lookup(&bad_bool).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable SB_DEV_MODE=\"maybe\" is invalid: expected true or false"
        );
        let bad_number = from_pairs(&[(SB_DEV_MODE, "true"), (SB_JWT_LEEWAY_SECS, "soon")]);
        let e = CommonConfig::from_lookup(&bad_number).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("environment variable SB_JWT_LEEWAY_SECS"));
        let short = from_pairs(&[(SB_JWT_SECRET, "short")]);
        let e = CommonConfig::from_lookup(&short).unwrap_err();
        assert_eq!(e.name, SB_JWT_SECRET);
    }

    /// A verifying service configured as the socket servers are: an Ed25519 public key, its
    /// own credential, no secret that mints and nothing of the shared mode.
    #[test]
    fn a_public_key_service_holds_nothing_that_mints() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("jwt.pub");
        std::fs::write(
            &public,
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAzWd2i88pT0wiy/szuiy9D4gS8H5HEClKlaqXhF8TMtM=\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let long = "0123456789abcdef0123456789abcdef-socket-server";
        let hash = switchboard_credentials::cluster::secret_hash(long);
        let callers = format!("socket-server={hash}");
        let pairs = [
            (SB_JWT_PUBLIC_KEY_FILE, public.to_str().unwrap()),
            (SB_SERVICE_SECRET, long),
            (SB_CALLER_KEYS, callers.as_str()),
        ];
        let vars = from_pairs(&pairs);
        let config = CommonConfig::from_lookup(&vars).unwrap();
        assert!(!config.token_policy.hs256, "auto turns HS256 off");
        assert_eq!(config.jwt_secret, None);
        assert!(!config.cluster.is_shared());
        assert!(!config.try_token_keys().unwrap().can_mint());

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let e = CommonConfig::from_lookup(&from_pairs(&[
            (SB_DEV_MODE, "true"),
            (SB_JWT_PUBLIC_KEY_FILE, junk.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert_eq!(e.name, SB_JWT_PUBLIC_KEY_FILE);
        let e = CommonConfig::from_lookup(&from_pairs(&[
            (SB_DEV_MODE, "true"),
            (SB_JWT_PUBLIC_KEY_FILE, "/nonexistent/jwt.pub"),
        ]))
        .unwrap_err();
        assert_eq!(e.name, SB_JWT_PUBLIC_KEY_FILE);
        let e = CommonConfig::from_lookup(&from_pairs(&[
            (SB_DEV_MODE, "true"),
            (SB_JWT_HS256, "false"),
        ]))
        .unwrap_err();
        assert_eq!(e.name, SB_JWT_HS256, "nothing would verify");
    }
}
