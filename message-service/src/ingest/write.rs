//! Writing one gathered batch: unreadable payloads and fenced records to `dead_letters`, log
//! fences where they stand, records to `messages`, receipts to `receipts`; each step retried
//! while the database is unavailable (and the storage alarm raised when it says why).

use std::time::Duration;

use switchboard_message_log::{LogFence, LogRecord};
use switchboard_service_kit::shutdown::CancellationToken;

use super::gather::LogBatch;
use super::Ingest;
use crate::log_fences;
use crate::store::{BatchOutcome, DeadLetter, ReceiptUpdate, Sourced};

/// A record with the fence that refuses it (`(epoch, floor)`), if one does.
type Judged<'r> = (Option<(u64, u64)>, &'r Sourced<LogRecord>);

impl Ingest {
    /// Writes one gathered batch: unreadable records to `dead_letters`, log records to
    /// `messages` (each fence applied where it stands among them, and the records a fence
    /// refuses dead-lettered), receipts to `receipts`, each retried while the database is
    /// unavailable. `false` when shutdown came before all of it was written.
    pub(super) async fn ingest_until_done(
        &self,
        log: &LogBatch,
        receipts: &[Sourced<ReceiptUpdate>],
        unreadable: Vec<DeadLetter>,
        shutdown: &CancellationToken,
    ) -> bool {
        if !unreadable.is_empty() {
            let Some(new) = self
                .until_done("storing dead letters", shutdown, || {
                    self.store.dead_letter(unreadable.clone())
                })
                .await
            else {
                return false;
            };
            self.dead_lettered(&new);
        }
        let mut from = 0;
        for (at, fence) in &log.fences {
            if !self.store_records(&log.records[from..*at], shutdown).await {
                return false;
            }
            from = *at;
            if !self.apply_fence(fence, shutdown).await {
                return false;
            }
        }
        if !self.store_records(&log.records[from..], shutdown).await {
            return false;
        }
        if !receipts.is_empty() {
            let Some(refused) = self
                .until_done("storing receipts", shutdown, || {
                    self.store.upsert_receipts(receipts)
                })
                .await
            else {
                return false;
            };
            self.dead_lettered(&refused);
        }
        true
    }

    /// Applies a fence record where it stands in the log, and notes it in the fence book.
    async fn apply_fence(&self, fence: &Sourced<LogFence>, shutdown: &CancellationToken) -> bool {
        let Some(floor) = self
            .until_done("applying a log fence", shutdown, || {
                log_fences::apply(
                    self.store.pool(),
                    &fence.item.conversation_id,
                    fence.item.epoch,
                )
            })
            .await
        else {
            return false;
        };
        self.fences
            .lock()
            .expect("fence book lock")
            .add(floor, &fence.item.conversation_id);
        tracing::info!(
            conversation_id = %fence.item.conversation_id,
            epoch = fence.item.epoch,
            floor = floor.floor,
            partition = fence.at.partition,
            offset = fence.at.offset,
            "log fence applied"
        );
        true
    }

    /// Stores log records: those a fence refuses go to `dead_letters`, the rest to `messages`.
    #[tracing::instrument(level = "debug", skip_all, fields(records = records.len()))]
    async fn store_records(
        &self,
        records: &[Sourced<LogRecord>],
        shutdown: &CancellationToken,
    ) -> bool {
        if records.is_empty() {
            return true;
        }
        if !self.learn_fences(records, shutdown).await
            || !self.activate_fences(records, shutdown).await
        {
            return false;
        }
        let (fenced, admitted): (Vec<Judged<'_>>, Vec<Judged<'_>>) = {
            let book = self.fences.lock().expect("fence book lock");
            records
                .iter()
                .map(|r| (book.fenced(&r.item), r))
                .partition(|(fence, _)| fence.is_some())
        };
        if !fenced.is_empty() && !self.dead_letter_fenced(&fenced, shutdown).await {
            return false;
        }
        // The common case refuses nothing: the batch goes in as read, without copying its bodies.
        let copied: Vec<Sourced<LogRecord>>;
        let records: &[Sourced<LogRecord>] = if fenced.is_empty() {
            records
        } else {
            copied = admitted.into_iter().map(|(_, r)| r.clone()).collect();
            &copied
        };
        if records.is_empty() {
            return true;
        }
        let Some(outcome) = self
            .until_done("inserting a batch", shutdown, || {
                self.store.insert_batch(records)
            })
            .await
        else {
            return false;
        };
        self.note_stored(records, &outcome);
        true
    }

    /// Reads the fences of the records' conversations the fence book does not know yet.
    async fn learn_fences(
        &self,
        records: &[Sourced<LogRecord>],
        shutdown: &CancellationToken,
    ) -> bool {
        let unknown = self
            .fences
            .lock()
            .expect("fence book lock")
            .unknown(records.iter().map(|r| r.item.conversation_id.as_str()));
        if unknown.is_empty() {
            return true;
        }
        let Some(read) = self
            .until_done("reading log fences", shutdown, || {
                log_fences::read(self.store.pool(), &unknown)
            })
            .await
        else {
            return false;
        };
        self.fences
            .lock()
            .expect("fence book lock")
            .learn(&unknown, read);
        true
    }

