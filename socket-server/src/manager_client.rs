//! The socket server's side of the manager API.
//!
//! Client frames that need the cluster and connection reports go through [`ManagerClient`]:
//! lane worker tasks. A connection always uses the same lane (by id). A lane posts what is
//! queued as one batch (up to `MAX_BATCH` items and `MAX_BATCH_BYTES` of JSON), with up to
//! [`Lanes::batches_in_flight`] batches
//! in flight; a connection's items never ride in two batches at once, so its frames reach the
//! manager in the order it sent them, and under load many frames share one request.
//! A batch that fails on one manager is retried on the next (sends are idempotent by
//! `client_msg_id`); if every manager fails, each frame is answered with `unavailable`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::Method;
use switchboard_credentials::cluster::ClusterCredential;
use switchboard_protocol::frames::{ClientFrame, ServerFrame};
use switchboard_protocol::internal::{
    RenewRequest, ServerBatch, ServerBatchReply, ServerItem, ServerRegistered, ServerRegistration,
    BATCH_ID_HEADER,
};
use switchboard_protocol::trace_context::{TraceParent, TRACEPARENT_HEADER};
use switchboard_protocol::{ErrorCode, ServerId};
use switchboard_service_kit::internal::{Cursor, Failover, InternalClient, Retry};
use switchboard_service_kit::supervise::OwnedTask;
use switchboard_service_kit::telemetry;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::hub::Outbound;

const MAX_BATCH: usize = 256;
/// Encoded bytes of the items of one batch, at most (an item larger on its own goes alone):
/// a quarter of the manager's JSON body limit (16 MiB, `socket-manager/src/lib.rs`), so no
/// batch is ever refused for its size. Counted as JSON, not as body bytes: a frame's body
/// takes up to six times its size escaped (U+0001 is `\u0001`), so 256 frames of the largest
/// bodies would be about 100 MiB, and one refused batch fails every item of the lane.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Items a lane holds beyond its channel, at most (then its channel fills and `submit`
/// refuses).
const MAX_WAITING_PER_LANE: usize = 4096;

/// One queued item and where its answer goes.
pub struct Pending {
    pub item: ServerItem,
    /// The connection's outbound queue, for the reply frame.
    pub reply_to: Option<mpsc::Sender<Outbound>>,
    /// Signalled once the manager has applied the item (connect reports wait on it).
    pub done: Option<oneshot::Sender<bool>>,
}

/// How long frames wait for the manager, by stage.
#[derive(Clone)]
pub struct LaneMetrics {
    /// From a frame's queueing on its lane to the manager's answer.
    pub answer_seconds: prometheus::Histogram,
    /// One batch's HTTP round trip to a manager.
    pub batch_seconds: prometheus::Histogram,
}

/// How frames travel to the managers.
#[derive(Debug, Clone, Copy)]
pub struct Lanes {
    /// Lanes, each keeping the order of its connections' frames.
    pub count: usize,
    /// Batches one lane may have in flight at once. A connection never has items in two of
    /// them, so its frames still reach the manager in the order it sent them, while other
    /// connections' frames need not wait for a slow batch.
    pub batches_in_flight: usize,
}

/// A queued item, its connection, when it was queued and its size in the batch's JSON.
struct Queued {
    at: std::time::Instant,
    connection_id: u64,
    /// The item's encoded bytes (and its comma).
    bytes: usize,
    pending: Pending,
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How many bytes `item` takes in a batch's JSON: serde's encoding of it (counted, not kept)
/// and its comma.
fn encoded_len(item: &ServerItem) -> usize {
    let mut counter = Counter(0);
    // Counting cannot fail, and an item always encodes.
    let _ = serde_json::to_writer(&mut counter, item);
    counter.0 + 1
}

/// Takes the next batch from `waiting`, in order: every item whose connection has nothing in
/// flight (`busy`), up to [`MAX_BATCH`] items and [`MAX_BATCH_BYTES`] (the first item goes
/// whatever its size). What stays keeps its order, so a connection's items still go out in
/// the order it sent them (once either cap is reached, every later item stays).
fn take_batch(waiting: &mut VecDeque<Queued>, busy: &HashSet<u64>) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut full = false;
    let mut rest = VecDeque::with_capacity(waiting.len());
    while let Some(queued) = waiting.pop_front() {
        if !full && !busy.contains(&queued.connection_id) {
            full = batch.len() >= MAX_BATCH
                || (!batch.is_empty() && bytes + queued.bytes > MAX_BATCH_BYTES);
        }
        if !full && !busy.contains(&queued.connection_id) {
            bytes += queued.bytes;
            batch.push(queued);
        } else {
            rest.push_back(queued);
        }
    }
    *waiting = rest;
    batch
}

