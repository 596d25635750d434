//! HS256 JWTs (SPEC section 2). The token's `sub` is the only source of a user's identity.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is malformed or wrongly signed")]
    Invalid,
    #[error("user id must match [A-Za-z0-9_.-]{{1,64}}")]
    BadUserId,
}

/// `[A-Za-z0-9_.-]{1,64}`.
pub fn is_valid_user_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Signs and verifies tokens with one shared secret. Cheap to clone.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token for `user_id` valid for `ttl`.
    pub fn mint(
        &self,
        user_id: &str,
        ttl: chrono::Duration,
    ) -> Result<(String, DateTime<Utc>), TokenError> {
        if !is_valid_user_id(user_id) {
            return Err(TokenError::BadUserId);
        }
        let now = Utc::now();
        let expires = now + ttl;
        let claims = Claims {
            sub: user_id.to_owned(),
            exp: expires.timestamp(),
            iat: now.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok((token, expires))
    }

    /// Checks signature, algorithm, expiry and the user-id rule; returns the user id.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if !is_valid_user_id(&data.claims.sub) {
            return Err(TokenError::BadUserId);
        }
        Ok(data.claims.sub)
    }

    /// Signs arbitrary claims; for tests that need expired or odd tokens.
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
        let expired = keys.sign_claims(&Claims {
            sub: "alice".into(),
            exp: now - 10,
            iat: now - 100,
        });
        assert_eq!(keys.verify(&expired), Err(TokenError::Expired));
        assert_eq!(keys.verify("a.b.c"), Err(TokenError::Invalid));
    }

    #[test]
    fn user_id_rule() {
        assert!(is_valid_user_id("a.b-c_9"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("has space"));
        assert!(!is_valid_user_id(&"x".repeat(65)));
        let keys = TokenKeys::new(b"s");
        assert_eq!(
            keys.mint("bad id", chrono::Duration::hours(1)),
            Err(TokenError::BadUserId)
        );
    }
}
