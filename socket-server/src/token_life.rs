//! A live session's token: when it expires, how a client renews it in-band, and how every
//! session of a user is ended (docs/protocol.md, "Token lifetime"; docs/architecture.md,
//! "Ending a user's sessions").
//!
//! - Each session knows its token's `exp` and `iat`. The session loop (`session`) keeps one
//!   timer for it inside its `select!`: `token_expiring` some time before `exp`
//!   ([`notice_lead`]), then a close with 4401 at `exp`. A `refresh` frame with a fresh token
//!   of the same user moves both.
//! - [`Sessions`] indexes the live sessions by user with their current `iat` and an `ended`
//!   token. An [`EndSessions`] control from the handler topic cancels every session of the
//!   user whose token was issued at or before the mark (closed with 4403), and the mark is
//!   remembered here for a minute, so a session that passed the Redis check at its upgrade
//!   just before the mark was written, and registers after the control went by, is ended
//!   at registration.
//! - The mark itself lives in Redis (`switchboard_chat_state::sessions`): the upgrade and a
//!   `refresh` read it, so a server started after the end refuses the old tokens too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_chat_state::sessions::SessionMarks;
use switchboard_protocol::sessions::EndSessions;
use switchboard_protocol::UserId;
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::ops::Ops;
use switchboard_service_kit::shutdown::CancellationToken;

use crate::hub::ConnId;

/// How long a control's mark is kept on this server: far longer than an upgrade takes from
/// its Redis check to its registration.
const RECENT_MARK: Duration = Duration::from_secs(60);

/// What an admitted upgrade carries into its session.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    /// The token's subject, checked once at the upgrade.
    pub user_id: UserId,
    /// The token's `exp` and `iat`, seconds since the epoch.
    pub exp: i64,
    pub iat: i64,
}

/// Counters of token lifetimes.
#[derive(Clone)]
pub(crate) struct TokenMetrics {
    /// `socket_token_expired_total`: connections closed with 4401.
    pub expired: prometheus::IntCounter,
    /// `socket_sessions_ended_total`: connections closed with 4403.
    pub ended: prometheus::IntCounter,
    /// `socket_token_refreshes_total{outcome}`: `refresh` frames, `taken` or `refused`.
    pub refreshes: prometheus::IntCounterVec,
}

impl TokenMetrics {
    pub(crate) fn new(ops: &Ops) -> anyhow::Result<Self> {
        let metrics = TokenMetrics {
            expired: prometheus::IntCounter::new(
                "socket_token_expired_total",
                "connections closed with 4401: their token expired without a refresh",
            )?,
            ended: prometheus::IntCounter::new(
                "socket_sessions_ended_total",
                "connections closed with 4403: their user's sessions were ended",
            )?,
            refreshes: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "socket_token_refreshes_total",
                    "in-band token refreshes, by outcome (taken, refused)",
                ),
                &["outcome"],
            )?,
        };
        ops.register(&metrics.expired);
        ops.register(&metrics.ended);
        ops.register(&metrics.refreshes);
        Ok(metrics)
    }
}

/// How long before `exp` a session is told its token is expiring: `notice`
/// (`SB_TOKEN_EXPIRY_NOTICE_MS`), but at most a tenth of the token's lifetime, so a short
/// token is not told as soon as it connects.
pub(crate) fn notice_lead(notice: Duration, exp: i64, iat: i64) -> Duration {
    let lifetime = Duration::from_secs(u64::try_from(exp.saturating_sub(iat)).unwrap_or(0));
    notice.min(lifetime / 10)
}

