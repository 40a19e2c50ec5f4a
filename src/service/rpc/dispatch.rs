//! Handler slots: how many calls run at once. A call runs when a slot is
//! free, else it waits its turn in arrival order. A handler that blocks on
//! a future lends its slot meanwhile, as a Julia task yields, so calls
//! that call back into this process cannot deadlock.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;

struct Slots<T> {
    free: usize,
    queue: VecDeque<T>,
    resumers: usize,
}

pub(crate) struct Dispatcher<T> {
    slots: Mutex<Slots<T>>,
    cv: Condvar,
}

impl<T> Dispatcher<T> {
    pub fn new(slots: usize) -> Dispatcher<T> {
        Dispatcher { slots: Mutex::new(Slots { free: slots, queue: VecDeque::new(), resumers: 0 }), cv: Condvar::new() }
    }

    /// Takes a slot for `call` (returned: run it now) or queues it.
    pub fn offer(&self, call: T) -> Option<T> {
        let mut s = self.slots.lock();
        if s.free > 0 && s.queue.is_empty() {
            s.free -= 1;
            Some(call)
        } else {
            s.queue.push_back(call);
            None
        }
    }

    /// Gives the slot back, or keeps it for the next queued call. A
    /// waiter taking its slot back goes before queued calls.
    pub fn finish(&self) -> Option<T> {
        let mut s = self.slots.lock();
        if s.resumers == 0 {
            if let Some(c) = s.queue.pop_front() {
                return Some(c);
            }
        }
        s.free += 1;
        self.cv.notify_one();
        None
    }

    /// Takes a slot back after lending it; waits for one to be free.
    pub fn reclaim(&self) {
        let mut s = self.slots.lock();
        s.resumers += 1;
        while s.free == 0 {
            self.cv.wait(&mut s);
        }
        s.free -= 1;
        s.resumers -= 1;
    }

    /// Drops every queued call (on close).
    pub fn drain(&self) -> Vec<T> {
        self.slots.lock().queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn calls_beyond_the_slots_queue_in_order() {
        let d = Dispatcher::new(1);
        assert_eq!(d.offer(1), Some(1));
        assert_eq!(d.offer(2), None);
        assert_eq!(d.offer(3), None);
        assert_eq!(d.finish(), Some(2), "the slot passes to the oldest queued call");
        assert_eq!(d.finish(), Some(3));
        assert_eq!(d.finish(), None);
        assert_eq!(d.offer(4), Some(4), "the slot is free again");
    }

    #[test]
    fn a_lent_slot_runs_a_queued_call_and_comes_back_first() {
        let d = Arc::new(Dispatcher::new(1));
        assert_eq!(d.offer(1), Some(1));
        assert_eq!(d.offer(2), None);
        // Call 1 waits on a future: it lends its slot to call 2.
        assert_eq!(d.finish(), Some(2));
        let d2 = d.clone();
        let resumer = std::thread::spawn(move || d2.reclaim());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!resumer.is_finished(), "no slot is free while call 2 runs");
        assert_eq!(d.offer(3), None);
        // Call 2 ends: the slot goes to the waiting call 1, not to call 3.
        assert_eq!(d.finish(), None);
        resumer.join().unwrap();
        assert_eq!(d.finish(), Some(3), "call 3 runs once call 1 is done");
    }
}
