//! The alert rules and the dashboard against a real Prometheus scraping a running stack.
//!
//! Debian's `prometheus` (scripts/install-deps.sh installs it) is started on a loopback port
//! with a generated config: one job per service (`switchboard-<service>`, as
//! deploy/prometheus/alerts.yml assumes), every target of the stack, the socket servers on
//! their operations ports, a 1 s scrape and evaluation interval, and `alerts.yml` as its rule
//! file. After real traffic (messages through the managers, a non-member's send, webhook
//! deliveries to a sink in this test and an endpoint answering 410), the test asks
//! Prometheus's HTTP API:
//!
//! - every dashboard query (deploy/prometheus/queries.yml) returns data;
//! - deploy/grafana/switchboard.json holds exactly those queries (it is generated from them);
//! - every alert expression evaluates, and every metric it reads has series: an alert meant
//!   to be quiet on a healthy stack returns nothing, so its inputs are what can be checked;
//! - Prometheus loaded every rule and evaluates each without an error;
//! - the 410 endpoint makes `SwitchboardWebhookEndpointDisabled` fire, and no other alert is
//!   pending or firing on this healthy stack.
//!
//! Without a `prometheus` binary the test says so and skips, except under CI (`CI` set),
//! where it fails: CI installs it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use switchboard_config::names::{SB_API_KEYS, SB_WEBHOOK_ALLOW_NETS};
use switchboard_credentials::api_keys::{mint, Scope};
use switchboard_test_support::{free_port, repo_root, ManagedProcess, Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{
    alice_and_bob, connect_via_registry, eventually, sent_of, token_for, WsClient, WAIT,
};

/// `SWITCHBOARD_PROMETHEUS`, else `prometheus` on the `PATH`, else Debian's path.
fn prometheus_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_PROMETHEUS") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

/// A webhook receiver: `/gone` answers 410 (the dispatcher disables that endpoint), anything
/// else 200. Counts the requests to `/hook`. Aborting `task` stops it and every connection
/// it serves (they live in its `JoinSet`).
struct Sink {
    port: u16,
    hook_hits: Arc<AtomicUsize>,
    gone_hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hook_hits = Arc::new(AtomicUsize::new(0));
        let gone_hits = Arc::new(AtomicUsize::new(0));
        let (hook, gone) = (hook_hits.clone(), gone_hits.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                // Finished connections are reaped as new ones come, so the set stays small.
                while connections.try_join_next().is_some() {}
                connections.spawn(answer(socket, hook.clone(), gone.clone()));
            }
        });
        Sink {
            port,
            hook_hits,
            gone_hits,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Reads one request (head, then `Content-Length` bytes of body, at most 1 MiB in all) and
/// answers it, closing the connection.
async fn answer(mut socket: tokio::net::TcpStream, hook: Arc<AtomicUsize>, gone: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let status = if path == "/gone" {
        gone.fetch_add(1, Ordering::SeqCst);
        "410 Gone"
    } else {
        hook.fetch_add(1, Ordering::SeqCst);
        "200 OK"
    };
    let _ = socket
        .write_all(
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let _ = socket.shutdown().await;
}

/// The Prometheus config for `stack`: one job per service, 1 s intervals, the alert rules.
fn prometheus_config(stack: &Stack) -> String {
    let targets = |ports: Vec<u16>| -> Vec<String> {
        ports
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    };
    let jobs = [
        (
            "switchboard-registry",
            targets(stack.registries.iter().map(|s| s.port).collect()),
        ),
        (
            "switchboard-socket-server",
            targets(stack.socket_servers.iter().map(|s| s.ops_port).collect()),
        ),
        (
            "switchboard-socket-manager",
            targets(stack.managers.iter().map(|s| s.port).collect()),
        ),
        (
            "switchboard-message-service",
            targets(stack.message_service.iter().map(|s| s.port).collect()),
        ),
        (
            "switchboard-health-checker",
            targets(stack.health_checkers.iter().map(|s| s.port).collect()),
        ),
        (
            "switchboard-webhook-dispatcher",
            targets(stack.webhook_dispatcher.iter().map(|s| s.port).collect()),
        ),
    ];
    let config = json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [repo_root().join("deploy/prometheus/alerts.yml").display().to_string()],
        "scrape_configs": jobs.iter().map(|(job, targets)| json!({
            "job_name": job,
            "static_configs": [{"targets": targets}],
        })).collect::<Vec<_>>(),
    });
    // JSON is YAML.
    serde_json::to_string_pretty(&config).unwrap()
}

