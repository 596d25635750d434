//! Restores `seq` order per conversation on this handler.
//!
//! One manager's records reach a handler topic in the order it numbered them; but when two
//! managers take turns on a conversation, seq 6 (manager B) can land before seq 5 (manager A).
//! The buffer holds a message whose predecessor has not arrived for up to `hold`, then
//! delivers whatever it has in order (a real gap is then the client's to fill from history).
//! Late or repeated messages are dropped: what leaves the buffer for a conversation always
//! rises, so every device on this handler sees `seq` order, and a gap is filled from history. A
//! conversation idle for `idle` starts afresh, as does a jump larger than `max_gap` (the
//! handler had no member devices for a while), so a quiet or new conversation never waits.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

struct Conversation<T> {
    next: u64,
    held: BTreeMap<u64, T>,
    /// When the oldest held item must go out regardless.
    deadline: Option<Instant>,
    last_seen: Instant,
}

pub struct Reorderer<T> {
    conversations: HashMap<String, Conversation<T>>,
    hold: Duration,
    idle: Duration,
    max_gap: u64,
}

impl<T> Reorderer<T> {
    pub fn new(hold: Duration) -> Self {
        Reorderer {
            conversations: HashMap::new(),
            hold,
            idle: Duration::from_secs(5),
            max_gap: 32,
        }
    }

    /// Takes one message; returns what can be delivered now, in order.
    pub fn push(&mut self, conversation: &str, seq: u64, item: T, now: Instant) -> Vec<T> {
        let (hold, idle, max_gap) = (self.hold, self.idle, self.max_gap);
        let state = self
            .conversations
            .entry(conversation.to_owned())
            .or_insert_with(|| Conversation {
                next: seq,
                held: BTreeMap::new(),
                deadline: None,
                last_seen: now,
            });
        let stale = now.duration_since(state.last_seen) > idle && state.held.is_empty();
        state.last_seen = now;
        if seq < state.next || state.held.contains_key(&seq) {
            // Late (its turn was given up after the hold) or repeated: delivering it now would
            // break `seq` order on every device, so it is dropped; devices fill the gap from
            // history, as for any gap.
            return Vec::new();
        }
        if stale || seq > state.next + max_gap {
            state.held.insert(seq, item);
            state.next = state.held.keys().next_back().map_or(seq, |last| *last) + 1;
            return drain_all(state);
        }
        if seq > state.next {
            state.held.insert(seq, item);
            state.deadline.get_or_insert(now + hold);
            return Vec::new();
        }
        let mut out = vec![item];
        state.next += 1;
        while let Some(next) = state.held.remove(&state.next) {
            out.push(next);
            state.next += 1;
        }
        state.deadline = (!state.held.is_empty()).then_some(now + hold);
        out
    }

    /// Releases, in order, everything held past its deadline; forgets idle conversations.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        for state in self.conversations.values_mut() {
            if state.deadline.is_some_and(|d| d <= now) {
                if let Some((&last, _)) = state.held.iter().next_back() {
                    state.next = last + 1;
                }
                out.extend(drain_all(state));
            }
        }
        let idle = self.idle * 12;
        self.conversations
            .retain(|_, s| !s.held.is_empty() || now.duration_since(s.last_seen) < idle);
        out
    }
}

fn drain_all<T>(state: &mut Conversation<T>) -> Vec<T> {
    state.deadline = None;
    std::mem::take(&mut state.held).into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_passes_straight_through() {
        let mut r = Reorderer::new(Duration::from_millis(100));
        let t = Instant::now();
        assert_eq!(r.push("c", 1, 1, t), vec![1]);
        assert_eq!(r.push("c", 2, 2, t), vec![2]);
        assert_eq!(
            r.push("d", 7, 7, t),
            vec![7],
            "a new conversation starts where it is"
        );
    }

    #[test]
    fn a_swap_is_restored() {
        let mut r = Reorderer::new(Duration::from_millis(100));
        let t = Instant::now();
        assert_eq!(r.push("c", 5, 5, t), vec![5]);
        assert!(r.push("c", 7, 7, t).is_empty());
        assert!(r.push("c", 8, 8, t).is_empty());
        assert_eq!(r.push("c", 6, 6, t), vec![6, 7, 8]);
        assert_eq!(r.push("c", 9, 9, t), vec![9]);
    }

    #[test]
    fn a_real_gap_is_released_after_the_hold() {
        let mut r = Reorderer::new(Duration::from_millis(100));
        let t = Instant::now();
        r.push("c", 1, 1, t);
        assert!(r.push("c", 3, 3, t).is_empty());
        assert!(r.expire(t + Duration::from_millis(50)).is_empty());
        assert_eq!(r.expire(t + Duration::from_millis(101)), vec![3]);
        assert_eq!(r.push("c", 4, 4, t + Duration::from_millis(102)), vec![4]);
        assert!(
            r.push("c", 2, 2, t + Duration::from_millis(103)).is_empty(),
            "late: dropped, never delivered out of order"
        );
        assert!(
            r.push("c", 4, 4, t + Duration::from_millis(104)).is_empty(),
            "repeated: dropped"
        );
    }

    #[test]
    fn big_jumps_and_idle_conversations_never_wait() {
        let mut r = Reorderer::new(Duration::from_millis(100));
        let t = Instant::now();
        r.push("c", 1, 1, t);
        assert_eq!(r.push("c", 500, 500, t), vec![500]);
        assert_eq!(r.push("c", 503, 503, t + Duration::from_secs(6)), vec![503]);
    }

    #[test]
    fn a_big_jump_releases_held_messages_in_order_with_it() {
        let mut r = Reorderer::new(Duration::from_millis(100));
        let t = Instant::now();
        r.push("c", 1, 1, t);
        assert!(r.push("c", 3, 3, t).is_empty());
        assert!(r.push("c", 20, 20, t).is_empty());
        assert_eq!(r.push("c", 36, 36, t), vec![3, 20, 36]);
        assert!(r.push("c", 2, 2, t).is_empty(), "behind what was delivered");
        assert!(r.push("c", 36, 36, t).is_empty());
        assert_eq!(r.push("c", 37, 37, t), vec![37]);
    }

    #[test]
    fn an_idle_conversation_never_goes_backwards() {
        let mut r = Reorderer::new(Duration::from_millis(100));
        let t = Instant::now();
        r.push("c", 10, 10, t);
        assert!(r.push("c", 9, 9, t + Duration::from_secs(6)).is_empty());
        assert_eq!(r.push("c", 11, 11, t + Duration::from_secs(7)), vec![11]);
    }
}
