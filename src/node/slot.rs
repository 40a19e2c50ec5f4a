//! The completion slot behind a future: set once, read many times, with
//! waiters that spin briefly before they park.

use crate::error::{Error, ErrorKind, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

type Continuation = Box<dyn FnOnce(&Result<Vec<u8>>) + Send>;

pub struct Slot {
    /// Cluster-unique within its owner: (owner, id) names it.
    pub id: u64,
    /// The process computing the value.
    pub pid: u32,
    /// Another process whose response is taken as this one's (0: none):
    /// a dict backup answering for its primary.
    also: u32,
    done: AtomicBool,
    value: OnceLock<Result<Vec<u8>>>,
    parked: AtomicU32,
    lock: Mutex<()>,
    cv: Condvar,
    continuations: Mutex<Vec<Continuation>>,
}

impl Slot {
    pub fn new(id: u64, pid: u32) -> Slot {
        Slot {
            id,
            pid,
            also: 0,
            done: AtomicBool::new(false),
            value: OnceLock::new(),
            parked: AtomicU32::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            continuations: Mutex::new(Vec::new()),
        }
    }

    /// Takes a response from `pid` too (see `also`).
    pub fn also_answered_by(mut self, pid: u32) -> Slot {
        self.also = pid;
        self
    }

    /// Whether a response from `pid` completes this slot.
    pub fn answered_by(&self, pid: u32) -> bool {
        pid == self.pid || (pid != 0 && pid == self.also)
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The outcome, once done.
    pub fn get(&self) -> Option<&Result<Vec<u8>>> {
        if self.is_done() {
            self.value.get()
        } else {
            None
        }
    }

    /// Sets the outcome; later calls are ignored. Returns whether this call set it.
    pub fn complete(&self, outcome: Result<Vec<u8>>) -> bool {
        if self.value.set(outcome).is_err() {
            return false;
        }
        let conts = {
            let mut c = self.continuations.lock();
            self.done.store(true, Ordering::SeqCst);
            std::mem::take(&mut *c)
        };
        let v = self.value.get().unwrap();
        for k in conts {
            k(v);
        }
        if self.parked.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.cv.notify_all();
        }
        true
    }

    /// Runs `k` with the outcome: now if done, else on completion (on the
    /// completing thread).
    pub fn on_complete(&self, k: impl FnOnce(&Result<Vec<u8>>) + Send + 'static) {
        {
            let mut c = self.continuations.lock();
            if !self.done.load(Ordering::SeqCst) {
                c.push(Box::new(k));
                return;
            }
        }
        k(self.value.get().unwrap())
    }

    /// Parks until done or `deadline`; true when done.
    pub fn park_until(&self, deadline: Option<Instant>) -> bool {
        if self.is_done() {
            return true;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        let mut g = self.lock.lock();
        while !self.done.load(Ordering::SeqCst) {
            match deadline {
                None => self.cv.wait(&mut g),
                Some(d) => {
                    if self.cv.wait_until(&mut g, d).timed_out() {
                        break;
                    }
                }
            }
        }
        drop(g);
        self.parked.fetch_sub(1, Ordering::SeqCst);
        self.is_done()
    }
}

/// Outcome of a completed slot as a borrowed value or a cloned error.
pub fn outcome(slot: &Slot) -> Result<&[u8]> {
    match slot.get() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.clone()),
        None => Err(Error::new(ErrorKind::NotReady, "future is not ready")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn completes_once_and_wakes_parked_waiter() {
        let s = Arc::new(Slot::new(1, 2));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.park_until(None));
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.complete(Ok(vec![1, 2])));
        assert!(!s.complete(Ok(vec![3])));
        assert!(t.join().unwrap());
        assert_eq!(outcome(&s).unwrap(), &[1, 2]);
    }

    #[test]
    fn park_times_out() {
        let s = Slot::new(1, 2);
        assert!(!s.park_until(Some(Instant::now() + Duration::from_millis(10))));
        assert_eq!(outcome(&s).unwrap_err().kind, ErrorKind::NotReady);
    }

    #[test]
    fn continuations_run_before_and_after_completion() {
        let s = Slot::new(1, 2);
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        s.on_complete(move |r| {
            assert!(r.is_err());
            h.fetch_add(1, Ordering::SeqCst);
        });
        s.complete(Err(Error::exited(2)));
        let h = hits.clone();
        s.on_complete(move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
