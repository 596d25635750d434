//! The attachment variables of the message service (the S3-compatible store, upload limits).
//! Parsed by `message_service::attachments::config`.

use crate::env::{EnvTable, EnvVar};
use crate::names::{
    SB_ATTACHMENT_CONTENT_TYPES, SB_ATTACHMENT_IMAGE_MAX_PIXELS, SB_ATTACHMENT_MAX_BYTES,
    SB_ATTACHMENT_SWEEP_INTERVAL_SECS, SB_ATTACHMENT_UNREFERENCED_TTL_SECS,
    SB_ATTACHMENT_URL_EXPIRY_SECS, SB_ATTACHMENT_USER_QUOTA_BYTES, SB_S3_ACCESS_KEY_ID,
    SB_S3_BUCKET, SB_S3_ENDPOINT, SB_S3_PATH_STYLE, SB_S3_PUBLIC_ENDPOINT, SB_S3_REGION,
    SB_S3_SECRET_ACCESS_KEY,
};

/// `SB_ATTACHMENT_CONTENT_TYPES`'s default.
pub const DEFAULT_CONTENT_TYPES: &str =
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
