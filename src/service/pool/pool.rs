//! `WorkerPool`: Distributed's pool of workers. Its members are a set of
//! process ids; the free ones wait in arrival order. `take` hands out the
//! oldest free member (a future when none is free: takers queue in FIFO
//! order), skipping and dropping members that have died; `put` returns
//! one, `push` adds one. A pool whose members are all gone fails every
//! taker with "no active worker available in pool". The default pool
//! follows `workers()` (the head itself while it is alone, as
//! Distributed's default pool uses process 1 when there are no workers).
//!
//! Calls on a pool take a worker, make the call, and put the worker back
//! only when the call completes, whatever its outcome.

use crate::error::{Error, ErrorKind, Result};
use crate::node::{Future, Node};
use crate::service::rpc::RpcExt;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What a taker is given: a worker, or why there is none.
pub type Grant = Box<dyn FnOnce(Result<u32>) + Send>;

struct Waiter {
    owner: u64,
    grant: Grant,
}

#[derive(Default)]
struct State {
    /// Every member, in the order they joined the pool.
    members: Vec<u32>,
    /// The free members, oldest first.
    free: VecDeque<u32>,
    waiters: VecDeque<Waiter>,
    closed: Option<Error>,
}

pub struct WorkerPool {
    node: Weak<Node>,
    /// Follows the node's `workers()` (the default pool).
    default: bool,
    st: Mutex<State>,
    /// Takers queued now (read without the lock by busy maps).
    queued: AtomicUsize,
}

/// The error of a pool without a live member.
pub fn no_worker() -> Error {
    Error::new(ErrorKind::NoSuchProcess, "no active worker available in pool")
}

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A fresh identity for a taker (a map, a call), to tell its queued take
/// from others'.
pub fn new_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// Whether `pid` is a live member of the cluster as `node` sees it.
pub(crate) fn is_live(node: &Node, pid: u32) -> bool {
    pid == node.myid() || node.peer(pid).is_some_and(|p| p.is_ready())
}

impl WorkerPool {
    pub(crate) fn new(node: &Arc<Node>, pids: &[u32], default: bool) -> Arc<WorkerPool> {
        let p = Arc::new(WorkerPool { node: Arc::downgrade(node), default, st: Mutex::new(State::default()), queued: AtomicUsize::new(0) });
        {
            let mut st = p.st.lock();
            for &pid in pids {
                if !st.members.contains(&pid) {
                    st.members.push(pid);
                    st.free.push_back(pid);
                }
            }
        }
        p
    }

    fn node(&self) -> Result<Arc<Node>> {
        self.node.upgrade().ok_or_else(|| Error::new(ErrorKind::Shutdown, "the cluster is shut down"))
    }

    pub fn is_default(&self) -> bool {
        self.default
    }

    /// The default pool catches up with `workers()`.
    pub(crate) fn sync(&self) {
        if !self.default {
            return;
        }
        let Ok(node) = self.node() else { return };
        let now = node.workers();
        let grants = {
            let mut st = self.st.lock();
            let gone: Vec<u32> = st.members.iter().copied().filter(|p| !now.contains(p)).collect();
            for p in gone {
                Self::drop_member(&mut st, p);
            }
            for p in now {
                if !st.members.contains(&p) {
                    st.members.push(p);
                    st.free.push_back(p);
                }
            }
            self.grants(&node, &mut st)
        };
        run(grants);
    }

    fn drop_member(st: &mut State, pid: u32) {
        st.members.retain(|&m| m != pid);
        st.free.retain(|&m| m != pid);
    }

    /// Pairs queued takers with free live members (dropping dead ones);
    /// fails every taker once no member is left. Run the result unlocked.
    fn grants(&self, node: &Node, st: &mut State) -> Vec<(Grant, Result<u32>)> {
        let mut out = Vec::new();
        while !st.waiters.is_empty() {
            match Self::pop_free(node, st) {
                Some(pid) => out.push((st.waiters.pop_front().unwrap().grant, Ok(pid))),
                None if st.members.is_empty() || st.closed.is_some() => {
                    let e = st.closed.clone().unwrap_or_else(no_worker);
                    out.extend(st.waiters.drain(..).map(|w| (w.grant, Err(e.clone()))));
                }
                None => break,
            }
        }
        self.queued.store(st.waiters.len(), Ordering::Release);
        out
    }

    /// The oldest free member that is alive; dead ones leave the pool.
    fn pop_free(node: &Node, st: &mut State) -> Option<u32> {
        while let Some(pid) = st.free.pop_front() {
            if is_live(node, pid) {
                return Some(pid);
            }
            Self::drop_member(st, pid);
        }
        None
    }

