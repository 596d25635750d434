//! What the dispatcher's tests share: a webhook sink (a small HTTP server that records every
//! request and answers as it is told) and calls to the endpoint API through nginx.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;
use switchboard_config::names::SB_API_KEYS;
use switchboard_test_support::Stack;

/// How the sink answers one request to `/hook`.
#[derive(Debug, Clone)]
pub enum Act {
    /// This status, no body.
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    TooMany(u64),
    /// Holds the request this long, then answers 503 (never accepted).
    Stall(Duration),
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    pub at: Instant,
    /// The status it was answered (2xx: accepted).
    pub answered: u16,
}

#[derive(Default)]
pub struct SinkState {
    pub script: VecDeque<Act>,
    pub seen: Vec<Seen>,
}

/// A running sink: `/hook` answers by the script, then 200; `/gone` answers 410 always.
pub struct Sink {
    pub port: u16,
    pub state: Arc<Mutex<SinkState>>,
    handle: actix_web::dev::ServerHandle,
}

fn header(req: &HttpRequest, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn hook(
    state: web::Data<Arc<Mutex<SinkState>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let act = state.lock().unwrap().script.pop_front();
    let answer = match &act {
        None => 200,
        Some(Act::Status(code)) => *code,
        Some(Act::TooMany(_)) => 429,
        Some(Act::Stall(_)) => 503,
    };
    // Recorded on arrival, so `seen` is in arrival order whatever the answer takes.
    state.lock().unwrap().seen.push(Seen {
        path: req.path().to_owned(),
        id: header(&req, "webhook-id"),
        timestamp: header(&req, "webhook-timestamp"),
        signature: header(&req, "webhook-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
        answered: answer,
    });
    match act {
        None => HttpResponse::Ok().finish(),
        Some(Act::Status(code)) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap()).finish()
        }
        Some(Act::TooMany(secs)) => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", secs.to_string()))
            .finish(),
        Some(Act::Stall(hold)) => {
            tokio::time::sleep(hold).await;
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}

async fn gone(
    state: web::Data<Arc<Mutex<SinkState>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.lock().unwrap().seen.push(Seen {
        path: req.path().to_owned(),
        id: header(&req, "webhook-id"),
        timestamp: header(&req, "webhook-timestamp"),
        signature: header(&req, "webhook-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
        answered: 410,
    });
    HttpResponse::Gone().finish()
}

impl Sink {
    pub fn start() -> Sink {
        let state = Arc::new(Mutex::new(SinkState::default()));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/hook", web::post().to(hook))
                .route("/gone", web::post().to(gone))
        })
        .workers(2)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Sink {
            port,
            state,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A call to the endpoint API through nginx: status and JSON body.
pub async fn webhooks_api(
    stack: &Stack,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut request = http.request(method, format!("{}{path}", stack.nginx_url()));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the endpoint API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The env of a stack running the dispatcher with `entries` as its API keys.
pub fn key_env(entries: &[&switchboard_credentials::api_keys::KeyEntry]) -> (String, String) {
    (
        SB_API_KEYS.to_owned(),
        serde_json::to_string(entries).unwrap(),
    )
}

pub fn kv(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}
