//! `devstack`: the whole Switchboard stack on this machine, for humans.
//!
//! Builds nothing: run it through `scripts/up.sh` (which builds the release binaries and sets
//! `SWITCHBOARD_BIN_DIR=target/release`). Fixed ports: nginx 8080 (on 0.0.0.0, or
//! `DEVSTACK_LISTEN_ADDR`), registries 8101/8102, socket servers 9001-9003, health checkers
//! 8301/8302, Redis master 6379 + replicas 6380/6381, Sentinels 26379-26381 (more socket
//! servers on 9004… with `DEVSTACK_SOCKET_SERVERS`; with `DEVSTACK_NO_WEBSOCKET_PORT`, a second
//! nginx there that refuses WebSocket upgrades, for testing the HTTP fallback). One log file
//! per process in `.run/logs/`; Redis and nginx state in `.run/state/` (both recreated on
//! every start). Ctrl-C or SIGTERM stops everything; every child also dies with this process
//! (`PR_SET_PDEATHSIG`), so nothing is left behind.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchboard_config::cli::Cli;
use switchboard_config::env::{EnvTable, EnvVar};
use switchboard_config::names::{
    PREFIX, RUST_LOG, SB_API_KEYS, SB_API_KEYS_FILE, SB_DEVSTACK_WEBHOOKS, SB_PUSH_GATEWAY_SECRET,
    SB_PUSH_GATEWAY_URL, SB_PUSH_SINK_BIND, SB_WEBHOOK_ALLOW_NETS,
};
use switchboard_credentials::api_keys::{self, Scope};
use switchboard_test_support::ports::is_free;
use switchboard_test_support::{
    bin_path, no_websocket, repo_root, FixedPorts, ManagedProcess, Stack, StackOptions,
};
use tokio::signal::unix::{signal, SignalKind};

const DEVSTACK_LISTEN_ADDR: &str = "DEVSTACK_LISTEN_ADDR";
const DEVSTACK_SOCKET_SERVERS: &str = "DEVSTACK_SOCKET_SERVERS";
const DEVSTACK_NO_WEBSOCKET_PORT: &str = "DEVSTACK_NO_WEBSOCKET_PORT";

/// The sink's port (`push-gateway-sink`: pushes at `/push`, webhooks at `/webhook`).
const SINK_PORT: u16 = 8502;

/// The push gateway's signing secret in the dev stack: fixed and public, like the local Redis
/// password (the sink and the notifier are both on loopback).
const DEV_PUSH_SECRET: &str = "whsec_c3dpdGNoYm9hcmQtZGV2c3RhY2stcHVzaC1zZWNyZXQ=";

/// What devstack itself reads (the `SB_*` variables go on to the services).
const ENV: &[EnvVar] = &[
    EnvVar {
        name: DEVSTACK_LISTEN_ADDR,
        default: Some("0.0.0.0"),
        doc: "Address nginx (port 8080) listens on; 127.0.0.1 keeps the stack off the network.",
    },
    EnvVar {
        name: DEVSTACK_SOCKET_SERVERS,
        default: Some("3"),
        doc: "How many socket servers, on ports 9001, 9002, … (clients/js/test.sh starts 5: its \
              tests kill four).",
    },
    EnvVar {
        name: DEVSTACK_NO_WEBSOCKET_PORT,
        default: None,
        doc: "Also start a second nginx on this port (on DEVSTACK_LISTEN_ADDR) that answers 403 \
              to every WebSocket upgrade and passes everything else, Server-Sent Events and \
              POSTs included, with the registry's socket URLs rewritten to its per-server \
              tunnels: a proxy that blocks WebSockets, for testing the HTTP fallback \
              (clients/js/test.sh sets 8081). Unset: none.",
    },
    EnvVar {
        name: SB_DEVSTACK_WEBHOOKS,
        default: Some("true"),
        doc: "Start the webhook dispatcher (port 8501, with the push notifier) and \
              push-gateway-sink (port 8502: pushes and webhooks recorded). `false`: neither \
              (scripts/bench.sh sets it, so the benchmark runs what it always ran).",
    },
    EnvVar {
        name: "SWITCHBOARD_BIN_DIR",
        default: None,
        doc: "Directory of the service binaries (scripts/up.sh sets target/release). Unset: \
              target/debug.",
    },
    EnvVar {
        name: "SWITCHBOARD_TANSU",
        default: None,
        doc: "Path of the tansu broker binary. Unset: ~/.cache/switchboard/tansu/bin/tansu (what \
              scripts/install-deps.sh installs), else tansu on the PATH.",
    },
    EnvVar {
        name: "SWITCHBOARD_TANSU_STORAGE",
        default: None,
        doc: "tansu's storage URL. Unset: a SQLite file under .run/state.",
    },
];

