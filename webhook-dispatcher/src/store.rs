//! PostgreSQL: endpoints, their secrets, and every delivery. Every query is here.
//!
//! The dispatcher's tables and its migration history live in a schema of their own
//! (`SB_WEBHOOK_DB_SCHEMA`, default `webhooks`), created at startup and set as the only schema
//! on every connection's `search_path`: sqlx keeps one `_sqlx_migrations` table per schema,
//! and the message service's migrations in `public` of the same database must never be seen
//! as this service's (or the other way round).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, QueryBuilder, Row};
use switchboard_service_kit::tls::PostgresTls;

use crate::events::WebhookEvent;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// An endpoint as the API shows it (never its secrets).
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    /// Deliveries waiting (recorded, not yet delivered or dead-lettered).
    pub pending: i64,
}

/// A delivery due to be attempted.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub webhook_id: String,
    pub event_type: String,
    pub body: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// What recording a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// New deliveries queued.
    pub queued: u64,
    /// Dead-lettered at once: their endpoint's queue was full.
    pub overflowed: u64,
}

/// An enabled endpoint, as the consumer routes events to it.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: String,
    pub event_types: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Creates the schema if needed, connects with it as the only `search_path` entry
    /// (retrying for up to 30 s while the database starts) and runs the migrations there.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<Self> {
        // SB_POSTGRES_SSLMODE / SB_POSTGRES_CA_FILE become the URL's sslmode and sslrootcert.
        let url = PostgresTls::url_from_env(url)?;
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?;
        let mut attempt = 0;
        loop {
            match sqlx::PgConnection::connect_with(&options).await {
                Ok(mut conn) => {
                    // The name is checked by the config (lowercase letters, digits, _).
                    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await?;
                    break;
                }
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    let error = PostgresTls::explain(&e.to_string());
                    tracing::warn!(%error, "database not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(anyhow::anyhow!(PostgresTls::explain(&e.to_string()))),
            }
        }
        let options = options.options([
            ("search_path", schema.to_owned()),
            // A delivery is recorded before the topics' offsets move on: the commit must be
            // one the server cannot lose.
            ("synchronous_commit", "on".to_owned()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// A store that connects only when first used: for tests of what is answered before
    /// the database is asked (authentication, routing).
    #[cfg(test)]
    pub(crate) fn lazy(url: &str) -> Self {
        Store {
            pool: PgPoolOptions::new()
                .connect_lazy(url)
                .expect("a PostgreSQL URL"),
        }
    }

    /// The pool (the notifier's queue shares it: [`crate::push::queue`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn count_endpoints(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM endpoints")
            .fetch_one(&self.pool)
            .await
    }

    /// A new endpoint with its first secret.
    pub async fn create_endpoint(
        &self,
        id: &str,
        url: &str,
        event_types: &[String],
        secret: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO endpoints (id, url, event_types) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(url)
            .bind(event_types)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)")
            .bind(id)
            .bind(secret)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    const ENDPOINT_COLUMNS: &'static str = "e.id, e.url, e.event_types, e.created_at,
        e.disabled_at, e.disabled_reason, e.consecutive_failures,
        (SELECT count(*) FROM deliveries d WHERE d.endpoint_id = e.id AND d.state = 'pending') AS pending";

    fn endpoint_of(row: &sqlx::postgres::PgRow) -> Endpoint {
        let disabled_at: Option<DateTime<Utc>> = row.get("disabled_at");
        Endpoint {
            id: row.get("id"),
            url: row.get("url"),
            event_types: row.get("event_types"),
            created_at: row.get("created_at"),
            disabled: disabled_at.is_some(),
            disabled_at,
            disabled_reason: row.get("disabled_reason"),
            consecutive_failures: row.get("consecutive_failures"),
            pending: row.get("pending"),
        }
    }

    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM endpoints e ORDER BY e.created_at, e.id",
            Self::ENDPOINT_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(Self::endpoint_of).collect())
    }

    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM endpoints e WHERE e.id = $1",
            Self::ENDPOINT_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Self::endpoint_of))
    }

    /// Deletes an endpoint with its secrets and deliveries; `false` when there was none.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted == 1)
    }

    /// Makes `secret` the endpoint's current secret; the secrets signing until now keep
    /// signing for `overlap` (unless already retiring sooner). `false`: no such endpoint.
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        overlap: Duration,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE endpoint_secrets
                SET retire_at = LEAST(COALESCE(retire_at, 'infinity'),
                                      now() + make_interval(secs => $2))
              WHERE endpoint_id = $1",
        )
        .bind(id)
        .bind(overlap.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)")
            .bind(id)
            .bind(secret)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND retire_at < now()")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The secrets that sign now, the current one first.
    pub async fn signing_secrets(&self, id: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT secret FROM endpoint_secrets
              WHERE endpoint_id = $1 AND (retire_at IS NULL OR retire_at > now())
              ORDER BY retire_at IS NOT NULL, created_at DESC",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
    }

    /// The URL of an enabled endpoint (`None`: deleted or disabled).
    pub async fn target(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT url FROM endpoints WHERE id = $1 AND disabled_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Enables an endpoint again (its failure streak forgotten); `false`: no such endpoint.
    pub async fn enable(&self, id: &str) -> Result<bool, sqlx::Error> {
        let changed = sqlx::query(
            "UPDATE endpoints SET disabled_at = NULL, disabled_reason = NULL,
                    consecutive_failures = 0, failing_since = NULL
              WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// The enabled endpoints, for routing events.
    pub async fn routes(&self) -> Result<Vec<Route>, sqlx::Error> {
        let rows: Vec<(String, Vec<String>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, event_types, created_at FROM endpoints WHERE disabled_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, event_types, created_at)| Route {
                id,
                event_types,
                created_at,
            })
            .collect())
    }

    /// Records one batch's deliveries in one transaction (each endpoint's in the order
    /// given). A delivery already recorded is skipped; one whose endpoint already has
    /// `max_pending` waiting is recorded dead-lettered.
    pub async fn record(
        &self,
        deliveries: &[(&str, &WebhookEvent)],
        max_pending: i64,
    ) -> Result<Recorded, sqlx::Error> {
        let mut recorded = Recorded::default();
        if deliveries.is_empty() {
            return Ok(recorded);
        }
        let mut tx = self.pool.begin().await?;
        let mut endpoints: Vec<&str> = deliveries.iter().map(|(e, _)| *e).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT endpoint_id, count(*) FROM deliveries
              WHERE endpoint_id = ANY($1) AND state = 'pending' GROUP BY endpoint_id",
        )
        .bind(&endpoints)
        .fetch_all(&mut *tx)
        .await?;
        let mut room: std::collections::HashMap<&str, i64> = endpoints
            .iter()
            .map(|e| {
                let used = counts.iter().find(|(id, _)| id == e).map_or(0, |(_, n)| *n);
                (*e, max_pending - used)
            })
            .collect();
        for chunk in deliveries.chunks(1000) {
            let mut builder = QueryBuilder::new(
                "INSERT INTO deliveries (endpoint_id, webhook_id, event_type, ordering_key, ord, body, state, finished_at, last_error) ",
            );
            let mut states = Vec::with_capacity(chunk.len());
            for (endpoint, _) in chunk {
                let left = room.entry(endpoint).or_insert(0);
                *left -= 1;
                states.push(*left >= 0);
            }
            builder.push_values(
                chunk.iter().zip(&states),
                |mut b, ((endpoint, event), fits)| {
                    b.push_bind(*endpoint)
                        .push_bind(&event.id)
                        .push_bind(event.event_type)
                        .push_bind(&event.ordering_key)
                        .push_bind(event.ord)
                        .push_bind(&event.body);
                    if *fits {
                        b.push_bind("pending")
                            .push_bind(None::<DateTime<Utc>>)
                            .push_bind(None::<String>);
                    } else {
                        b.push_bind("dead").push("now()").push_bind(Some(
                            "the endpoint's queue was full (SB_WEBHOOK_MAX_PENDING)",
                        ));
                    }
                },
            );
            builder.push(" ON CONFLICT (endpoint_id, webhook_id) DO NOTHING RETURNING state");
            let rows: Vec<String> = builder.build_query_scalar().fetch_all(&mut *tx).await?;
            for state in rows {
                if state == "pending" {
                    recorded.queued += 1;
                } else {
                    recorded.overflowed += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Up to `limit` deliveries of the endpoint that may go now: the head of each of its
    /// streams (lowest pending `ord`, then record order), when the head is due.
    pub async fn due_heads(&self, endpoint_id: &str, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, webhook_id, event_type, body, attempts, created_at FROM (
                 SELECT DISTINCT ON (ordering_key) id, webhook_id, event_type, body, attempts,
                        created_at, next_attempt_at
                   FROM deliveries
                  WHERE endpoint_id = $1 AND state = 'pending'
                  ORDER BY ordering_key, ord, id
             ) heads
             WHERE next_attempt_at <= now()
             ORDER BY next_attempt_at, id
             LIMIT $2",
        )
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Due {
                id: r.get("id"),
                webhook_id: r.get("webhook_id"),
                event_type: r.get("event_type"),
                body: r.get("body"),
                attempts: r.get("attempts"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    /// How long until the endpoint's next pending delivery is due (`None`: nothing pending).
    pub async fn next_due_in(&self, endpoint_id: &str) -> Result<Option<Duration>, sqlx::Error> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(0, EXTRACT(EPOCH FROM (min(next_attempt_at) - now())))::float8
               FROM deliveries WHERE endpoint_id = $1 AND state = 'pending'",
        )
        .bind(endpoint_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// A delivery the endpoint accepted; its failure streak ends.
    pub async fn delivered(
        &self,
        endpoint_id: &str,
        id: i64,
        status: u16,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE deliveries SET state = 'delivered', finished_at = now(), attempts = attempts + 1,
                    last_status = $2, last_error = NULL
              WHERE id = $1",
        )
        .bind(id)
        .bind(i32::from(status))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE endpoints SET consecutive_failures = 0, failing_since = NULL
              WHERE id = $1 AND consecutive_failures <> 0",
        )
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// A failed attempt: retried at `retry_at`, or dead-lettered when `None`. The endpoint's
    /// failure streak grows; answers it (count, seconds since it began).
    pub async fn failed(
        &self,
        endpoint_id: &str,
        id: i64,
        status: Option<u16>,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<(i32, f64), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        match retry_in {
            Some(wait) => {
                sqlx::query(
                    "UPDATE deliveries SET attempts = attempts + 1, last_status = $2, last_error = $3,
                            next_attempt_at = now() + make_interval(secs => $4)
                      WHERE id = $1",
                )
                .bind(id)
                .bind(status.map(i32::from))
                .bind(error)
                .bind(wait.as_secs_f64())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "UPDATE deliveries SET state = 'dead', finished_at = now(), attempts = attempts + 1,
                            last_status = $2, last_error = $3
                      WHERE id = $1",
                )
                .bind(id)
                .bind(status.map(i32::from))
                .bind(error)
                .execute(&mut *tx)
                .await?;
            }
        }
        let streak: (i32, f64) = sqlx::query_as(
            "UPDATE endpoints SET consecutive_failures = consecutive_failures + 1,
                    failing_since = COALESCE(failing_since, now())
              WHERE id = $1
              RETURNING consecutive_failures,
                        EXTRACT(EPOCH FROM (now() - failing_since))::float8",
        )
        .bind(endpoint_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(streak)
    }

    /// Disables an endpoint (no new deliveries are recorded for it, none is attempted); its
    /// waiting deliveries stay until it is deleted.
    pub async fn disable(&self, endpoint_id: &str, reason: &str) -> Result<bool, sqlx::Error> {
        let changed = sqlx::query(
            "UPDATE endpoints SET disabled_at = now(), disabled_reason = $2
              WHERE id = $1 AND disabled_at IS NULL",
        )
        .bind(endpoint_id)
        .bind(reason)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Per enabled endpoint: deliveries waiting and the age of the oldest, in seconds.
    pub async fn backlog(&self) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT e.id, count(d.id),
                    COALESCE(EXTRACT(EPOCH FROM (now() - min(d.created_at))), 0)::float8
               FROM endpoints e
               LEFT JOIN deliveries d ON d.endpoint_id = e.id AND d.state = 'pending'
              WHERE e.disabled_at IS NULL
              GROUP BY e.id",
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn disabled_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM endpoints WHERE disabled_at IS NOT NULL")
            .fetch_one(&self.pool)
            .await
    }

    /// Deletes finished deliveries older than `retention`, and retired secrets.
    pub async fn prune(&self, retention: Duration) -> Result<u64, sqlx::Error> {
        let pruned = sqlx::query(
            "DELETE FROM deliveries
              WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM endpoint_secrets WHERE retire_at < now()")
            .execute(&self.pool)
            .await?;
        Ok(pruned)
    }
}
