//! Futures: the caller's side of any request, whichever service made it.

use super::slot::{self, Slot};
use super::Node;
use crate::error::{Error, ErrorKind, Result};
use crate::net::Conn;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A reference to a value held by `owner`, which another process can
/// wait on and fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FutureRef {
    /// The process holding the value.
    pub owner: u32,
    pub id: u64,
}

impl FutureRef {
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.owner.to_le_bytes());
        b[4..].copy_from_slice(&self.id.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<FutureRef> {
        if b.len() != 12 {
            return None;
        }
        Some(FutureRef { owner: u32::from_le_bytes(b[..4].try_into().ok()?), id: u64::from_le_bytes(b[4..].try_into().ok()?) })
    }
}

type Start = Box<dyn FnOnce(&Future) + Send>;
type OnDrop = Box<dyn FnOnce() + Send + Sync>;

/// The outcome of a request, to wait on and fetch. A service may make it
/// lazy (the request goes out on the first wait) and give it a hook to
/// run when it is dropped (e.g. releasing a reference).
pub struct Future {
    pub(crate) node: Arc<Node>,
    pub(crate) slot: Arc<Slot>,
    conn: OnceLock<Arc<Conn>>,
    /// The connection the request went out on, when another one brings
    /// the answer (`conn`): flushed, and told its caller waits, before a wait.
    sent_on: OnceLock<Arc<Conn>>,
    /// The value this future refers to, when it is a reference to another
    /// process's value; services use it to pass the reference on.
    pub(crate) source: Option<FutureRef>,
    start_pending: AtomicBool,
    start: Mutex<Option<Start>>,
    on_drop: Option<OnDrop>,
    /// The process whose message completes (or advances) it next, when
    /// that changes as it goes: waiters read that one's connection.
    following: Option<(Arc<AtomicU32>, bool)>,
}

/// A fetched value, kept alive without a copy.
pub struct Value(pub(crate) Arc<Slot>);

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({} bytes)", self.len())
    }
}

impl Value {
    /// What keeps the bytes alive, to hold without another allocation.
    pub fn into_shared(self) -> Arc<impl Send + Sync + 'static> {
        self.0
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self.0.get() {
            Some(Ok(v)) => v,
            _ => &[],
        }
    }
}

impl Future {
    pub(crate) fn new(node: &Arc<Node>, slot: Arc<Slot>, conn: Option<Arc<Conn>>) -> Future {
        let cell = OnceLock::new();
        if let Some(c) = conn {
            let _ = cell.set(c);
        }
        Future {
            node: node.clone(),
            slot,
            conn: cell,
            sent_on: OnceLock::new(),
            source: None,
            start_pending: AtomicBool::new(false),
            start: Mutex::new(None),
            on_drop: None,
            following: None,
        }
    }

    /// A future over an existing slot (e.g. a value this process owns).
    pub(crate) fn from_slot(node: &Arc<Node>, slot: Arc<Slot>) -> Future {
        Future::new(node, slot, None)
    }

    /// Makes the request go out on the first wait or readiness check.
    pub(crate) fn lazy(mut self, start: impl FnOnce(&Future) + Send + 'static) -> Future {
        *self.start.get_mut() = Some(Box::new(start));
        self.start_pending = AtomicBool::new(true);
        self
    }

    pub(crate) fn with_source(mut self, r: FutureRef) -> Future {
        self.source = Some(r);
        self
    }

    /// Keeps `other` alive (and its connection driven) as long as this one:
    /// a future completed by another's completion.
    pub(crate) fn keeping(mut self, other: Future) -> Future {
        self.take_conns_of(&other);
        if self.following.is_none() {
            self.following = other.following.clone();
        }
        let prev = self.on_drop.take();
        self.on_drop = Some(Box::new(move || {
            drop(other);
            if let Some(p) = prev {
                p();
            }
        }));
        self
    }

