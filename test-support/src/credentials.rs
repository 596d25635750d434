//! The credentials a local stack runs with, made fresh for each stack: one secret per service
//! role (each service holds its own and the SHA-256 of the others', `SB_SERVICE_SECRET` and
//! `SB_CALLER_KEYS`), and an Ed25519 key pair for client tokens whose private half only the
//! registry holds (it mints the dev tokens). So the local stack runs with the least privilege
//! that docs/security.md describes, and tests can show what a socket server cannot do.
//!
//! A caller that sets `SB_JWT_SECRET` itself (the benchmark, the Python reference client's
//! scenario, which mints HS256 tokens with the standard library) gets the shared-secret mode
//! for tokens instead: every service verifies HS256 with that secret.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use rand::Rng;
use switchboard_config::names::{
    SB_CALLER_KEYS, SB_JWT_PRIVATE_KEY_FILE, SB_JWT_PUBLIC_KEY_FILE, SB_JWT_SECRET,
    SB_SERVICE_SECRET,
};
use switchboard_config::secret::Secret;
use switchboard_credentials::cluster::{secret_hash, ClusterCredential, ServiceRole};
use switchboard_protocol::token::{TokenKeys, TokenPolicy};

/// How client tokens are signed in a stack.
#[derive(Clone, Debug)]
pub enum TokenSigning {
    /// Ed25519: PEM files; only the registry gets the private one.
    Ed25519 {
        public_pem: std::path::PathBuf,
        private_pem: std::path::PathBuf,
    },
    /// One HS256 secret in every service.
    SharedSecret(String),
}

/// One stack's credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    secrets: HashMap<ServiceRole, String>,
    pub signing: TokenSigning,
}

pub(crate) fn random_secret() -> String {
    let bytes: [u8; 24] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Credentials {
    /// Fresh secrets; an Ed25519 pair written under `dir` unless `jwt_secret` is given.
    pub fn generate(dir: &Path, jwt_secret: Option<String>) -> Result<Self> {
        let secrets = ServiceRole::ALL
            .into_iter()
            .map(|role| (role, random_secret()))
            .collect();
        let signing = match jwt_secret {
            Some(secret) => TokenSigning::SharedSecret(secret),
            None => {
                std::fs::create_dir_all(dir)?;
                let private_pem = dir.join("jwt-ed25519.pem");
                let public_pem = dir.join("jwt-ed25519.pub.pem");
                openssl(&[
                    "genpkey",
                    "-algorithm",
                    "ed25519",
                    "-out",
                    path_str(&private_pem)?,
                ])?;
                openssl(&[
                    "pkey",
                    "-in",
                    path_str(&private_pem)?,
                    "-pubout",
                    "-out",
                    path_str(&public_pem)?,
                ])?;
                TokenSigning::Ed25519 {
                    public_pem,
                    private_pem,
                }
            }
        };
        Ok(Credentials { secrets, signing })
    }

    /// `SB_CALLER_KEYS`: every role's hash (each route then names the roles it serves).
    pub fn caller_keys(&self) -> String {
        ServiceRole::ALL
            .into_iter()
            .map(|role| format!("{role}={}", secret_hash(&self.secrets[&role])))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The environment of a service of `role`: its own secret, the callers' hashes, and the
    /// token keys it may hold (the private key for the registry only).
    pub fn env(&self, role: ServiceRole) -> Vec<(String, String)> {
        let mut env = vec![
            kv(SB_SERVICE_SECRET, &self.secrets[&role]),
            kv(SB_CALLER_KEYS, &self.caller_keys()),
        ];
        match &self.signing {
            TokenSigning::SharedSecret(secret) => env.push(kv(SB_JWT_SECRET, secret)),
            TokenSigning::Ed25519 {
                public_pem,
                private_pem,
            } => {
                env.push(kv(
                    SB_JWT_PUBLIC_KEY_FILE,
                    &public_pem.display().to_string(),
                ));
                if role == ServiceRole::Registry {
                    env.push(kv(
                        SB_JWT_PRIVATE_KEY_FILE,
                        &private_pem.display().to_string(),
                    ));
                }
            }
        }
        env
    }

    /// What a service of `role` presents on cluster-only calls.
    pub fn credential(&self, role: ServiceRole) -> ClusterCredential {
        ClusterCredential::new(role, Secret::new(self.secrets[&role].clone()))
    }

    /// Keys that mint client tokens the stack accepts (what the registry holds), with the
    /// default policy.
    pub fn token_keys(&self) -> TokenKeys {
        self.token_keys_with(TokenPolicy::default())
    }

    /// [`Self::token_keys`] with another policy (e.g. minting `iss` and `aud`).
    pub fn token_keys_with(&self, policy: TokenPolicy) -> TokenKeys {
        match &self.signing {
            TokenSigning::SharedSecret(secret) => TokenKeys::with_policy(secret.as_bytes(), policy),
            TokenSigning::Ed25519 {
                public_pem,
                private_pem,
            } => {
                let read = |p: &Path| std::fs::read(p).expect("the stack's key file");
                TokenKeys::without_keys(policy)
                    .with_ed25519(Some(&read(public_pem)), Some(&read(private_pem)))
                    .expect("the stack's Ed25519 pair")
            }
        }
    }
}

fn kv(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a non-UTF-8 path")
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (Debian package openssl; scripts/install-deps.sh)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
