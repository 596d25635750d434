//! Plain S3 over HTTP: requests pre-signed with SigV4 by `rusty-s3` and sent with `reqwest`,
//! so any S3-compatible store (AWS S3, R2, MinIO, Garage) works by configuration alone. Two
//! views of one bucket: the endpoint this service reaches the store at (its own `HEAD`, ranged
//! `GET` and `DELETE`) and the public one in the URLs handed to clients.

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::config::StoreConfig;

/// How long one of this service's own requests to the store may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the signature of this service's own requests lives (they are sent at once).
const OWN_EXPIRY: Duration = Duration::from_secs(60);

/// What a `HEAD` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub content_type: Option<String>,
}

pub struct ObjectStore {
    own: Bucket,
    public: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

impl ObjectStore {
    pub fn new(config: &StoreConfig) -> anyhow::Result<Self> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = |endpoint: &str| {
            Bucket::new(
                endpoint.parse()?,
                style,
                config.bucket.clone(),
                config.region.clone(),
            )
            .map_err(|e| anyhow::anyhow!("bucket at {endpoint}: {e}"))
        };
        Ok(ObjectStore {
            own: bucket(&config.endpoint)?,
            public: bucket(&config.public_endpoint)?,
            credentials: Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
            ),
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// A URL a client `PUT`s the object to, with exactly these `Content-Type` and
    /// `Content-Length` headers: both are signed, so the store refuses any other type or size
    /// (and anything after `expiry`).
    pub fn upload_url(&self, key: &str, content_type: &str, size: u64, expiry: Duration) -> String {
        let mut action = self.public.put_object(Some(&self.credentials), key);
        action.headers_mut().insert("content-type", content_type);
        action
            .headers_mut()
            .insert("content-length", size.to_string());
        action.sign(expiry).to_string()
    }

    /// A URL a client `GET`s the object from; the store answers it as a download named
    /// `filename` of `content_type`, never as a page of the store's origin.
    pub fn download_url(
        &self,
        key: &str,
        filename: &str,
        content_type: &str,
        expiry: Duration,
    ) -> String {
        let mut action = self.public.get_object(Some(&self.credentials), key);
        action.query_mut().insert(
            "response-content-disposition",
            content_disposition(filename),
        );
        action
            .query_mut()
            .insert("response-content-type", content_type.to_owned());
        action.sign(expiry).to_string()
    }

    /// The object's size and type; `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>, String> {
        let url = self
            .own
            .head_object(Some(&self.credentials), key)
            .sign(OWN_EXPIRY);
        let response = self
            .http
            .head(url)
            .send()
            .await
            .map_err(|e| format!("HEAD {key}: {e}"))?;
        match response.status().as_u16() {
            404 => Ok(None),
            200 => {
                let headers = response.headers();
                let size = headers
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("HEAD {key}: no Content-Length"))?;
                let content_type = headers
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok(Some(ObjectHead { size, content_type }))
            }
            status => Err(format!("HEAD {key}: the store answered {status}")),
        }
    }

    /// The first `max` bytes of the object (fewer when it is smaller).
    pub async fn read_prefix(&self, key: &str, max: u64) -> Result<Vec<u8>, String> {
        let url = self
            .own
            .get_object(Some(&self.credentials), key)
            .sign(OWN_EXPIRY);
        let mut response = self
            .http
            .get(url)
            .header(
                reqwest::header::RANGE,
                format!("bytes=0-{}", max.max(1) - 1),
            )
            .send()
            .await
            .map_err(|e| format!("GET {key}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "GET {key}: the store answered {}",
                response.status()
            ));
        }
        // Read no more than asked even from a store that ignores Range.
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {key}: {e}"))?
        {
            let room = (max as usize).saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if bytes.len() as u64 >= max {
                break;
            }
        }
        Ok(bytes)
    }

    /// Deletes the object (an absent one counts as deleted).
    pub async fn delete(&self, key: &str) -> Result<(), String> {
        let url = self
            .own
            .delete_object(Some(&self.credentials), key)
            .sign(OWN_EXPIRY);
        let response = self
            .http
            .delete(url)
            .send()
            .await
            .map_err(|e| format!("DELETE {key}: {e}"))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(format!("DELETE {key}: the store answered {status}")),
        }
    }
}

/// `attachment; filename="..."; filename*=UTF-8''...`: the ASCII form with anything unsafe
/// replaced, and the exact name percent-encoded (RFC 6266).
fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_is_safe_for_any_name() {
        assert_eq!(
            content_disposition("a \"b\".png"),
            "attachment; filename=\"a _b_.png\"; filename*=UTF-8''a%20%22b%22.png"
        );
        let d = content_disposition("é\r\n.txt");
        assert!(!d.contains('\r') && !d.contains('\n'));
    }
}
