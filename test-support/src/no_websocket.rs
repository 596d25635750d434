//! [`start`]: a second nginx in front of a running stack that refuses every WebSocket upgrade
//! (403) and passes everything else, the HTTP fallback's Server-Sent Events and POSTs included:
//! what a corporate proxy that blocks WebSockets does to a client. The SDK's integration tests
//! (`clients/js/test/integration/ws-blocked.test.mjs`) connect through it and must fall back
//! to SSE on their own; `devstack` starts it with `DEVSTACK_NO_WEBSOCKET_PORT`.
//!
//! The registry hands out each socket server's own URL (`ws://127.0.0.1:PORT/ws`), which a
//! client would reach without this proxy; so the proxy rewrites the registry's answers (nginx
//! `sub_filter`) to its per-server tunnel `ws://<proxy host>/ws/PORT`, as compose's socket
//! servers advertise `/ws/<ip>` on its nginx. Clients derive `/sse/PORT` from that URL
//! (docs/protocol.md, "The HTTP fallback"). Neither the registry nor the stack's own nginx
//! changes.

use std::path::Path;

use anyhow::{bail, Result};

use crate::nginx::{render_template, Nginx};

/// The config template (placeholders listed in its header).
const TEMPLATE: &str = include_str!("no_websocket.conf.template");

/// The process name (its log is `<log dir>/nginx-no-websocket.log`).
pub const PROCESS_NAME: &str = "nginx-no-websocket";

/// One `sub_filter` per socket server: its own URL in the registry's JSON becomes its tunnel
/// on whatever host:port the client asked this proxy by.
fn socket_url_rewrites(socket_ports: &[u16]) -> String {
    socket_ports
        .iter()
        .map(|port| {
            format!(
                "            sub_filter '\"ws://127.0.0.1:{port}/ws\"' '\"ws://$http_host/ws/{port}\"';"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Per socket server: `/ws/PORT` (the WebSocket tunnel, which the server-level 403 keeps every
/// upgrade out of), `/sse/PORT` (the event stream) and `/sse/PORT/<session>/frames` (POSTs).
fn socket_tunnels(socket_ports: &[u16]) -> String {
    socket_ports
        .iter()
        .map(|port| {
            format!(
                r#"        # Socket server 127.0.0.1:{port}.
        location = /ws/{port} {{
            # The request line carries ?token=: only crit and worse is logged here.
            error_log error.log crit;
            proxy_pass http://127.0.0.1:{port}/ws;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
        location = /sse/{port} {{
            error_log error.log crit;
            proxy_pass http://127.0.0.1:{port}/sse;
            # Unbuffered, or events would wait in nginx's buffers; the server's heartbeat
            # keeps the stream busy, an hour is only the outer bound.
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
        location /sse/{port}/ {{
            error_log error.log crit;
            proxy_pass http://127.0.0.1:{port}/sse/;
            # A POST carries at most the server's frame limit (256 KiB).
            client_max_body_size 256k;
        }}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The proxy's nginx config: listening on `listen_addr:listen_port`, in front of the stack's
/// public nginx on `127.0.0.1:entry_port` and the socket servers on `socket_ports`.
pub fn render_config(
    listen_addr: &str,
    listen_port: u16,
    entry_port: u16,
    socket_ports: &[u16],
) -> Result<String> {
    if socket_ports.is_empty() {
        bail!("the no-WebSocket proxy needs at least one socket server port");
    }
    render_template(
        TEMPLATE,
        &[
            ("LISTEN_ADDR", listen_addr.to_owned()),
            ("LISTEN_PORT", listen_port.to_string()),
            ("ENTRY_PORT", entry_port.to_string()),
            ("SOCKET_URL_REWRITES", socket_url_rewrites(socket_ports)),
            ("SOCKET_TUNNELS", socket_tunnels(socket_ports)),
        ],
    )
}

/// Starts the proxy with `dir` as its nginx prefix (config, its own error and access logs)
/// and waits until `/` (the stack's demo page, through it) answers 200.
pub async fn start(
    dir: &Path,
    listen_addr: &str,
    listen_port: u16,
    entry_port: u16,
    socket_ports: &[u16],
    log_dir: &Path,
) -> Result<Nginx> {
    let config = render_config(listen_addr, listen_port, entry_port, socket_ports)?;
    Nginx::start_config(PROCESS_NAME, dir, listen_port, &config, log_dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_tunnel_and_a_rewrite_per_socket_server() {
        let conf = render_config("127.0.0.1", 18081, 18080, &[19001, 19002]).unwrap();
        assert!(!conf.contains("{{"), "{conf}");
        assert!(conf.contains("listen 127.0.0.1:18081;"));
        assert!(conf.contains("server 127.0.0.1:18080;"));
        assert!(conf.contains("if ($http_upgrade ~* \"websocket\")"));
        for port in [19001, 19002] {
            assert!(conf.contains(&format!(
                "sub_filter '\"ws://127.0.0.1:{port}/ws\"' '\"ws://$http_host/ws/{port}\"';"
            )));
            assert!(conf.contains(&format!("location = /ws/{port} {{")));
            assert!(conf.contains(&format!("location = /sse/{port} {{")));
            assert!(conf.contains(&format!("proxy_pass http://127.0.0.1:{port}/sse/;")));
        }
        assert!(render_config("127.0.0.1", 18081, 18080, &[]).is_err());
    }
}
