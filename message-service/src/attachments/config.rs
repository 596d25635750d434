//! The attachment settings ([`TABLE`], documented in docs/configuration.md, "Attachments
//! (message service)"): where the S3-compatible store is and the limits of what users may
//! upload. Unset `SB_S3_ENDPOINT` turns attachments off (the routes answer 404 `not_found`
//! and a send that references one is refused `attachment_not_found`).

use std::time::Duration;

use switchboard_service_kit::config::{
    lookup_bool, lookup_optional, lookup_or, lookup_string, process_env, ConfigError, Lookup,
};
use switchboard_service_kit::env::{EnvTable, EnvVar};

pub const SB_S3_ENDPOINT: &str = "SB_S3_ENDPOINT";
pub const SB_S3_PUBLIC_ENDPOINT: &str = "SB_S3_PUBLIC_ENDPOINT";
pub const SB_S3_REGION: &str = "SB_S3_REGION";
pub const SB_S3_BUCKET: &str = "SB_S3_BUCKET";
pub const SB_S3_ACCESS_KEY_ID: &str = "SB_S3_ACCESS_KEY_ID";
pub const SB_S3_SECRET_ACCESS_KEY: &str = "SB_S3_SECRET_ACCESS_KEY";
pub const SB_S3_PATH_STYLE: &str = "SB_S3_PATH_STYLE";
pub const SB_ATTACHMENT_URL_EXPIRY_SECS: &str = "SB_ATTACHMENT_URL_EXPIRY_SECS";
pub const SB_ATTACHMENT_MAX_BYTES: &str = "SB_ATTACHMENT_MAX_BYTES";
pub const SB_ATTACHMENT_USER_QUOTA_BYTES: &str = "SB_ATTACHMENT_USER_QUOTA_BYTES";
pub const SB_ATTACHMENT_CONTENT_TYPES: &str = "SB_ATTACHMENT_CONTENT_TYPES";
pub const SB_ATTACHMENT_IMAGE_MAX_PIXELS: &str = "SB_ATTACHMENT_IMAGE_MAX_PIXELS";
pub const SB_ATTACHMENT_UNREFERENCED_TTL_SECS: &str = "SB_ATTACHMENT_UNREFERENCED_TTL_SECS";
pub const SB_ATTACHMENT_SWEEP_INTERVAL_SECS: &str = "SB_ATTACHMENT_SWEEP_INTERVAL_SECS";

const DEFAULT_CONTENT_TYPES: &str =
    "image/png,image/jpeg,image/gif,image/webp,application/pdf,text/plain,application/zip,audio/mpeg,audio/ogg,video/mp4,video/webm,application/octet-stream";

/// The attachment variables.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: SB_S3_ENDPOINT,
        default: None,
        doc: "Base URL of the S3-compatible store the message service itself talks to (e.g. \
              `https://s3.eu-west-1.amazonaws.com`, an R2 or MinIO URL, the local Garage). \
              Unset: attachments are off.",
    },
    EnvVar {
        name: SB_S3_PUBLIC_ENDPOINT,
        default: None,
        doc: "Base URL clients reach the store at, used in the pre-signed URLs handed to \
              them (the signature covers the host). Unset: `SB_S3_ENDPOINT`.",
    },
    EnvVar {
        name: SB_S3_REGION,
        default: Some("us-east-1"),
        doc: "Region the requests are signed for (Garage: its `s3_region`; R2: `auto`).",
    },
    EnvVar {
        name: SB_S3_BUCKET,
        default: Some("switchboard-attachments"),
        doc: "The bucket (created beforehand) that holds every attachment.",
    },
    EnvVar {
        name: SB_S3_ACCESS_KEY_ID,
        default: None,
        doc: "Access key id with read, write and delete on the bucket.",
    },
    EnvVar {
        name: SB_S3_SECRET_ACCESS_KEY,
        default: None,
        doc: "Its secret key.",
    },
    EnvVar {
        name: SB_S3_PATH_STYLE,
        default: Some("true"),
        doc: "`true`: path-style URLs (`ENDPOINT/BUCKET/KEY`: Garage, MinIO, R2); `false`: \
              virtual-hosted style (`BUCKET.ENDPOINT/KEY`: AWS S3's default).",
    },
    EnvVar {
        name: SB_ATTACHMENT_URL_EXPIRY_SECS,
        default: Some("300"),
        doc: "Lifetime of the pre-signed upload and download URLs, in seconds.",
    },
    EnvVar {
        name: SB_ATTACHMENT_MAX_BYTES,
        default: Some("26214400"),
        doc: "Largest attachment, in bytes (25 MiB); a larger declared size is refused 413 \
              `too_large`.",
    },
    EnvVar {
        name: SB_ATTACHMENT_USER_QUOTA_BYTES,
        default: Some("1073741824"),
        doc: "Bytes of attachments one user may keep in the store (1 GiB); past it a new \
              upload URL is refused 413 `too_large`.",
    },
    EnvVar {
        name: SB_ATTACHMENT_CONTENT_TYPES,
        default: Some(DEFAULT_CONTENT_TYPES),
        doc: "The content types users may upload, comma separated (exact, lowercase); any \
              other is refused 422 `attachment_refused`.",
    },
    EnvVar {
        name: SB_ATTACHMENT_IMAGE_MAX_PIXELS,
        default: Some("40000000"),
        doc: "Largest image (width × height) a message may carry; a larger one (a \
              decompression bomb) is refused `attachment_refused` from its header alone, \
              never decoded.",
    },
    EnvVar {
        name: SB_ATTACHMENT_UNREFERENCED_TTL_SECS,
        default: Some("86400"),
        doc: "An attachment no message references this long after it was created (or last \
              claimed by a send) is deleted from the store by the sweeper.",
    },
    EnvVar {
        name: SB_ATTACHMENT_SWEEP_INTERVAL_SECS,
        default: Some("60"),
        doc: "How often the sweeper deletes unreferenced attachments and those of deleted \
              messages.",
    },
];

/// The attachment table.
pub const TABLE: EnvTable = EnvTable {
    title: "Attachments (message service)",
    vars: ENV,
};

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