const CLI: Cli = Cli {
    name: "devstack",
    version: env!("CARGO_PKG_VERSION"),
    about: "The whole Switchboard stack on this machine, for humans: Redis with replicas and \
            Sentinels, PostgreSQL, the tansu broker, two registries behind nginx on port 8080 \
            (which also serves the demo page), three socket servers, two socket managers, the \
            message service, two health checkers, and (unless SB_DEVSTACK_WEBHOOKS=false) the \
            webhook dispatcher with push notifications and a sink that records webhooks and \
            pushes. A dev API key with every scope is printed. It builds nothing: run it \
            through scripts/up.sh. Logs go to .run/logs/, one file per process. Every SB_* variable \
            set in its environment reaches every service (docs/configuration.md lists them). \
            Ctrl-C or SIGTERM stops everything.",
    usage: "",
    max_positional: 0,
    env: &[EnvTable {
        title: "Environment",
        vars: ENV,
    }],
};

#[tokio::main]
async fn main() -> Result<()> {
    CLI.handle_args();
    let root = repo_root().canonicalize().context("repo root")?;
    let run = root.join(".run");
    let log_dir = run.join("logs");
    let state_dir = run.join("state");
    for dir in [&log_dir, &state_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
    }
    let listen_addr = std::env::var(DEVSTACK_LISTEN_ADDR).unwrap_or_else(|_| "0.0.0.0".to_owned());
    let mut ports = FixedPorts::standard();
    let socket_servers = env_number(DEVSTACK_SOCKET_SERVERS)?.unwrap_or(3);
    if !(1..=99).contains(&socket_servers) {
        bail!("{DEVSTACK_SOCKET_SERVERS}={socket_servers}: 1 to 99");
    }
    ports.socket_servers = (1..=socket_servers).map(|i| 9000 + i).collect();
    let no_websocket_port = env_number(DEVSTACK_NO_WEBSOCKET_PORT)?;
    let webhooks = match std::env::var(SB_DEVSTACK_WEBHOOKS).as_deref() {
        Err(_) | Ok("" | "true" | "1") => true,
        Ok("false" | "0") => false,
        Ok(other) => bail!("{SB_DEVSTACK_WEBHOOKS}={other:?}: true or false"),
    };
    preflight(&ports, &listen_addr, webhooks, no_websocket_port)?;

    // The user's own SB_* settings (secrets, limits, timings) reach every service; the dev
    // stack's own come first, so the user's win.
    let mut extra_env: Vec<(String, String)> = Vec::new();
    let user_keys = [SB_API_KEYS, SB_API_KEYS_FILE]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    let dev_key = if user_keys {
        None
    } else {
        let (key, entry) = api_keys::mint("dev", Scope::ALL.to_vec(), 0.0)
            .map_err(|e| anyhow::anyhow!("minting the dev API key: {e}"))?;
        let scopes: Vec<String> = entry
            .scopes
            .iter()
            .map(|s| format!("\"{}\"", s.as_str()))
            .collect();
        // rate_per_sec 0: no limit (a developer's loops should not meet 429).
        extra_env.push(kv(
            SB_API_KEYS,
            format!(
                "[{{\"id\":\"{}\",\"sha256\":\"{}\",\"scopes\":[{}],\"rate_per_sec\":0}}]",
                entry.id,
                entry.sha256,
                scopes.join(",")
            ),
        ));
        Some(key)
    };
    let mut sink = None;
    if webhooks {
        let sink_url = format!("http://127.0.0.1:{SINK_PORT}");
        extra_env.extend([
            kv(SB_PUSH_GATEWAY_URL, format!("{sink_url}/push")),
            kv(SB_PUSH_GATEWAY_SECRET, DEV_PUSH_SECRET),
            // The sink is on loopback, which the SSRF guard refuses unless allow-listed.
            kv(SB_WEBHOOK_ALLOW_NETS, "127.0.0.1/32"),
        ]);
        sink = Some(ManagedProcess::spawn(
            "push-gateway-sink",
            bin_path("push-gateway-sink"),
            &[] as &[&str],
            &[
                kv(SB_PUSH_SINK_BIND, format!("127.0.0.1:{SINK_PORT}")),
                kv(SB_PUSH_GATEWAY_SECRET, DEV_PUSH_SECRET),
                kv(RUST_LOG, "info"),
                kv("NO_COLOR", "1"),
            ],
            &log_dir,
        )?);
    }
    extra_env.extend(std::env::vars().filter(|(k, _)| k.starts_with(PREFIX)));

    let opts = StackOptions {
        socket_servers: ports.socket_servers.len(),
        registries: ports.registries.len(),
        health_checkers: ports.health_checkers.len(),
        fixed_ports: Some(ports.clone()),
        log_dir: Some(log_dir.clone()),
        work_dir: Some(state_dir),
        nginx_listen_addr: listen_addr.clone(),
        fast_timings: false,
        // Attachments on a real S3 store (Garage), when scripts/build-garage.sh has built it.
        object_store: switchboard_test_support::object_store::garage_path().exists(),
        webhook_dispatcher: webhooks,
        extra_env,
        ..StackOptions::default()
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    eprintln!(
        "starting the Switchboard dev stack (logs: {})",
        log_dir.display()
    );
    let stack = tokio::select! {
        stack = Stack::start(opts) => stack?,
        _ = sigint.recv() => { eprintln!("interrupted; stopping"); return Ok(()); }
        _ = sigterm.recv() => { eprintln!("terminated; stopping"); return Ok(()); }
    };
    // After the stack: it proxies to the stack's nginx and socket servers.
    let no_websocket = match no_websocket_port {
        Some(port) => Some(
            no_websocket::start(
                &run.join("state").join("nginx-no-websocket"),
                &listen_addr,
                port,
                ports.nginx,
                &ports.socket_servers,
                &log_dir,
            )
            .await
            .context("starting the no-WebSocket proxy")?,
        ),
        None => None,
    };
    print_banner(&stack, &ports, dev_key.as_deref(), sink.is_some());
    if let Some(proxy) = &no_websocket {
        println!(
            "WebSockets blocked: http://localhost:{} is the same entry through a proxy that \
             refuses WebSocket upgrades (403): clients there fall back to SSE.",
            proxy.port()
        );
        println!();
    }

    let mut reported = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                let extra = sink.iter().chain(no_websocket.as_ref().map(|n| &n.process));
                for process in stack.processes().into_iter().chain(extra) {
                    if let Some(status) = process.exit_status() {
                        if reported.insert(process.name().to_owned()) {
                            eprintln!(
                                "!! {} exited ({status}); see {}",
                                process.name(),
                                process.log_path().display()
                            );
                        }
                    }
                }
            }
        }
    }
    eprintln!("stopping the dev stack...");
    stack.shutdown(Duration::from_secs(5)).await;
    drop(sink);
    drop(no_websocket);
    eprintln!("stopped.");
    Ok(())
}