#[derive(Clone)]
pub struct ManagerClient {
    lanes: Arc<Vec<mpsc::Sender<Queued>>>,
    /// The lanes' tasks, aborted when the last client that can feed them is gone (the lanes'
    /// own copies hold none, so they do not keep themselves alive).
    lane_tasks: Arc<Vec<OwnedTask>>,
    metrics: LaneMetrics,
    /// The managers, through the one internal client (its failover and credential).
    managers: InternalClient,
    /// Their URLs, for log lines.
    urls: Arc<Vec<String>>,
    server_id: ServerId,
}

/// A batch, a registration or a renewal: two passes over the managers, every non-success
/// answer moving on.
const ANY_MANAGER: Failover = Failover {
    passes: 2,
    pause: Duration::from_millis(100),
    retry: Retry::AnyExcept(&[]),
};

#[derive(Debug, thiserror::Error)]
#[error("no socket manager answered: {0}")]
pub struct ManagerUnavailable(pub String);

impl ManagerClient {
    pub fn start(
        urls: Vec<String>,
        credential: ClusterCredential,
        server_id: ServerId,
        lanes: Lanes,
        metrics: LaneMetrics,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(lanes.count.max(1) * lanes.batches_in_flight.max(1) * 2)
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        let mut client = ManagerClient {
            lanes: Arc::new(Vec::new()),
            lane_tasks: Arc::new(Vec::new()),
            metrics,
            managers: InternalClient::with_http(urls.clone(), credential, http),
            urls: Arc::new(urls),
            server_id,
        };
        for lane in 0..lanes.count.max(1) {
            let (tx, rx) = mpsc::channel::<Queued>(4096);
            senders.push(tx);
            tasks.push(OwnedTask::spawn(
                "manager lane",
                client
                    .clone()
                    .run_lane(lane, lanes.batches_in_flight.max(1), rx),
            ));
        }
        client.lanes = Arc::new(senders);
        client.lane_tasks = Arc::new(tasks);
        client
    }

