//! PostgreSQL access: the pool and the queries of each resource, by resource, so the schema
//! and its uses read side by side.
//!
//! - `conversations`: creating conversations (direct, group), one conversation, the list;
//! - `members`: roles, joining, leaving, invitations;
//! - `outboxes`: what a membership change records in its own transaction (the mirror's
//!   outbox, the events topic's outbox) and their readers;
//! - `history`: the stored messages of a conversation;
//! - `receipts`: members' delivered/read positions;
//! - `presence`: who may see whose presence;
//! - `blocks` and `quotas`: per-user limits;
//! - `dead_letters`: log positions, dead letters and a batch's outcome, as ingest writes them.
//!
//! Inserting a batch of log records ([`Store::insert_batch`]) is ingest's own step, beside the
//! message events it applies in the same transaction: `crate::ingest::batch`. Message events'
//! queries live in `crate::events`, attachments' in `crate::attachments`, log fences' in
//! `crate::log_fences`, search in `crate::search`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
pub use switchboard_protocol::conversations::{
    Conversation, ConversationSummary, MemberReceipt, Role, StoredMessage,
};
use switchboard_service_kit::tls::PostgresTls;

mod blocks;
mod conversations;
mod dead_letters;
mod history;
mod members;
mod outboxes;
mod presence;
mod quotas;
mod receipts;

pub use blocks::MAX_BLOCKS;
pub use conversations::ListCursor;
pub(crate) use dead_letters::insert_dead_letters;
pub use dead_letters::{is_data_error, BatchOutcome, Conflict, DeadLetter, LogPosition, Sourced};
pub(crate) use history::stored_message;
pub use members::{Accepted, Added, Invitation, MemberState};
pub use receipts::{merge_receipts, ReceiptUpdate};

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// One pool's settings ([`Store::connect_with`]).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// The session's `statement_timeout` (0: none).
    pub statement_timeout_ms: u64,
    /// How long a query waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// Runs the migrations (one pool per process does).
    pub migrate: bool,
}

/// A timestamp as the API writes it (RFC 3339, milliseconds, `Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Connects (retrying for up to 30 s while the database starts) and runs migrations.
    ///
    /// Every session commits synchronously (`synchronous_commit=on`) whatever the server's
    /// default: ingest stores a log offset only once its rows are committed, so a commit the
    /// server could still lose (`off`, or `local` with a standby that is then promoted) would
    /// let acknowledged messages vanish from history for good.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::connect_with(
            url,
            PoolSettings {
                max_connections,
                statement_timeout_ms: 0,
                acquire_timeout: Duration::from_secs(5),
                migrate: true,
            },
        )
        .await
    }

    /// [`Self::connect`] with the pool's own settings: the message service opens two pools,
    /// one for ingest (which runs the migrations) and one for the public REST API, with a
    /// `statement_timeout` so no client request holds a connection for long.
    pub async fn connect_with(url: &str, settings: PoolSettings) -> anyhow::Result<Self> {
        let mut session = vec![("synchronous_commit", "on".to_owned())];
        if settings.statement_timeout_ms > 0 {
            session.push((
                "statement_timeout",
                settings.statement_timeout_ms.to_string(),
            ));
        }
        // SB_POSTGRES_SSLMODE / SB_POSTGRES_CA_FILE become the URL's sslmode and sslrootcert.
        let url = PostgresTls::url_from_env(url)?;
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options(session);
        let mut attempt = 0;
        let pool = loop {
            match PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    let error = PostgresTls::explain(&e.to_string());
                    tracing::warn!(%error, "database not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(anyhow::anyhow!(PostgresTls::explain(&e.to_string()))),
            }
        };
        if settings.migrate {
            sqlx::migrate!("./migrations").run(&pool).await?;
        }
        Ok(Store { pool })
    }

    /// The pool, for the queries that live beside their own contract ([`crate::log_fences`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// A transaction on one pool.
pub(crate) type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// A transaction-scoped advisory lock on (`what`, `user`): serializes one user's
/// check-then-insert (quotas, the block list bound) across instances.
async fn lock_user(tx: &mut Tx<'_>, what: &str, user: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{what}|{user}"))
        .execute(&mut **tx)
        .await
        .map(|_| ())
}
