//! The attachment settings ([`switchboard_config::tables::attachments`], documented in
//! docs/configuration.md, "Attachments (message service)"): where the S3-compatible store is and
//! the limits of what users may upload. Unset `SB_S3_ENDPOINT` turns attachments off (the routes
//! answer 404 `not_found` and a send that references one is refused `attachment_not_found`).

use std::time::Duration;

use switchboard_config::lookup::{
    lookup_bool, lookup_optional, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_config::names::{
    SB_ATTACHMENT_CONTENT_TYPES, SB_ATTACHMENT_IMAGE_MAX_PIXELS, SB_ATTACHMENT_MAX_BYTES,
    SB_ATTACHMENT_SWEEP_INTERVAL_SECS, SB_ATTACHMENT_UNREFERENCED_TTL_SECS,
    SB_ATTACHMENT_URL_EXPIRY_SECS, SB_ATTACHMENT_USER_QUOTA_BYTES, SB_S3_ACCESS_KEY_ID,
    SB_S3_BUCKET, SB_S3_ENDPOINT, SB_S3_PATH_STYLE, SB_S3_PUBLIC_ENDPOINT, SB_S3_REGION,
    SB_S3_SECRET_ACCESS_KEY,
};
use switchboard_config::tables::attachments::DEFAULT_CONTENT_TYPES;

/// Where the store is and how to sign for it.
#[derive(Clone)]
pub struct StoreConfig {
    pub endpoint: String,
    pub public_endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub path_style: bool,
}

impl std::fmt::Debug for StoreConfig {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("endpoint", &self.endpoint)
            .field("public_endpoint", &self.public_endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct AttachmentsConfig {
    /// `None`: attachments are off (`SB_S3_ENDPOINT` unset).
    pub store: Option<StoreConfig>,
    pub url_expiry: Duration,
    pub max_bytes: u64,
    pub user_quota_bytes: u64,
    pub content_types: Vec<String>,
    pub image_max_pixels: u64,
    pub unreferenced_ttl: Duration,
    pub sweep_interval: Duration,
}

impl AttachmentsConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let store = match lookup_optional(lookup, SB_S3_ENDPOINT) {
            None => None,
            Some(endpoint) => {
                let required = |name: &str| {
                    lookup_optional(lookup, name).ok_or_else(|| ConfigError {
                        name: name.to_owned(),
                        value: String::new(),
                        reason: format!("required when {SB_S3_ENDPOINT} is set"),
                    })
                };
                Some(StoreConfig {
                    public_endpoint: lookup_optional(lookup, SB_S3_PUBLIC_ENDPOINT)
                        .unwrap_or_else(|| endpoint.clone()),
                    endpoint,
                    region: lookup_string(lookup, SB_S3_REGION, "us-east-1"),
                    bucket: lookup_string(lookup, SB_S3_BUCKET, "switchboard-attachments"),
                    access_key_id: required(SB_S3_ACCESS_KEY_ID)?,
                    secret_access_key: required(SB_S3_SECRET_ACCESS_KEY)?,
                    path_style: lookup_bool(lookup, SB_S3_PATH_STYLE, true)?,
                })
            }
        };
        Ok(AttachmentsConfig {
            store,
            url_expiry: Duration::from_secs(
                lookup_or(lookup, SB_ATTACHMENT_URL_EXPIRY_SECS, 300u64)?.clamp(1, 7 * 86_400),
            ),
            max_bytes: lookup_or(lookup, SB_ATTACHMENT_MAX_BYTES, 25 * 1024 * 1024)?,
            user_quota_bytes: lookup_or(lookup, SB_ATTACHMENT_USER_QUOTA_BYTES, 1 << 30)?,
            content_types: lookup_string(
                lookup,
                SB_ATTACHMENT_CONTENT_TYPES,
                DEFAULT_CONTENT_TYPES,
            )
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
            image_max_pixels: lookup_or(lookup, SB_ATTACHMENT_IMAGE_MAX_PIXELS, 40_000_000)?,
            unreferenced_ttl: Duration::from_secs(lookup_or(
                lookup,
                SB_ATTACHMENT_UNREFERENCED_TTL_SECS,
                86_400,
            )?),
            sweep_interval: Duration::from_secs(
                lookup_or(lookup, SB_ATTACHMENT_SWEEP_INTERVAL_SECS, 60u64)?.max(1),
            ),
        })
    }
}
