//! The attachments' lifecycle in the database and on a real S3-compatible store (Garage, as
//! the stack runs it): the trigger links a claimed attachment to its message when the message
//! is stored, and the sweeper deletes the objects nobody references (past the TTL) and those
//! of deleted messages (`mark_message_deleted`), while keeping a referenced one.
//!
//! The send path (upload, verification, refusals) is the e2e test `attachments`.

use std::time::Duration;

use message_service::attachments::{mark_message_deleted, sweeper, Attachments, AttachmentsConfig};
use message_service::store::Store;
use sqlx::postgres::PgPool;
use switchboard_test_support::object_store::ObjectStore;
use switchboard_test_support::shared;

/// Puts `bytes` at `key` through a pre-signed URL, as a client would.
async fn put(store: &message_service::attachments::s3::ObjectStore, key: &str, bytes: &[u8]) {
    let url = store.upload_url(
        key,
        "text/plain",
        bytes.len() as u64,
        Duration::from_secs(60),
    );
    let status = reqwest::Client::new()
        .put(url)
        .header("content-type", "text/plain")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

async fn attachment(pool: &PgPool, id: &str, key: &str, claimed: Option<&str>, age_days: i32) {
    sqlx::query(
        "INSERT INTO attachments (id, conversation_id, uploader_id, object_key, filename, content_type, size,
                                  claimed_client_msg_id, claimed_at, created_at)
         VALUES ($1, 'C1', 'alice', $2, 'f.txt', 'text/plain', 5, $3,
                 CASE WHEN $3::text IS NULL THEN NULL ELSE now() - make_interval(days => $4) END,
                 now() - make_interval(days => $4))",
    )
    .bind(id)
    .bind(key)
    .bind(claimed)
    .bind(age_days)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_and_deleted_messages_objects_are_swept_and_referenced_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let garage = ObjectStore::start(&dir.path().join("garage"), &dir.path().join("logs"))
        .await
        .unwrap();
    let url = shared::fresh_database("attachments_sweeper").await;
    let _store = Store::connect(&url, 2).await.unwrap(); // runs the migrations
    let pool = PgPool::connect(&url).await.unwrap();
    let env = garage.env();
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = AttachmentsConfig::from_lookup(&lookup).unwrap();
    let objects = ObjectStoreHandle::new(&config);
    let attachments = Attachments::new(config).unwrap();

    // A: uploaded two days ago, never sent. B: sent (claimed) two days ago, its message stored.
    // C: fresh and unreferenced (within the TTL).
    for (id, claimed) in [("A", None), ("B", Some("m1")), ("C", None)] {
        let key = format!("c/C1/{id}");
        put(&objects.0, &key, b"hello").await;
        attachment(&pool, id, &key, claimed, if id == "C" { 0 } else { 2 }).await;
    }
    // Ingest stores B's message: the trigger links the claimed attachment to it.
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, message_id, sender_id, client_msg_id, body, created_at)
         VALUES ('C1', 1, '01HZY00000000000000000000M', 'alice', 'm1', 'see attached', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let linked: Option<String> =
        sqlx::query_scalar("SELECT message_id FROM attachments WHERE id = 'B'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        linked.as_deref(),
        Some("01HZY00000000000000000000M"),
        "the trigger links the claim"
    );
    // The message is searchable through the generated tsvector.
    let found: bool = sqlx::query_scalar(
        "SELECT search @@ websearch_to_tsquery('simple', 'ATTACHED') FROM messages WHERE message_id = '01HZY00000000000000000000M'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(found);

    // A round: only A goes.
    assert_eq!(sweeper::sweep_once(&attachments, &pool).await.unwrap(), 1);
    assert!(
        objects.0.head("c/C1/A").await.unwrap().is_none(),
        "A deleted"
    );
    assert!(
        objects.0.head("c/C1/B").await.unwrap().is_some(),
        "B referenced: kept"
    );
    assert!(
        objects.0.head("c/C1/C").await.unwrap().is_some(),
        "C within the TTL: kept"
    );
    let gone: bool =
        sqlx::query_scalar("SELECT object_deleted_at IS NOT NULL FROM attachments WHERE id = 'A'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(gone);

    // B's message is deleted: its object goes on the next round.
    assert_eq!(
        mark_message_deleted(&pool, &"01HZY00000000000000000000M".parse().unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(sweeper::sweep_once(&attachments, &pool).await.unwrap(), 1);
    assert!(
        objects.0.head("c/C1/B").await.unwrap().is_none(),
        "B deleted"
    );
    assert!(objects.0.head("c/C1/C").await.unwrap().is_some());
    assert_eq!(sweeper::sweep_once(&attachments, &pool).await.unwrap(), 0);
}

/// The service's own S3 client, for the test's uploads and checks.
struct ObjectStoreHandle(message_service::attachments::s3::ObjectStore);

impl ObjectStoreHandle {
    fn new(config: &AttachmentsConfig) -> Self {
        ObjectStoreHandle(
            message_service::attachments::s3::ObjectStore::new(config.store.as_ref().unwrap())
                .unwrap(),
        )
    }
}