    /// Queues an item on the connection's lane. `false` if the lane is saturated, which the
    /// caller answers with `rate_limited` rather than queueing without bound.
    pub fn submit(&self, connection_id: u64, pending: Pending) -> Result<(), Box<Pending>> {
        let lane = &self.lanes[(connection_id as usize) % self.lanes.len()];
        lane.try_send(Queued {
            at: std::time::Instant::now(),
            connection_id,
            // Counted here, on the connection's task, rather than on the lane's.
            bytes: encoded_len(&pending.item),
            pending,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q) => {
                Box::new(q.pending)
            }
        })
    }

    async fn run_lane(self, lane: usize, batches_in_flight: usize, mut rx: mpsc::Receiver<Queued>) {
        let mut start_at = lane;
        let mut waiting: VecDeque<Queued> = VecDeque::new();
        // Connections with an item in a batch in flight: their next items wait for it.
        let mut busy: HashSet<u64> = HashSet::new();
        let mut in_flight = FuturesUnordered::new();
        let mut closed = false;
        loop {
            while in_flight.len() < batches_in_flight {
                let batch = take_batch(&mut waiting, &busy);
                if batch.is_empty() {
                    break;
                }
                busy.extend(batch.iter().map(|q| q.connection_id));
                in_flight.push(self.clone().post_batch(batch, start_at));
            }
            if closed && in_flight.is_empty() {
                return;
            }
            tokio::select! {
                received = rx.recv(), if !closed && waiting.len() < MAX_WAITING_PER_LANE => {
                    match received {
                        Some(queued) => {
                            waiting.push_back(queued);
                            while waiting.len() < MAX_WAITING_PER_LANE {
                                match rx.try_recv() {
                                    Ok(queued) => waiting.push_back(queued),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => closed = true,
                    }
                }
                Some((connections, answered_by)) = in_flight.next(), if !in_flight.is_empty() => {
                    for connection in connections {
                        busy.remove(&connection);
                    }
                    start_at = answered_by;
                }
                else => return,
            }
        }
    }

    /// Posts one batch (to the manager that answered last, else the next) and hands out the
    /// replies; answers the batch's connections and the manager to start at next time. The
    /// batch is the first step of a new W3C trace (span `batch`): its `traceparent` goes to the
    /// manager with the batch id, and every send in it is followed under that trace.
    async fn post_batch(self, batch: Vec<Queued>, start_at: usize) -> (Vec<u64>, usize) {
        let connections: Vec<u64> = batch.iter().map(|q| q.connection_id).collect();
        let mut queued_at = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for q in batch {
            queued_at.push(q.at);
            items.push(q.pending);
        }
        let batch_id = ulid::Ulid::new().to_string();
        let span =
            tracing::info_span!("batch", batch = %batch_id, trace_id = tracing::field::Empty);
        let trace = telemetry::trace::join(&span, None);
        let answered_by = self
            .clone()
            .post_traced(items, queued_at, start_at, Traced { batch_id, trace })
            .instrument(span)
            .await;
        (connections, answered_by)
    }

    /// [`Self::post_batch`]'s round trip, inside the batch's span: answers the manager to
    /// start at next time.
    async fn post_traced(
        self,
        items: Vec<Pending>,
        queued_at: Vec<std::time::Instant>,
        start_at: usize,
        traced: Traced,
    ) -> usize {
        let body = ServerBatch {
            items: items.iter().map(|p| p.item.clone()).collect(),
        };
        let path = format!("/internal/v1/handlers/{}/batch", self.server_id);
        let mut answered_by = start_at;
        let posted = std::time::Instant::now();
        let result: Result<ServerBatchReply, ManagerUnavailable> = self
            .post_any(&path, &body, Some(&traced), &mut answered_by)
            .await;
        self.metrics
            .batch_seconds
            .observe(posted.elapsed().as_secs_f64());
        for at in queued_at {
            self.metrics
                .answer_seconds
                .observe(at.elapsed().as_secs_f64());
        }
        match result {
            Ok(reply) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_answers(&traced, &items, &reply.replies);
                }
                if only_unavailable(items.iter().map(|p| &p.item), &reply.replies)
                    && !self.urls.is_empty()
                {
                    // A manager that answers but cannot number (its Redis or broker cut off)
                    // must not keep the lane: the next batch starts at the next manager.
                    tracing::warn!(
                        batch = %traced.batch_id,
                        manager = %self.urls[answered_by % self.urls.len()],
                        "the manager answered every send unavailable; the lane moves on"
                    );
                    answered_by = (answered_by + 1) % self.urls.len();
                }
                hand_out(items, reply.replies);
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = %traced.batch_id, items = items.len(), "manager batch failed");
                for pending in items {
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
        answered_by
    }

    /// POSTs `body` to `path` on the first manager that answers with success, starting at
    /// `*start_at` and remembering which one worked: two passes over the managers, every
    /// non-success answer moving on (a batch is idempotent by its batch id and items).
    async fn post_any<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        batch: Option<&Traced>,
        start_at: &mut usize,
    ) -> Result<R, ManagerUnavailable> {
        let cursor = Cursor::at(*start_at);
        // One 55-byte string per batch (not per send).
        let traceparent = batch.map(|b| b.trace.to_string());
        let headers: &[(&str, &str)] = match (batch, &traceparent) {
            (Some(b), Some(tp)) => &[(BATCH_ID_HEADER, &b.batch_id), (TRACEPARENT_HEADER, tp)],
            _ => &[],
        };
        let answer = self
            .managers
            .call_from(
                &cursor,
                Method::POST,
                path,
                Some(body),
                headers,
                ANY_MANAGER,
            )
            .await;
        *start_at = cursor.get();
        answer.map_err(|e| ManagerUnavailable(e.to_string()))
    }

    /// Links this server to the managers (its topic made if need be; refused while a reap of
    /// it is under way); returns the topic to consume.
    pub async fn register(&self) -> Result<String, ManagerUnavailable> {
        let mut start = 0;
        let reply: ServerRegistered = self
            .post_any(
                "/internal/v1/handlers",
                &ServerRegistration {
                    server_id: self.server_id.clone(),
                },
                None,
                &mut start,
            )
            .await?;
        Ok(reply.topic)
    }

    pub async fn renew(&self, users: Vec<String>) -> Result<(), ManagerUnavailable> {
        let path = format!("/internal/v1/handlers/{}/renew", self.server_id);
        let mut start = 0;
        let _: serde_json::Value = self
            .post_any(&path, &RenewRequest { users }, None, &mut start)
            .await?;
        Ok(())
    }

    /// Tells the managers this handler is going away (best effort; the janitor covers it).
    pub async fn deregister(&self) {
        let path = format!("/internal/v1/handlers/{}", self.server_id);
        let policy = Failover {
            retry: Retry::AnyExcept(&[]),
            ..Failover::ONCE
        };
        let _ = self
            .managers
            .send_from::<()>(&Cursor::default(), Method::DELETE, &path, None, policy)
            .await;
    }
}

/// A batch's ids: the batch id (`x-sb-batch`) and this server's step of the batch's W3C trace
/// (`traceparent`).
struct Traced {
    batch_id: String,
    trace: TraceParent,
}

/// Hands each reply to its connection and signals the items that wait to be applied.
fn hand_out(items: Vec<Pending>, replies: Vec<Option<ServerFrame>>) {
    for (pending, frame) in items.into_iter().zip(replies) {
        if let (Some(frame), Some(to)) = (frame, &pending.reply_to) {
            let _ = to.try_send(Outbound::Frame(frame.to_json().into()));
        }
        if let Some(done) = pending.done {
            let _ = done.send(true);
        }
    }
}

/// One debug line per send of an answered batch: the batch id (also in the manager's span),
/// the trace (`traceparent` as sent, and its `trace_id`, which every later line of the send
/// carries), the client's `client_msg_id` and what the manager answered (`message_id` and
/// `seq`, or the error code), so a send can be followed from here through the manager and
/// the log.
fn log_answers(traced: &Traced, items: &[Pending], replies: &[Option<ServerFrame>]) {
    let batch_id = traced.batch_id.as_str();
    let (traceparent, trace_id) = (&traced.trace, traced.trace.trace_id);
    for (pending, reply) in items.iter().zip(replies) {
        let ServerItem::Frame {
            frame:
                ClientFrame::Send {
                    client_msg_id,
                    conversation_id,
                    ..
                },
            ..
        } = &pending.item
        else {
            continue;
        };
        match reply {
            Some(ServerFrame::Sent {
                message_id, seq, ..
            }) => tracing::debug!(
                batch = batch_id,
                %traceparent,
                %trace_id,
                %client_msg_id,
                %conversation_id,
                %message_id,
                seq,
                "sent"
            ),
            Some(ServerFrame::Error { code, .. }) => tracing::debug!(
                batch = batch_id,
                %client_msg_id,
                %conversation_id,
                code = code.as_str(),
                "send refused"
            ),
            _ => {}
        }
    }
}

/// Whether a batch with sends in it had every send answered `unavailable`: the manager
/// answered, but cannot number anything.
fn only_unavailable<'a>(
    items: impl IntoIterator<Item = &'a ServerItem>,
    replies: &[Option<ServerFrame>],
) -> bool {
    let mut sends = 0;
    for (item, reply) in items.into_iter().zip(replies) {
        if let ServerItem::Frame { frame, .. } = item {
            if frame.client_msg_id().is_none() {
                continue;
            }
            sends += 1;
            let unavailable = matches!(
                reply,
                Some(ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    ..
                })
            );
            if !unavailable {
                return false;
            }
        }
    }
    sends > 0
}

