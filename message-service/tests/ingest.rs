//! Ingest against a real broker (tansu) and PostgreSQL, in process.
//!
//! The offset bug of issue 8: a message service stopped while PostgreSQL is down must not
//! commit the offsets of the batch it could not insert (the consumer commits stored offsets in
//! the background and once more when it closes), or the next instance starts past records
//! that were never stored.

use std::path::Path;
use std::time::{Duration, Instant};

use message_service::ingest::Ingest;
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
                .key(&record.conversation_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn record(conversation_id: &str, seq: u64) -> LogRecord {
    LogRecord {
        conversation_id: conversation_id.into(),
        seq,
        message_id: format!("m{seq}"),
        sender_id: "alice".into(),
        client_msg_id: format!("c{seq}"),
        body: format!("message {seq}"),
        created_at: switchboard_protocol::Timestamp::now(),
    }
}

/// Starts ingest as the message service does (its own consumer, same group).
async fn start_ingest(
    kafka: &KafkaConfig,
    store: &Store,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let ingest = Ingest::new(
        kafka,
        store.clone(),
        &Ops::new("message-service"),
        100,
        message_service::settled::IngestProgress::default(),
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
        let seqs: Vec<i64> = match store.history(conversation_id, 0, 100).await {
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
