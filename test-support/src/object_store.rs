//! [`ObjectStore`]: a real S3-compatible store for tests and the local stack: Garage 2.x
//! (crates.io, AGPL-3.0: run as its own process, never linked), built once by
//! `scripts/build-garage.sh` into `~/.cache/switchboard/garage/bin/garage`.
//!
//! A single node on loopback ports with SQLite metadata, laid out with one zone, one bucket
//! and one key allowed on it, all made through Garage's own CLI (which speaks to the daemon
//! over its RPC port). The key's id and secret are chosen here and imported, so nothing is
//! parsed out of the CLI's output but the node id.
//!
//! The binary is found at `$SWITCHBOARD_GARAGE`, else in the cache, else on `PATH`.
//!
//! Browsers upload to the store cross-origin (the demo page is served by nginx, the pre-signed
//! URLs point at the store), so the bucket needs a CORS rule allowing the page's origin:
//! [`put_bucket_cors`] is the one place that writes it (PutBucketCors through the S3 API, so
//! it works on any S3-compatible store), [`cors_configuration`] the rule itself, and
//! [`page_origins`] which origins a stack's page has. The stack applies it once nginx's
//! address is known ([`ObjectStore::allow_page_origins`]); compose's `garage-setup` job
//! (compose/garage-setup.sh) writes the same rule.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use rusty_s3::S3Action;
use switchboard_config::names::{
    SB_S3_ACCESS_KEY_ID, SB_S3_BUCKET, SB_S3_CORS_ORIGINS, SB_S3_ENDPOINT, SB_S3_PATH_STYLE,
    SB_S3_REGION, SB_S3_SECRET_ACCESS_KEY,
};

use crate::ports::free_port;
use crate::process::ManagedProcess;

/// The region the node answers for (Garage's `s3_region`).
pub const REGION: &str = "garage";
/// The bucket the stack's message service uses.
pub const BUCKET: &str = "switchboard-attachments";
/// How long a browser may cache a preflight's answer.
pub const CORS_MAX_AGE_SECS: u32 = 600;

pub fn garage_path() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_GARAGE") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cached = PathBuf::from(home).join(".cache/switchboard/garage/bin/garage");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("garage")
}

/// A running single-node Garage with a bucket and a key.
#[derive(Debug)]
pub struct ObjectStore {
    pub process: ManagedProcess,
    /// The S3 API's port on 127.0.0.1.
    pub s3_port: u16,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub bucket: String,
    config: PathBuf,
}

fn hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

impl ObjectStore {
    /// Starts the node under `dir` (its config, metadata and data) and sets it up.
    pub async fn start(dir: &Path, log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let s3_port = free_port();
        let rpc_port = free_port();
        let admin_port = free_port();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 \n\
                 [admin]\n\
                 api_bind_addr = \"127.0.0.1:{admin_port}\"\n\
                 admin_token = \"{admin}\"\n",
                meta = dir.join("meta").display(),
                data = dir.join("data").display(),
                secret = hex(32),
                admin = hex(16),
            ),
        )?;
        let garage = garage_path();
        let process = ManagedProcess::spawn(
            "garage",
            &garage,
            &[
                "-c".to_owned(),
                config.display().to_string(),
                "server".to_owned(),
            ],
            &[("RUST_LOG".to_owned(), "garage=warn".to_owned())],
            log_dir,
        )
        .context("starting garage (build it with scripts/build-garage.sh)")?;
        let store = ObjectStore {
            process,
            s3_port,
            access_key_id: format!("GK{}", hex(12)),
            secret_access_key: hex(32),
            bucket: BUCKET.to_owned(),
            config,
        };
        store.set_up().await.with_context(|| {
            format!(
                "setting up garage; its log:\n{}",
                store.process.log_tail(40)
            )
        })?;
        Ok(store)
    }

    /// `garage -c CONFIG args...`, its stdout when it succeeds.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(garage_path())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("running garage {args:?}"))?;
        if !out.status.success() {
            bail!(
                "garage {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `cli`, retried every `pause` until it succeeds or `within` has passed: for the steps
    /// that need the daemon's RPC port or its layout, which come up a moment after the process.
    async fn cli_until_ok(
        &self,
        args: &[&str],
        within: Duration,
        pause: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.cli(args) {
                Ok(out) => return Ok(out),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(pause).await,
            }
        }
    }

    async fn set_up(&self) -> Result<()> {
        let (within, pause) = (Duration::from_secs(30), Duration::from_millis(200));
        // `node id` reads the node's key from its metadata directory, which can answer before
        // the daemon listens on its RPC port: `status` needs the RPC port, so wait on it first
        // (a `layout assign` right after `node id` once met "Connection refused").
        self.cli_until_ok(&["status"], within, pause).await?;
        let node = self
            .cli_until_ok(&["node", "id", "-q"], within, pause)
            .await?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        if node.is_empty() {
            bail!("garage printed no node id");
        }
        self.cli_until_ok(
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
            within,
            pause,
        )
        .await?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        self.cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            "switchboard",
            &self.access_key_id,
            &self.secret_access_key,
        ])?;
        // The layout takes a moment to reach the tables: retry the bucket's creation.
        self.cli_until_ok(
            &["bucket", "create", &self.bucket],
            within,
            Duration::from_millis(300),
        )
        .await?;
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket,
            "--key",
            &self.access_key_id,
        ])?;
        Ok(())
    }

    /// `http://127.0.0.1:PORT`: the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The message service's variables for this store (docs/configuration.md, "Attachments").
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (SB_S3_ENDPOINT, self.endpoint()),
            (SB_S3_REGION, REGION.to_owned()),
            (SB_S3_BUCKET, self.bucket.clone()),
            (SB_S3_ACCESS_KEY_ID, self.access_key_id.clone()),
            (SB_S3_SECRET_ACCESS_KEY, self.secret_access_key.clone()),
            (SB_S3_PATH_STYLE, "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl ObjectStore {
    /// Lets pages from `origins` upload and download through pre-signed URLs (the bucket's
    /// CORS rule, [`cors_configuration`]). Replaces any rule set before.
    pub async fn allow_page_origins(&self, origins: &[String]) -> Result<()> {
        put_bucket_cors(
            &self.endpoint(),
            REGION,
            &self.bucket,
            &self.access_key_id,
            &self.secret_access_key,
            origins,
        )
        .await
    }
}

