//! Signatures per the Standard Webhooks specification (symmetric, `v1`).
//!
//! Each attempt carries `webhook-id` (stable across retries), `webhook-timestamp` (unix
//! seconds of this attempt) and `webhook-signature`: space-separated `v1,<base64>` entries,
//! each the HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under one of the endpoint's secrets. A
//! secret is written `whsec_<base64 of the key bytes>`; during a rotation the old secret and
//! the new both sign, so a receiver holding either verifies. The crate `standardwebhooks` is
//! not used: the scheme is a dozen lines, and the spec's published test vector checks them
//! (tests below).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";

/// Key bytes of a new secret (the spec asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A new random secret in its text form (`whsec_...`).
pub fn new_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::thread_rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The key bytes of a secret in its text form (the `whsec_` prefix optional).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("a webhook secret is base64 after `whsec_`: {e}"))?;
    if key.is_empty() {
        return Err("a webhook secret is not empty".into());
    }
    Ok(key)
}

/// One `v1,<base64>` signature of `body` under `key`.
pub fn sign_with(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per secret, space separated.
pub fn signature_header(
    secrets: &[String],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, String> {
    let mut out = Vec::with_capacity(secrets.len());
    for secret in secrets {
        out.push(sign_with(&secret_key(secret)?, id, timestamp, body));
    }
    Ok(out.join(" "))
}

/// Whether any `v1` signature of `header` is `body`'s under `secret` (a receiver's check, as
/// the docs show it; the tests' sink uses it). Constant-time comparison.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(key) = secret_key(secret) else {
        return false;
    };
    let expected = sign_with(&key, id, timestamp, body);
    header.split(' ').any(|candidate| {
        candidate.len() == expected.len()
            && candidate
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference libraries' published vector ("sign function works").
    #[test]
    fn the_specs_test_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let timestamp = 1_614_265_330;
        let body = br#"{"test": 2432232314}"#;
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            signature_header(&[secret.to_owned()], id, timestamp, body).unwrap(),
            expected
        );
        assert!(verify(secret, id, timestamp, body, expected));
        // Without the prefix, the same key.
        assert!(verify(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            id,
            timestamp,
            body,
            expected
        ));
        assert!(!verify(secret, id, timestamp + 1, body, expected));
        assert!(!verify(secret, id, timestamp, b"{}", expected));
    }

    #[test]
    fn rotation_signs_with_every_secret_and_either_verifies() {
        let old = new_secret();
        let new = new_secret();
        assert!(old.starts_with(SECRET_PREFIX));
        assert_eq!(secret_key(&old).unwrap().len(), SECRET_BYTES);
        let header = signature_header(&[new.clone(), old.clone()], "evt_1", 5, b"x").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&old, "evt_1", 5, b"x", &header));
        assert!(verify(&new, "evt_1", 5, b"x", &header));
        assert!(!verify(&new_secret(), "evt_1", 5, b"x", &header));
        assert!(secret_key("whsec_").is_err());
        assert!(secret_key("whsec_***").is_err());
    }
}
