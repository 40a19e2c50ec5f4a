//! Timers: one thread runs every delayed action of a node, started on
//! first use. Actions must be quick (complete a future, send a message).

use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Action = Box<dyn FnOnce() + Send>;

struct Entry {
    at: Instant,
    seq: u64,
    action: Action,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    running: bool,
    stopped: bool,
}

#[derive(Default)]
pub(crate) struct Timers {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Timers {
    pub fn after(&self, delay: Duration, action: impl FnOnce() + Send + 'static) {
        let (m, cv) = &*self.inner;
        let mut s = m.lock();
        if s.stopped {
            return;
        }
        s.seq += 1;
        let seq = s.seq;
        let at = Instant::now() + delay;
        // The thread sleeps until the earliest deadline: a later one needs
        // no wake-up (a hot path arming long timeouts costs no thread hop).
        let sooner = s.heap.peek().is_none_or(|e| at < e.0.at);
        s.heap.push(Reverse(Entry { at, seq, action: Box::new(action) }));
        if !s.running {
            s.running = true;
            let inner = self.inner.clone();
            std::thread::Builder::new().name("cluster-timer".into()).stack_size(128 * 1024).spawn(move || Timers::run(&inner)).expect("spawn timer thread");
        }
        if sooner {
            cv.notify_one();
        }
    }

    fn run(inner: &(Mutex<State>, Condvar)) {
        let (m, cv) = inner;
        let mut s = m.lock();
        loop {
            if s.stopped {
                s.heap.clear();
                s.running = false;
                return;
            }
            let now = Instant::now();
            match s.heap.peek().map(|e| e.0.at) {
                Some(at) if at <= now => {
                    let Reverse(e) = s.heap.pop().unwrap();
                    drop(s);
                    (e.action)();
                    s = m.lock();
                }
                Some(at) => {
                    cv.wait_until(&mut s, at);
                }
                None => {
                    if cv.wait_for(&mut s, Duration::from_secs(5)).timed_out() && s.heap.is_empty() {
                        // Idle: let the thread go; the next timer starts one.
                        s.running = false;
                        return;
                    }
                }
            }
        }
    }

    pub fn stop(&self) {
        let (m, cv) = &*self.inner;
        let dropped: Vec<_> = {
            let mut s = m.lock();
            s.stopped = true;
            s.heap.drain().collect()
        };
        cv.notify_all();
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn timers_fire_in_order_and_not_after_stop() {
        let t = Timers::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (i, ms) in [(2, 40u64), (1, 10)] {
            let l = log.clone();
            t.after(Duration::from_millis(ms), move || l.lock().push(i));
        }
        let fired = Arc::new(AtomicU32::new(0));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(*log.lock(), vec![1, 2]);
        t.stop();
        let f = fired.clone();
        t.after(Duration::ZERO, move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(fired.load(Ordering::SeqCst), 0);
    }
}
