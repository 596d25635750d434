//! The socket server's side of the manager API.
//!
//! Client frames that need the cluster and connection reports go through [`ManagerClient`]:
//! `lanes` worker tasks, each owning one keep-alive HTTP connection's worth of traffic. A
//! connection always uses the same lane (by id), so its frames reach the manager in the order
//! it sent them; each lane takes everything queued when it becomes free (up to
//! `MAX_BATCH`) and posts it as one batch, so under load many frames share one request.
//! A batch that fails on one manager is retried on the next (sends are idempotent by
//! `client_msg_id`); if every manager fails, each frame is answered with `unavailable`.

use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use switchboard_protocol::internal::{
    HandlerBatch, HandlerBatchReply, HandlerItem, HandlerRegistered, HandlerRegistration,
    RenewRequest,
};
use switchboard_protocol::registry::CLUSTER_SECRET_HEADER;
use switchboard_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::hub::Outbound;

const MAX_BATCH: usize = 256;

/// One queued item and where its answer goes.
pub struct Pending {
    pub item: HandlerItem,
    /// The connection's outbound queue, for the reply frame.
    pub reply_to: Option<mpsc::Sender<Outbound>>,
    /// Signalled once the manager has applied the item (connect reports wait on it).
    pub done: Option<oneshot::Sender<bool>>,
}

#[derive(Clone)]
pub struct ManagerClient {
    lanes: Arc<Vec<mpsc::Sender<Pending>>>,
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    secret: String,
    handler_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("no socket manager answered: {0}")]
pub struct ManagerUnavailable(pub String);

impl ManagerClient {
    pub fn start(urls: Vec<String>, secret: String, handler_id: String, lanes: usize) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(lanes.max(1) * 2)
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        let mut senders = Vec::new();
        let client_urls = Arc::new(urls);
        let mut client = ManagerClient {
            lanes: Arc::new(Vec::new()),
            http,
            urls: client_urls,
            secret,
            handler_id,
        };
        for lane in 0..lanes.max(1) {
            let (tx, rx) = mpsc::channel::<Pending>(4096);
            senders.push(tx);
            tokio::spawn(client.clone().run_lane(lane, rx));
        }
        client.lanes = Arc::new(senders);
        client
    }

    /// Queues an item on the connection's lane. `false` if the lane is saturated, which the
    /// caller answers with `rate_limited` rather than queueing without bound.
    pub fn submit(&self, connection_id: u64, pending: Pending) -> Result<(), Box<Pending>> {
        let lane = &self.lanes[(connection_id as usize) % self.lanes.len()];
        lane.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => {
                Box::new(p)
            }
        })
    }

    async fn run_lane(self, lane: usize, mut rx: mpsc::Receiver<Pending>) {
        let mut start_at = lane;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let body = HandlerBatch {
                items: batch.iter().map(|p| p.item.clone()).collect(),
            };
            let path = format!("/internal/v1/handlers/{}/batch", self.handler_id);
            let result: Result<HandlerBatchReply, ManagerUnavailable> =
                self.post_any(&path, &body, &mut start_at).await;
            match result {
                Ok(reply) => {
                    for (pending, frame) in batch.into_iter().zip(reply.replies) {
                        if let (Some(frame), Some(to)) = (frame, &pending.reply_to) {
                            let _ = to.try_send(Outbound::Frame(frame.to_json().into()));
                        }
                        if let Some(done) = pending.done {
                            let _ = done.send(true);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, items = batch.len(), "manager batch failed");
                    for pending in batch {
                        if let (Some(frame), Some(to)) =
                            (unavailable_reply(&pending.item), &pending.reply_to)
                        {
                            let _ = to.try_send(Outbound::Frame(frame.to_json().into()));
                        }
                        if let Some(done) = pending.done {
                            let _ = done.send(false);
                        }
                    }
                }
            }
        }
    }

    /// POSTs `body` to `path` on the first manager that answers with success, starting at
    /// `*start_at` and remembering which one worked.
    async fn post_any<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        start_at: &mut usize,
    ) -> Result<R, ManagerUnavailable> {
        let mut last = String::from("no manager URLs configured");
        for attempt in 0..self.urls.len() * 2 {
            let index = (*start_at + attempt) % self.urls.len();
            let url = format!("{}{}", self.urls[index].trim_end_matches('/'), path);
            match self
                .http
                .post(&url)
                .header(CLUSTER_SECRET_HEADER, &self.secret)
                .json(body)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => match resp.json::<R>().await {
                    Ok(r) => {
                        *start_at = index;
                        return Ok(r);
                    }
                    Err(e) => last = format!("{url}: {e}"),
                },
                Ok(resp) => last = format!("{url}: {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
            if attempt + 1 >= self.urls.len() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(ManagerUnavailable(last))
    }

    /// Registers this handler; returns the topic to consume.
    pub async fn register(&self) -> Result<String, ManagerUnavailable> {
        let mut start = 0;
        let reply: HandlerRegistered = self
            .post_any(
                "/internal/v1/handlers",
                &HandlerRegistration {
                    handler_id: self.handler_id.clone(),
                },
                &mut start,
            )
            .await?;
        Ok(reply.topic)
    }

    /// Renews the handler's liveness; `Ok(false)` when the manager no longer knows it.
    pub async fn heartbeat(&self) -> Result<bool, ManagerUnavailable> {
        let path = format!("/internal/v1/handlers/{}/heartbeat", self.handler_id);
        let mut last = String::new();
        for url in self.urls.iter() {
            let url = format!("{}{}", url.trim_end_matches('/'), path);
            match self
                .http
                .post(&url)
                .header(CLUSTER_SECRET_HEADER, &self.secret)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => return Ok(true),
                Ok(resp) if resp.status() == 404 => return Ok(false),
                Ok(resp) => last = format!("{url}: {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(ManagerUnavailable(last))
    }

    pub async fn renew(&self, users: Vec<String>) -> Result<(), ManagerUnavailable> {
        let path = format!("/internal/v1/handlers/{}/renew", self.handler_id);
        let mut start = 0;
        let _: serde_json::Value = self
            .post_any(&path, &RenewRequest { users }, &mut start)
            .await?;
        Ok(())
    }

    /// Tells the managers this handler is going away (best effort; the janitor covers it).
    pub async fn deregister(&self) {
        for url in self.urls.iter() {
            let url = format!(
                "{}/internal/v1/handlers/{}",
                url.trim_end_matches('/'),
                self.handler_id
            );
            if let Ok(resp) = self
                .http
                .delete(&url)
                .header(CLUSTER_SECRET_HEADER, &self.secret)
                .send()
                .await
            {
                if resp.status().is_success() {
                    return;
                }
            }
        }
    }
}

/// What a client is told when no manager can take its frame.
pub fn unavailable_reply(item: &HandlerItem) -> Option<ServerFrame> {
    match item {
        HandlerItem::Frame { frame, .. } => Some(ServerFrame::Error {
            code: ErrorCode::Unavailable,
            message: "the cluster is unavailable, retry shortly".into(),
            client_msg_id: match frame {
                ClientFrame::Send { client_msg_id, .. } => Some(client_msg_id.clone()),
                _ => None,
            },
        }),
        _ => None,
    }
}
