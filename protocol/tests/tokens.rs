//! Token policy and identity-provider keys, with real keys: `fixtures/` holds an RSA and a
//! P-256 key pair made for these tests only (never used anywhere else) and their JWKS.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use switchboard_protocol::token::{Audience, Claims, TokenError, TokenKeys, TokenPolicy};
use switchboard_protocol::UserId;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: Some("https://idp.example.com/".into()),
        audience: Some("switchboard".into()),
        leeway_secs: 30,
        hs256: true,
        ..TokenPolicy::default()
    }
}

fn provider_keys() -> TokenKeys {
    let keys = TokenKeys::with_policy(SECRET, policy());
    let set: JwkSet = serde_json::from_str(include_str!("fixtures/jwks.json")).unwrap();
    assert_eq!(keys.set_jwks(&set), 2);
    keys
}

fn good_claims(sub: &str) -> Claims {
    Claims {
        iss: Some("https://idp.example.com/".into()),
        aud: Some("switchboard".into()),
        ..Claims::new(sub, now() + 600, now())
    }
}

fn sign(algorithm: Algorithm, kid: &str, claims: &Claims) -> String {
    let key = match algorithm {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(include_bytes!("fixtures/rsa-private.pem")).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(include_bytes!("fixtures/ec-private.pem")).unwrap()
        }
        other => panic!("{other:?}"),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[test]
fn identity_provider_tokens_verify_by_kid() {
    let keys = provider_keys();
    let rs = sign(Algorithm::RS256, "rsa-1", &good_claims("auth0-alice"));
    assert_eq!(keys.verify(&rs).as_deref(), Ok("auth0-alice"));
    let es = sign(Algorithm::ES256, "ec-1", &good_claims("bob"));
    assert_eq!(keys.verify(&es).as_deref(), Ok("bob"));
    // An unknown kid, or a kid of the other algorithm, is refused.
    let unknown = sign(Algorithm::RS256, "rsa-2", &good_claims("alice"));
    assert_eq!(keys.verify(&unknown), Err(TokenError::Invalid));
    let mixed = sign(Algorithm::RS256, "ec-1", &good_claims("alice"));
    assert_eq!(keys.verify(&mixed), Err(TokenError::Invalid));
    // Without the JWKS, the same token is refused.
    let no_jwks = TokenKeys::with_policy(SECRET, policy());
    assert_eq!(no_jwks.verify(&rs), Err(TokenError::Invalid));
}

#[test]
fn issuer_and_audience_must_match_when_configured() {
    let keys = provider_keys();
    let other_issuer = Claims {
        iss: Some("https://evil.example.com/".into()),
        ..good_claims("alice")
    };
    let other_audience = Claims {
        aud: Some("another-app".into()),
        ..good_claims("alice")
    };
    let no_audience = Claims {
        aud: None,
        ..good_claims("alice")
    };
    for claims in [other_issuer, other_audience, no_audience] {
        let token = sign(Algorithm::RS256, "rsa-1", &claims);
        assert_eq!(keys.verify(&token), Err(TokenError::NotForUs), "{claims:?}");
    }
    // The services' own minted tokens carry the configured iss and aud.
    let (minted, _) = keys
        .mint(
            &UserId::parse("carol").unwrap(),
            chrono::Duration::minutes(5),
        )
        .unwrap();
    assert_eq!(keys.verify(&minted).as_deref(), Ok("carol"));
    // Without a policy, iss and aud are not required (and an aud does not hurt).
    let plain = TokenKeys::new(SECRET);
    let with_aud = plain.sign_claims(&Claims {
        aud: Some("whatever".into()),
        ..Claims::new("dave", now() + 60, now())
    });
    assert_eq!(plain.verify(&with_aud).as_deref(), Ok("dave"));
}

fn many(audiences: &[&str]) -> Option<Audience> {
    Some(Audience::Many(
        audiences.iter().map(|a| (*a).to_owned()).collect(),
    ))
}

#[test]
fn audience_may_be_an_array() {
    let keys = provider_keys();
    // An array holding the configured audience (as Auth0 issues with the openid scope).
    let with_ours = Claims {
        aud: many(&["switchboard", "https://idp.example.com/userinfo"]),
        ..good_claims("alice")
    };
    let token = sign(Algorithm::RS256, "rsa-1", &with_ours);
    assert_eq!(keys.verify(&token).as_deref(), Ok("alice"));
    let es = sign(Algorithm::ES256, "ec-1", &with_ours);
    assert_eq!(keys.verify(&es).as_deref(), Ok("alice"));
    // An array without it, or an empty one, is not for us.
    for aud in [
        many(&["another-app", "https://idp.example.com/userinfo"]),
        many(&[]),
    ] {
        let claims = Claims {
            aud,
            ..good_claims("alice")
        };
        let token = sign(Algorithm::RS256, "rsa-1", &claims);
        assert_eq!(keys.verify(&token), Err(TokenError::NotForUs), "{claims:?}");
    }
    // A single string still works.
    let one = sign(Algorithm::RS256, "rsa-1", &good_claims("bob"));
    assert_eq!(keys.verify(&one).as_deref(), Ok("bob"));
    // Without a configured audience, an array is not checked.
    let plain = TokenKeys::new(SECRET);
    let token = plain.sign_claims(&Claims {
        aud: many(&["whatever", "else"]),
        ..Claims::new("dave", now() + 60, now())
    });
    assert_eq!(plain.verify(&token).as_deref(), Ok("dave"));
}

#[test]
fn audience_serializes_as_a_string_or_an_array() {
    let parse = |json: &str| serde_json::from_str::<Claims>(json).unwrap().aud;
    assert_eq!(
        parse(r#"{"sub":"a","exp":1,"iat":0,"aud":"switchboard"}"#),
        Some(Audience::One("switchboard".into()))
    );
    assert_eq!(
        parse(r#"{"sub":"a","exp":1,"iat":0,"aud":["switchboard","x"]}"#),
        many(&["switchboard", "x"])
    );
    assert_eq!(parse(r#"{"sub":"a","exp":1,"iat":0}"#), None);
    assert!(serde_json::from_str::<Claims>(r#"{"sub":"a","exp":1,"iat":0,"aud":[1]}"#).is_err());
    assert!(Audience::from("switchboard").contains("switchboard"));
    assert!(many(&["x", "switchboard"]).unwrap().contains("switchboard"));
    assert!(!many(&["x"]).unwrap().contains("switchboard"));
    // Minted tokens write a single string.
    let keys = TokenKeys::with_policy(SECRET, policy());
    let (minted, _) = keys
        .mint(
            &UserId::parse("carol").unwrap(),
            chrono::Duration::minutes(5),
        )
        .unwrap();
    let mut insecure = jsonwebtoken::Validation::new(Algorithm::HS256);
    insecure.insecure_disable_signature_validation();
    insecure.validate_aud = false;
    let payload = jsonwebtoken::decode::<serde_json::Value>(
        &minted,
        &jsonwebtoken::DecodingKey::from_secret(b"unused"),
        &insecure,
    )
    .unwrap()
    .claims;
    assert_eq!(payload["aud"], serde_json::json!("switchboard"));
}

#[test]
fn exp_and_nbf_allow_a_small_leeway() {
    let keys = TokenKeys::new(SECRET);
    let at = |exp: i64, nbf: Option<i64>| {
        keys.sign_claims(&Claims {
            nbf,
            ..Claims::new("alice", exp, now() - 100)
        })
    };
    assert!(
        keys.verify(&at(now() - 10, None)).is_ok(),
        "within the leeway"
    );
    assert_eq!(keys.verify(&at(now() - 60, None)), Err(TokenError::Expired));
    assert!(keys.verify(&at(now() + 60, Some(now() + 10))).is_ok());
    assert_eq!(
        keys.verify(&at(now() + 600, Some(now() + 300))),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn other_algorithms_are_refused() {
    let keys = provider_keys();
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(
            serde_json::to_string(&good_claims("alice"))
                .unwrap()
                .as_bytes()
        )
    );
    assert_eq!(keys.verify(&none), Err(TokenError::Invalid));
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &good_claims("alice"),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(keys.verify(&hs512), Err(TokenError::Invalid));
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