    /// Waiters read `other`'s connection: its answer completes this one.
    pub(crate) fn keeping_conn_of(self, other: &Future) -> Future {
        self.take_conns_of(other);
        self
    }

    fn take_conns_of(&self, other: &Future) {
        if let Some(c) = other.conn.get() {
            let _ = self.conn.set(c.clone());
        }
        if let Some(c) = other.sent_on.get() {
            let _ = self.sent_on.set(c.clone());
        }
    }

    /// The request went out on `conn`, and its answer comes on another
    /// (`set_conn`): waiters flush `conn` first, where the request may
    /// be corked as one of a pipelined burst.
    pub(crate) fn sent_on(self, conn: Arc<Conn>) -> Future {
        let _ = self.sent_on.set(conn);
        self
    }

    fn flush_request(&self) {
        if let Some(c) = self.sent_on.get() {
            c.waited_on();
        }
    }

    pub(crate) fn on_drop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Future {
        self.on_drop = Some(Box::new(f));
        self
    }

    /// Waiters read the connection of the process `next` names (0: none),
    /// following it as it changes; `share`: yielding the CPU now and then
    /// (more processes wait for each other than there are cores).
    pub(crate) fn following(mut self, next: Arc<AtomicU32>, share: bool) -> Future {
        self.following = Some((next, share));
        self
    }

    /// The connection the reply comes on, read by waiters.
    pub(crate) fn set_conn(&self, conn: Arc<Conn>) {
        let _ = self.conn.set(conn);
    }

    /// Unique among this process's futures; names it in host events.
    pub fn id(&self) -> u64 {
        self.slot.id
    }
    /// The process that computes (or holds) the value.
    pub fn pid(&self) -> u32 {
        self.slot.pid
    }
    /// The remote value this future refers to, if it is a reference.
    pub fn source(&self) -> Option<FutureRef> {
        self.source
    }
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn start(&self) {
        if self.start_pending.load(Ordering::Acquire) && self.start_pending.swap(false, Ordering::AcqRel) {
            if let Some(f) = self.start.lock().take() {
                f(self);
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        if !self.slot.is_done() {
            self.start();
        }
        self.slot.is_done()
    }

    /// Waits for completion; the request's own failure is returned as the error.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        self.start();
        self.flush_request();
        let deadline = timeout.map(|t| Instant::now() + t);
        let done = match &self.following {
            Some((next, share)) => self.node.wait_slot_following(&self.slot, next, *share, deadline),
            None => self.node.wait_slot(&self.slot, self.conn.get(), deadline),
        };
        if !done {
            return Err(Error::at(ErrorKind::Timeout, self.slot.pid, "timed out waiting for the future"));
        }
        slot::outcome(&self.slot).map(|_| ())
    }

    /// Reads the reply's connection on this thread for up to `spin`, never
    /// parking: a host runtime waits this way for a short while, then on
    /// its own scheduler. True when the future is done. A future completed
    /// here (a take from a channel this process keeps) reads the
    /// connection of the peer heard from last, the likeliest sender of
    /// what completes it, so that it needs no wake-up either.
    pub fn drive(&self, spin: Duration) -> bool {
        self.start();
        if self.slot.is_done() {
            return true;
        }
        self.flush_request();
        let done = || self.slot.is_done();
        if let Some((next, share)) = &self.following {
            return self.node.drive_following(&self.slot, next, *share, spin);
        }
        if let Some(c) = self.conn.get() {
            return c.drive(&self.node, spin, &done);
        }
        match self.node.last_sender_conn() {
            Some(c) => c.drive(&self.node, spin, &done),
            None => crate::sys::spin_until(spin, done),
        }
    }

    /// Waits, then borrows the value, which stays cached in the future.
    pub fn fetch(&self, timeout: Option<Duration>) -> Result<&[u8]> {
        self.wait(timeout)?;
        slot::outcome(&self.slot)
    }

    pub fn value(&self) -> Result<Value> {
        self.wait(None)?;
        Ok(Value(self.slot.clone()))
    }

    /// The outcome if done, without waiting or starting anything.
    pub fn peek(&self) -> Option<std::result::Result<&[u8], Error>> {
        self.slot.get().map(|r| r.as_ref().map(|v| &v[..]).map_err(|e| e.clone()))
    }

    /// Runs `k` once the future completes (now, if it has), on the
    /// completing thread: it must be quick and must not block.
    pub fn on_complete(&self, k: impl FnOnce(&Result<Vec<u8>>) + Send + 'static) {
        self.start();
        self.slot.on_complete(k);
    }
}

impl Drop for Future {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// A future completed by the code that made it (e.g. an operation run on
/// a thread of the library, or a composite of other futures).
pub struct Promise {
    slot: Arc<Slot>,
}

impl Promise {
    pub fn complete(&self, outcome: Result<Vec<u8>>) -> bool {
        self.slot.complete(outcome)
    }
}

impl Node {
    /// A future completed by `merge` of every one of `futures`' values, or
    /// by the first of their errors.
    pub(crate) fn join(self: &Arc<Self>, pid: u32, futures: Vec<Future>, merge: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<u8>> + Send + 'static) -> Future {
        self.join_with(self.promise(pid), futures, merge)
    }

