//! Redis's settings: the Sentinels and the master's name, the key prefix, the command timeout,
//! credentials and TLS (`SB_REDIS_*`, the table [`switchboard_config::tables::redis`]), read from a
//! [`Lookup`].

use std::time::Duration;

use switchboard_config::lookup::{
    lookup_bool, lookup_millis, lookup_optional, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD, SB_REDIS_PREFIX, SB_REDIS_SENTINELS,
    SB_REDIS_SENTINEL_PASSWORD, SB_REDIS_SENTINEL_TLS, SB_REDIS_SENTINEL_USERNAME,
    SB_REDIS_TIMEOUT_MS, SB_REDIS_TLS, SB_REDIS_TLS_CA_FILE, SB_REDIS_USERNAME,
};
use switchboard_config::tls::{explain, CaFile};

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `host:port` of each Sentinel (`SB_REDIS_SENTINELS`, comma separated).
    pub sentinels: Vec<String>,
    /// The monitored master's name (`SB_REDIS_MASTER_NAME`).
    pub master_name: String,
    /// Prefix of every key this system writes (`SB_REDIS_PREFIX`).
    pub key_prefix: String,
    /// Upper bound on one command, connection included (`SB_REDIS_TIMEOUT_MS`).
    pub command_timeout: Duration,
    /// Credentials for the Redis servers: `SB_REDIS_USERNAME` (an ACL user; unset: the
    /// default user) and `SB_REDIS_PASSWORD` (unset: no `AUTH`).
    pub auth: RedisAuth,
    /// Credentials for the Sentinels (`SB_REDIS_SENTINEL_USERNAME`,
    /// `SB_REDIS_SENTINEL_PASSWORD`; unset: the Redis servers' password, as Sentinels
    /// configured with `requirepass` usually share it).
    pub sentinel_auth: RedisAuth,
    /// TLS to the servers and the Sentinels (`SB_REDIS_TLS`, `SB_REDIS_SENTINEL_TLS`,
    /// `SB_REDIS_TLS_CA_FILE`; off by default).
    pub tls: RedisTls,
}

/// Which Redis connections use TLS, and the CA that verifies them (certificates are always
/// verified: there is no setting that turns verification off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The Redis servers (the master the Sentinels name).
    pub servers: bool,
    /// The Sentinels.
    pub sentinels: bool,
    /// Trusted instead of the public web roots when set.
    pub ca_file: Option<CaFile>,
}

impl RedisTls {
    /// A client for `host:port` as `auth`, over TLS when `tls` says so.
    pub(super) fn client(
        &self,
        tls: bool,
        auth: &RedisAuth,
        host: &str,
        port: u16,
    ) -> Result<redis::Client, String> {
        let mut info = auth.connection_info(host, port);
        if !tls {
            return redis::Client::open(info).map_err(|e| e.to_string());
        }
        info.addr = redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: self.ca_file.as_ref().map(|ca| ca.pem.clone()),
            },
        )
        .map_err(|e| explain(&e.to_string(), &[SB_REDIS_TLS_CA_FILE]))
    }

    /// A connection error, naming the TLS settings when it is about TLS and TLS is on.
    pub(super) fn explain(&self, tls: bool, error: String) -> String {
        if tls {
            explain(&error, &[SB_REDIS_TLS_CA_FILE])
        } else {
            error
        }
    }
}

/// A Redis username and password; the password never appears in `Debug` output.
#[derive(Clone, Default)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RedisAuth {
    /// Connection details for `host:port` with these credentials.
    fn connection_info(&self, host: &str, port: u16) -> redis::ConnectionInfo {
        redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host.to_owned(), port),
            redis: redis::RedisConnectionInfo {
                username: self.username.clone(),
                password: self.password.clone(),
                ..Default::default()
            },
        }
    }
}

/// `host:port` split, for a Sentinel address from the config.
pub(super) fn host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{addr:?} has no valid port"))?;
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

impl RedisConfig {
    /// Reads [`ENV`](switchboard_config::tables::redis::ENV) from the process environment
    /// ([`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads [`ENV`](switchboard_config::tables::redis::ENV) from `lookup`.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(RedisConfig {
            sentinels: lookup_string(
                lookup,
                SB_REDIS_SENTINELS,
                "127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381",
            )
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
            master_name: lookup_string(lookup, SB_REDIS_MASTER_NAME, "switchboard"),
            key_prefix: lookup_string(lookup, SB_REDIS_PREFIX, "sb:"),
            command_timeout: lookup_millis(lookup, SB_REDIS_TIMEOUT_MS, 1500)?,
            auth: RedisAuth {
                username: lookup_optional(lookup, SB_REDIS_USERNAME),
                password: lookup_optional(lookup, SB_REDIS_PASSWORD),
            },
            sentinel_auth: RedisAuth {
                username: lookup_optional(lookup, SB_REDIS_SENTINEL_USERNAME),
                password: lookup_optional(lookup, SB_REDIS_SENTINEL_PASSWORD)
                    .or_else(|| lookup_optional(lookup, SB_REDIS_PASSWORD)),
            },
            tls: {
                let servers = lookup_bool(lookup, SB_REDIS_TLS, false)?;
                RedisTls {
                    servers,
                    sentinels: lookup_bool(lookup, SB_REDIS_SENTINEL_TLS, servers)?,
                    ca_file: CaFile::from_lookup(lookup, SB_REDIS_TLS_CA_FILE)?,
                }
            },
        })
    }
}
