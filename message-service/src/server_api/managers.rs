//! The message service's calls to the socket managers (`SB_MANAGER_URLS`): a server-API
//! message is numbered by a manager, under the conversation's lease, like a client's send.
//!
//! Failover as the socket servers do it: the managers are tried in turn, starting from the
//! one after the last that answered, and a manager that cannot be reached, times out or
//! answers 502/503 is skipped for the next. Retrying is safe because the send is idempotent:
//! the same `Idempotency-Key` gets the same number on any manager.

use std::time::Duration;

use switchboard_credentials::cluster::ClusterCredential;
use switchboard_protocol::server_api::{
    InternalServerSend, InternalServerSent, INTERNAL_SERVER_SEND_PATH,
};
use switchboard_protocol::sessions::{end_sessions_path, SessionsEnded};
use switchboard_protocol::{ErrorCode, UserId};
use switchboard_service_kit::http::ApiError;
use switchboard_service_kit::internal::{CallError, Failover, InternalClient};

/// How long one manager may take to number, append and answer one message (a lease wait, an
/// append under `acks=all`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Managers {
    client: InternalClient,
}

impl Managers {
    pub fn new(urls: Vec<String>, credential: ClusterCredential) -> Self {
        Managers {
            client: InternalClient::new(urls, credential, CALL_TIMEOUT),
        }
    }

    /// Has a manager number `send`; the manager's own refusal (404, 403, 413, 422...) is
    /// answered as is, and 503 when every manager failed.
    pub async fn send(&self, send: &InternalServerSend) -> Result<InternalServerSent, ApiError> {
        self.post(INTERNAL_SERVER_SEND_PATH, Some(send)).await
    }

    /// Has a manager end every session of `user_id` (the managers' end-sessions route; safe
    /// to retry: the mark only moves forward).
    pub async fn end_sessions(&self, user_id: &UserId) -> Result<SessionsEnded, ApiError> {
        self.post::<(), _>(&end_sessions_path(user_id), None).await
    }

    /// POSTs to the managers in turn (see the module doc).
    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        if self.client.targets() == 0 {
            return Err(ApiError::unavailable(
                "no socket manager is configured (SB_MANAGER_URLS)",
            ));
        }
        match self
            .client
            .call(reqwest::Method::POST, path, body, &[], Failover::ONCE)
            .await
        {
            Ok(answer) => Ok(answer),
            Err(CallError::Unavailable(last)) => {
                tracing::warn!(%last, "no socket manager could answer");
                Err(ApiError::unavailable(format!(
                    "no socket manager could answer ({last}); retry (with the same \
                     Idempotency-Key for a message)"
                )))
            }
            // The cluster credential refused: our configuration, not the caller's.
            Err(CallError::Refused {
                url,
                body: Some(body),
                ..
            }) if matches!(
                body.error.code,
                ErrorCode::Unauthorized | ErrorCode::Forbidden
            ) =>
            {
                tracing::error!(%url, message = %body.error.message, "a manager refused this service's cluster credential");
                Err(ApiError::new(
                    ErrorCode::Internal,
                    "the message service may not call the socket managers",
                ))
            }
            Err(CallError::Refused {
                body: Some(body), ..
            }) => Err(ApiError::new(body.error.code, body.error.message)),
            Err(CallError::Refused { status, .. }) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("a manager answered {status}"),
            )),
        }
    }
}