    /// Takes a free worker for `owner`: `grant` runs now (on this thread)
    /// if one is free or none can ever be, else later on the thread that
    /// frees one, in FIFO order with other takers. It must be quick.
    pub fn take_with(&self, owner: u64, grant: Grant) {
        self.sync();
        let node = match self.node() {
            Ok(n) => n,
            Err(e) => return grant(Err(e)),
        };
        let now = {
            let mut st = self.st.lock();
            if let Some(e) = &st.closed {
                Some(Err(e.clone()))
            } else if !st.waiters.is_empty() {
                // Others were first.
                st.waiters.push_back(Waiter { owner, grant });
                self.queued.store(st.waiters.len(), Ordering::Release);
                return;
            } else {
                match Self::pop_free(&node, &mut st) {
                    Some(pid) => Some(Ok(pid)),
                    None if st.members.is_empty() => Some(Err(no_worker())),
                    None => {
                        st.waiters.push_back(Waiter { owner, grant });
                        self.queued.store(st.waiters.len(), Ordering::Release);
                        return;
                    }
                }
            }
        };
        if let Some(r) = now {
            grant(r);
        }
    }

    /// A free worker now, `None` if all are busy, or the pool's error.
    pub fn try_take(&self) -> Result<Option<u32>> {
        self.sync();
        let node = self.node()?;
        let mut st = self.st.lock();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        if !st.waiters.is_empty() {
            return Ok(None);
        }
        match Self::pop_free(&node, &mut st) {
            Some(p) => Ok(Some(p)),
            None if st.members.is_empty() => Err(no_worker()),
            None => Ok(None),
        }
    }

    /// `take` as a future: its value is the worker's id (4 bytes,
    /// little-endian).
    pub fn take_async(&self) -> Result<Future> {
        let node = self.node()?;
        let (fut, promise) = node.promise(node.myid());
        self.take_with(
            new_owner(),
            Box::new(move |r| {
                promise.complete(r.map(|p| p.to_le_bytes().to_vec()));
            }),
        );
        Ok(fut)
    }

    /// Waits up to `timeout` for a free worker and takes it.
    pub fn take(&self, timeout: Option<Duration>) -> Result<u32> {
        if let Some(p) = self.try_take()? {
            return Ok(p);
        }
        let node = self.node()?;
        let (fut, promise) = node.promise(node.myid());
        let owner = new_owner();
        self.take_with(
            owner,
            Box::new(move |r| {
                promise.complete(r.map(|p| p.to_le_bytes().to_vec()));
            }),
        );
        match fut.fetch(timeout) {
            Ok(v) => Ok(u32::from_le_bytes(v[..4].try_into().unwrap())),
            Err(e) if e.kind == ErrorKind::Timeout => {
                if !self.cancel_take(owner) {
                    // Granted meanwhile: give it back.
                    if let Some(Ok(v)) = fut.peek() {
                        self.put(u32::from_le_bytes(v[..4].try_into().unwrap()));
                    }
                }
                Err(Error::new(ErrorKind::Timeout, "timed out waiting for a free worker"))
            }
            Err(e) => Err(e),
        }
    }

    /// Withdraws `owner`'s queued take; false if it was not queued (it was
    /// granted, failed, or never made).
    pub fn cancel_take(&self, owner: u64) -> bool {
        let dropped = {
            let mut st = self.st.lock();
            let before = st.waiters.len();
            let (mine, others): (VecDeque<Waiter>, VecDeque<Waiter>) = st.waiters.drain(..).partition(|w| w.owner == owner);
            st.waiters = others;
            self.queued.store(st.waiters.len(), Ordering::Release);
            debug_assert!(before >= st.waiters.len());
            mine
        };
        !dropped.is_empty()
    }

    /// Whether takers other than `owner` are queued.
    pub fn has_waiters_except(&self, owner: u64) -> bool {
        if self.queued.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.st.lock().waiters.iter().any(|w| w.owner != owner)
    }

    /// Returns a worker to the free members. A process that is not a
    /// member (or is free already) is ignored, as Distributed's `put!`
    /// ignores non-members.
    pub fn put(&self, pid: u32) {
        let Ok(node) = self.node() else { return };
        let grants = {
            let mut st = self.st.lock();
            if !st.members.contains(&pid) || st.free.contains(&pid) {
                return;
            }
            if !is_live(&node, pid) {
                Self::drop_member(&mut st, pid);
            } else {
                st.free.push_back(pid);
            }
            self.grants(&node, &mut st)
        };
        run(grants);
    }

