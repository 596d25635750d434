//! The Redis variables every service reads (Sentinels, credentials, TLS). Parsed by
//! service-kit's `RedisConfig`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD, SB_REDIS_PREFIX, SB_REDIS_SENTINELS,
    SB_REDIS_SENTINEL_PASSWORD, SB_REDIS_SENTINEL_TLS, SB_REDIS_SENTINEL_USERNAME,
    SB_REDIS_TIMEOUT_MS, SB_REDIS_TLS, SB_REDIS_TLS_CA_FILE, SB_REDIS_USERNAME,
};

/// What `RedisConfig::from_lookup` (and so `from_env`) reads.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_REDIS_SENTINELS,
        default: Some("127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381"),
        doc: "host:port of each Sentinel, comma separated. The master is always found through \
              them (and found again after a failover); there is no direct Redis address.",
    },
    EnvVar {
        name: SB_REDIS_MASTER_NAME,
        default: Some("switchboard"),
        doc: "The name under which the Sentinels monitor the master.",
    },
    EnvVar {
        name: SB_REDIS_PREFIX,
        default: Some("sb:"),
        doc: "Prefix of every Redis key Switchboard writes.",
    },
    EnvVar {
        name: SB_REDIS_TIMEOUT_MS,
        default: Some("1500"),
        doc: "Upper bound on one Redis command, connecting included, in milliseconds.",
    },
    EnvVar {
        name: SB_REDIS_USERNAME,
        default: None,
        doc: "ACL user for the Redis servers. Unset: the default user.",
    },
    EnvVar {
        name: SB_REDIS_PASSWORD,
        default: None,
        doc: "Password for the Redis servers. Unset: no AUTH.",
    },
    EnvVar {
        name: SB_REDIS_SENTINEL_USERNAME,
        default: None,
        doc: "ACL user for the Sentinels. Unset: the default user.",
    },
    EnvVar {
        name: SB_REDIS_SENTINEL_PASSWORD,
        default: None,
        doc: "Password for the Sentinels. Unset: SB_REDIS_PASSWORD (Sentinels configured with \
              requirepass usually share it).",
    },
    EnvVar {
        name: SB_REDIS_TLS,
        default: Some("false"),
        doc: "true: the Redis servers are reached over TLS (their tls-port, which the \
              Sentinels then name), with the server's certificate verified for the address the \
              Sentinels give (an IP address needs an IP SAN).",
    },
    EnvVar {
        name: SB_REDIS_SENTINEL_TLS,
        default: None,
        doc: "true: the Sentinels are reached over TLS (the addresses of SB_REDIS_SENTINELS \
              are their tls-ports), certificates verified. Unset: SB_REDIS_TLS.",
    },
    EnvVar {
        name: SB_REDIS_TLS_CA_FILE,
        default: None,
        doc: "A PEM file of the CA certificates that verify the Redis servers and Sentinels, \
              trusted instead of the public web roots (a private CA). Unset: the public web \
              roots compiled into the binary.",
    },
];

/// The Redis table.
pub const TABLE: EnvTable = EnvTable {
    title: "Redis (every service)",
    vars: ENV,
};