    /// The first records of an epoch make its fence active, and move what the older epochs
    /// appended after it above its floor to dead_letters (see `log_fences`).
    async fn activate_fences(
        &self,
        records: &[Sourced<LogRecord>],
        shutdown: &CancellationToken,
    ) -> bool {
        let activations = self
            .fences
            .lock()
            .expect("fence book lock")
            .activated_by(records.iter().map(|r| &r.item));
        for (conversation_id, epoch, floor) in activations {
            let Some(evicted) = self
                .until_done("activating a log fence", shutdown, || {
                    log_fences::activate(
                        self.store.pool(),
                        &self.message_topic,
                        &conversation_id,
                        epoch,
                        floor,
                    )
                })
                .await
            else {
                return false;
            };
            self.fences
                .lock()
                .expect("fence book lock")
                .activate(&conversation_id, epoch);
            for error in &evicted {
                tracing::warn!(%conversation_id, epoch, error, "a stored record of an older epoch was moved to dead_letters as its fence became active");
            }
            self.fenced.inc_by(evicted.len() as u64);
            self.dead_letters.inc_by(evicted.len() as u64);
        }
        true
    }

    /// Puts the records a fence refuses in `dead_letters`.
    async fn dead_letter_fenced(
        &self,
        fenced: &[Judged<'_>],
        shutdown: &CancellationToken,
    ) -> bool {
        let letters: Vec<DeadLetter> = fenced
            .iter()
            .map(|(fence, r)| {
                let (epoch, floor) = fence.unwrap_or_default();
                DeadLetter::new(
                    r.at.clone(),
                    &r.item,
                    format!(
                        "fenced: seq {} of conversation {} was numbered under epoch {}, and epoch {epoch} took the numbers above {floor} (a deposed lease holder's late append, never acknowledged)",
                        r.item.seq, r.item.conversation_id, r.item.epoch
                    ),
                )
            })
            .collect();
        let Some(new) = self
            .until_done("storing fenced records", shutdown, || {
                self.store.dead_letter(letters.clone())
            })
            .await
        else {
            return false;
        };
        self.fenced.inc_by(new.len() as u64);
        self.dead_lettered(&new);
        true
    }

    /// Counts a stored batch: rows, batch size, conflicts (logged), dead letters, and the lag
    /// of its newest record.
    fn note_stored(&self, records: &[Sourced<LogRecord>], outcome: &BatchOutcome) {
        self.stored.inc_by(outcome.inserted);
        self.batches.observe(records.len() as f64);
        for conflict in &outcome.conflicts {
            let at = &conflict.dead_letter.at;
            tracing::error!(
                message_id = %conflict.message_id,
                stored_message_id = %conflict.stored_message_id,
                topic = %at.topic,
                partition = at.partition,
                offset = at.offset,
                error = %conflict.dead_letter.error,
                "conflict in the log (two messages given one seq, or one message two): the stored message is kept, this record dead-lettered"
            );
        }
        self.conflicts.inc_by(outcome.conflicts.len() as u64);
        self.dead_letters.inc_by(outcome.conflicts.len() as u64);
        self.dead_lettered(&outcome.refused);
        if let Some(newest) = records.iter().map(|r| r.item.created_at.datetime()).max() {
            let age = chrono::Utc::now().signed_duration_since(newest);
            self.lag_seconds
                .set(age.num_milliseconds().max(0) as f64 / 1000.0);
        }
    }

    /// [`until_done`], raising the storage alarm on the errors that call for it.
    async fn until_done<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut attempt: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        until_done(what, shutdown, || {
            let attempt = attempt();
            async {
                let outcome = attempt.await;
                if let Err(e) = &outcome {
                    self.alarm.note(e);
                }
                outcome
            }
        })
        .await
    }

    /// Counts and logs records newly put in `dead_letters` (refused for their data, or
    /// unreadable).
    fn dead_lettered(&self, letters: &[DeadLetter]) {
        for letter in letters {
            tracing::error!(
                topic = %letter.at.topic,
                partition = letter.at.partition,
                offset = letter.at.offset,
                error = %letter.error,
                "a log record was put in dead_letters instead of being stored; ingest goes on"
            );
        }
        self.dead_letters.inc_by(letters.len() as u64);
    }
}

/// Runs `attempt` until it succeeds, backing off while it fails (the database unreachable:
/// errors a record causes never come here, they become dead letters). `None` when shutdown
/// came first: the work is not done.
async fn until_done<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(done) => return Some(done),
            Err(e) => tracing::error!(error = %e, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
