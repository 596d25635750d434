//! API keys for app backends: the server API (`/server/v1/...`) and everything else an
//! application's own backend calls (webhook endpoints, ending a user's sessions).
//!
//! A key is `sbk_<id>_<secret>` and travels only as `Authorization: Bearer sbk_...` (never in a
//! query string, where proxies and access logs would keep it). The services never hold a key,
//! only `sha256(key)` in hex, next to its id, its [`Scope`]s and its rate: configuration from
//! `SB_API_KEYS_FILE` (a JSON file, e.g. a mounted secret) or `SB_API_KEYS` (the same JSON
//! inline):
//!
//! ```json
//! [{"id": "backend1", "sha256": "<64 hex>", "scopes": ["messages:write", "read"], "rate_per_sec": 50}]
//! ```
//!
//! `mint-api-key` (service-kit's binary) prints a new key and its entry. Several keys may be
//! configured at once, which is how a key is rotated: add the new entry, move the backend to the
//! new key, remove the old entry. With `SB_API_KEYS_FILE` no restart is needed: the file is
//! looked at again at most once a second and re-read when it changed (a file that no longer
//! parses is logged and the keys before it are kept).
//!
//! Answers: 401 `unauthorized` for no key, a malformed or unknown one, and a user JWT (user
//! tokens are for `/api`); 403 `forbidden` for a key without the route's scope; 429
//! `rate_limited` with `Retry-After` past the key's rate. The hash comparison is in constant
//! time. The rate limit is a token bucket per key **per process** (`rate_per_sec` sustained,
//! `burst` at once): with `n` replicas of a service a key gets up to `n` times its rate
//! cluster-wide, which is documented in docs/server-api.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};
use switchboard_config::lookup::{lookup_optional, process_env, ConfigError, Lookup};
use switchboard_config::names::{SB_API_KEYS, SB_API_KEYS_FILE};
use switchboard_credentials::api_keys::{
    key_id, unhex, valid_key_id, ApiKeyId, KeyEntry, Scope, KEY_PREFIX,
};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::ErrorCode;

use crate::http::ApiError;

/// Why a key configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeysError {
    #[error("the API keys are not valid JSON of the documented shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("API key {id:?}: {reason}")]
    Entry { id: String, reason: String },
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("set only one of SB_API_KEYS_FILE and SB_API_KEYS")]
    Both,
}

impl From<ApiKeysError> for ConfigError {
    fn from(e: ApiKeysError) -> Self {
        ConfigError {
            name: format!("{SB_API_KEYS_FILE}/{SB_API_KEYS}"),
            value: String::new(),
            reason: e.to_string(),
        }
    }
}

struct Key {
    hash: [u8; 32],
    scopes: Vec<Scope>,
    rate_per_sec: f64,
    burst: f64,
}

/// A token bucket (per key, per process).
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Table {
    keys: HashMap<String, Key>,
}

/// Where the keys came from, for reloading.
struct FileSource {
    path: PathBuf,
    /// (modified, length) of the file last read.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The configured keys, their buckets, and (with a file) when to look at it again.
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

struct Inner {
    table: RwLock<Arc<Table>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    file: Option<Mutex<FileSource>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: hashes are not secrets, but nothing about a key needs to be in a log.
        let table = self.inner.table.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<&String> = table.keys.keys().collect();
        ids.sort();
        f.debug_struct("ApiKeys").field("ids", &ids).finish()
    }
}

/// An authorization refusal: the error body, and for 429 the seconds to wait.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct ApiKeyError {
    pub error: ApiError,
    /// `Retry-After` in seconds (rate limit only).
    pub retry_after_secs: Option<u64>,
}

impl ApiKeyError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiKeyError {
            error: ApiError::new(code, message),
            retry_after_secs: None,
        }
    }
}

