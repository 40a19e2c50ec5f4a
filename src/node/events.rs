//! Events for the host, and host-driven dispatch.
//!
//! Every event has one shape, `(service, kind, id, pid, status)`: a new
//! service adds kinds of its own, never fields. In host-driven mode
//! library threads only queue work and events here and signal an eventfd
//! and an optional notify hook; the host drains the queue with
//! `Node::poll` on its own thread, which also runs the queued tasks
//! (incoming calls) there.

use crate::error::Result;
use crate::sys::EventFd;
use crate::wire::ServiceId;
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Events of the node core (service 0): membership and futures.
pub mod core {
    use crate::wire::ServiceId;
    pub const SERVICE: ServiceId = 0;
    /// The future `id` completed; `status` is 0 or its error code.
    pub const FUTURE_READY: u16 = 0;
    /// Worker `pid` joined and is ready.
    pub const WORKER_STARTED: u16 = 1;
    /// Worker `pid` left when asked to.
    pub const WORKER_EXITED: u16 = 2;
    /// Worker `pid` died: killed, crashed, hung, or its connection broke.
    pub const WORKER_DIED: u16 = 3;
    /// The head asked this worker to stop.
    pub const SHUTDOWN: u16 = 4;
    /// This worker's head went away.
    pub const HEAD_LOST: u16 = 5;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The service the event belongs to (0: the node core).
    pub service: ServiceId,
    /// The service's own kind number.
    pub kind: u16,
    /// A future id or another service-specific object id; 0 when none.
    pub id: u64,
    /// The process concerned; 0 when none.
    pub pid: u32,
    /// 0, or the error code of what the event reports.
    pub status: i32,
}

impl Event {
    pub fn core(kind: u16, pid: u32) -> Event {
        Event { service: core::SERVICE, kind, id: 0, pid, status: 0 }
    }
    pub fn future_ready(id: u64, status: i32) -> Event {
        Event { service: core::SERVICE, kind: core::FUTURE_READY, id, pid: 0, status }
    }
    pub fn is(&self, service: ServiceId, kind: u16) -> bool {
        self.service == service && self.kind == kind
    }
}

/// What a worker's membership change was, as lifecycle hooks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Started,
    /// The worker left: `graceful` when asked to, false when it died.
    Exited {
        graceful: bool,
    },
}

impl Lifecycle {
    /// The lifecycle change an event reports, if it is one.
    pub fn of(ev: &Event) -> Option<(u32, Lifecycle)> {
        if ev.service != core::SERVICE {
            return None;
        }
        match ev.kind {
            core::WORKER_STARTED => Some((ev.pid, Lifecycle::Started)),
            core::WORKER_EXITED => Some((ev.pid, Lifecycle::Exited { graceful: true })),
            core::WORKER_DIED => Some((ev.pid, Lifecycle::Exited { graceful: false })),
            _ => None,
        }
    }
    pub fn event(self, pid: u32) -> Event {
        Event::core(
            match self {
                Lifecycle::Started => core::WORKER_STARTED,
                Lifecycle::Exited { graceful: true } => core::WORKER_EXITED,
                Lifecycle::Exited { graceful: false } => core::WORKER_DIED,
            },
            pid,
        )
    }
}

pub type LifecycleHook = Arc<dyn Fn(u32, Lifecycle) + Send + Sync>;

/// Work a library thread hands to the host's thread.
pub type Task = Box<dyn FnOnce() + Send>;

enum Item {
    Task(Task),
    Event(Event),
}

/// Called from a library thread when the queue becomes non-empty. It
/// must only signal (e.g. `uv_async_send`), never run host code.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

pub struct HostQueue {
    items: Mutex<VecDeque<Item>>,
    efd: EventFd,
    signalled: AtomicBool,
    /// The eventfd was written since the last `take` (else `take` need
    /// not read it).
    efd_written: AtomicBool,
    notify: RwLock<Option<Notify>>,
}

