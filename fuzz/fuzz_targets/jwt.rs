//! Token verification: any string a client can present as a token (`?token=` or a bearer
//! header), against keys with a policy and an identity provider's JWKS loaded. Verifying must
//! never panic, and nothing unsigned may pass.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::token::{TokenKeys, TokenPolicy};

static KEYS: LazyLock<TokenKeys> = LazyLock::new(|| {
    let keys = TokenKeys::with_policy(
        b"fuzzing-secret-of-at-least-32-bytes!!",
        TokenPolicy {
            issuer: Some("https://idp.example.com/".into()),
            audience: Some("switchboard".into()),
            leeway_secs: 30,
            hs256: true,
        },
    );
    let jwks = serde_json::from_str(include_str!("../../protocol/tests/fixtures/jwks.json"))
        .expect("fixture JWKS");
    keys.set_jwks(&jwks);
    keys
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(user) = KEYS.verify(token) {
        // Only a correctly signed token verifies; the fuzzer cannot forge one.
        panic!("an unsigned input verified as {user:?}: {token:?}");
    }
});