    /// Adds a worker to the pool, free. Adding a member again does nothing.
    pub fn push(&self, pid: u32) -> Result<()> {
        let node = self.node()?;
        if !is_live(&node, pid) {
            return Err(node.unknown_process(pid));
        }
        let grants = {
            let mut st = self.st.lock();
            if let Some(e) = &st.closed {
                return Err(e.clone());
            }
            if !st.members.contains(&pid) {
                st.members.push(pid);
                st.free.push_back(pid);
            }
            self.grants(&node, &mut st)
        };
        run(grants);
        Ok(())
    }

    /// A member died (or left): out of the pool, taken or not.
    pub(crate) fn remove(&self, pid: u32) {
        let Ok(node) = self.node() else { return };
        let grants = {
            let mut st = self.st.lock();
            if !st.members.contains(&pid) {
                return;
            }
            Self::drop_member(&mut st, pid);
            self.grants(&node, &mut st)
        };
        run(grants);
        self.sync();
    }

    /// The node closed: every taker fails, now and later.
    pub(crate) fn close(&self) {
        let grants = {
            let mut st = self.st.lock();
            st.closed = Some(Error::new(ErrorKind::Shutdown, "the cluster is shut down"));
            let e = st.closed.clone().unwrap();
            self.queued.store(0, Ordering::Release);
            st.waiters.drain(..).map(|w| (w.grant, Err(e.clone()))).collect::<Vec<_>>()
        };
        run(grants);
    }

    fn live_members(&self) -> Vec<u32> {
        self.sync();
        let Ok(node) = self.node() else { return Vec::new() };
        let mut st = self.st.lock();
        let dead: Vec<u32> = st.members.iter().copied().filter(|&p| !is_live(&node, p)).collect();
        for p in dead {
            Self::drop_member(&mut st, p);
        }
        st.members.clone()
    }