/// How long from now until `exp` (zero when it has passed).
pub(crate) fn until(exp: i64) -> Duration {
    let left_ms = exp
        .saturating_mul(1000)
        .saturating_sub(chrono::Utc::now().timestamp_millis());
    Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

/// `exp` as the frames carry it; an `exp` past what a timestamp can hold is the last instant
/// one can (such a token lives, for any client, forever).
pub(crate) fn expires_at(exp: i64) -> switchboard_protocol::Timestamp {
    switchboard_protocol::Timestamp::from_millis(exp.saturating_mul(1000))
        .unwrap_or_else(|| chrono::DateTime::<chrono::Utc>::MAX_UTC.into())
}

/// One live session, as the index holds it.
struct Entry {
    conn_id: ConnId,
    /// The `iat` of the session's current token (a refresh changes it).
    iat: Arc<AtomicI64>,
    ended: CancellationToken,
}

#[derive(Default)]
struct Index {
    by_user: HashMap<Arc<str>, Vec<Entry>>,
    /// Marks received in the last [`RECENT_MARK`]: user → (mark, when received).
    recent: HashMap<Arc<str>, (i64, Instant)>,
}

/// A session's place in the index: its current `iat` (shared with the index) and the token
/// cancelled when its user's sessions are ended.
pub(crate) struct Registration {
    pub iat: Arc<AtomicI64>,
    pub ended: CancellationToken,
}

/// The live sessions of this server by user, and the marks it was told of lately.
pub(crate) struct Sessions {
    marks: SessionMarks,
    index: Mutex<Index>,
    pub metrics: TokenMetrics,
}

impl Sessions {
    pub(crate) fn new(redis: SentinelRedis, ops: &Ops) -> anyhow::Result<Self> {
        Ok(Sessions {
            marks: SessionMarks::new(redis),
            index: Mutex::new(Index::default()),
            metrics: TokenMetrics::new(ops)?,
        })
    }

    /// The Redis marks (read at the upgrade and on a refresh).
    pub(crate) fn marks(&self) -> &SessionMarks {
        &self.marks
    }

    /// Adds a session; its `ended` token is already cancelled when a mark this server was
    /// told of in the last minute covers its token.
    pub(crate) fn register(&self, user: &Arc<str>, conn_id: ConnId, iat: i64) -> Registration {
        let registration = Registration {
            iat: Arc::new(AtomicI64::new(iat)),
            ended: CancellationToken::new(),
        };
        let mut index = self.index.lock().expect("sessions lock");
        if let Some((mark, _)) = index.recent.get(user) {
            if iat <= *mark {
                registration.ended.cancel();
            }
        }
        index.by_user.entry(user.clone()).or_default().push(Entry {
            conn_id,
            iat: registration.iat.clone(),
            ended: registration.ended.clone(),
        });
        registration
    }

    pub(crate) fn unregister(&self, user: &str, conn_id: ConnId) {
        let mut index = self.index.lock().expect("sessions lock");
        if let Some(entries) = index.by_user.get_mut(user) {
            entries.retain(|e| e.conn_id != conn_id);
            if entries.is_empty() {
                index.by_user.remove(user);
            }
        }
    }

    /// Applies a control from the handler topic: ends every session of the user whose
    /// current token was issued at or before the mark; answers how many.
    pub(crate) fn end(&self, control: &EndSessions) -> usize {
        let now = Instant::now();
        let user: Arc<str> = Arc::from(control.user_id.as_str());
        let mut index = self.index.lock().expect("sessions lock");
        index
            .recent
            .retain(|_, (_, received)| now.duration_since(*received) < RECENT_MARK);
        let mark = index
            .recent
            .get(&user)
            .map_or(control.ended_before, |(m, _)| {
                (*m).max(control.ended_before)
            });
        index.recent.insert(user.clone(), (mark, now));
        let mut ended = 0;
        for entry in index.by_user.get(&user).into_iter().flatten() {
            if entry.iat.load(Ordering::Acquire) <= mark {
                entry.ended.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// A record of the handler topic with no recipients: an [`EndSessions`] control, applied
    /// here; anything else is logged and dropped (a later control this server does not know).
    pub(crate) fn control(&self, frame: &str) {
        match EndSessions::parse(frame) {
            Some(control) => {
                let ended = self.end(&control);
                tracing::info!(
                    user = %control.user_id,
                    ended_before = control.ended_before,
                    ended,
                    "sessions ended"
                );
            }
            None => tracing::warn!("a handler record for nobody that is no known control; dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_comes_a_tenth_of_the_lifetime_early_at_most() {
        let minute = Duration::from_secs(60);
        assert_eq!(notice_lead(minute, 3_600, 0), minute);
        assert_eq!(notice_lead(minute, 100, 0), Duration::from_secs(10));
        assert_eq!(notice_lead(minute, 5, 10), Duration::ZERO);
        assert_eq!(until(0), Duration::ZERO);
        assert_eq!(
            expires_at(1_700_000_000).to_string(),
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[tokio::test]
    async fn a_control_ends_the_users_older_sessions_and_later_registrations() {
        let redis = switchboard_test_support::shared::fresh_redis("socket-server", "sessions");
        let sessions = Sessions::new(redis, &Ops::new("socket-server")).unwrap();
        let ann: Arc<str> = Arc::from("ann");
        let bob: Arc<str> = Arc::from("bob");
        let old = sessions.register(&ann, 1, 100);
        let fresh = sessions.register(&ann, 2, 300);
        let other = sessions.register(&bob, 3, 100);
        let control = EndSessions {
            user_id: "ann".parse().unwrap(),
            ended_before: 200,
        };
        assert_eq!(sessions.end(&control), 1);
        assert!(old.ended.is_cancelled());
        assert!(!fresh.ended.is_cancelled());
        assert!(!other.ended.is_cancelled());
        // Registered after the control went by, with a token from before the mark.
        assert!(sessions.register(&ann, 4, 150).ended.is_cancelled());
        assert!(!sessions.register(&ann, 5, 250).ended.is_cancelled());
        // A refreshed session is judged by its new token.
        let refreshed = sessions.register(&ann, 6, 400);
        refreshed.iat.store(100, Ordering::Release);
        sessions.end(&control);
        assert!(refreshed.ended.is_cancelled());
        sessions.unregister("ann", 1);
        sessions.unregister("bob", 3);
        assert!(!sessions.index.lock().unwrap().by_user.contains_key("bob"));
    }
}
