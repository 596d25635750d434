//! The one client for cluster-only routes: every service that calls another (socket servers
//! the managers, the message service the managers, the managers the message service) goes
//! through [`InternalClient`], so there is one failover policy, one credential header pair and
//! one way of telling "that service is down" from "that service said no".
//!
//! Failover: the targets are tried in turn, starting from the one that answered last (a
//! [`Cursor`] each caller may keep of its own, as a socket server's lanes do, so each lane
//! stays on its manager). A target that cannot be reached, times out or answers one of the
//! policy's "unavailable" statuses is skipped for the next; after a whole pass the client
//! pauses and tries again, up to the policy's passes. Any other answer is final: a success is
//! decoded, a refusal is handed back with its status and error body. Retrying is only ever
//! done for idempotent calls, which every internal route is (batches carry a batch id, sends
//! their `client_msg_id`, server sends their idempotency key).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::error_code::ErrorBody;

use switchboard_credentials::cluster::ClusterCredential;

/// When to move on to the next target.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Whole passes over the targets before giving up.
    pub passes: usize,
    /// The pause after a pass in which every target failed.
    pub pause: Duration,
    /// Which answers other than a success move on to the next target.
    pub retry: Retry,
}

/// Which non-success answers mean "try the next target".
#[derive(Debug, Clone, Copy)]
pub enum Retry {
    /// Only 502, 503 and 504 (and transport errors): any other answer is the callee's word.
    Gateway,
    /// Every status but these (which are final answers, e.g. 404 for "I do not know you").
    AnyExcept(&'static [u16]),
}

impl Failover {
    /// One pass; only 502/503/504 and transport errors move on.
    pub const ONCE: Failover = Failover {
        passes: 1,
        pause: Duration::ZERO,
        retry: Retry::Gateway,
    };

    fn moves_on(&self, status: u16) -> bool {
        match self.retry {
            Retry::Gateway => matches!(status, 502..=504),
            Retry::AnyExcept(finals) => !finals.contains(&status),
        }
    }
}

/// Where a caller starts its next call (the target that answered last).
#[derive(Debug, Default)]
pub struct Cursor(AtomicUsize);

impl Cursor {
    /// A cursor starting at target `index`.
    pub fn at(index: usize) -> Self {
        Cursor(AtomicUsize::new(index))
    }

    /// The target the next call starts at.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No target answered usefully (every one unreachable or unavailable); the last reason.
    #[error("no target answered: {0}")]
    Unavailable(String),
    /// A target answered with a refusal: final, not retried.
    #[error("{url} answered {status}")]
    Refused {
        url: String,
        status: u16,
        body: Option<ErrorBody>,
    },
}

/// A client for one kind of target (the managers, the message service).
#[derive(Clone)]
pub struct InternalClient {
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    credential: ClusterCredential,
    cursor: Arc<Cursor>,
}

impl InternalClient {
    /// `urls`: the targets' base URLs (`http://host:port`); `timeout` bounds each attempt.
    pub fn new(urls: Vec<String>, credential: ClusterCredential, timeout: Duration) -> Self {
        Self::with_http(
            urls,
            credential,
            reqwest::Client::builder()
                .timeout(timeout)
                .tcp_nodelay(true)
                .build()
                .expect("an HTTP client"),
        )
    }

    /// [`InternalClient::new`] over a client the caller built (pool sizes, keep-alive).
    pub fn with_http(
        urls: Vec<String>,
        credential: ClusterCredential,
        http: reqwest::Client,
    ) -> Self {
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        InternalClient {
            http,
            urls: Arc::new(urls),
            credential,
            cursor: Arc::new(Cursor::default()),
        }
    }

    pub fn targets(&self) -> usize {
        self.urls.len()
    }

    /// Calls `path` with the shared cursor.
    pub async fn call<B, T>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
        policy: Failover,
    ) -> Result<T, CallError>
    where
        B: serde::Serialize + ?Sized,
        T: serde::de::DeserializeOwned,
    {
        self.call_from(&self.cursor, method, path, body, headers, policy)
            .await
    }

    /// Calls `path`, starting at (and updating) `cursor`, and decodes the JSON answer.
    pub async fn call_from<B, T>(
        &self,
        cursor: &Cursor,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
        policy: Failover,
    ) -> Result<T, CallError>
    where
        B: serde::Serialize + ?Sized,
        T: serde::de::DeserializeOwned,
    {
        let (url, answer) = self
            .answered(cursor, method, path, body, headers, policy)
            .await?;
        answer
            .json::<T>()
            .await
            .map_err(|e| CallError::Unavailable(format!("{url}: an unreadable answer: {e}")))
    }

