//! The reference push gateway (`push-gateway-sink`): for tests and local use, it takes pushes
//! as the notifier sends them, checks their signature, records them, and answers like a real
//! gateway would, rejecting the pushkeys it was told to. It sends nothing to Apple, Google or
//! browsers: a real gateway would (docs/push.md has the contract).
//!
//! - `POST /push`: a push. 401 when a secret is set and no signature verifies; otherwise 200
//!   `{"rejected": [...]}`: the push's pushkeys that are in the reject list.
//! - `GET /pushes` → `{"pushes": [{id, verified, body, received_at}]}`, oldest first (the
//!   newest [`MAX_KEPT`] only).
//! - `DELETE /pushes`: forgets them.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Serialize;
use serde_json::{json, Value};

/// Most pushes kept.
pub const MAX_KEPT: usize = 10_000;
/// Largest push accepted.
const MAX_BODY: usize = 256 * 1024;
/// How far a `webhook-timestamp` may be from now (Standard Webhooks' replay window).
const TOLERANCE_SECS: i64 = 300;

/// One push received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// Whether a signature verified under the secret (`false` too when no secret is set).
    pub verified: bool,
    pub body: Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
pub struct SinkState {
    pub secret: Option<String>,
    pub reject: HashSet<String>,
    pub pushes: VecDeque<Received>,
}

/// A running sink.
pub struct Sink {
    pub port: u16,
    pub state: Arc<Mutex<SinkState>>,
    handle: actix_web::dev::ServerHandle,
    server: Option<actix_web::dev::Server>,
    /// The server when spawned ([`Self::spawn`]): aborted if the sink is dropped unstopped.
    task: Option<switchboard_service_kit::supervise::OwnedTask>,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn push(
    state: web::Data<Arc<Mutex<SinkState>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let id = header(&req, "webhook-id").to_owned();
    let timestamp: Option<i64> = header(&req, "webhook-timestamp").parse().ok();
    let signature = header(&req, "webhook-signature");
    let secret = state.lock().map(|s| s.secret.clone()).unwrap_or_default();
    let fresh =
        timestamp.is_some_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= TOLERANCE_SECS);
    let verified = match (&secret, timestamp) {
        (Some(secret), Some(t)) => {
            fresh && crate::signing::verify(secret, &id, t, &body, signature)
        }
        _ => false,
    };
    if secret.is_some() && !verified {
        return HttpResponse::Unauthorized().json(json!({"error": "no signature verifies"}));
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().json(json!({"error": "not JSON"}));
    };
    let mut state = match state.lock() {
        Ok(state) => state,
        Err(poisoned) => poisoned.into_inner(),
    };
    let rejected: Vec<String> = parsed["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["pushkey"].as_str())
        .filter(|k| state.reject.contains(*k))
        .map(str::to_owned)
        .collect();
    if state.pushes.len() >= MAX_KEPT {
        state.pushes.pop_front();
    }
    state.pushes.push_back(Received {
        id,
        verified,
        body: parsed,
        received_at: chrono::Utc::now(),
    });
    HttpResponse::Ok().json(json!({ "rejected": rejected }))
}

async fn list(state: web::Data<Arc<Mutex<SinkState>>>) -> HttpResponse {
    let pushes: Vec<Received> = match state.lock() {
        Ok(state) => state.pushes.iter().cloned().collect(),
        Err(poisoned) => poisoned.into_inner().pushes.iter().cloned().collect(),
    };
    HttpResponse::Ok().json(json!({ "pushes": pushes }))
}

async fn clear(state: web::Data<Arc<Mutex<SinkState>>>) -> HttpResponse {
    if let Ok(mut state) = state.lock() {
        state.pushes.clear();
    }
    HttpResponse::NoContent().finish()
}

impl Sink {
    /// Binds `addr` (port 0: any) with this secret (`None`: signatures not checked) and
    /// reject list; serve it with [`Self::run`] or spawn it with [`Self::spawn`].
    pub fn bind(
        addr: &str,
        secret: Option<String>,
        reject: HashSet<String>,
    ) -> std::io::Result<Sink> {
        let state = Arc::new(Mutex::new(SinkState {
            secret,
            reject,
            pushes: VecDeque::new(),
        }));
        Self::bind_with(addr, state)
    }

    /// Binds `addr` keeping what an earlier sink received (a gateway back after an outage).
    pub fn bind_with(addr: &str, state: Arc<Mutex<SinkState>>) -> std::io::Result<Sink> {
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY))
                .route("/push", web::post().to(push))
                .route("/pushes", web::get().to(list))
                .route("/pushes", web::delete().to(clear))
        })
        .workers(1)
        .disable_signals()
        .bind(addr)?;
        let port = server.addrs()[0].port();
        let server = server.run();
        Ok(Sink {
            port,
            state,
            handle: server.handle(),
            server: Some(server),
            task: None,
        })
    }

    /// Serves on a task of its own; [`Self::stop`] ends it.
    pub fn spawn(mut self) -> Self {
        if let Some(server) = self.server.take() {
            self.task = Some(switchboard_service_kit::supervise::OwnedTask::spawn(
                "push gateway sink",
                async move {
                    if let Err(e) = server.await {
                        tracing::warn!(error = %e, "the push gateway sink stopped");
                    }
                },
            ));
        }
        self
    }

    /// Serves until the process is stopped (the binary).
    pub async fn run(mut self) -> std::io::Result<()> {
        match self.server.take() {
            Some(server) => server.await,
            None => Ok(()),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/push", self.port)
    }

    pub fn pushes(&self) -> Vec<Received> {
        match self.state.lock() {
            Ok(state) => state.pushes.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().pushes.iter().cloned().collect(),
        }
    }

    /// Stops serving (connections refused from now on); what it received stays in `state`.
    pub async fn stop(self) -> Arc<Mutex<SinkState>> {
        self.handle.stop(false).await;
        if let Some(task) = self.task {
            let _ = task.join().await;
        }
        self.state
    }
}
