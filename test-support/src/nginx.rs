//! [`Nginx`]: the public entry point, rendered from `nginx/nginx.conf.template` and run in
//! the foreground as a [`ManagedProcess`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http::wait_ready;
use crate::paths::repo_root;
use crate::process::ManagedProcess;

/// Replaces every `{{KEY}}` in `template` with its value; fails if a placeholder is left.
pub fn render_template(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (key, value) in vars {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = out.find("{{") {
        let rest = &out[start..];
        let end = rest.find("}}").map_or(rest.len().min(40), |e| e + 2);
        bail!("template placeholder without a value: {}", &rest[..end]);
    }
    Ok(out)
}

/// The `upstream registry` body lines for these registry ports.
pub fn registry_servers(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|port| format!("        server 127.0.0.1:{port} max_fails=3 fail_timeout=2s;"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `upstream message_service` body lines; with no instance, one permanently `down`
/// server, so its routes answer the JSON 503 instead of failing the config.
pub fn message_service_servers(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "        server 127.0.0.1:9 down;".to_owned();
    }
    registry_servers(ports)
}

/// Renders the repository's template for one nginx instance (no webhook dispatcher).
pub fn render_config(
    listen_addr: &str,
    listen_port: u16,
    registry_ports: &[u16],
    message_service_ports: &[u16],
) -> Result<String> {
    render_config_with(
        listen_addr,
        listen_port,
        registry_ports,
        message_service_ports,
        &[],
    )
}

/// [`render_config`], also proxying `/server/v1/webhooks` to the webhook dispatcher's ports
/// (none: its routes answer the JSON 503).
pub fn render_config_with(
    listen_addr: &str,
    listen_port: u16,
    registry_ports: &[u16],
    message_service_ports: &[u16],
    webhook_dispatcher_ports: &[u16],
) -> Result<String> {
    if registry_ports.is_empty() {
        bail!("nginx needs at least one registry port");
    }
    let path = template_path();
    let template =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let static_root = static_root();
    render_template(
        &template,
        &[
            ("LISTEN_ADDR", listen_addr.to_owned()),
            ("LISTEN_PORT", listen_port.to_string()),
            ("REGISTRY_SERVERS", registry_servers(registry_ports)),
            (
                "MESSAGE_SERVICE_SERVERS",
                message_service_servers(message_service_ports),
            ),
            (
                "WEBHOOK_DISPATCHER_SERVERS",
                message_service_servers(webhook_dispatcher_ports),
            ),
            ("STATIC_ROOT", static_root.display().to_string()),
        ],
    )
}

/// `<repo root>/nginx/nginx.conf.template`.
pub fn template_path() -> PathBuf {
    repo_root().join("nginx/nginx.conf.template")
}

/// `<repo root>/nginx/html`, absolute.
pub fn static_root() -> PathBuf {
    let dir = repo_root().join("nginx/html");
    dir.canonicalize().unwrap_or(dir)
}

/// A running nginx; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    // The prefix dir (config, pid, nginx's own error/access logs, temp dirs).
    dir: PathBuf,
    port: u16,
    pub process: ManagedProcess,
}

impl Nginx {
    /// Renders the config into `dir` (the nginx prefix; its process log goes there too),
    /// listens on `127.0.0.1:listen_port`, balances `registry_ports`, and waits until `/`
    /// answers 200.
    pub async fn start(dir: &Path, listen_port: u16, registry_ports: &[u16]) -> Result<Self> {
        Self::start_with(dir, "127.0.0.1", listen_port, registry_ports, dir).await
    }

    /// Like [`Self::start`] with the listen address and the process log dir given.
    pub async fn start_with(
        dir: &Path,
        listen_addr: &str,
        listen_port: u16,
        registry_ports: &[u16],
        log_dir: &Path,
    ) -> Result<Self> {
        Self::start_full(dir, listen_addr, listen_port, registry_ports, &[], log_dir).await
    }

    /// Like [`Self::start_with`], also proxying the message-service API to its instances.
    pub async fn start_full(
        dir: &Path,
        listen_addr: &str,
        listen_port: u16,
        registry_ports: &[u16],
        message_service_ports: &[u16],
        log_dir: &Path,
    ) -> Result<Self> {
        Self::start_with_dispatcher(
            dir,
            listen_addr,
            listen_port,
            registry_ports,
            message_service_ports,
            &[],
            log_dir,
        )
        .await
    }

    /// Like [`Self::start_full`], also proxying `/server/v1/webhooks` to the webhook
    /// dispatcher's ports.
    pub async fn start_with_dispatcher(
        dir: &Path,
        listen_addr: &str,
        listen_port: u16,
        registry_ports: &[u16],
        message_service_ports: &[u16],
        webhook_dispatcher_ports: &[u16],
        log_dir: &Path,
    ) -> Result<Self> {
        let config = render_config_with(
            listen_addr,
            listen_port,
            registry_ports,
            message_service_ports,
            webhook_dispatcher_ports,
        )?;
        Self::start_config("nginx", dir, listen_port, &config, log_dir).await
    }

    /// Runs nginx (process name `name`, its log `<log_dir>/<name>.log`) on a config rendered
    /// elsewhere, with `dir` as its prefix, and waits until `/` on `listen_port` answers 200.
    pub async fn start_config(
        name: &str,
        dir: &Path,
        listen_port: u16,
        config: &str,
        log_dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let prefix = format!("{}/", dir.display());
        let error_log = dir.join("error.log");
        let args = [
            "-p",
            &prefix,
            "-c",
            &conf.display().to_string(),
            "-e",
            &error_log.display().to_string(),
            // One process: a master's workers would not get PR_SET_PDEATHSIG and could
            // outlive a killed harness.
            "-g",
            "daemon off; master_process off;",
        ]
        .map(str::to_owned);
        let process = ManagedProcess::spawn(name, "nginx", &args, &[], log_dir)?;
        let nginx = Self {
            dir,
            port: listen_port,
            process,
        };
        wait_ready(
            &nginx.process,
            &format!("{}/", nginx.url()),
            Duration::from_secs(15),
        )
        .await
        .with_context(|| {
            format!(
                "nginx error.log:\n{}",
                crate::process::log_tail(&error_log, 20)
            )
        })?;
        Ok(nginx)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listen port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The prefix dir (config, nginx's error.log and access.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_placeholders() {
        let out = render_template(
            "listen {{A}}:{{B}}; {{A}}",
            &[("A", "0.0.0.0".into()), ("B", "80".into())],
        )
        .unwrap();
        assert_eq!(out, "listen 0.0.0.0:80; 0.0.0.0");
    }

    #[test]
    fn leftover_placeholder_is_an_error() {
        let err = render_template("root {{STATIC_ROOT}};", &[]).unwrap_err();
        assert!(err.to_string().contains("{{STATIC_ROOT}}"), "{err}");
    }

    #[test]
    fn repository_template_renders() {
        let conf = render_config("127.0.0.1", 18080, &[18101, 18102], &[18401]).unwrap();
        assert!(conf.contains("listen 127.0.0.1:18080;"));
        assert!(conf.contains("server 127.0.0.1:18101 max_fails=3 fail_timeout=2s;"));
        assert!(conf.contains("server 127.0.0.1:18102 max_fails=3 fail_timeout=2s;"));
        assert!(conf.contains("proxy_next_upstream error timeout http_502;"));
        assert!(!conf.contains("{{"));
        assert!(render_config("127.0.0.1", 18080, &[], &[]).is_err());
    }
}
