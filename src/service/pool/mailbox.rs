//! A mailbox: events for one state machine, handled one batch at a time
//! by whichever thread posts while nobody else is handling them. A post
//! from inside the handler (a call that failed at once, a grant made on
//! this thread) only queues, so completions never recurse and nothing
//! needs a thread of its own.

use parking_lot::Mutex;
use std::collections::VecDeque;

pub(crate) struct Mailbox<E> {
    inner: Mutex<Inner<E>>,
}

struct Inner<E> {
    queue: VecDeque<E>,
    running: bool,
}

impl<E> Default for Mailbox<E> {
    fn default() -> Self {
        Mailbox { inner: Mutex::new(Inner { queue: VecDeque::new(), running: false }) }
    }
}

/// Clears `running` however the handler ends (a panic included).
struct Running<'a, E>(&'a Mailbox<E>);

impl<E> Drop for Running<'_, E> {
    fn drop(&mut self) {
        self.0.inner.lock().running = false;
    }
}

impl<E> Mailbox<E> {
    /// Queues `ev`; unless a handler runs already, runs `handle` on this
    /// thread with everything queued, batch after batch, until the queue
    /// is empty.
    pub fn post(&self, ev: E, mut handle: impl FnMut(&mut VecDeque<E>)) {
        {
            let mut s = self.inner.lock();
            s.queue.push_back(ev);
            if s.running {
                return;
            }
            s.running = true;
        }
        let guard = Running(self);
        let mut batch = VecDeque::new();
        loop {
            {
                let mut s = self.inner.lock();
                if s.queue.is_empty() {
                    s.running = false;
                    std::mem::forget(guard);
                    return;
                }
                std::mem::swap(&mut s.queue, &mut batch);
            }
            handle(&mut batch);
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_post_from_the_handler_is_handled_after_it_without_recursion() {
        let m = Arc::new(Mailbox::<u32>::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        fn go(m: &Arc<Mailbox<u32>>, seen: &Arc<Mutex<Vec<u32>>>, ev: u32, depth: &mut u32) {
            *depth += 1;
            assert!(*depth <= 1, "recursed");
            let (m2, s2) = (m.clone(), seen.clone());
            m.post(ev, |batch| {
                for e in batch.drain(..) {
                    s2.lock().push(e);
                    if e < 5 {
                        let mut d = 0;
                        go(&m2, &s2, e + 1, &mut d);
                    }
                }
            });
            *depth -= 1;
        }
        let mut d = 0;
        go(&m, &seen, 0, &mut d);
        assert_eq!(*seen.lock(), vec![0, 1, 2, 3, 4, 5]);
    }
}
