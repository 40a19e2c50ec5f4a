//! The one table of requests awaiting a response, for every service.

use super::slot::Slot;
use crate::error::Error;
use parking_lot::Mutex;
use super::fast_map::{self, FastMap};
use std::sync::Arc;

const SHARDS: usize = 16;

/// Request id -> (the process asked, its slot). Sharded by id so callers
/// on different threads rarely share a lock.
pub(crate) struct PendingTable {
    shards: [Mutex<FastMap<u64, Arc<Slot>>>; SHARDS],
}

impl PendingTable {
    pub fn new() -> PendingTable {
        PendingTable { shards: std::array::from_fn(|_| Mutex::new(fast_map::new())) }
    }

    fn shard(&self, id: u64) -> &Mutex<FastMap<u64, Arc<Slot>>> {
        &self.shards[(id as usize) % SHARDS]
    }

    pub fn insert(&self, slot: &Arc<Slot>) {
        self.shard(slot.id).lock().insert(slot.id, slot.clone());
    }

    /// Takes the slot of request `id` if `from` is the process it was sent to
    /// (or one it named to answer for it): a peer cannot complete another
    /// peer's request.
    pub fn take(&self, id: u64, from: u32) -> Option<Arc<Slot>> {
        let mut s = self.shard(id).lock();
        match s.get(&id) {
            Some(slot) if slot.answered_by(from) => s.remove(&id),
            _ => None,
        }
    }

    pub fn remove(&self, id: u64) {
        self.shard(id).lock().remove(&id);
    }

    /// Fails every request sent to `pid`, with `err(pid)`.
    pub fn fail_peer(&self, pid: u32, err: impl Fn() -> Error) {
        let mut failed = Vec::new();
        for s in &self.shards {
            s.lock().retain(|_, slot| {
                // A process named to answer for another fails its requests
                // too: the one asked may have left the answer to it.
                if slot.answered_by(pid) {
                    failed.push(slot.clone());
                    false
                } else {
                    true
                }
            });
        }
        for slot in failed {
            slot.complete(Err(err()));
        }
    }

    /// Fails everything (on close).
    pub fn fail_all(&self, err: impl Fn() -> Error) {
        let mut failed = Vec::new();
        for s in &self.shards {
            failed.extend(s.lock().drain().map(|(_, v)| v));
        }
        for slot in failed {
            slot.complete(Err(err()));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn only_the_asked_process_completes_a_request() {
        let t = PendingTable::new();
        let s = Arc::new(Slot::new(7, 3));
        t.insert(&s);
        assert!(t.take(7, 4).is_none(), "process 4 must not answer a request sent to 3");
        assert!(t.take(7, 3).is_some());
        assert!(t.take(7, 3).is_none());
    }

    #[test]
    fn a_lost_peer_fails_its_requests_only() {
        let t = PendingTable::new();
        let a = Arc::new(Slot::new(1, 2));
        let b = Arc::new(Slot::new(2, 3));
        t.insert(&a);
        t.insert(&b);
        t.fail_peer(2, || Error::exited(2));
        assert_eq!(a.get().unwrap().as_ref().unwrap_err().kind, ErrorKind::ProcessExited);
        assert!(!b.is_done());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_process_named_to_answer_completes_the_request_and_its_loss_fails_it() {
        let t = PendingTable::new();
        let s = Arc::new(Slot::new(7, 3).also_answered_by(5));
        t.insert(&s);
        assert!(t.take(7, 4).is_none(), "nor may another");
        assert!(t.take(7, 5).is_some(), "5 answers for 3");
        // Process 5 leaving fails it: 3 may have left the answer to 5.
        let s = Arc::new(Slot::new(8, 3).also_answered_by(5));
        t.insert(&s);
        t.fail_peer(5, || Error::exited(5));
        assert_eq!(s.get().unwrap().as_ref().unwrap_err().pid, 5);
        assert_eq!(t.len(), 0);
    }
}