    /// [`InternalClient::call_from`] for routes whose success carries nothing to read.
    pub async fn send_from<B>(
        &self,
        cursor: &Cursor,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        policy: Failover,
    ) -> Result<(), CallError>
    where
        B: serde::Serialize + ?Sized,
    {
        self.answered(cursor, method, path, body, &[], policy)
            .await
            .map(|_| ())
    }

    /// The first successful answer, per the policy (see the module doc).
    async fn answered<B>(
        &self,
        cursor: &Cursor,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
        policy: Failover,
    ) -> Result<(String, reqwest::Response), CallError>
    where
        B: serde::Serialize + ?Sized,
    {
        let n = self.urls.len();
        if n == 0 {
            return Err(CallError::Unavailable("no target is configured".into()));
        }
        let start = cursor.get();
        let mut last = String::new();
        for attempt in 0..n * policy.passes.max(1) {
            if attempt > 0 && attempt % n == 0 && !policy.pause.is_zero() {
                tokio::time::sleep(policy.pause).await;
            }
            let at = (start + attempt) % n;
            let url = format!("{}{path}", self.urls[at]);
            let mut request = self
                .credential
                .apply(self.http.request(method.clone(), &url));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = match request.send().await {
                Ok(answer) => answer,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let status = answer.status();
            if status.is_success() {
                cursor.0.store(at, Ordering::Relaxed);
                return Ok((url, answer));
            }
            if policy.moves_on(status.as_u16()) {
                last = format!("{url}: {status}");
                continue;
            }
            let body = answer.json::<ErrorBody>().await.ok();
            return Err(CallError::Refused {
                url,
                status: status.as_u16(),
                body,
            });
        }
        Err(CallError::Unavailable(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_config::secret::Secret;
    use switchboard_credentials::cluster::ServiceRole;

    /// A loopback server answering each connection with `status` and `body`; counts hits.
    async fn answering(
        status: u16,
        body: &'static str,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let serve = async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        };
        // The test's server lives as long as the test's runtime.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(serve);
        (url, hits)
    }

    fn client(urls: Vec<String>) -> InternalClient {
        InternalClient::new(
            urls,
            switchboard_credentials::cluster::ClusterCredential::new(
                ServiceRole::SocketServer,
                Secret::new("s"),
            ),
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn unavailable_targets_are_skipped_and_the_one_that_answered_is_remembered() {
        let (down, down_hits) = answering(503, "{}").await;
        let (up, up_hits) = answering(200, r#"{"ok":true}"#).await;
        let c = client(vec![down.clone(), up]);
        let got: serde_json::Value = c
            .call::<(), _>(reqwest::Method::GET, "/x", None, &[], Failover::ONCE)
            .await
            .unwrap();
        assert_eq!(got["ok"], true);
        assert_eq!(down_hits.load(Ordering::SeqCst), 1);
        // The next call starts at the target that answered.
        let _: serde_json::Value = c
            .call::<(), _>(reqwest::Method::GET, "/x", None, &[], Failover::ONCE)
            .await
            .unwrap();
        assert_eq!(down_hits.load(Ordering::SeqCst), 1);
        assert_eq!(up_hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refusal_is_final_unless_every_status_counts_as_unavailable() {
        let (refusing, refusing_hits) =
            answering(403, r#"{"error":{"code":"forbidden","message":"no"}}"#).await;
        let (up, _) = answering(200, "{}").await;
        let c = client(vec![refusing, up]);
        match c
            .call::<(), serde_json::Value>(reqwest::Method::POST, "/x", None, &[], Failover::ONCE)
            .await
        {
            Err(CallError::Refused { status, body, .. }) => {
                assert_eq!(status, 403);
                assert_eq!(body.unwrap().error.message, "no");
            }
            other => panic!("{other:?}"),
        }
        let any = Failover {
            retry: Retry::AnyExcept(&[404]),
            ..Failover::ONCE
        };
        let cursor = Cursor::default();
        assert!(c
            .call_from::<(), serde_json::Value>(
                &cursor,
                reqwest::Method::POST,
                "/x",
                None,
                &[],
                any
            )
            .await
            .is_ok());
        assert_eq!(refusing_hits.load(Ordering::SeqCst), 2);
        let nobody = client(Vec::new());
        assert!(matches!(
            nobody
                .call::<(), serde_json::Value>(
                    reqwest::Method::GET,
                    "/x",
                    None,
                    &[],
                    Failover::ONCE
                )
                .await,
            Err(CallError::Unavailable(_))
        ));
    }
}
