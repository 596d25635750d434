//! Client JWTs (SPEC section 2). The token's `sub` is the only source of a user's identity.
//!
//! Three kinds of key verify a token:
//! - the shared HS256 secret (`SB_JWT_SECRET`), which also mints: whoever verifies with it can
//!   forge any user's token, so it suits a demo or a deployment where every service is trusted;
//! - an Ed25519 public key (`SB_JWT_PUBLIC_KEY_FILE`, EdDSA tokens): services that only verify
//!   (the internet-facing socket servers) hold no key that mints; only the holder of the
//!   private key (`SB_JWT_PRIVATE_KEY_FILE`: the registry's dev tokens, `mint-token`) signs;
//! - optionally an identity provider's public keys (RS256 or ES256, by `kid`), loaded from its
//!   JWKS ([`TokenKeys::set_jwks`]; service-kit keeps them fresh from `SB_JWT_JWKS_URL`).
//!
//! Besides the signature, [`TokenPolicy`] says what a token must carry: `exp` (and `nbf` when
//! present) within a small leeway, and the configured `iss` and `aud`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    /// Issuer; required to match when `SB_JWT_ISSUER` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, a string or an array of strings (RFC 7519 section 4.1.3); when
    /// `SB_JWT_AUDIENCE` is set, it must be (or contain) that audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Not before (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// A token's `aud`: one audience (what minted tokens write) or several (what identity providers
/// such as Auth0 issue with the `openid` scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is this audience or one of them.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Audience::One(audience.to_owned())
    }
}

impl From<String> for Audience {
    fn from(audience: String) -> Self {
        Audience::One(audience)
    }
}

impl From<Vec<String>> for Audience {
    fn from(audiences: Vec<String>) -> Self {
        Audience::Many(audiences)
    }
}

impl Claims {
    /// Claims for `sub` with only the required fields.
    pub fn new(sub: &str, exp: i64, iat: i64) -> Self {
        Claims {
            sub: sub.to_owned(),
            exp,
            iat,
            iss: None,
            aud: None,
            nbf: None,
        }
    }
}

/// A token that verified: its subject, checked once into a [`UserId`], and its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: UserId,
    pub claims: Claims,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token was issued by another issuer or for another audience")]
    NotForUs,
    #[error("token is malformed or wrongly signed")]
    Invalid,
    #[error("user id must match [A-Za-z0-9_.|@+-]{{1,128}}")]
    BadUserId,
    #[error("this user id is reserved for the server API's system and bot senders")]
    Reserved,
    #[error(
        "this service holds no key that mints tokens (SB_JWT_PRIVATE_KEY_FILE or SB_JWT_SECRET)"
    )]
    CannotMint,
    #[error("{0}")]
    BadKey(String),
}

/// `text` percent-encoded for one URL path segment: everything but RFC 3986's unreserved
/// characters is encoded, so an id can never change which route a URL names.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The default reserved user-id prefixes (`SB_SERVER_SENDER_PREFIXES`).
pub const DEFAULT_RESERVED_PREFIXES: &str = "_system.,_bot.";

/// What a token must carry besides a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// `iss` must equal this (`SB_JWT_ISSUER`); minted tokens carry it.
    pub issuer: Option<String>,
    /// `aud` must contain this (`SB_JWT_AUDIENCE`); minted tokens carry it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (`SB_JWT_LEEWAY_SECS`).
    pub leeway_secs: u64,
    /// User ids reserved for the server API's system and bot senders (prefixes,
    /// `SB_SERVER_SENDER_PREFIXES`): a token for one is refused and never minted, so nobody
    /// signs in as the app's bot.
    pub reserved_prefixes: Vec<String>,
    /// Whether client tokens signed with the shared secret (HS256) verify (`SB_JWT_HS256`).
    /// Off where an identity provider's JWKS is the source of client tokens: the secret then
    /// only mints nothing, and a leaked copy of it (every service holds it) cannot forge one.
    pub hs256: bool,
}

impl TokenPolicy {
    /// Whether `user_id` is a reserved system or bot sender.
    pub fn is_reserved(&self, user_id: &UserId) -> bool {
        self.reserved_prefixes
            .iter()
            .any(|prefix| !prefix.is_empty() && user_id.starts_with(prefix.as_str()))
    }
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            issuer: None,
            audience: None,
            leeway_secs: 30,
            reserved_prefixes: DEFAULT_RESERVED_PREFIXES
                .split(',')
                .map(str::to_owned)
                .collect(),
            hs256: true,
        }
    }
}

/// An identity provider's public key.
#[derive(Clone)]
struct PublicKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Signs and verifies tokens. Cheap to clone; clones share the JWKS keys.
#[derive(Clone)]
pub struct TokenKeys {
    /// The HS256 secret, both halves; `None` where the service holds no secret.
    secret: Option<(EncodingKey, DecodingKey)>,
    /// The Ed25519 key that mints EdDSA tokens (only the minting service holds it).
    ed25519_private: Option<EncodingKey>,
    /// The Ed25519 key that verifies EdDSA tokens.
    ed25519_public: Option<DecodingKey>,
    policy: TokenPolicy,
    jwks: Arc<RwLock<HashMap<String, PublicKey>>>,
}