    /// `join` for a future only this library waits on (no host event).
    pub(crate) fn join_quiet(self: &Arc<Self>, pid: u32, futures: Vec<Future>, merge: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<u8>> + Send + 'static) -> Future {
        self.join_with(self.promise_quiet(pid), futures, merge)
    }

    fn join_with(
        self: &Arc<Self>,
        (f, p): (Future, Promise),
        futures: Vec<Future>,
        merge: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<u8>> + Send + 'static,
    ) -> Future {
        if futures.is_empty() {
            p.complete(merge(Vec::new()));
            return f;
        }
        type Merge = Box<dyn FnOnce(Vec<Vec<u8>>) -> Result<Vec<u8>> + Send>;
        struct Gather {
            got: Vec<Option<Vec<u8>>>,
            left: usize,
            promise: Option<Promise>,
            merge: Option<Merge>,
        }
        let g = Arc::new(Mutex::new(Gather { got: vec![None; futures.len()], left: futures.len(), promise: Some(p), merge: Some(Box::new(merge)) }));
        let mut f = f;
        for (i, part) in futures.into_iter().enumerate() {
            let g = g.clone();
            part.on_complete(move |r| {
                let mut s = g.lock();
                let Some(_) = s.promise.as_ref() else { return };
                match r {
                    Err(e) => {
                        let p = s.promise.take().expect("present");
                        drop(s);
                        p.complete(Err(e.clone()));
                    }
                    Ok(v) => {
                        s.got[i] = Some(v.clone());
                        s.left -= 1;
                        if s.left == 0 {
                            let p = s.promise.take().expect("present");
                            let merge = s.merge.take().expect("present");
                            let all = s.got.drain(..).map(|v| v.expect("every answer")).collect();
                            drop(s);
                            p.complete(merge(all));
                        }
                    }
                }
            });
            f = f.keeping(part);
        }
        f
    }

    /// A future with its promise: complete the promise to complete it.
    pub fn promise(self: &Arc<Self>, pid: u32) -> (Future, Promise) {
        let slot = self.new_slot(pid);
        (Future::new(self, slot.clone(), None), Promise { slot })
    }

    /// A promise whose future only this library waits on: in host mode its
    /// completion is no host event.
    pub(crate) fn promise_quiet(self: &Arc<Self>, pid: u32) -> (Future, Promise) {
        let slot = Arc::new(Slot::new(self.next_request_id(), pid));
        (Future::new(self, slot.clone(), None), Promise { slot })
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        self.slot.complete(Err(Error::new(ErrorKind::Shutdown, "the operation was abandoned")));
    }
}
