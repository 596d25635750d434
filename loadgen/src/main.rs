//! `loadgen`: drives a running Switchboard exactly as clients do (tokens, registry assign,
//! the WebSocket protocol), measures, and checks every delivery like a history checker.
//!
//! Scenarios (same shapes as the Socket.IO peer harness in `shared/peers/socketio`):
//! - `s1`: idle connections; RSS per connection of the socket servers (`--server-pids`).
//! - `s2`: 1:1 pairs, receiver on another server, total send rate stepped.
//! - `s3`: groups of 100, one sender per group, stepped rates; deliveries/s.
//! - `s4`: `GET /api/v1/socket-server` through nginx; `static` does `GET /` for the ceiling.
//! - `echo`: WebSocket `ping`/`pong` round trips (the socket server's own ceiling).
//! - `broker`: produce-then-consume through the broker (the log's ceiling).
//!
//! Every loop is bounded in count and time, and targets are loopback only. Results are one
//! JSON object on stdout (and `--out FILE`); a step "passes" when nothing was lost,
//! duplicated or reordered and p99 < 250 ms. The process exits non-zero if a step of `s2` or
//! `s3` lost, duplicated or reordered anything.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod ceilings;
mod chat;
mod stats;
mod util;

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Settings from the command line (`--key value`).
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: String,
    pub base_url: String,
    pub jwt_secret: Option<String>,
    pub clients: usize,
    pub rates: Vec<f64>,
    pub duration: Duration,
    pub concurrency: usize,
    pub server_pids: Vec<u32>,
    pub brokers: String,
    pub out: Option<String>,
}

const HELP: &str = "\
loadgen: drives a running Switchboard exactly as clients do (tokens, registry assignment, the
WebSocket protocol), measures, and checks every delivery for loss, duplication and reordering.
Targets are loopback only. Results are one JSON object on stdout (and --out FILE); the process
exits non-zero if a step of s2 or s3 lost, duplicated or reordered anything. It reads no
environment variables. BENCHMARKS.md and docs/performance.md show how it is run.

Usage: loadgen SCENARIO [--key value]...
       loadgen --help | --version

Scenarios:
  s1       idle connections; RSS per connection of the socket servers (--server-pids)
  s2       1:1 pairs, receiver on another server, total send rate stepped (--rates)
  s3       groups of 100, one sender per group, stepped rates; deliveries/s
  s4       GET /api/v1/socket-server through nginx
  static   GET / through nginx (the HTTP ceiling)
  echo     WebSocket ping/pong round trips (the socket server's own ceiling)
  broker   produce-then-consume through the broker (the log's ceiling)

Options:
  --base-url URL        the stack's nginx (default http://127.0.0.1:8080; loopback only)
  --jwt-secret SECRET   sign tokens locally instead of asking POST /api/v1/dev/token
  --clients N           connections (s1, s2, s3, echo) or records (broker); unset: the
                        scenario's default
  --rates A,B,...       total send rates per step, messages/s (s2, s3)
  --duration SECS       length of each step or run (default 10)
  --concurrency N       parallel HTTP requests (s4, static; default 64)
  --server-pids P,...   socket server pids to measure RSS of (s1)
  --brokers HOST:PORT   the broker for `broker` (default 127.0.0.1:9092)
  --out FILE            also write the JSON result to FILE
";

fn parse_args() -> Result<Args> {
    let mut raw = std::env::args().skip(1).peekable();
    match raw.peek().map(String::as_str) {
        Some("--help" | "-h") => {
            print!("{HELP}");
            std::process::exit(0);
        }
        Some("--version" | "-V") => {
            println!("loadgen {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        _ => {}
    }
    let scenario = raw.next().context(
        "usage: loadgen <s1|s2|s3|s4|static|echo|broker> [--key value]... (see loadgen --help)",
    )?;
    let mut args = Args {
        scenario,
        base_url: "http://127.0.0.1:8080".into(),
        jwt_secret: None,
        clients: 0,
        rates: Vec::new(),
        duration: Duration::from_secs(10),
        concurrency: 64,
        server_pids: Vec::new(),
        brokers: "127.0.0.1:9092".into(),
        out: None,
    };
    while let Some(key) = raw.next() {
        let value = raw.next().with_context(|| format!("{key} needs a value"))?;
        match key.as_str() {
            "--base-url" => args.base_url = value,
            "--jwt-secret" => args.jwt_secret = Some(value),
            "--clients" => args.clients = value.parse()?,
            "--rates" => {
                args.rates = value
                    .split(',')
                    .map(|r| r.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--duration" => args.duration = Duration::from_secs_f64(value.parse()?),
            "--concurrency" => args.concurrency = value.parse()?,
            "--server-pids" => {
                args.server_pids = value
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--brokers" => args.brokers = value,
            "--out" => args.out = Some(value),
            other => bail!("unknown option {other}; see loadgen --help"),
        }
    }
    let host = args
        .base_url
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("loadgen only targets loopback addresses, not {host}");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let result = tokio::time::timeout(Duration::from_secs(900), async {
        match args.scenario.as_str() {
            "s1" => chat::idle(&args).await,
            "s2" => chat::one_to_one(&args).await,
            "s3" => chat::groups(&args).await,
            "s4" => ceilings::http_rate(&args, "/api/v1/socket-server").await,
            "static" => ceilings::http_rate(&args, "/").await,
            "echo" => ceilings::ws_echo(&args).await,
            "broker" => ceilings::broker(&args).await,
            other => bail!("unknown scenario {other}"),
        }
    })
    .await
    .context("scenario exceeded its 15 minute bound")??;
    let mut result = result;
    if let Some(obj) = result.as_object_mut() {
        obj.insert(
            "loadgen_cpu_seconds".into(),
            serde_json::json!(own_cpu_seconds()),
        );
    }
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text)?;
    }
    let broken = result["steps"].as_array().is_some_and(|steps| {
        steps.iter().any(|s| {
            s["lost"].as_u64().unwrap_or(0) > 0
                || s["duplicates"].as_u64().unwrap_or(0) > 0
                || s["out_of_order"].as_u64().unwrap_or(0) > 0
        })
    });
    if broken {
        bail!("a step lost, duplicated or reordered messages");
    }
    Ok(())
}

/// utime + stime of this process, so reports can say what the load client itself cost.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(") ").next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}