/// A number from the environment; unset or empty: `None`.
fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name).as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok(value) => value
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}={value:?}: not a number")),
    }
}

fn kv(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

/// Fails early, with a hint, if a binary is missing or a fixed port is taken.
fn preflight(
    ports: &FixedPorts,
    listen_addr: &str,
    webhooks: bool,
    no_websocket_port: Option<u16>,
) -> Result<()> {
    let mut names = vec![
        "registry",
        "socket-server",
        "health-checker",
        "socket-manager",
        "message-service",
    ];
    let mut fixed = ports.all();
    if webhooks {
        names.extend(["webhook-dispatcher", "push-gateway-sink"]);
        fixed.extend([ports.webhook_dispatcher, SINK_PORT]);
    }
    fixed.extend(no_websocket_port);
    for name in names {
        let path = bin_path(name);
        if !path.exists() {
            bail!(
                "{} not found: build first (scripts/up.sh does `cargo build --release --bins`) \
                 or set SWITCHBOARD_BIN_DIR",
                path.display()
            );
        }
    }
    let taken: Vec<u16> = fixed
        .into_iter()
        .filter(|&port| {
            let addr = if port == ports.nginx || Some(port) == no_websocket_port {
                listen_addr
            } else {
                "127.0.0.1"
            };
            !is_free(addr, port)
        })
        .collect();
    if !taken.is_empty() {
        bail!(
            "ports already in use: {taken:?}. Is another dev stack running, or a system \
             redis/nginx? (`service redis-server stop; service redis-sentinel stop; \
             service nginx stop`, as scripts/install-deps.sh does)"
        );
    }
    Ok(())
}

fn print_banner(stack: &Stack, ports: &FixedPorts, dev_key: Option<&str>, sink: bool) {
    let list = |urls: Vec<String>| urls.join("  ");
    println!();
    println!("Switchboard dev stack is up.");
    println!();
    println!("  public entry (nginx)  http://localhost:{}", ports.nginx);
    println!(
        "  registries            {}",
        list(stack.registries.iter().map(|r| r.url()).collect())
    );
    println!(
        "  socket servers        {}",
        list(stack.socket_servers.iter().map(|s| s.ws_url()).collect())
    );
    println!(
        "  health checkers       {}",
        list(
            stack
                .health_checkers
                .iter()
                .map(|h| format!("{}/metrics", h.url()))
                .collect()
        )
    );
    println!(
        "  socket managers       {}",
        list(stack.managers.iter().map(|m| m.url()).collect())
    );
    if let Some(ms) = &stack.message_service {
        println!(
            "  message service       {} (also via nginx /api/v1/conversations)",
            ms.url()
        );
    }
    if let Some(dispatcher) = &stack.webhook_dispatcher {
        println!(
            "  webhook dispatcher    {} (also via nginx /server/v1/webhooks; push notifier on)",
            dispatcher.url()
        );
    }
    if sink {
        println!(
            "  sink                  http://127.0.0.1:{SINK_PORT}: pushes at /pushes, webhooks \
             posted to /webhook shown at /webhooks"
        );
    }
    if let Some(store) = &stack.object_store {
        println!(
            "  object store (Garage) {} bucket {} (attachments)",
            store.endpoint(),
            store.bucket
        );
    }
    println!(
        "  postgres / broker     127.0.0.1:{} / 127.0.0.1:{}",
        ports.postgres, ports.broker
    );
    if stack.broker.is_some() {
        println!(
            "  broker supervisor     restarts a dead or wedged broker; each restart is logged \
             to {}/broker-supervisor.log",
            stack.log_dir().display()
        );
    }
    println!(
        "  redis                 master 127.0.0.1:{} (replicas {:?}), sentinels {} (master name {}); \
         password {} (REDISCLI_AUTH=... redis-cli -p {})",
        ports.redis.master,
        ports.redis.replicas,
        stack.redis.sentinels_env(),
        stack.redis.master_name(),
        switchboard_test_support::redis_cluster::REDIS_PASSWORD,
        ports.redis.master,
    );
    println!(
        "  logs                  {}/ (one file per process)",
        stack.log_dir().display()
    );
    // Per-service credentials: what a tool poking an internal route must present.
    let manager = stack.credential(switchboard_credentials::cluster::ServiceRole::SocketServer);
    let [(role_header, role), (secret_header, secret)] = manager.headers();
    println!("  socket-server creds   {role_header}: {role}, {secret_header}: {secret}");
    if let switchboard_test_support::credentials::TokenSigning::Ed25519 { private_pem, .. } =
        &stack.credentials().signing
    {
        println!(
            "  token signing key     {} (Ed25519; only the registry holds it)",
            private_pem.display()
        );
    }
    println!();
    println!(
        "Open the demo: http://localhost:{}/  (two browser tabs, two user names)",
        ports.nginx
    );
    println!();
    println!("Try it:");
    println!("  curl -s localhost:{}/api/v1/socket-servers", ports.nginx);
    println!("  curl -s localhost:{}/api/v1/socket-server", ports.nginx);
    println!(
        "  TOKEN=$(curl -s -XPOST localhost:{}/api/v1/dev/token -d '{{\"user_id\":\"alice\"}}' \\\n      -H 'content-type: application/json' | sed -E 's/.*\"token\":\"([^\"]+)\".*/\\1/')",
        ports.nginx
    );
    println!(
        "  URL=$(curl -s localhost:{}/api/v1/socket-server | sed -E 's/.*\"url\":\"([^\"]+)\".*/\\1/')",
        ports.nginx
    );
    println!("  websocat \"$URL?token=$TOKEN\"      # then type: {{\"type\":\"ping\"}}");
    println!();
    match dev_key {
        Some(key) => {
            println!("Server API (docs/server-api.md), dev API key with every scope:");
            println!("  export SB_KEY={key}");
        }
        None => println!("Server API (docs/server-api.md): the keys of SB_API_KEYS(_FILE)"),
    }
    println!(
        "  curl -s -XPOST localhost:{}/server/v1/conversations -H \"authorization: Bearer $SB_KEY\" \\\n      -H 'content-type: application/json' -d '{{\"kind\":\"group\",\"name\":\"demo\",\"members\":[\"alice\",\"bob\"]}}'",
        ports.nginx
    );
    if sink {
        println!("Watch webhooks arrive: register the sink, then send messages and read them:");
        println!(
            "  curl -s -XPOST localhost:{}/server/v1/webhooks -H \"authorization: Bearer $SB_KEY\" \\\n      -H 'content-type: application/json' \\\n      -d '{{\"url\":\"http://127.0.0.1:{SINK_PORT}/webhook\",\"event_types\":[\"message.created\"]}}'",
            ports.nginx
        );
        println!("  curl -s localhost:{SINK_PORT}/webhooks      # pushes: localhost:{SINK_PORT}/pushes (docs/push.md)");
    }
    println!();
    println!("Ctrl-C stops everything.");
}
