//! Keeps an identity provider's public keys (its JWKS) loaded into [`TokenKeys`].
//!
//! The first fetch is retried every few seconds until it works (until then only HS256 tokens
//! verify, and each failure is logged with the URL); after that the keys are fetched again
//! every `refresh`, and a failed refresh keeps the keys already loaded.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use switchboard_protocol::token::TokenKeys;
use tokio_util::sync::CancellationToken;

use crate::config::JwksSource;

/// Pause between attempts while no key set has loaded yet.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(5);

/// Fetches `source` into `keys` until `stop`.
pub async fn keep_fresh(source: JwksSource, keys: TokenKeys, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
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

async fn fetch(http: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}
