//! The message service's calls to the socket managers (`SB_MANAGER_URLS`): a server-API
//! message is numbered by a manager, under the conversation's lease, like a client's send.
//!
//! Failover as the socket servers do it: the managers are tried in turn, starting from the
//! one after the last that answered, and a manager that cannot be reached, times out or
//! answers 502/503 is skipped for the next. Retrying is safe because the send is idempotent:
//! the same `Idempotency-Key` gets the same number on any manager.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::server_api::{
    InternalServerSend, InternalServerSent, INTERNAL_SERVER_SEND_PATH,
};
use switchboard_protocol::sessions::{end_sessions_path, SessionsEnded};
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::cluster_auth::ClusterCredential;
use switchboard_service_kit::http::ApiError;

/// How long one manager may take to number, append and answer one message (a lease wait, an
/// append under `acks=all`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Managers {
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    credential: ClusterCredential,
}

impl Managers {
    pub fn new(urls: Vec<String>, credential: ClusterCredential) -> Self {
        Managers {
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .expect("an HTTP client"),
            urls: Arc::new(urls),
            next: Arc::new(AtomicUsize::new(0)),
            credential,
        }
    }

    /// Has a manager number `send`; the manager's own refusal (404, 403, 413, 422...) is
    /// answered as is, and 503 when every manager failed.
    pub async fn send(&self, send: &InternalServerSend) -> Result<InternalServerSent, ApiError> {
        self.post(INTERNAL_SERVER_SEND_PATH, Some(send)).await
    }

    /// Has a manager end every session of `user_id` (the managers' end-sessions route; safe
    /// to retry: the mark only moves forward).
    pub async fn end_sessions(&self, user_id: &str) -> Result<SessionsEnded, ApiError> {
        self.post::<(), _>(&end_sessions_path(user_id), None).await
    }

    /// POSTs to the managers in turn (see the module doc).
    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        if self.urls.is_empty() {
            return Err(ApiError::unavailable(
                "no socket manager is configured (SB_MANAGER_URLS)",
            ));
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.urls.len() {
            let at = (start + i) % self.urls.len();
            let url = format!("{}{path}", self.urls[at]);
            let mut request = self.credential.apply(self.http.post(&url));
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.next.store(at, Ordering::Relaxed);
                    return resp.json().await.map_err(|e| {
                        ApiError::unavailable(format!("a manager's answer was unreadable: {e}"))
                    });
                }
                Ok(resp) if matches!(resp.status().as_u16(), 502 | 503) => {
                    last = format!("{url}: {}", resp.status());
                    tracing::warn!(%url, status = %resp.status(), "manager unavailable; trying the next");
                }
                Ok(resp) => {
                    let status = resp.status();
                    return Err(match resp.json::<ErrorBody>().await {
                        // The cluster credential refused: our configuration, not the caller's.
                        Ok(body)
                            if matches!(
                                body.error.code,
                                ErrorCode::Unauthorized | ErrorCode::Forbidden
                            ) =>
                        {
                            tracing::error!(%url, message = %body.error.message, "a manager refused this service's cluster credential");
                            ApiError::new(
                                ErrorCode::Internal,
                                "the message service may not call the socket managers",
                            )
                        }
                        Ok(body) => ApiError::new(body.error.code, body.error.message),
                        Err(_) => ApiError::new(
                            ErrorCode::Internal,
                            format!("a manager answered {status}"),
                        ),
                    });
                }
                Err(e) => {
                    last = format!("{url}: {e}");
                    tracing::warn!(%url, error = %e, "manager unreachable; trying the next");
                }
            }
            self.next
                .store((at + 1) % self.urls.len(), Ordering::Relaxed);
        }
        Err(ApiError::unavailable(format!(
            "no socket manager could answer ({last}); retry (with the same Idempotency-Key \
             for a message)"
        )))
    }
}
