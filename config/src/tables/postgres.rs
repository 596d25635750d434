//! The PostgreSQL TLS variables of the message service and the webhook dispatcher. Parsed by
//! service-kit's `PostgresTls`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{SB_POSTGRES_CA_FILE, SB_POSTGRES_SSLMODE};

/// What `PostgresTls::from_lookup` reads (the message service and the webhook dispatcher).
pub const ENV: &[EnvVar] = &[
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
pub const TABLE: EnvTable = EnvTable {
    title: "PostgreSQL TLS (message service, webhook dispatcher)",
    vars: ENV,
};
