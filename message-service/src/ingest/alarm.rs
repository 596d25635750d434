//! The storage alarm: raised while the database refuses writes for want of resources (see
//! the module docs of [`crate::ingest`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use switchboard_service_kit::ops::Ops;

/// Raised while the database refuses writes for want of resources (see the module docs):
/// a gauge to alert on and a readiness check, cleared by the next write that succeeds.
#[derive(Clone)]
pub struct StorageAlarm {
    raised: Arc<AtomicBool>,
    gauge: prometheus::IntGauge,
}

impl StorageAlarm {
    pub(super) fn new(ops: &Ops) -> anyhow::Result<Self> {
        let gauge = prometheus::IntGauge::new(
            "ingest_storage_alarm",
            "1 while the database refuses ingest's writes for want of resources (SQLSTATE class 53, 57 or 58: a full disk, out of memory, shutting down)",
        )?;
        ops.register(&gauge);
        Ok(StorageAlarm {
            raised: Arc::default(),
            gauge,
        })
    }

    /// Whether `e` says the database cannot store anything now (not a record's fault, and not
    /// a mere lost connection).
    pub fn is_storage_error(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("53") || code.starts_with("57") || code.starts_with("58")
            }),
            _ => false,
        }
    }

    pub(super) fn note(&self, e: &sqlx::Error) {
        if Self::is_storage_error(e) && !self.raised.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::error!(error = %e, "ALARM: the database refuses ingest's writes for want of resources; history stops growing and new conversations cannot be numbered until it is fixed");
        }
    }

    pub(super) fn clear(&self) {
        if self.raised.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::warn!("the database takes ingest's writes again; storage alarm cleared");
        }
    }

    /// `/ready`'s check: failing while the alarm is raised.
    pub fn readiness_check(&self) -> switchboard_service_kit::ops::ReadinessCheck {
        let raised = self.raised.clone();
        Arc::new(move || {
            let raised = raised.load(Ordering::Relaxed);
            Box::pin(async move {
                if raised {
                    Err("the database refuses ingest's writes (storage alarm)".to_owned())
                } else {
                    Ok(())
                }
            })
        })
    }
}
