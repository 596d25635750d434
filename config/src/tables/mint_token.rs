//! The variables of `mint-token` (the registry's tool that prints a client JWT).

use super::common::DEFAULT_JWT_SECRET;
use crate::env::{EnvTable, EnvVar};
use crate::names::{SB_JWT_PRIVATE_KEY_FILE, SB_JWT_SECRET};

/// What `mint-token` reads.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_JWT_PRIVATE_KEY_FILE,
        default: None,
        doc: "An Ed25519 private key (PEM, PKCS#8) to sign with (EdDSA): the key whose public \
              half the services hold in SB_JWT_PUBLIC_KEY_FILE. Unset: SB_JWT_SECRET.",
    },
    EnvVar {
        name: SB_JWT_SECRET,
        default: Some(DEFAULT_JWT_SECRET),
        doc: "The HS256 secret to sign with (without SB_JWT_PRIVATE_KEY_FILE): the services' \
              SB_JWT_SECRET.",
    },
];

/// The `mint-token` table.
pub const TABLE: EnvTable = EnvTable {
    title: "Environment",
    vars: ENV,
};