    /// Distributed's `length(pool)`: the live members, free or busy.
    pub fn len(&self) -> usize {
        self.live_members().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live members, in the order they joined.
    pub fn workers(&self) -> Vec<u32> {
        self.live_members()
    }

    /// Distributed's `isready(pool)`: whether a `take` would not wait.
    pub fn is_ready(&self) -> bool {
        let live = self.live_members();
        let st = self.st.lock();
        st.waiters.is_empty() && st.free.iter().any(|p| live.contains(p))
    }

    /// Calls `name` on a worker of the pool: takes one (waiting for one
    /// if all are busy), calls, and puts it back once the call completes.
    /// The future's process is the worker when one was free at once, else
    /// 0 (not known until one is).
    pub fn remotecall(self: &Arc<Self>, name: &str, args: &[u8]) -> Result<Future> {
        let node = self.node()?;
        node.check_open()?;
        if let Some(pid) = self.try_take()? {
            let (fut, promise) = node.promise(pid);
            self.call_on(&node, pid, name, args, move |r| {
                promise.complete(r);
            });
            return Ok(fut);
        }
        let (fut, promise) = node.promise(0);
        let (name, args, pool, n) = (name.to_string(), args.to_vec(), self.clone(), node.clone());
        self.take_with(
            new_owner(),
            Box::new(move |r| match r {
                Err(e) => {
                    promise.complete(Err(e));
                }
                Ok(pid) => pool.call_on(&n, pid, &name, &args, move |r| {
                    promise.complete(r);
                }),
            }),
        );
        Ok(fut)
    }

    /// Calls `name` on `pid`, taken from this pool, and puts it back when
    /// the call completes, before `done` sees the outcome.
    fn call_on(self: &Arc<Self>, node: &Arc<Node>, pid: u32, name: &str, args: &[u8], done: impl FnOnce(Result<Vec<u8>>) + Send + 'static) {
        match node.remotecall(pid, name, args) {
            Ok(f) => {
                let pool = self.clone();
                f.on_complete(move |r| {
                    pool.put(pid);
                    done(r.clone());
                });
            }
            Err(e) => {
                self.put(pid);
                done(Err(e));
            }
        }
    }

    /// `remotecall` and wait for the value.
    pub fn remotecall_fetch(self: &Arc<Self>, name: &str, args: &[u8]) -> Result<crate::node::Value> {
        self.remotecall(name, args)?.value()
    }

    /// `remotecall` and wait for completion.
    pub fn remotecall_wait(self: &Arc<Self>, name: &str, args: &[u8]) -> Result<Future> {
        let f = self.remotecall(name, args)?;
        f.wait(None)?;
        Ok(f)
    }

    /// Fire and forget on a worker of the pool: returns at once; the call
    /// goes out once a worker is free, and the worker comes back when the
    /// call completes (unlike Distributed, which puts it back at once and
    /// oversubscribes). A failure is logged here.
    pub fn remote_do(self: &Arc<Self>, name: &str, args: &[u8]) -> Result<()> {
        let node = self.node()?;
        let f = self.remotecall(name, args)?;
        let (weak, name) = (Arc::downgrade(&node), name.to_string());
        f.on_complete(move |r| {
            if let (Err(e), Some(n)) = (r, weak.upgrade()) {
                n.log.error(format!("remote_do {name} on a pool worker failed: {e}"));
            }
        });
        Ok(())
    }
}

fn run(grants: Vec<(Grant, Result<u32>)>) {
    for (g, r) in grants {
        g(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::peer_state::READY;
    use crate::node::Config;

    fn node_with(workers: &[u32]) -> Arc<Node> {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        n.start().unwrap();
        for &w in workers {
            n.add_peer(w, READY);
        }
        n
    }

    type Log = Arc<Mutex<Vec<(u64, Result<u32>)>>>;

    fn grab(p: &WorkerPool, log: &Log, owner: u64) {
        let l = log.clone();
        p.take_with(owner, Box::new(move |r| l.lock().push((owner, r))));
    }

    #[test]
    fn take_put_push_in_fifo_order() {
        let n = node_with(&[2, 3, 4]);
        let p = WorkerPool::new(&n, &[2, 3, 4], false);
        assert_eq!(p.workers(), vec![2, 3, 4]);
        assert!(p.is_ready());
        assert_eq!(p.try_take().unwrap(), Some(2));
        assert_eq!(p.try_take().unwrap(), Some(3));
        assert_eq!(p.take(Some(Duration::ZERO)).unwrap(), 4);
        assert!(!p.is_ready());
        assert_eq!(p.len(), 3, "taken workers are still members");
        // All busy: takers queue, first come first served.
        let log = Arc::new(Mutex::new(Vec::new()));
        grab(&p, &log, 10);
        grab(&p, &log, 11);
        assert!(log.lock().is_empty());
        assert!(p.has_waiters_except(10));
        p.put(3);
        p.put(7); // not a member: ignored
        assert_eq!(*log.lock(), vec![(10, Ok(3))]);
        assert!(!p.has_waiters_except(11));
        p.put(2);
        assert_eq!(log.lock()[1], (11, Ok(2)));
        // A put returns the worker behind the free ones.
        p.put(4);
        p.put(4); // free already: ignored
        p.put(3);
        assert_eq!(p.try_take().unwrap(), Some(4));
        assert_eq!(p.try_take().unwrap(), Some(3));
        assert_eq!(p.try_take().unwrap(), None);
        assert_eq!(p.take(Some(Duration::from_millis(20))).unwrap_err().kind, ErrorKind::Timeout);
        assert!(!p.has_waiters_except(0), "a timed-out take withdraws itself");
        p.push(2).unwrap(); // a member already: nothing changes
        assert_eq!(p.try_take().unwrap(), None);
        n.close();
    }

    #[test]
    fn dead_workers_are_skipped_and_an_empty_pool_fails_its_takers() {
        let n = node_with(&[2, 3]);
        let p = WorkerPool::new(&n, &[2, 3], false);
        n.peer_lost(2);
        assert_eq!(p.try_take().unwrap(), Some(3), "2 died while free: skipped");
        assert_eq!(p.workers(), vec![3]);
        let log = Arc::new(Mutex::new(Vec::new()));
        grab(&p, &log, 1);
        // The last member dies while taken: the taker fails, never hangs.
        n.peer_lost(3);
        p.remove(3);
        let e = log.lock().pop().unwrap().1.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchProcess);
        assert!(e.message.contains("no active worker available"), "{e}");
        assert!(p.try_take().is_err());
        assert!(p.is_empty());
        assert!(WorkerPool::new(&n, &[], false).take(None).is_err());
        n.close();
    }

    #[test]
    fn the_default_pool_follows_the_workers() {
        let n = node_with(&[]);
        let d = WorkerPool::new(&n, &[], true);
        assert_eq!(d.workers(), vec![1], "a lone head works itself");
        n.add_peer(2, READY);
        n.add_peer(3, READY);
        assert_eq!(d.workers(), vec![2, 3]);
        assert_eq!(d.try_take().unwrap(), Some(2));
        n.peer_lost(2);
        n.peer_lost(3);
        assert_eq!(d.workers(), vec![1], "back to the head when every worker is gone");
        n.close();
    }

    #[test]
    fn closing_fails_queued_takers() {
        let n = node_with(&[2]);
        let p = WorkerPool::new(&n, &[2], false);
        assert_eq!(p.try_take().unwrap(), Some(2));
        let log = Arc::new(Mutex::new(Vec::new()));
        grab(&p, &log, 1);
        p.close();
        assert_eq!(log.lock().pop().unwrap().1.unwrap_err().kind, ErrorKind::Shutdown);
        n.close();
    }
}
