//! Client JWTs (SPEC section 2). The token's `sub` is the only source of a user's identity.
//!
//! Two kinds of key verify a token:
//! - the shared HS256 secret (`SB_JWT_SECRET`), which also mints dev tokens;
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

/// What a token must carry besides a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// `iss` must equal this (`SB_JWT_ISSUER`); minted tokens carry it.
    pub issuer: Option<String>,
    /// `aud` must contain this (`SB_JWT_AUDIENCE`); minted tokens carry it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (`SB_JWT_LEEWAY_SECS`).
    pub leeway_secs: u64,
    /// Whether client tokens signed with the shared secret (HS256) verify (`SB_JWT_HS256`).
    /// Off where an identity provider's JWKS is the source of client tokens: the secret then
    /// only mints nothing, and a leaked copy of it (every service holds it) cannot forge one.
    pub hs256: bool,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            issuer: None,
            audience: None,
            leeway_secs: 30,
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
    encoding: EncodingKey,
    secret: DecodingKey,
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
            encoding: EncodingKey::from_secret(secret),
            secret: DecodingKey::from_secret(secret),
            policy,
            jwks: Arc::new(RwLock::new(HashMap::new())),
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
        user_id: &str,
        ttl: chrono::Duration,
    ) -> Result<(String, DateTime<Utc>), TokenError> {
        if !UserId::is_valid(user_id) {
            return Err(TokenError::BadUserId);
        }
        let now = Utc::now();
        let expires = now + ttl;
        let claims = Claims {
            iss: self.policy.issuer.clone(),
            aud: self.policy.audience.clone().map(Audience::One),
            ..Claims::new(user_id, expires.timestamp(), now.timestamp())
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, expires))
    }

    /// Checks signature (the secret for HS256, the provider's key named by `kid` for RS256 and
    /// ES256), expiry, `nbf`, `iss`, `aud` and the user-id rule; returns the user id.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        self.verify_claims(token).map(|claims| claims.sub)
    }

    /// [`TokenKeys::verify`], answering the whole verified claims: live sessions need `exp`
    /// (closed when it passes) and `iat` (ended by a "sessions ended before" mark).
    pub fn verify_claims(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = match header.alg {
            Algorithm::HS256 if self.policy.hs256 => self.secret.clone(),
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
        if !UserId::is_valid(&data.claims.sub) {
            return Err(TokenError::BadUserId);
        }
        Ok(data.claims)
    }

    /// Signs arbitrary claims with the secret; for tests that need expired or odd tokens.
    pub fn sign_claims(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing does not fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let keys = TokenKeys::new(b"secret");
        let (token, _) = keys.mint("alice", chrono::Duration::hours(1)).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), "alice");
    }

    #[test]
    fn rejects_wrong_secret_expired_and_garbage() {
        let keys = TokenKeys::new(b"secret");
        let other = TokenKeys::new(b"other");
        let (token, _) = other.mint("alice", chrono::Duration::hours(1)).unwrap();
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
        let (token, _) = off.mint("alice", chrono::Duration::hours(1)).unwrap();
        assert_eq!(off.verify(&token), Err(TokenError::Invalid));
        assert_eq!(TokenKeys::new(b"secret").verify(&token).unwrap(), "alice");
    }

    #[test]
    fn user_id_rule() {
        assert_eq!(
            path_segment("auth0|x@y+z/../w"),
            "auth0%7Cx%40y%2Bz%2F..%2Fw"
        );
        let keys = TokenKeys::new(b"s");
        assert_eq!(
            keys.mint("bad id", chrono::Duration::hours(1)),
            Err(TokenError::BadUserId)
        );
    }
}
