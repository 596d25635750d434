//! The two outboxes a membership change writes in its own transaction: `mirror_outbox` (the
//! Redis members mirror is updated from it, [`crate::outbox::run`]) and `event_outbox` (the
//! events topic's membership events, [`crate::outbox::publish_events`]); their readers.

use switchboard_protocol::{ConversationId, ConversationKind};

use super::{Store, Tx};

impl Store {
    /// Changes whose mirror update is not applied yet, or was applied less than
    /// `recheck_secs` ago (a failover may still lose it): (conversation, version).
    pub async fn mirror_outbox(
        &self,
        recheck_secs: u64,
        limit: i64,
    ) -> Result<Vec<(ConversationId, u64)>, sqlx::Error> {
        let rows: Vec<(ConversationId, i64)> = sqlx::query_as(
            "SELECT conversation_id, version FROM mirror_outbox
              WHERE applied_at IS NULL OR applied_at > now() - make_interval(secs => $1)
              ORDER BY changed_at LIMIT $2",
        )
        .bind(recheck_secs as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, v)| (id, v.max(0) as u64))
            .collect())
    }

    /// The mirror update of `version` (or a later one) reached Redis: the first time, the
    /// re-check window starts now.
    pub async fn mirror_applied(
        &self,
        conversation_id: &ConversationId,
        version: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE mirror_outbox SET applied_at = now()
              WHERE conversation_id = $1 AND version <= $2 AND applied_at IS NULL",
        )
        .bind(conversation_id)
        .bind(version as i64)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// The oldest unpublished membership events: (row id, Kafka key, payload).
    pub async fn events_to_publish(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT id, key, payload FROM event_outbox ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    /// Forgets published membership events.
    pub async fn events_published(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM event_outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Forgets changes applied more than `recheck_secs` ago.
    pub async fn prune_mirror_outbox(&self, recheck_secs: u64) -> Result<u64, sqlx::Error> {
        sqlx::query(
            "DELETE FROM mirror_outbox WHERE applied_at < now() - make_interval(secs => $1)",
        )
        .bind(recheck_secs as f64)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
    }
}

/// In a membership change's transaction: counts the active members again, bumps the
/// conversation's membership version and records the change in the mirror's outbox, so the
/// Redis mirror is updated even when the request that made the change cannot do it (Redis
/// down, the process gone, or a failover that loses the write). Answers the new version.
///
/// A conversation created in the same transaction records nothing (`record` false): no
/// mirror of it can be stale, and its creator fills it.
pub(super) async fn membership_changed(
    tx: &mut Tx<'_>,
    conversation_id: &ConversationId,
    record: bool,
) -> Result<u64, sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE conversations
            SET members_version = members_version + 1,
                member_count = (SELECT count(*) FROM members
                                 WHERE conversation_id = $1 AND state = 'active')
          WHERE id = $1 RETURNING members_version",
    )
    .bind(conversation_id)
    .fetch_one(&mut **tx)
    .await?;
    if !record {
        return Ok(version.max(0) as u64);
    }
    sqlx::query(
        "INSERT INTO mirror_outbox (conversation_id, version) VALUES ($1, $2)
         ON CONFLICT (conversation_id) DO UPDATE
            SET version = EXCLUDED.version, changed_at = now(), applied_at = NULL",
    )
    .bind(conversation_id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(version.max(0) as u64)
}

/// In a membership change's transaction: the event describing it, for the events topic
/// (`event_outbox`, published once committed by [`crate::outbox::publish_events`]).
async fn record_event(
    tx: &mut Tx<'_>,
    conversation_id: &ConversationId,
    event: &switchboard_message_log::Event,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("INSERT INTO event_outbox (key, payload) VALUES ($1, $2)")
        .bind(conversation_id)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `member.added` (`added`) or `member.removed` of `user`.
pub(super) async fn record_member(
    tx: &mut Tx<'_>,
    conversation_id: &ConversationId,
    user: &str,
    added: bool,
) -> Result<(), sqlx::Error> {
    use switchboard_message_log::Event;
    let (event_id, conversation_id_owned, user_id, at) = (
        ulid::Ulid::new().to_string(),
        conversation_id.clone(),
        checked(user)?,
        switchboard_protocol::Timestamp::now(),
    );
    let event = if added {
        Event::MemberAdded {
            event_id,
            conversation_id: conversation_id_owned,
            user_id,
            at,
        }
    } else {
        Event::MemberRemoved {
            event_id,
            conversation_id: conversation_id_owned,
            user_id,
            at,
        }
    };
    record_event(tx, conversation_id, &event).await
}

/// `conversation.created`, with its active members.
pub(super) async fn record_created(
    tx: &mut Tx<'_>,
    conversation_id: &ConversationId,
    kind: ConversationKind,
    name: Option<&str>,
    created_by: &str,
    members: &[String],
) -> Result<(), sqlx::Error> {
    let event = switchboard_message_log::Event::ConversationCreated {
        event_id: ulid::Ulid::new().to_string(),
        conversation_id: conversation_id.clone(),
        kind,
        name: name.map(str::to_owned),
        created_by: checked(created_by)?,
        members: members
            .iter()
            .map(|m| checked(m))
            .collect::<Result<_, _>>()?,
        at: switchboard_protocol::Timestamp::now(),
    };
    record_event(tx, conversation_id, &event).await
}

/// An id the store's callers have checked already (the routes parse their input at the edge),
/// typed for an event record; one that fails is refused like any value the database cannot
/// take, never recorded unchecked.
// A bridge until the store's signatures carry typed user ids too.
fn checked<I>(text: &str) -> Result<I, sqlx::Error>
where
    I: std::str::FromStr,
    I::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(|e| sqlx::Error::Encode(Box::new(e)))
}