impl ResponseError for ApiKeyError {
    fn status_code(&self) -> StatusCode {
        self.error.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after_secs {
            resp.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        resp.json(ErrorBody::new(self.error.code, &self.error.message))
    }
}

/// Drops `Retry-After` (for handlers that answer [`ApiError`] only).
impl From<ApiKeyError> for ApiError {
    fn from(e: ApiKeyError) -> Self {
        e.error
    }
}

fn parse_table(json: &str) -> Result<Table, ApiKeysError> {
    let entries: Vec<KeyEntry> = serde_json::from_str(json)?;
    let mut keys = HashMap::with_capacity(entries.len());
    for entry in entries {
        let refuse = |reason: &str| ApiKeysError::Entry {
            id: entry.id.clone(),
            reason: reason.to_owned(),
        };
        if !valid_key_id(&entry.id) {
            return Err(refuse("an id is 1 to 64 characters of [A-Za-z0-9-]"));
        }
        let Some(hash) = unhex(&entry.sha256) else {
            return Err(refuse("sha256 must be 64 hex digits"));
        };
        if entry.scopes.is_empty() {
            return Err(refuse("a key needs at least one scope"));
        }
        if !entry.rate_per_sec.is_finite() || entry.rate_per_sec < 0.0 {
            return Err(refuse("rate_per_sec must be 0 (no limit) or more"));
        }
        let burst = entry.burst.unwrap_or(entry.rate_per_sec).max(1.0);
        if !burst.is_finite() {
            return Err(refuse("burst must be a finite number"));
        }
        let key = Key {
            hash,
            scopes: entry.scopes.clone(),
            rate_per_sec: entry.rate_per_sec,
            burst,
        };
        if keys.insert(entry.id.clone(), key).is_some() {
            return Err(refuse("the id appears twice"));
        }
    }
    Ok(Table { keys })
}

fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// How often a key file is looked at again.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

impl ApiKeys {
    /// Keys from a JSON array of [`KeyEntry`]; they never change.
    pub fn parse(json: &str) -> Result<Self, ApiKeysError> {
        Ok(Self::from_table(parse_table(json)?, None))
    }

    /// No keys: every request is 401.
    pub fn none() -> Self {
        Self::from_table(
            Table {
                keys: HashMap::new(),
            },
            None,
        )
    }

    /// Keys from a file, re-read within a second of a change.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, ApiKeysError> {
        let path = path.into();
        let stamp = file_stamp(&path);
        let json = std::fs::read_to_string(&path).map_err(|error| ApiKeysError::Io {
            path: path.display().to_string(),
            error,
        })?;
        let table = parse_table(&json)?;
        let source = FileSource {
            path,
            stamp,
            checked: Instant::now(),
        };
        Ok(Self::from_table(table, Some(source)))
    }