thread_local! {
    /// The host's thread, in a drive that returns as soon as work is
    /// pending and whose caller polls next (`HostQueue::polling_next`).
    static POLLS_NEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl HostQueue {
    pub fn new() -> Result<HostQueue> {
        Ok(HostQueue {
            items: Mutex::new(VecDeque::new()),
            efd: EventFd::new().map_err(|e| crate::error::Error::io("eventfd", e))?,
            signalled: AtomicBool::new(false),
            efd_written: AtomicBool::new(false),
            notify: RwLock::new(None),
        })
    }

    pub fn event_fd(&self) -> i32 {
        self.efd.fd()
    }

    pub fn set_notify(&self, notify: Option<Notify>) {
        *self.notify.write() = notify;
    }

    pub fn push_task(&self, task: Task) {
        self.push(Item::Task(task));
    }

    pub fn push_event(&self, ev: Event) {
        self.push(Item::Event(ev));
    }

    fn push(&self, item: Item) {
        self.items.lock().push_back(item);
        self.signal();
    }

    /// Runs `f` on the host's thread, which polls (`take`) right after it
    /// whenever something is pending: what `f` queues itself then needs
    /// neither the eventfd nor the hook (their system call and the host
    /// loop's wake-up for work it is about to take anyway).
    pub(crate) fn polling_next<T>(&self, f: impl FnOnce() -> T) -> T {
        let prev = POLLS_NEXT.with(|p| p.replace(true));
        let r = f();
        POLLS_NEXT.with(|p| p.set(prev));
        r
    }

    fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            if POLLS_NEXT.with(|p| p.get()) {
                return;
            }
            self.efd_written.store(true, Ordering::Release);
            self.efd.signal();
            let n = self.notify.read().clone();
            if let Some(n) = n {
                n();
            }
        }
    }

    /// Signals the host with nothing queued: traffic the library served
    /// on its own threads (a dict read, a channel put) while the host was
    /// not reading. Its loop then polls (no events) and reads its
    /// connections itself for a while, so the next such request needs no
    /// library thread's wake-up. At most once until the host's next poll.
    pub(crate) fn nudge(&self) {
        if !self.signalled.load(Ordering::Acquire) {
            self.signal();
        }
    }

    /// Whether something was queued since the last `take` (lock-free).
    pub(crate) fn is_pending(&self) -> bool {
        self.signalled.load(Ordering::Acquire)
    }

    /// Takes what is queued now. Re-arms the signal first, so anything
    /// queued after this call signals again.
    pub(crate) fn take(&self, max_events: usize) -> (Vec<Task>, Vec<Event>) {
        self.signalled.store(false, Ordering::Release);
        if self.efd_written.swap(false, Ordering::AcqRel) {
            self.efd.drain();
        }
        let mut items = self.items.lock();
        let mut tasks = Vec::new();
        let mut events = Vec::new();
        let mut kept = VecDeque::new();
        for it in items.drain(..) {
            match it {
                Item::Task(t) => tasks.push(t),
                Item::Event(e) if events.len() < max_events => events.push(e),
                Item::Event(e) => kept.push_back(Item::Event(e)),
            }
        }
        let more = !kept.is_empty();
        *items = kept;
        drop(items);
        if more {
            self.signal();
        }
        (tasks, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::poll_in;
    use std::time::Duration;

    fn readable(q: &HostQueue) -> bool {
        poll_in(q.event_fd(), Some(Duration::ZERO)).unwrap()
    }

    #[test]
    fn work_queued_by_a_host_that_polls_next_signals_no_eventfd() {
        let q = HostQueue::new().unwrap();
        q.polling_next(|| q.push_task(Box::new(|| {})));
        assert!(q.is_pending(), "the host must still see the work pending");
        assert!(!readable(&q), "the eventfd was written for work its own host polls next");
        assert_eq!(q.take(8).0.len(), 1);
        // Other threads' work (and the host's outside such a drive) signals.
        std::thread::scope(|s| {
            s.spawn(|| q.polling_next(|| ()));
            s.spawn(|| q.push_task(Box::new(|| {})));
        });
        assert!(readable(&q));
        assert_eq!(q.take(8).0.len(), 1);
        assert!(!readable(&q), "take drains what was written");
    }
}
