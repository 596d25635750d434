//! Keeps an identity provider's public keys (its JWKS) loaded into [`TokenKeys`].
//!
//! The first fetch is retried every few seconds until it works (until then only HS256 tokens
//! verify, and each failure is logged with the URL); after that the keys are fetched again
//! every `refresh`, and a failed refresh keeps the keys already loaded.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use switchboard_protocol::token::TokenKeys;
use tokio_util::sync::CancellationToken;

/// Where an identity provider publishes its keys.
#[derive(Debug, Clone)]
pub struct JwksSource {
    pub url: String,
    pub refresh: Duration,
    /// Extra trusted CA certificates (PEM) for an https URL (`SB_JWT_JWKS_CA_FILE`).
    pub ca_file: Option<String>,
}

/// Pause between attempts while no key set has loaded yet.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(5);

/// The client that fetches `source`: rustls with the public web roots, plus the CA
/// certificates of `SB_JWT_JWKS_CA_FILE` if set.
pub fn client(source: &JwksSource) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(source.url.starts_with("https://"))
        .timeout(Duration::from_secs(10));
    if let Some(path) = &source.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("the CA certificates in {path}: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// The task that keeps a [`TokenKeys`]' JWKS keys fresh (made by `CommonConfig::token_keys`,
/// which reads the [`JwksSource`]).
pub struct JwksRefresher {
    pub(crate) source: JwksSource,
    pub(crate) keys: TokenKeys,
}

impl JwksRefresher {
    /// Fetches the keys now and every refresh interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        keep_fresh(self.source, self.keys, stop).await
    }
}

/// Fetches `source` into `keys` until `stop`.
pub async fn keep_fresh(source: JwksSource, keys: TokenKeys, stop: CancellationToken) {
    let http = match client(&source) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(url = %source.url, error = %e, "cannot make a client for the identity provider's JWKS; only HS256 tokens (if enabled) verify");
            return;
        }
    };
    let mut loaded = false;
    loop {
        match fetch(&http, &source.url).await {
            Ok(set) => {
                let taken = keys.set_jwks(&set);
                if taken == 0 {
                    tracing::error!(url = %source.url, "the JWKS has no usable RS256/ES256 key with a kid");
                } else {
                    tracing::info!(url = %source.url, keys = taken, "identity provider keys loaded");
                }
                loaded = true;
            }
            Err(e) => {
                tracing::error!(url = %source.url, error = %e, "fetching the identity provider's JWKS failed")
            }
        }
        let pause = if loaded {
            source.refresh
        } else {
            FIRST_LOAD_RETRY
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One fetch of the key set.
pub async fn fetch(http: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}