/// `GET /api/v1/<path>` of Prometheus: its `data`, or why not.
async fn prom_api(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Value, String> {
    let response = http
        .get(format!("{base}/api/v1/{path}"))
        .query(query)
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("GET {path}: not JSON: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"].clone())
}

/// An instant query's result vector, or the error Prometheus gave (a parse error, say).
async fn instant(http: &reqwest::Client, base: &str, expr: &str) -> Result<Vec<Value>, String> {
    let data = prom_api(http, base, "query", &[("query", expr)]).await?;
    Ok(data["result"].as_array().cloned().unwrap_or_default())
}

/// The metric names an expression reads (`switchboard_*`, and `up`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let token = &expr[start..i];
            let next = bytes.get(i).copied();
            if token.starts_with("switchboard_") || (token == "up" && next == Some(b'{')) {
                names.insert(token.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// (title, expr) of every dashboard query in deploy/prometheus/queries.yml, in order.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/prometheus/queries.yml");
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for row in spec["rows"].as_sequence().expect("rows") {
        for panel in row["panels"].as_sequence().expect("panels") {
            let title = panel["title"].as_str().unwrap().to_owned();
            for target in panel["targets"].as_sequence().expect("targets") {
                queries.push((title.clone(), target["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    queries
}

/// (alert name, expr) of every rule in deploy/prometheus/alerts.yml.
fn alert_rules() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/prometheus/alerts.yml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            alerts.push((
                rule["alert"]
                    .as_str()
                    .expect("alerting rules only")
                    .to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    alerts
}

/// Every `expr` of the Grafana dashboard, in panel order.
fn dashboard_json_exprs() -> Vec<String> {
    let path = repo_root().join("deploy/grafana/switchboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// What is still wrong, as lines; empty when every check passes.
async fn problems(
    http: &reqwest::Client,
    base: &str,
    dashboard: &[(String, String)],
    alerts: &[(String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (title, expr) in dashboard {
        match instant(http, base, expr).await {
            Ok(result) if result.is_empty() => {
                problems.push(format!("dashboard \"{title}\": no data from {expr}"))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("dashboard \"{title}\": {expr}: {e}")),
        }
    }
    for (alert, expr) in alerts {
        if let Err(e) = instant(http, base, expr).await {
            problems.push(format!("alert {alert}: does not evaluate: {e}"));
            continue;
        }
        for name in metric_names(expr) {
            match instant(http, base, &format!("count({name})")).await {
                Ok(result) if result.is_empty() => {
                    problems.push(format!("alert {alert}: no series of {name}"))
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("alert {alert}: count({name}): {e}")),
            }
        }
    }
    // Every rule loaded and evaluated without an error.
    match prom_api(http, base, "rules", &[]).await {
        Ok(data) => {
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            if rules.len() != alerts.len() {
                problems.push(format!(
                    "Prometheus loaded {} rules, alerts.yml has {}",
                    rules.len(),
                    alerts.len()
                ));
            }
            for rule in rules {
                if rule["health"] != "ok" {
                    problems.push(format!(
                        "rule {}: health {} {}",
                        rule["name"], rule["health"], rule["lastError"]
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("rules: {e}")),
    }
    // The disabled endpoint fires its alert; nothing else is active on a healthy stack.
    match prom_api(http, base, "alerts", &[]).await {
        Ok(data) => {
            let active: Vec<(String, String)> = data["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                        a["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            if !active.iter().any(|(name, state)| {
                name == "SwitchboardWebhookEndpointDisabled" && state == "firing"
            }) {
                problems.push(format!(
                    "SwitchboardWebhookEndpointDisabled is not firing (active: {active:?})"
                ));
            }
            for (name, state) in &active {
                if name != "SwitchboardWebhookEndpointDisabled" {
                    problems.push(format!("alert {name} is {state} on a healthy stack"));
                }
            }
        }
        Err(e) => problems.push(format!("alerts: {e}")),
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_stack_and_every_alert_and_dashboard_query_works() {
    let Some(prometheus) = prometheus_binary() else {
        let message = "observability: no prometheus binary (Debian package `prometheus`, \
                       installed by scripts/install-deps.sh; or set SWITCHBOARD_PROMETHEUS)";
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        eprintln!("SKIPPED {message}");
        return;
    };

    // The files the test reads agree with each other before anything starts.
    let dashboard = dashboard_queries();
    let alerts = alert_rules();
    assert_eq!(
        dashboard_json_exprs(),
        dashboard.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        "deploy/grafana/switchboard.json is not generated from deploy/prometheus/queries.yml: \
         run python3 deploy/grafana/generate.py"
    );
    assert!(alerts.len() >= 20, "alerts.yml has {} rules", alerts.len());

    let sink = Sink::start().await;
    let (key, entry) = mint("observer", vec![Scope::WebhooksManage], 0.0).unwrap();
    let stack = Stack::start(StackOptions {
        socket_servers: 2,
        registries: 1,
        health_checkers: 1,
        managers: 1,
        webhook_dispatcher: true,
        extra_env: vec![
            (
                SB_API_KEYS.to_owned(),
                serde_json::to_string(&[&entry]).unwrap(),
            ),
            (SB_WEBHOOK_ALLOW_NETS.to_owned(), "127.0.0.1/32".to_owned()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();

    // Prometheus, scraping every service of the stack.
    let dir = stack.work_dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&stack)).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let process = ManagedProcess::spawn(
        "prometheus",
        &prometheus,
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_owned(),
        ],
        &[],
        stack.log_dir(),
    )
    .unwrap();
    switchboard_test_support::http::wait_ready(
        &process,
        &format!("{base}/-/ready"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let targets_up = eventually(Duration::from_secs(30), || async {
        match prom_api(&http, &base, "targets", &[("state", "active")]).await {
            Ok(data) => {
                let targets = data["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                !targets.is_empty() && targets.iter().all(|t| t["health"] == "up")
            }
            Err(_) => false,
        }
    })
    .await;
    let targets = prom_api(&http, &base, "targets", &[("state", "active")])
        .await
        .unwrap();
    assert!(
        targets_up,
        "every target is scraped: {}",
        serde_json::to_string_pretty(&targets["activeTargets"]).unwrap()
    );
    let scraped = targets["activeTargets"].as_array().unwrap().len();
    assert_eq!(scraped, 2 + 1 + 1 + 1 + 1 + 1, "one target per process");

    // Traffic, now that Prometheus watches: webhook endpoints (one answers 410), clients
    // through the registry, messages with a receiver on the other server, a non-member's send.
    let webhooks = |method: Method, body: Value| {
        let http = http.clone();
        let url = format!("{}/server/v1/webhooks", stack.nginx_url());
        let key = key.clone();
        async move {
            let response = http
                .request(method, url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = webhooks(
        Method::POST,
        json!({"url": sink.url("/hook"), "event_types": ["message.created", "conversation.created"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = webhooks(
        Method::POST,
        json!({"url": sink.url("/gone"), "event_types": ["message.created"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let others = connect_via_registry(&stack, 4, 4).await.unwrap();
    let (_http, alice_t, bob_t, conversation) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();
    let mut bob = WsClient::connect(&stack.socket_servers[1].ws_url(), &bob_t)
        .await
        .unwrap();
    for i in 0..20 {
        alice
            .send_message(&conversation, &format!("obs{i}"), &format!("hello {i}"))
            .await;
    }
    let frames = alice
        .collect_until(Duration::from_secs(20), |f| sent_of(f).len() >= 20)
        .await;
    assert_eq!(sent_of(&frames).len(), 20, "every message is acknowledged");
    let received = bob
        .collect_until(Duration::from_secs(20), |f| {
            crate::client::messages_of(f, &conversation).len() >= 20
        })
        .await;
    assert_eq!(
        crate::client::messages_of(&received, &conversation).len(),
        20
    );
    let mut eve = WsClient::connect(&stack.socket_servers[0].ws_url(), &token_for(&stack, "eve"))
        .await
        .unwrap();
    eve.send_message(&conversation, "sneaky", "let me in").await;
    assert!(eve.next_frame(WAIT).await.is_some(), "eve is answered");

    assert!(
        eventually(Duration::from_secs(30), || async {
            sink.hook_hits.load(Ordering::SeqCst) >= 20
                && sink.gone_hits.load(Ordering::SeqCst) >= 1
        })
        .await,
        "the sink got the deliveries ({} to /hook, {} to /gone)",
        sink.hook_hits.load(Ordering::SeqCst),
        sink.gone_hits.load(Ordering::SeqCst)
    );

    // Scrapes and rule evaluations catch up within seconds; allow a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = problems(&http, &base, &dashboard, &alerts).await;
        if last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        last.is_empty(),
        "against the live stack ({} dashboard queries, {} alerts):\n{}\n--- prometheus log ---\n{}",
        dashboard.len(),
        alerts.len(),
        last.join("\n"),
        process.log_tail(30)
    );
    eprintln!(
        "observability: {} dashboard queries returned data and {} alert rules evaluated against {scraped} live targets",
        dashboard.len(),
        alerts.len()
    );

    drop(others);
    process.stop(Duration::from_secs(5)).await;
    sink.task.abort();
    stack.shutdown(Duration::from_secs(5)).await;
}
