//! Host-driven dispatch: for hosts (Julia) that must run every handler on
//! their own thread and never block in a foreign call. Library threads only
//! queue work here and signal an eventfd and an optional notify hook; the
//! host drains the queue with `Node::poll`.

use crate::error::Result;
use crate::rpc::IncomingCall;
use crate::sys::EventFd;
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The future with this id completed.
    FutureReady(u64),
    WorkerStarted(u32),
    WorkerExited { pid: u32, graceful: bool },
    /// `interrupt` reached this process: cancel the running calls.
    Interrupt,
    /// The head asked this worker to stop, or the head went away.
    Shutdown,
}

pub(crate) enum Item {
    Call(IncomingCall),
    Event(Event),
}

/// Called from a library thread when the queue becomes non-empty. It
/// must only signal (e.g. `uv_async_send`), never run host code.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

pub struct HostQueue {
    items: Mutex<VecDeque<Item>>,
    efd: EventFd,
    signalled: AtomicBool,
    notify: RwLock<Option<Notify>>,
}

impl HostQueue {
    pub fn new() -> Result<HostQueue> {
        Ok(HostQueue {
            items: Mutex::new(VecDeque::new()),
            efd: EventFd::new().map_err(|e| crate::error::Error::io("eventfd", e))?,
            signalled: AtomicBool::new(false),
            notify: RwLock::new(None),
        })
    }

    pub fn event_fd(&self) -> i32 {
        self.efd.fd()
    }

    pub fn set_notify(&self, notify: Option<Notify>) {
        *self.notify.write() = notify;
    }

    pub(crate) fn push_call(&self, call: IncomingCall) {
        self.push(Item::Call(call));
    }

    pub fn push_event(&self, ev: Event) {
        self.push(Item::Event(ev));
    }

    fn push(&self, item: Item) {
        self.items.lock().push_back(item);
        self.signal();
    }

    fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.efd.signal();
            let n = self.notify.read().clone();
            if let Some(n) = n {
                n();
            }
        }
    }

    /// Takes what is queued now. Re-arms the signal first, so anything
    /// queued after this call signals again.
    pub(crate) fn take(&self, max_events: usize) -> (Vec<IncomingCall>, Vec<Event>) {
        self.signalled.store(false, Ordering::Release);
        self.efd.drain();
        let mut items = self.items.lock();
        let mut calls = Vec::new();
        let mut events = Vec::new();
        let mut kept = VecDeque::new();
        for it in items.drain(..) {
            match it {
                Item::Call(c) => calls.push(c),
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
        (calls, events)
    }
}