/// What a client is told when no manager can take its frame.
pub fn unavailable_reply(item: &ServerItem) -> Option<ServerFrame> {
    match item {
        ServerItem::Frame { frame, .. } => Some(ServerFrame::Error {
            code: ErrorCode::Unavailable,
            message: "the cluster is unavailable, retry shortly".into(),
            client_msg_id: frame.client_msg_id().map(str::to_owned),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_whose_every_send_is_unavailable_moves_the_lane() {
        let send = |id: &str| ServerItem::Frame {
            connection_id: 1,
            user_id: "alice".parse().unwrap(),
            frame: ClientFrame::Send {
                conversation_id: "c".into(),
                client_msg_id: id.into(),
                body: "hi".into(),
                attachments: Vec::new(),
                reply_to: None,
            },
        };
        let connected = ServerItem::Connected {
            connection_id: 2,
            user_id: "bob".parse().unwrap(),
        };
        let (a, b) = (send("a"), send("b"));
        let items = [&connected, &a, &b];
        let unavailable = unavailable_reply(&a);
        let sent = Some(ServerFrame::Pong);
        assert!(only_unavailable(
            items,
            &[None, unavailable.clone(), unavailable.clone()]
        ));
        assert!(!only_unavailable(
            items,
            &[None, unavailable.clone(), sent.clone()]
        ));
        assert!(
            !only_unavailable([&connected], &[None]),
            "no sends: nothing to judge"
        );
    }

    fn queued(connection_id: u64, n: u64) -> Queued {
        let item = ServerItem::Connected {
            connection_id,
            user_id: format!("item-{n}").parse().unwrap(),
        };
        Queued {
            at: std::time::Instant::now(),
            connection_id,
            bytes: encoded_len(&item),
            pending: Pending {
                item,
                reply_to: None,
                done: None,
            },
        }
    }

    /// A send of a 43,000-byte body of U+0001: 258,000 bytes once encoded.
    fn poison(connection_id: u64, n: u64) -> Queued {
        let item = ServerItem::Frame {
            connection_id,
            user_id: "mallory".parse().unwrap(),
            frame: ClientFrame::Send {
                conversation_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
                client_msg_id: format!("item-{n}"),
                body: "\u{1}".repeat(43_000),
                attachments: Vec::new(),
                reply_to: None,
            },
        };
        Queued {
            at: std::time::Instant::now(),
            connection_id,
            bytes: encoded_len(&item),
            pending: Pending {
                item,
                reply_to: None,
                done: None,
            },
        }
    }

    fn names(batch: &[Queued]) -> Vec<String> {
        batch
            .iter()
            .map(|q| match &q.pending.item {
                ServerItem::Connected { user_id, .. } => user_id.to_string(),
                ServerItem::Frame {
                    frame: ClientFrame::Send { client_msg_id, .. },
                    ..
                } => client_msg_id.clone(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn batches_are_cut_by_encoded_bytes_and_keep_each_connections_order() {
        // 70 poison sends from 4 connections, small frames between them: 256 items by count,
        // but about 18 MB of JSON, over the manager's 16 MiB body limit in one batch.
        let mut waiting: VecDeque<Queued> = (0..70u64)
            .flat_map(|n| [poison(n % 4, n), queued(10 + n % 3, 100 + n)])
            .collect();
        let mut batches = Vec::new();
        while !waiting.is_empty() {
            let batch = take_batch(&mut waiting, &HashSet::new());
            assert!(!batch.is_empty());
            let body = serde_json::to_vec(&ServerBatch {
                items: batch.iter().map(|q| q.pending.item.clone()).collect(),
            })
            .unwrap();
            assert!(body.len() <= MAX_BATCH_BYTES, "{} bytes", body.len());
            let counted: usize = batch.iter().map(|q| q.bytes).sum();
            // `{"items":[` and `]}` around the items, one comma fewer than counted.
            assert_eq!(body.len(), counted + 11, "the count is the encoding's");
            batches.push(names(&batch));
        }
        assert!(batches.len() >= 5, "{} batches", batches.len());
        let order: Vec<String> = batches.concat();
        let expected: Vec<String> = (0..70u64)
            .flat_map(|n| [format!("item-{n}"), format!("item-{}", 100 + n)])
            .collect();
        assert_eq!(order, expected, "every item once, in the order queued");
        // A single item larger than the cap still goes, alone.
        let mut big = poison(1, 0);
        big.bytes = MAX_BATCH_BYTES + 1;
        let mut waiting: VecDeque<Queued> = [big, queued(2, 1)].into_iter().collect();
        assert_eq!(
            names(&take_batch(&mut waiting, &HashSet::new())),
            ["item-0"]
        );
        assert_eq!(names(waiting.make_contiguous()), ["item-1"]);
    }

    #[test]
    fn a_connection_in_flight_waits_and_keeps_its_order() {
        // Connection 1 has a batch in flight; 2 and 3 do not.
        let busy: HashSet<u64> = [1].into();
        let mut waiting: VecDeque<Queued> = [(1, 0), (2, 1), (1, 2), (3, 3), (2, 4)]
            .into_iter()
            .map(|(c, n)| queued(c, n))
            .collect();
        let batch = take_batch(&mut waiting, &busy);
        assert_eq!(names(&batch), ["item-1", "item-3", "item-4"]);
        assert_eq!(names(waiting.make_contiguous()), ["item-0", "item-2"]);
        // Once 1's batch is answered, its items go out in the order they came.
        let batch = take_batch(&mut waiting, &HashSet::new());
        assert_eq!(names(&batch), ["item-0", "item-2"]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_batch_is_capped_and_the_rest_keeps_its_order() {
        let mut waiting: VecDeque<Queued> =
            (0..MAX_BATCH as u64 + 3).map(|n| queued(n, n)).collect();
        let batch = take_batch(&mut waiting, &HashSet::new());
        assert_eq!(batch.len(), MAX_BATCH);
        let rest = names(waiting.make_contiguous());
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0], format!("item-{MAX_BATCH}"));
    }
}
