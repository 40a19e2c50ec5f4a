//! The callback gate of a `cluster_ctx`: every call into host code
//! (handlers, lifecycle, log and notify callbacks) passes through it, so
//! `cluster_close` can promise that none runs, or will run, once it returns.

use parking_lot::{Condvar, Mutex};
use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Host callbacks running now.
    active: usize,
}

thread_local! {
    /// Gates this thread is inside a callback of (a callback may close
    /// its own cluster; it must not wait for itself).
    static INSIDE: Cell<usize> = const { Cell::new(0) };
}

/// Held while a host callback runs.
pub(crate) struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        INSIDE.with(|i| i.set(i.get() - 1));
        let mut s = self.0.state.lock();
        s.active -= 1;
        if s.active == 0 {
            self.0.cv.notify_all();
        }
    }
}

impl Gate {
    /// A pass to call host code, or `None` once the gate is closed.
    pub fn enter(&self) -> Option<Pass<'_>> {
        let mut s = self.state.lock();
        if s.closed {
            return None;
        }
        s.active += 1;
        INSIDE.with(|i| i.set(i.get() + 1));
        Some(Pass(self))
    }

    /// No callback starts from now on; returns at once.
    pub fn close(&self) {
        self.state.lock().closed = true;
    }

    /// Closes, then waits until no callback runs (other than the one this
    /// thread may be inside). False when `timeout` passed first.
    pub fn close_and_wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mine = INSIDE.with(|i| i.get());
        let mut s = self.state.lock();
        s.closed = true;
        while s.active > mine {
            match deadline {
                None => self.cv.wait(&mut s),
                Some(d) => {
                    if self.cv.wait_until(&mut s, d).timed_out() {
                        return s.active <= mine;
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closing_waits_for_running_callbacks_and_refuses_new_ones() {
        let g = Arc::new(Gate::default());
        let g2 = g.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _p = g2.enter().unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        rx.recv().unwrap();
        assert!(!g.close_and_wait(Some(Duration::from_millis(10))), "a callback still runs");
        assert!(g.enter().is_none(), "no callback starts once closed");
        assert!(g.close_and_wait(Some(Duration::from_secs(5))));
        t.join().unwrap();
    }

    #[test]
    fn a_callback_may_close_its_own_gate() {
        let g = Gate::default();
        let _p = g.enter().unwrap();
        assert!(g.close_and_wait(Some(Duration::from_millis(10))));
    }
}
