//! Named readiness latches: a fact a service waits for before it takes work ("the managers
//! know us", "our topic is assigned"), set by the task that establishes it and cleared when it
//! is lost.
//!
//! A latch replaces a bare `AtomicBool` that others poll: waiters are woken by the change
//! (a `watch` channel) instead of sleeping in a loop, and `/ready` names the latch that is
//! not set ([`Latch::readiness_check`]), so an operator reads "not ready: manager link" instead
//! of a bare 503.

use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::watch;

use crate::ops::ReadinessCheck;

/// A named boolean that can be awaited. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Latch {
    name: &'static str,
    state: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Latch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latch")
            .field("name", &self.name)
            .field("set", &self.is_set())
            .finish()
    }
}

impl Latch {
    /// A latch that starts unset.
    pub fn new(name: &'static str) -> Self {
        Latch {
            name,
            state: Arc::new(watch::Sender::new(false)),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_set(&self) -> bool {
        *self.state.borrow()
    }

    /// Sets the latch and wakes every waiter (a no-op when already set).
    pub fn set(&self) {
        self.state
            .send_if_modified(|set| !std::mem::replace(set, true));
    }

    /// Clears the latch (a no-op when already clear).
    pub fn clear(&self) {
        self.state
            .send_if_modified(|set| std::mem::replace(set, false));
    }

    /// Sets or clears it.
    pub fn store(&self, set: bool) {
        if set {
            self.set()
        } else {
            self.clear()
        }
    }

    /// Returns once the latch is set (at once if it is).
    pub async fn wait_set(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail.
        let _ = rx.wait_for(|set| *set).await;
    }

    /// A `/ready` check that fails, naming the latch, while it is not set.
    pub fn readiness_check(&self) -> ReadinessCheck {
        let latch = self.clone();
        Arc::new(move || {
            let result = if latch.is_set() {
                Ok(())
            } else {
                Err(format!("{} not established yet", latch.name))
            };
            async move { result }.boxed()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_when_set_and_pass_at_once_after() {
        let latch = Latch::new("manager link");
        assert!(!latch.is_set());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), latch.wait_set())
                .await
                .is_err(),
            "an unset latch holds its waiters"
        );
        let setter = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            latch.set();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(latch.wait_set(), setter)
        })
        .await
        .expect("a waiter is woken by set");
        tokio::time::timeout(Duration::from_secs(5), latch.wait_set())
            .await
            .expect("a set latch does not block");
    }

    #[tokio::test]
    async fn readiness_names_the_latch_until_it_is_set() {
        let latch = Latch::new("delivery assignment");
        let check = latch.readiness_check();
        let why = check().await.unwrap_err();
        assert!(why.contains("delivery assignment"), "{why}");
        latch.store(true);
        assert_eq!(check().await, Ok(()));
        latch.clear();
        assert!(check().await.is_err());
    }
}
