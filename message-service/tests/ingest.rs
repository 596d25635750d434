//! Ingest against a real broker (tansu) and PostgreSQL, in process.
//!
//! The offset bug of issue 8: a message service stopped while PostgreSQL is down must not
//! commit the offsets of the batch it could not insert (the consumer commits stored offsets in
//! the background and once more when it closes), or the next instance starts past records
//! that were never stored.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use message_service::ingest::Ingest;
use message_service::settled::{IngestProgress, Settled};
use message_service::store::Store;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_kafka::KafkaConfig;
use switchboard_message_log::LogRecord;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::{free_port, Broker, Postgres};

async fn create_topics(kafka: &KafkaConfig) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let topics = [
        NewTopic::new(&kafka.message_topic, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&kafka.events_topic, 1, TopicReplication::Fixed(1)),
    ];
    let results = admin
        .create_topics(
            topics.iter(),
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

async fn produce(producer: &FutureProducer, kafka: &KafkaConfig, record: &LogRecord) {
    let payload = serde_json::to_vec(record).unwrap();
    producer
        .send(
            FutureRecord::to(&kafka.message_topic)
                .key(record.conversation_id.as_str())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The message id the test calls `name` (`m1`, `e1-2`): a ULID, the same one each time.
fn mid(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    ulid::Ulid::from_parts(1, u128::from(hash)).to_string()
}

fn record(conversation_id: &str, seq: u64) -> LogRecord {
    LogRecord {
        conversation_id: conversation_id.parse().unwrap(),
        seq,
        message_id: mid(&format!("m{seq}")).parse().unwrap(),
        sender_id: "alice".parse().unwrap(),
        client_msg_id: format!("c{seq}"),
        body: format!("message {seq}"),
        created_at: switchboard_protocol::Timestamp::now(),
        epoch: 0,
        attachments: Vec::new(),
        event: None,
        traceparent: None,
    }
}

/// Starts ingest as the message service does (its own consumer, same group).
async fn start_ingest(
    kafka: &KafkaConfig,
    store: &Store,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start_ingest_with(kafka, store, IngestProgress::default(), 0).await
}

async fn start_ingest_with(
    kafka: &KafkaConfig,
    store: &Store,
    progress: IngestProgress,
    rewind: u64,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let ingest = Ingest::new(
        kafka,
        store.clone(),
        &Ops::new("message-service"),
        100,
        rewind,
        progress,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingest.run(shutdown.clone()));
    (shutdown, task)
}

async fn stored_seqs(
    store: &Store,
    conversation_id: &str,
    want: usize,
    within: Duration,
) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        let seqs: Vec<i64> = match store
            .history(&conversation_id.parse().unwrap(), 0, 100)
            .await
        {
            Ok(messages) => messages.into_iter().map(|m| m.seq).collect(),
            Err(_) => Vec::new(),
        };
        if seqs.len() >= want || Instant::now() > deadline {
            return seqs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_postgres(dir: &Path, port: u16) -> Postgres {
    Postgres::start(&dir.join("pg"), port, &dir.join("logs"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_while_the_database_is_down_ingest_commits_no_offset_it_did_not_store() {
    let dir = tempfile::tempdir().unwrap();
    let pg_port = free_port();
    let pg = start_postgres(dir.path(), pg_port).await;
    let broker = Broker::start_with(
        &dir.path().join("broker"),
        free_port(),
        &dir.path().join("logs"),
        None,
    )
    .await
    .unwrap();
    let mut kafka = KafkaConfig::from_env().unwrap();
    kafka.brokers = broker.bootstrap();
    create_topics(&kafka).await;
    let producer: FutureProducer = kafka.producer_config(10_000).create().unwrap();
    let store = Store::connect(&pg.url(), 4).await.unwrap();
    let conv = store
        .create_group("alice", "g", &["alice".to_owned()])
        .await
        .unwrap()
        .id;

    let (shutdown, task) = start_ingest(&kafka, &store).await;
    produce(&producer, &kafka, &record(&conv, 1)).await;
    assert_eq!(
        stored_seqs(&store, &conv, 1, Duration::from_secs(30)).await,
        vec![1]
    );
    // Let the background commit take the first offset, so what follows is about the second.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The database goes down; a record arrives and cannot be inserted; the service is told
    // to stop (SIGTERM) while it is still retrying.
    pg.process.stop(Duration::from_secs(10)).await;
    produce(&producer, &kafka, &record(&conv, 2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("ingest stops when told, even with the database down")
        .unwrap();

    // The database is back and a new instance starts: it resumes at the record that was
    // never stored, rather than past it.
    let _pg = start_postgres(dir.path(), pg_port).await;
    let (shutdown, task) = start_ingest(&kafka, &store).await;
    assert_eq!(
        stored_seqs(&store, &conv, 2, Duration::from_secs(30)).await,
        vec![1, 2],
        "the record that arrived while the database was down is stored after the restart"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// One broker, one database, topics made.
async fn log_and_store(dir: &Path) -> (Postgres, Broker, KafkaConfig, FutureProducer, Store) {
    let pg = start_postgres(dir, free_port()).await;
    let broker = Broker::start_with(&dir.join("broker"), free_port(), &dir.join("logs"), None)
        .await
        .unwrap();
    let mut kafka = KafkaConfig::from_env().unwrap();
    kafka.brokers = broker.bootstrap();
    create_topics(&kafka).await;
    let producer: FutureProducer = kafka.producer_config(10_000).create().unwrap();
    let store = Store::connect(&pg.url(), 4).await.unwrap();
    (pg, broker, kafka, producer, store)
}

async fn dead_letter_errors(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT error FROM dead_letters ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// Fencing the log (issue 23, two coincident faults): a deposed lease holder's record,
/// numbered under epoch 1 and landing after epoch 2's fence with a seq above its floor, is
/// refused, whether it lands before (stored, then moved to dead_letters when epoch 2's first
/// record lands) or after the message epoch 2 gave that seq; records of the current epoch,
/// and older ones below the floor, are stored; a fence whose epoch nobody used refuses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_holders_late_append_is_fenced_whichever_lands_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, _broker, kafka, producer, store) = log_and_store(dir.path()).await;
    let conv = "01J0FENCEDC0NVERSAT10N0000";
    let conv_id = conv.parse().unwrap();
    let progress = IngestProgress::default();
    let settled = Settled::new(&kafka, store.clone(), progress.clone()).unwrap();
    let (shutdown, task) = start_ingest_with(&kafka, &store, progress, 0).await;
    let within = Duration::from_secs(20);
    let at = |seq: u64, epoch: u64, id: &str| LogRecord {
        message_id: mid(id).parse().unwrap(),
        client_msg_id: id.into(),
        epoch,
        ..record(conv, seq)
    };

    let first = settled.fence(&conv_id, 1, within).await.unwrap();
    assert_eq!((first.epoch, first.floor), (1, 0), "a new conversation");
    for seq in 1..=2 {
        produce(&producer, &kafka, &at(seq, 1, &format!("e1-{seq}"))).await;
    }
    // A failover: the new master never saw seq 3, which the deposed holder numbered and is
    // still appending.
    let second = settled.fence(&conv_id, 1, within).await.unwrap();
    assert_eq!((second.epoch, second.floor), (2, 2));
    // The late record lands first, then the message epoch 2 gave seq 3.
    produce(&producer, &kafka, &at(3, 1, "late-3")).await;
    produce(&producer, &kafka, &at(3, 2, "e2-3")).await;
    let third = settled.fence(&conv_id, 1, within).await.unwrap();
    assert_eq!((third.epoch, third.floor), (3, 3));
    // Now the other order: the new epoch's message first, the deposed holder's after.
    produce(&producer, &kafka, &at(4, 3, "e3-4")).await;
    produce(&producer, &kafka, &at(4, 2, "late-4")).await;
    // A record of an old epoch below the floor is a redelivery, not a late append.
    produce(&producer, &kafka, &at(2, 1, "e1-2")).await;
    // An abandoned check (its caller timed out and retried; the retry adopted epoch 3) takes
    // epoch 4 and appends its fence late, after epoch 3's numbering went on: nobody numbers
    // under epoch 4, so its fence refuses nothing, and epoch 3's acknowledged seq 5 is stored.
    let abandoned = settled.fence(&conv_id, 1, within).await.unwrap();
    assert_eq!((abandoned.epoch, abandoned.floor), (4, 4));
    produce(&producer, &kafka, &at(5, 3, "e3-5")).await;
    settled.fence(&conv_id, 1, within).await.unwrap();

    let stored: Vec<(i64, String)> = store
        .history(&conv_id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.message_id.into_string()))
        .collect();
    assert_eq!(
        stored,
        [
            (1, "e1-1"),
            (2, "e1-2"),
            (3, "e2-3"),
            (4, "e3-4"),
            (5, "e3-5")
        ]
        .map(|(s, m)| (s, mid(m)))
        .to_vec()
    );
    let errors = dead_letter_errors(&store).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.starts_with("fenced:")),
        "{errors:?}"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// Settled fails closed: with the broker gone, a fence cannot be appended, and the answer is
/// an error, never a floor read from a store that may be behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_without_the_broker_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, broker, kafka, _producer, store) = log_and_store(dir.path()).await;
    let progress = IngestProgress::default();
    let settled = Settled::new(&kafka, store.clone(), progress.clone()).unwrap();
    let (shutdown, task) = start_ingest_with(&kafka, &store, progress, 0).await;
    let conv = "01J0C10SEDC0NVERSAT10N0000".parse().unwrap();
    settled
        .fence(&conv, 1, Duration::from_secs(20))
        .await
        .unwrap();
    broker.process.kill9();
    let refused = settled.fence(&conv, 1, Duration::from_secs(3)).await;
    assert!(refused.is_err(), "{refused:?}");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// Durable ingest: rows a restored database lost (committed offsets moved past them) are
/// written again on start, from the rewind window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_start_ingest_rewinds_and_writes_again_what_the_database_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, _broker, kafka, producer, store) = log_and_store(dir.path()).await;
    let conv = "01J0REW1NDC0NVERSAT10N0000";
    let (shutdown, task) = start_ingest(&kafka, &store).await;
    for seq in 1..=5 {
        produce(&producer, &kafka, &record(conv, seq)).await;
    }
    assert_eq!(
        stored_seqs(&store, conv, 5, Duration::from_secs(30))
            .await
            .len(),
        5
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the background offset commit
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    // A point-in-time restore lost the last three rows, not the offsets.
    sqlx::query("DELETE FROM messages WHERE conversation_id = $1 AND seq > 2")
        .bind(conv)
        .execute(store.pool())
        .await
        .unwrap();
    let (shutdown, task) = start_ingest_with(&kafka, &store, IngestProgress::default(), 1000).await;
    assert_eq!(
        stored_seqs(&store, conv, 5, Duration::from_secs(30)).await,
        vec![1, 2, 3, 4, 5]
    );
    assert!(
        dead_letter_errors(&store).await.is_empty(),
        "redeliveries are not conflicts"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// A database that refuses writes for want of resources (SQLSTATE 53100, disk full, raised
/// here by a trigger) raises the storage alarm and fails readiness; ingest keeps retrying
/// and clears both once writes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_raises_the_storage_alarm_until_writes_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, _broker, kafka, producer, store) = log_and_store(dir.path()).await;
    sqlx::query(
        "CREATE FUNCTION disk_full() RETURNS trigger AS $$
         BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = '53100'; END $$ LANGUAGE plpgsql",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER disk_full BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION disk_full()")
        .execute(store.pool())
        .await
        .unwrap();
    let ingest = Ingest::new(
        &kafka,
        store.clone(),
        &Ops::new("message-service"),
        100,
        0,
        IngestProgress::default(),
    )
    .unwrap();
    let ready = ingest.alarm().readiness_check();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingest.run(shutdown.clone()));
    let conv = "01J0D1SKFV11C0NVERSAT10N00";
    produce(&producer, &kafka, &record(conv, 1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready().await.is_ok() {
        assert!(Instant::now() < deadline, "the alarm was never raised");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("DROP TRIGGER disk_full ON messages")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        stored_seqs(&store, conv, 1, Duration::from_secs(30)).await,
        vec![1]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready().await.is_err() {
        assert!(Instant::now() < deadline, "the alarm was never cleared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}
