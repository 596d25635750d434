//! The hub: which connections this server holds, by id and by user.
//!
//! Shared by every connection task and the delivery path. It is a plain map behind a std
//! `RwLock` that is only held to insert, remove or clone a sender, never across an await, so
//! it is cheaper than routing every lookup through an owner task, and the hot path (deliver
//! to a user's devices) is a read lock plus `try_send`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use switchboard_service_kit::shutdown::CancellationToken;
use tokio::sync::mpsc;

/// What a connection task is asked to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A serialized server frame; `Arc` so one frame fans out to many devices without copies.
    Frame(Arc<str>),
}

pub type ConnId = u64;

#[derive(Clone)]
pub struct ConnHandle {
    pub user_id: Arc<str>,
    pub outbound: mpsc::Sender<Outbound>,
    /// Cancelled to drop this one connection (slow consumer).
    pub kick: CancellationToken,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<ConnId, ConnHandle>,
    by_user: HashMap<Arc<str>, Vec<ConnId>>,
}

/// Outcome of pushing a frame at a user's devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    pub queued: usize,
    /// Devices whose queue was full and were therefore disconnected.
    pub kicked: usize,
}

#[derive(Default)]
pub struct Hub {
    maps: RwLock<Maps>,
    next_id: AtomicU64,
    live: AtomicUsize,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Exact number of live connections.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Adds a connection; also says whether it is the user's first device on this server.
    pub fn insert(&self, handle: ConnHandle) -> (ConnId, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut maps = self.maps.write().expect("hub lock");
        let devices = maps.by_user.entry(handle.user_id.clone()).or_default();
        let first = devices.is_empty();
        devices.push(id);
        maps.by_id.insert(id, handle);
        self.live.fetch_add(1, Ordering::AcqRel);
        (id, first)
    }

    /// Removes a connection; `true` when it was the user's last device on this server.
    pub fn remove(&self, id: ConnId) -> bool {
        let mut maps = self.maps.write().expect("hub lock");
        let Some(handle) = maps.by_id.remove(&id) else {
            return false;
        };
        self.live.fetch_sub(1, Ordering::AcqRel);
        let Some(ids) = maps.by_user.get_mut(&handle.user_id) else {
            return true;
        };
        ids.retain(|c| *c != id);
        if ids.is_empty() {
            maps.by_user.remove(&handle.user_id);
            true
        } else {
            false
        }
    }

    /// How many devices `user` has connected here.
    pub fn devices_of(&self, user: &str) -> usize {
        self.maps
            .read()
            .expect("hub lock")
            .by_user
            .get(user)
            .map_or(0, Vec::len)
    }

    /// Users with at least one device here.
    pub fn users(&self) -> Vec<Arc<str>> {
        self.maps
            .read()
            .expect("hub lock")
            .by_user
            .keys()
            .cloned()
            .collect()
    }

    /// Queues `frame` to every device of `user`, except `skip` (the sending device). A device
    /// whose queue is full is kicked: memory stays bounded and the client resyncs from history.
    pub fn push_to_user(&self, user: &str, frame: &Outbound, skip: Option<ConnId>) -> PushOutcome {
        let targets: Vec<(ConnId, ConnHandle)> = {
            let maps = self.maps.read().expect("hub lock");
            match maps.by_user.get(user) {
                Some(ids) => ids
                    .iter()
                    .filter(|id| Some(**id) != skip)
                    .filter_map(|id| maps.by_id.get(id).map(|h| (*id, h.clone())))
                    .collect(),
                None => return PushOutcome::default(),
            }
        };
        let mut outcome = PushOutcome::default();
        for (_, handle) in targets {
            match handle.outbound.try_send(frame.clone()) {
                Ok(()) => outcome.queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    handle.kick.cancel();
                    outcome.kicked += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(user: &str, cap: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            ConnHandle {
                user_id: user.into(),
                outbound: tx,
                kick: CancellationToken::new(),
            },
            rx,
        )
    }

    #[test]
    fn counts_and_indexes_by_user() {
        let hub = Hub::new();
        let (a1, _r1) = handle("alice", 4);
        let (a2, _r2) = handle("alice", 4);
        let (id1, first1) = hub.insert(a1);
        let (id2, first2) = hub.insert(a2);
        assert!(first1 && !first2);
        assert_eq!(hub.live(), 2);
        assert_eq!(hub.users().len(), 1);
        assert!(!hub.remove(id1));
        assert!(!hub.remove(id1));
        assert_eq!(hub.live(), 1);
        assert!(hub.remove(id2));
        assert_eq!(hub.live(), 0);
        assert!(hub.users().is_empty());
    }

    #[test]
    fn push_skips_sender_and_kicks_full_queues() {
        let hub = Hub::new();
        let (a1, mut r1) = handle("alice", 1);
        let (a2, _r2) = handle("alice", 1);
        let kick2 = a2.kick.clone();
        let (id1, _) = hub.insert(a1);
        hub.insert(a2);
        let frame = Outbound::Frame("x".into());
        assert_eq!(
            hub.push_to_user("alice", &frame, Some(id1)),
            PushOutcome {
                queued: 1,
                kicked: 0
            }
        );
        assert!(r1.try_recv().is_err());
        let again = hub.push_to_user("alice", &frame, Some(id1));
        assert_eq!(again.kicked, 1);
        assert!(kick2.is_cancelled());
        assert_eq!(
            hub.push_to_user("nobody", &frame, None),
            PushOutcome::default()
        );
    }
}