impl TokenKeys {
    /// The shared secret with the default policy (no `iss`/`aud`, 30 s leeway).
    pub fn new(secret: &[u8]) -> Self {
        Self::with_policy(secret, TokenPolicy::default())
    }

    pub fn with_policy(secret: &[u8], policy: TokenPolicy) -> Self {
        TokenKeys {
            secret: Some((
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            )),
            ..Self::without_keys(policy)
        }
    }

    /// No key at all yet: add an Ed25519 pair with [`TokenKeys::with_ed25519`] or rely on a
    /// JWKS ([`TokenKeys::set_jwks`]).
    pub fn without_keys(policy: TokenPolicy) -> Self {
        TokenKeys {
            secret: None,
            ed25519_private: None,
            ed25519_public: None,
            policy,
            jwks: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// Adds Ed25519 keys from PEM text: a public key (`-----BEGIN PUBLIC KEY-----`, what
    /// `openssl pkey -pubout` writes) verifies EdDSA tokens; a private key (PKCS#8,
    /// `openssl genpkey -algorithm ed25519`) also mints them.
    pub fn with_ed25519(
        mut self,
        public_pem: Option<&[u8]>,
        private_pem: Option<&[u8]>,
    ) -> Result<Self, TokenError> {
        if let Some(pem) = public_pem {
            self.ed25519_public = Some(DecodingKey::from_ed_pem(pem).map_err(|e| {
                TokenError::BadKey(format!("not an Ed25519 public key in PEM: {e}"))
            })?);
        }
        if let Some(pem) = private_pem {
            self.ed25519_private = Some(EncodingKey::from_ed_pem(pem).map_err(|e| {
                TokenError::BadKey(format!("not an Ed25519 private key in PEM (PKCS#8): {e}"))
            })?);
        }
        Ok(self)
    }

    /// Whether this service can mint tokens at all.
    pub fn can_mint(&self) -> bool {
        self.ed25519_private.is_some() || self.secret.is_some()
    }

    /// The key new tokens are signed with: the Ed25519 private key when present (its tokens
    /// verify where only the public key is held), else the HS256 secret.
    fn signing(&self) -> Result<(Algorithm, &EncodingKey), TokenError> {
        if let Some(key) = &self.ed25519_private {
            return Ok((Algorithm::EdDSA, key));
        }
        match &self.secret {
            Some((key, _)) => Ok((Algorithm::HS256, key)),
            None => Err(TokenError::CannotMint),
        }
    }

    /// Replaces the identity provider's keys with the RS256/ES256 keys of `set` that have a
    /// `kid`; answers how many were taken (others are skipped: unsupported or unusable).
    pub fn set_jwks(&self, set: &JwkSet) -> usize {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, PublicKey { key, algorithm });
            }
        }
        let taken = keys.len();
        *self.jwks.write().expect("jwks lock") = keys;
        taken
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.policy.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.policy.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        // jsonwebtoken is the one place `aud` is checked: a string must equal the configured
        // audience, an array must contain it. Without a configured audience it is not checked
        // at all (any string or array passes).
        match &self.policy.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Mints a token for `user_id` valid for `ttl`, with the policy's `iss` and `aud`.
    pub fn mint(
        &self,
        user_id: &UserId,
        ttl: chrono::Duration,
    ) -> Result<(String, DateTime<Utc>), TokenError> {
        if self.policy.is_reserved(user_id) {
            return Err(TokenError::Reserved);
        }
        let now = Utc::now();
        let expires = now + ttl;
        let claims = Claims {
            iss: self.policy.issuer.clone(),
            aud: self.policy.audience.clone().map(Audience::One),
            ..Claims::new(user_id, expires.timestamp(), now.timestamp())
        };
        let (algorithm, key) = self.signing()?;
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, key)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, expires))
    }

    /// Checks signature (the secret for HS256, the provider's key named by `kid` for RS256 and
    /// ES256), expiry, `nbf`, `iss`, `aud` and the user-id rule; returns the user id.
    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        self.verify_claims(token).map(|verified| verified.user_id)
    }

    /// [`TokenKeys::verify`], answering the whole verified claims too: live sessions need
    /// `exp` (closed when it passes) and `iat` (ended by a "sessions ended before" mark).
    pub fn verify_claims(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = match header.alg {
            Algorithm::HS256 if self.policy.hs256 => match &self.secret {
                Some((_, key)) => key.clone(),
                None => return Err(TokenError::Invalid),
            },
            Algorithm::EdDSA => match &self.ed25519_public {
                Some(key) => key.clone(),
                None => return Err(TokenError::Invalid),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref().ok_or(TokenError::Invalid)?;
                let keys = self.jwks.read().expect("jwks lock");
                match keys.get(kid) {
                    Some(public) if public.algorithm == header.alg => public.key.clone(),
                    _ => return Err(TokenError::Invalid),
                }
            }
            _ => return Err(TokenError::Invalid),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation(header.alg))
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::NotForUs,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" || claim == "aud" => {
                        TokenError::NotForUs
                    }
                    _ => TokenError::Invalid,
                }
            })?;
        let user_id = UserId::parse(data.claims.sub.as_str()).map_err(|_| TokenError::BadUserId)?;
        if self.policy.is_reserved(&user_id) {
            return Err(TokenError::Reserved);
        }
        Ok(Verified {
            user_id,
            claims: data.claims,
        })
    }

    /// Signs arbitrary claims with the minting key; for tests that need expired or odd
    /// tokens. Panics where this service holds no minting key.
    pub fn sign_claims(&self, claims: &Claims) -> String {
        let (algorithm, key) = self.signing().expect("sign_claims needs a minting key");
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("signing does not fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let keys = TokenKeys::new(b"secret");
        let (token, _) = keys
            .mint(&UserId::parse("alice").unwrap(), chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(keys.verify(&token).unwrap(), "alice");
    }

    #[test]
    fn rejects_wrong_secret_expired_and_garbage() {
        let keys = TokenKeys::new(b"secret");
        let other = TokenKeys::new(b"other");
        let (token, _) = other
            .mint(&UserId::parse("alice").unwrap(), chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
        let now = Utc::now().timestamp();
        // Past the 30 s leeway.
        let expired = keys.sign_claims(&Claims::new("alice", now - 40, now - 100));
        assert_eq!(keys.verify(&expired), Err(TokenError::Expired));
        assert_eq!(keys.verify("a.b.c"), Err(TokenError::Invalid));
    }

    #[test]
    fn hs256_can_be_switched_off() {
        let off = TokenKeys::with_policy(
            b"secret",
            TokenPolicy {
                hs256: false,
                ..TokenPolicy::default()
            },
        );
        let (token, _) = off
            .mint(&UserId::parse("alice").unwrap(), chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(off.verify(&token), Err(TokenError::Invalid));
        assert_eq!(TokenKeys::new(b"secret").verify(&token).unwrap(), "alice");
    }

    /// A throwaway pair for this test only (`openssl genpkey -algorithm ed25519`).
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOmYQbhylDFF/k9IyfVDuZfg/EvXWgrjmYcMjCR4UiIG\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAzWd2i88pT0wiy/szuiy9D4gS8H5HEClKlaqXhF8TMtM=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn ed25519_public_key_verifies_but_cannot_mint() {
        let policy = TokenPolicy {
            hs256: false,
            ..TokenPolicy::default()
        };
        let minter = TokenKeys::without_keys(policy.clone())
            .with_ed25519(None, Some(ED_PRIVATE.as_bytes()))
            .unwrap();
        let verifier = TokenKeys::without_keys(policy)
            .with_ed25519(Some(ED_PUBLIC.as_bytes()), None)
            .unwrap();
        let (token, _) = minter
            .mint(&UserId::parse("alice").unwrap(), chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(verifier.verify(&token).unwrap(), "alice");
        assert!(!verifier.can_mint());
        assert_eq!(
            verifier.mint(
                &UserId::parse("mallory").unwrap(),
                chrono::Duration::hours(1)
            ),
            Err(TokenError::CannotMint)
        );
        // The classic confusion: an HS256 token keyed with the public key's text.
        let confused = TokenKeys::new(ED_PUBLIC.as_bytes())
            .mint(
                &UserId::parse("mallory").unwrap(),
                chrono::Duration::hours(1),
            )
            .unwrap()
            .0;
        assert_eq!(verifier.verify(&confused), Err(TokenError::Invalid));
        assert!(matches!(
            TokenKeys::without_keys(TokenPolicy::default()).with_ed25519(Some(b"junk"), None),
            Err(TokenError::BadKey(_))
        ));
    }

    #[test]
    fn reserved_senders_cannot_sign_in() {
        let keys = TokenKeys::new(b"s");
        assert_eq!(
            keys.mint(
                &UserId::parse("_bot.helper").unwrap(),
                chrono::Duration::hours(1)
            ),
            Err(TokenError::Reserved)
        );
        let now = Utc::now().timestamp();
        let policy = TokenPolicy {
            reserved_prefixes: Vec::new(),
            ..TokenPolicy::default()
        };
        let forged = TokenKeys::with_policy(b"s", policy).sign_claims(&Claims::new(
            "_system.x",
            now + 60,
            now,
        ));
        assert_eq!(keys.verify(&forged), Err(TokenError::Reserved));
        assert_eq!(
            keys.verify(&keys.sign_claims(&Claims::new("bot.ok", now + 60, now)))
                .unwrap(),
            "bot.ok"
        );
    }

    #[test]
    fn user_id_rule() {
        assert_eq!(
            path_segment("auth0|x@y+z/../w"),
            "auth0%7Cx%40y%2Bz%2F..%2Fw"
        );
        // A token is only ever minted for a checked id: the rule is the type's.
        assert!(UserId::parse("bad id").is_err());
    }
}
