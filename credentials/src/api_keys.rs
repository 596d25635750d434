//! API keys of app backends as configured and minted, without the web stack: a key is
//! `sbk_<id>_<secret>`, and the services hold only its entry ([`KeyEntry`]: the id, the hex
//! SHA-256 of the whole key, its [`Scope`]s and its rate), from `SB_API_KEYS_FILE` or
//! `SB_API_KEYS`. [`mint`] makes a new key with its entry (`mint-api-key`, the test harness).
//! Checking a request's key (the table, rotation, the rate) is the service kit's `api_keys`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "sbk_";

/// A key's rate when its entry names none (requests per second, sustained).
pub const DEFAULT_RATE_PER_SEC: f64 = 50.0;

/// What a key may do. The wire form is `area:action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Post messages (`POST /server/v1/conversations/{id}/messages`).
    #[serde(rename = "messages:write")]
    MessagesWrite,
    /// Create conversations, add and remove members.
    #[serde(rename = "conversations:write")]
    ConversationsWrite,
    /// Read history, conversations and presence without being a member.
    #[serde(rename = "read")]
    Read,
    /// End a user's sessions.
    #[serde(rename = "users:disconnect")]
    UsersDisconnect,
    /// Register and remove webhook endpoints.
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::MessagesWrite,
        Scope::ConversationsWrite,
        Scope::Read,
        Scope::UsersDisconnect,
        Scope::WebhooksManage,
    ];

    /// The wire string (`messages:write`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MessagesWrite => "messages:write",
            Scope::ConversationsWrite => "conversations:write",
            Scope::Read => "read",
            Scope::UsersDisconnect => "users:disconnect",
            Scope::WebhooksManage => "webhooks:manage",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

/// The id of the key a request was authorized with (logs, idempotency namespaces, audit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyId(pub String);

impl std::fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One configured key, as the JSON writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    /// Lowercase or uppercase hex of `sha256("sbk_<id>_<secret>")`.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Requests per second, sustained; 0: no limit.
    #[serde(default = "default_rate")]
    pub rate_per_sec: f64,
    /// Requests at once from a full bucket; default: the rate (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

fn default_rate() -> f64 {
    DEFAULT_RATE_PER_SEC
}

/// An id: what `sbk_<id>_` can carry unambiguously (no `_`), short enough for logs.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `sha256(key)` as lowercase hex: what a [`KeyEntry`] stores.
pub fn hash_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits (a [`KeyEntry`]'s `sha256`) as the 32 bytes; `None` for anything else.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Splits `sbk_<id>_<secret>` into its id; `None` for anything else.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (valid_key_id(id) && !secret.is_empty() && secret.len() <= 256).then_some(id)
}

/// A new key with a random 256-bit secret: `(key, entry)` for `id` with `scopes`.
pub fn mint(id: &str, scopes: Vec<Scope>, rate_per_sec: f64) -> Result<(String, KeyEntry), String> {
    use rand::RngCore;
    if !valid_key_id(id) {
        return Err(format!(
            "key id {id:?} must be 1 to 64 characters of [A-Za-z0-9-]"
        ));
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{id}_{}", hex(&secret));
    let entry = KeyEntry {
        id: id.to_owned(),
        sha256: hash_hex(&key),
        scopes,
        rate_per_sec,
        burst: None,
    };
    Ok((key, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_have_their_wire_names() {
        for scope in Scope::ALL {
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("admin".parse::<Scope>().is_err());
    }

    #[test]
    fn key_ids_split_only_well_formed_keys() {
        assert_eq!(key_id("sbk_abc_secret"), Some("abc"));
        assert_eq!(key_id("sbk_abc-1_se_cret"), Some("abc-1"));
        assert_eq!(key_id("sbk_abc_"), None);
        assert_eq!(key_id("sbk__secret"), None);
        assert_eq!(key_id("sbk_abc"), None);
        assert_eq!(key_id("eyJhbGciOi.x.y"), None);
    }
}