/// The origins of a page served at `page_url` (`http://HOST:PORT`), plus those named by
/// [`SB_S3_CORS_ORIGINS`] in `env` (the stack's extra settings). A page on 127.0.0.1 is also
/// reachable as localhost, which a browser counts as another origin: both are allowed.
pub fn page_origins(page_url: &str, env: &[(String, String)]) -> Vec<String> {
    let page_url = page_url.trim_end_matches('/');
    let mut origins = vec![page_url.to_owned()];
    if let Some(port) = page_url.strip_prefix("http://127.0.0.1:") {
        origins.push(format!("http://localhost:{port}"));
    }
    let extra = env
        .iter()
        .filter(|(k, _)| k == SB_S3_CORS_ORIGINS)
        .flat_map(|(_, v)| v.split(','));
    for origin in extra.map(|o| o.trim().trim_end_matches('/')) {
        if !origin.is_empty() && !origins.iter().any(|o| o == origin) {
            origins.push(origin.to_owned());
        }
    }
    origins
}

/// The S3 `CORSConfiguration` a page needs: `PUT` (the upload, with its signed
/// `Content-Type`; `Content-Length` is set by the browser itself and never preflighted),
/// `GET` and `HEAD` (downloads), the `ETag` readable by the page, preflights cached
/// [`CORS_MAX_AGE_SECS`]. Any other origin gets no `Access-Control-Allow-Origin`.
pub fn cors_configuration(origins: &[String]) -> String {
    let allowed: String = origins
        .iter()
        .map(|o| format!("<AllowedOrigin>{}</AllowedOrigin>", xml_escape(o)))
        .collect();
    format!(
        "<CORSConfiguration><CORSRule>{allowed}\
         <AllowedMethod>PUT</AllowedMethod><AllowedMethod>GET</AllowedMethod>\
         <AllowedMethod>HEAD</AllowedMethod>\
         <AllowedHeader>content-type</AllowedHeader>\
         <ExposeHeader>ETag</ExposeHeader>\
         <MaxAgeSeconds>{CORS_MAX_AGE_SECS}</MaxAgeSeconds>\
         </CORSRule></CORSConfiguration>"
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// PutBucketCors (`PUT /BUCKET?cors`, path style) with a key that owns the bucket, on any
/// S3-compatible store: the rule of [`cors_configuration`] for `origins`.
pub async fn put_bucket_cors(
    endpoint: &str,
    region: &str,
    bucket: &str,
    access_key_id: &str,
    secret_access_key: &str,
    origins: &[String],
) -> Result<()> {
    if origins.is_empty() {
        bail!("a CORS rule needs at least one origin");
    }
    let bucket = rusty_s3::Bucket::new(
        endpoint
            .parse()
            .with_context(|| format!("S3 endpoint {endpoint}"))?,
        rusty_s3::UrlStyle::Path,
        bucket.to_owned(),
        region.to_owned(),
    )
    .context("the bucket's URL")?;
    let credentials = rusty_s3::Credentials::new(access_key_id, secret_access_key);
    // rusty-s3 has no PutBucketCors: CreateBucket is the same `PUT /BUCKET`, plus `?cors`.
    let mut action = bucket.create_bucket(&credentials);
    action.query_mut().insert("cors", "");
    let url = action.sign(Duration::from_secs(60));
    let response = reqwest::Client::new()
        .put(url)
        .header("content-type", "application/xml")
        .body(cors_configuration(origins))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("PutBucketCors")?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "PutBucketCors answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_origins_add_localhost_and_the_setting() {
        let env = vec![(
            SB_S3_CORS_ORIGINS.to_owned(),
            " https://chat.example.com/, http://127.0.0.1:8080".to_owned(),
        )];
        assert_eq!(
            page_origins("http://127.0.0.1:8080/", &env),
            [
                "http://127.0.0.1:8080",
                "http://localhost:8080",
                "https://chat.example.com"
            ]
        );
        assert_eq!(
            page_origins("http://10.0.0.1:80", &[]),
            ["http://10.0.0.1:80"]
        );
    }

    #[test]
    fn the_rule_names_each_origin_escaped() {
        let xml = cors_configuration(&["http://a".to_owned(), "http://b&<".to_owned()]);
        assert!(xml.contains("<AllowedOrigin>http://a</AllowedOrigin>"));
        assert!(xml.contains("<AllowedOrigin>http://b&amp;&lt;</AllowedOrigin>"));
        assert!(xml.contains("<AllowedMethod>PUT</AllowedMethod>"));
        assert!(xml.contains("<ExposeHeader>ETag</ExposeHeader>"));
    }
}