    /// `SB_API_KEYS_FILE` or `SB_API_KEYS` from `lookup`; neither set: no keys.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ApiKeysError> {
        match (
            lookup_optional(lookup, SB_API_KEYS_FILE),
            lookup_optional(lookup, SB_API_KEYS),
        ) {
            (Some(_), Some(_)) => Err(ApiKeysError::Both),
            (Some(path), None) => Self::from_file(path),
            (None, Some(json)) => Self::parse(&json),
            (None, None) => Ok(Self::none()),
        }
    }

    /// [`from_lookup`](Self::from_lookup) on the process environment.
    pub fn from_env() -> Result<Self, ApiKeysError> {
        Self::from_lookup(&process_env)
    }

    fn from_table(table: Table, file: Option<FileSource>) -> Self {
        ApiKeys {
            inner: Arc::new(Inner {
                table: RwLock::new(Arc::new(table)),
                buckets: Mutex::new(HashMap::new()),
                file: file.map(Mutex::new),
            }),
        }
    }

    /// How many keys are configured now.
    pub fn len(&self) -> usize {
        self.table().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self) -> Arc<Table> {
        self.maybe_reload();
        self.inner
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the key file when a second has passed since the last look and it changed.
    /// A stat a second is cheap; the read happens only on a change.
    fn maybe_reload(&self) {
        let Some(file) = &self.inner.file else {
            return;
        };
        let Ok(mut source) = file.try_lock() else {
            // Another request is looking right now; the current table is good enough.
            return;
        };
        if source.checked.elapsed() < RELOAD_EVERY {
            return;
        }
        source.checked = Instant::now();
        let stamp = file_stamp(&source.path);
        if stamp == source.stamp {
            return;
        }
        source.stamp = stamp;
        let table = std::fs::read_to_string(&source.path)
            .map_err(|error| ApiKeysError::Io {
                path: source.path.display().to_string(),
                error,
            })
            .and_then(|json| parse_table(&json));
        match table {
            Ok(table) => {
                tracing::info!(keys = table.keys.len(), path = %source.path.display(), "API keys reloaded");
                *self.inner.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the API key file changed but cannot be used; the keys before it stay")
            }
        }
    }

    /// The key of `req` (`Authorization: Bearer sbk_...`) if it is configured, its hash
    /// matches, it has `scope`, and its bucket has a token.
    pub fn authorize(&self, req: &HttpRequest, scope: Scope) -> Result<ApiKeyId, ApiKeyError> {
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.authorize_header(header, scope)
    }

    /// [`authorize`](Self::authorize) given the `Authorization` header's value.
    pub fn authorize_header(
        &self,
        authorization: Option<&str>,
        scope: Scope,
    ) -> Result<ApiKeyId, ApiKeyError> {
        let unauthorized = |m: &str| ApiKeyError::new(ErrorCode::Unauthorized, m);
        let Some(bearer) = authorization.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        }) else {
            return Err(unauthorized(
                "send an API key as Authorization: Bearer sbk_<id>_<secret>",
            ));
        };
        let presented = bearer.trim();
        if !presented.starts_with(KEY_PREFIX) {
            return Err(unauthorized(
                "this route takes an API key (sbk_...), not a user token; user tokens are for /api",
            ));
        }
        let Some(id) = key_id(presented) else {
            return Err(unauthorized(
                "malformed API key: expected sbk_<id>_<secret>",
            ));
        };
        let table = self.table();
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let Some(key) = table.keys.get(id) else {
            return Err(unauthorized("unknown or revoked API key"));
        };
        if !switchboard_credentials::cluster::constant_time_eq(&hash, &key.hash) {
            return Err(unauthorized("unknown or revoked API key"));
        }
        if !key.scopes.contains(&scope) {
            return Err(ApiKeyError::new(
                ErrorCode::Forbidden,
                format!("this API key lacks the {} scope", scope.as_str()),
            ));
        }
        if key.rate_per_sec > 0.0 {
            self.take_token(id, key)?;
        }
        Ok(ApiKeyId(id.to_owned()))
    }

    fn take_token(&self, id: &str, key: &Key) -> Result<(), ApiKeyError> {
        let now = Instant::now();
        let mut buckets = self.inner.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the keys ever configured in this process (a handful); a removed key's
        // bucket is a few bytes.
        let bucket = buckets.entry(id.to_owned()).or_insert(Bucket {
            tokens: key.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * key.rate_per_sec).min(key.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / key.rate_per_sec).ceil().max(1.0) as u64;
        Err(ApiKeyError {
            error: ApiError::new(
                ErrorCode::RateLimited,
                format!("this API key is over its rate; retry in {wait} s"),
            ),
            retry_after_secs: Some(wait),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_credentials::api_keys::mint;

    fn keys_for(entries: &[KeyEntry]) -> ApiKeys {
        ApiKeys::parse(&serde_json::to_string(entries).unwrap()).unwrap()
    }

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    #[test]
    fn the_documented_json_parses_and_bad_entries_are_refused() {
        let (_, entry) = mint("backend1", vec![Scope::Read], 5.0).unwrap();
        let json = format!(
            r#"[{{"id": "backend1", "sha256": "{}", "scopes": ["messages:write", "read"], "rate_per_sec": 50}}]"#,
            entry.sha256
        );
        assert_eq!(ApiKeys::parse(&json).unwrap().len(), 1);
        // Default rate.
        let json = format!(
            r#"[{{"id":"a","sha256":"{}","scopes":["read"]}}]"#,
            entry.sha256
        );
        assert_eq!(ApiKeys::parse(&json).unwrap().len(), 1);
        for bad in [
            "{}".to_owned(),
            r#"[{"id":"a","sha256":"zz","scopes":["read"]}]"#.to_owned(),
            format!(
                r#"[{{"id":"a_b","sha256":"{}","scopes":["read"]}}]"#,
                entry.sha256
            ),
            format!(r#"[{{"id":"a","sha256":"{}","scopes":[]}}]"#, entry.sha256),
            format!(
                r#"[{{"id":"a","sha256":"{}","scopes":["root"]}}]"#,
                entry.sha256
            ),
            format!(
                r#"[{{"id":"a","sha256":"{}","scopes":["read"],"rate_per_sec":-1}}]"#,
                entry.sha256
            ),
            format!(
                r#"[{{"id":"a","sha256":"{}","scopes":["read"],"extra":1}}]"#,
                entry.sha256
            ),
            format!(
                r#"[{{"id":"a","sha256":"{0}","scopes":["read"]}},{{"id":"a","sha256":"{0}","scopes":["read"]}}]"#,
                entry.sha256
            ),
        ] {
            assert!(ApiKeys::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorize_answers_401_403_and_accepts_the_right_key() {
        let (key, entry) = mint("k1", vec![Scope::MessagesWrite], 0.0).unwrap();
        let keys = keys_for(&[entry]);
        let ok = keys.authorize_header(Some(&bearer(&key)), Scope::MessagesWrite);
        assert_eq!(ok.unwrap(), ApiKeyId("k1".into()));
        let code = |r: Result<ApiKeyId, ApiKeyError>| r.unwrap_err().error.code;
        assert_eq!(
            code(keys.authorize_header(None, Scope::Read)),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(keys.authorize_header(Some(&bearer(&key)), Scope::Read)),
            ErrorCode::Forbidden
        );
        // A JWT, a wrong secret, an unknown id, a malformed key: all 401.
        for presented in [
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.sig".to_owned(),
            format!("{key}x"),
            key.replace("sbk_k1_", "sbk_k2_"),
            "sbk_nope".to_owned(),
        ] {
            assert_eq!(
                code(keys.authorize_header(Some(&bearer(&presented)), Scope::MessagesWrite)),
                ErrorCode::Unauthorized,
                "{presented}"
            );
        }
        assert_eq!(
            code(keys.authorize_header(Some(&format!("Basic {key}")), Scope::MessagesWrite)),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn the_bucket_refuses_past_the_burst_with_retry_after() {
        let (key, mut entry) = mint("k1", vec![Scope::Read], 1.0).unwrap();
        entry.burst = Some(3.0);
        let keys = keys_for(&[entry]);
        for _ in 0..3 {
            keys.authorize_header(Some(&bearer(&key)), Scope::Read)
                .unwrap();
        }
        let refused = keys
            .authorize_header(Some(&bearer(&key)), Scope::Read)
            .unwrap_err();
        assert_eq!(refused.error.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_secs, Some(1));
        let resp = refused.error_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
    }

    #[test]
    fn rotation_both_keys_work_until_the_file_drops_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (old, old_entry) = mint("old", vec![Scope::Read], 0.0).unwrap();
        let (new, new_entry) = mint("new", vec![Scope::Read], 0.0).unwrap();
        std::fs::write(&path, serde_json::to_string(&[&old_entry]).unwrap()).unwrap();
        let keys = ApiKeys::from_lookup(&|name: &str| {
            (name == SB_API_KEYS_FILE).then(|| path.display().to_string())
        })
        .unwrap();
        assert!(keys
            .authorize_header(Some(&bearer(&old)), Scope::Read)
            .is_ok());
        assert!(keys
            .authorize_header(Some(&bearer(&new)), Scope::Read)
            .is_err());
        let write = |entries: &[&KeyEntry]| {
            // A different length as well as a later mtime, so the change is seen on file
            // systems with coarse timestamps.
            std::fs::write(&path, serde_json::to_string_pretty(entries).unwrap()).unwrap();
            std::thread::sleep(RELOAD_EVERY + Duration::from_millis(100));
        };
        write(&[&old_entry, &new_entry]);
        assert!(keys
            .authorize_header(Some(&bearer(&old)), Scope::Read)
            .is_ok());
        assert!(keys
            .authorize_header(Some(&bearer(&new)), Scope::Read)
            .is_ok());
        std::fs::write(&path, serde_json::to_string(&[&new_entry]).unwrap()).unwrap();
        std::thread::sleep(RELOAD_EVERY + Duration::from_millis(100));
        assert!(keys
            .authorize_header(Some(&bearer(&old)), Scope::Read)
            .is_err());
        assert!(keys
            .authorize_header(Some(&bearer(&new)), Scope::Read)
            .is_ok());
        // A broken file keeps the keys before it.
        std::fs::write(&path, "not json").unwrap();
        std::thread::sleep(RELOAD_EVERY + Duration::from_millis(100));
        assert!(keys
            .authorize_header(Some(&bearer(&new)), Scope::Read)
            .is_ok());
    }

    #[test]
    fn both_sources_set_is_an_error() {
        let lookup = |name: &str| Some(if name == SB_API_KEYS { "[]" } else { "/x" }.to_owned());
        assert!(matches!(
            ApiKeys::from_lookup(&lookup),
            Err(ApiKeysError::Both)
        ));
    }
}
