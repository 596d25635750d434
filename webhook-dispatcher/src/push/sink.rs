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
//!
//! It also records webhooks, so the local stack and the compose demo have somewhere to send
//! them (an endpoint registered at `http://<sink>/webhook`): each endpoint has its own secret,
//! which the sink does not know, so it keeps the request as it came, headers included, for
//! whoever holds the secret to verify (docs/webhooks.md shows how).
//!
//! - `POST /webhook`: a webhook delivery, recorded, answered 204.
//! - `GET /webhooks` → `{"webhooks": [{id, timestamp, signature, body, received_at}]}`, oldest
//!   first (the newest [`MAX_KEPT`] only); `DELETE /webhooks` forgets them.

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

/// One webhook delivery received (`POST /webhook`), unverified: its headers are kept so the
/// holder of the endpoint's secret can check the signature.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedWebhook {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, as sent.
    pub timestamp: String,
    /// `webhook-signature`, as sent (`v1,<base64>` ...).
    pub signature: String,
    /// The body exactly as received (the signature covers these bytes).
    pub raw: String,
    /// The body parsed (`null` when it was not JSON).
    pub body: Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
pub struct SinkState {
    pub secret: Option<String>,
    pub reject: HashSet<String>,
    pub pushes: VecDeque<Received>,
    pub webhooks: VecDeque<ReceivedWebhook>,
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

async fn webhook(
    state: web::Data<Arc<Mutex<SinkState>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let received = ReceivedWebhook {
        id: header(&req, "webhook-id").to_owned(),
        timestamp: header(&req, "webhook-timestamp").to_owned(),
        signature: header(&req, "webhook-signature").to_owned(),
        raw: String::from_utf8_lossy(&body).into_owned(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        received_at: chrono::Utc::now(),
    };
    let mut state = match state.lock() {
        Ok(state) => state,
        Err(poisoned) => poisoned.into_inner(),
    };
    if state.webhooks.len() >= MAX_KEPT {
        state.webhooks.pop_front();
    }
    state.webhooks.push_back(received);
    HttpResponse::NoContent().finish()
}

async fn list_webhooks(state: web::Data<Arc<Mutex<SinkState>>>) -> HttpResponse {
    let webhooks: Vec<ReceivedWebhook> = match state.lock() {
        Ok(state) => state.webhooks.iter().cloned().collect(),
        Err(poisoned) => poisoned.into_inner().webhooks.iter().cloned().collect(),
    };
    HttpResponse::Ok().json(json!({ "webhooks": webhooks }))
}

async fn clear_webhooks(state: web::Data<Arc<Mutex<SinkState>>>) -> HttpResponse {
    if let Ok(mut state) = state.lock() {
        state.webhooks.clear();
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
            webhooks: VecDeque::new(),
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
                .route("/webhook", web::post().to(webhook))
                .route("/webhooks", web::get().to(list_webhooks))
                .route("/webhooks", web::delete().to(clear_webhooks))
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

    /// The webhooks received at `POST /webhook`, oldest first.
    pub fn webhooks(&self) -> Vec<ReceivedWebhook> {
        match self.state.lock() {
            Ok(state) => state.webhooks.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().webhooks.iter().cloned().collect(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook posted to `/webhook` is kept byte for byte with its headers, so the holder
    /// of the endpoint's secret can verify it from `GET /webhooks`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_are_recorded_with_their_signature_headers() {
        let secret = crate::signing::new_secret();
        let sink = Sink::bind("127.0.0.1:0", Some(secret.clone()), HashSet::new())
            .unwrap()
            .spawn();
        let body = r#"{"type":"message.created","data":{"seq":1}}"#;
        let t = chrono::Utc::now().timestamp();
        let key = crate::signing::secret_key(&secret).unwrap();
        let signature = crate::signing::sign_with(&key, "evt_1", t, body.as_bytes());
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}", sink.port);
        let resp = http
            .post(format!("{base}/webhook"))
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", t.to_string())
            .header("webhook-signature", &signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let listed: Value = http
            .get(format!("{base}/webhooks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let hook = &listed["webhooks"][0];
        assert_eq!(hook["id"], "evt_1");
        assert_eq!(hook["body"]["data"]["seq"], 1);
        let raw = hook["raw"].as_str().unwrap();
        let ts: i64 = hook["timestamp"].as_str().unwrap().parse().unwrap();
        assert!(crate::signing::verify(
            &secret,
            "evt_1",
            ts,
            raw.as_bytes(),
            hook["signature"].as_str().unwrap()
        ));
        // Pushes are a list of their own.
        assert!(sink.pushes().is_empty());
        let resp = http
            .delete(format!("{base}/webhooks"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert!(sink.webhooks().is_empty());
        sink.stop().await;
    }
}
