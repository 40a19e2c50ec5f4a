//! PTools' `WorkerSet`: a set of workers called in turn.
//!
//! - `WsMode::RoundRobin` (`WS_MODE_RR`): call `k` goes to worker
//!   `k mod n` (calls go 2, 3, 4, 2, ... for [2, 3, 4]); workers known to
//!   be dead are skipped.
//! - `WsMode::FirstFree` (`WS_MODE_FF`): each call goes to an idle worker
//!   (the one idle longest); when all are busy calls queue in FIFO order
//!   and the oldest goes to the next worker that finishes. A worker comes
//!   back when its call completes, failed or not; queued calls are never
//!   dropped (they fail only when no worker of the set is left).
//!
//! PTools allows `remotecall` (a future without waiting) only in RR mode,
//! since its FF mode needs a task waiting for the reply to free the
//! worker; here a completion frees it, so every form works in both modes.

use super::pool::{is_live, no_worker, WorkerPool};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{Future, Node, Value};
use crate::service::rpc::RpcExt;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

/// PTools' `WS_MODE_RR` and `WS_MODE_FF`, with their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsMode {
    RoundRobin = 1,
    FirstFree = 2,
}

pub struct WorkerSet {
    node: Weak<Node>,
    mode: WsMode,
    ids: Vec<u32>,
    /// Round robin: the index of the next worker.
    next: Mutex<usize>,
    /// First free: the idle workers and the queued calls.
    pool: Arc<WorkerPool>,
}

impl WorkerSet {
    pub(crate) fn new(node: &Arc<Node>, pids: &[u32], mode: WsMode, pool: Arc<WorkerPool>) -> Result<Arc<WorkerSet>> {
        if pids.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "a worker set needs at least one worker"));
        }
        let mut ids = Vec::new();
        for &p in pids {
            if !ids.contains(&p) {
                ids.push(p);
            }
        }
        Ok(Arc::new(WorkerSet { node: Arc::downgrade(node), mode, ids, next: Mutex::new(0), pool }))
    }

    pub fn mode(&self) -> WsMode {
        self.mode
    }

    /// The set's workers, as given.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn node(&self) -> Result<Arc<Node>> {
        self.node.upgrade().ok_or_else(|| Error::new(ErrorKind::Shutdown, "the cluster is shut down"))
    }

    /// PTools' `chooseproc`: the next live worker in turn.
    pub fn choose(&self, node: &Node) -> Result<u32> {
        let mut next = self.next.lock();
        for _ in 0..self.ids.len() {
            let i = *next % self.ids.len();
            *next = i + 1;
            let p = self.ids[i];
            if is_live(node, p) {
                return Ok(p);
            }
        }
        Err(no_worker())
    }

    /// Calls `name`: on the next worker (RR) or on a free one (FF, queued
    /// while none is). Returns at once.
    pub fn remotecall(&self, name: &str, args: &[u8]) -> Result<Future> {
        let node = self.node()?;
        match self.mode {
            WsMode::RoundRobin => {
                let p = self.choose(&node)?;
                node.remotecall(p, name, args)
            }
            WsMode::FirstFree => self.pool.remotecall(name, args),
        }
    }

    pub fn remotecall_fetch(&self, name: &str, args: &[u8]) -> Result<Value> {
        self.remotecall(name, args)?.value()
    }

    pub fn remotecall_wait(&self, name: &str, args: &[u8]) -> Result<Future> {
        let f = self.remotecall(name, args)?;
        f.wait(None)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::peer_state::READY;
    use crate::node::Config;
    use std::time::Duration;

    fn node_with(workers: &[u32]) -> Arc<Node> {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        n.start().unwrap();
        for &w in workers {
            n.add_peer(w, READY);
        }
        n
    }

    #[test]
    fn round_robin_wraps_and_skips_the_dead() {
        let n = node_with(&[2, 3, 4]);
        let ws = WorkerSet::new(&n, &[2, 3, 4], WsMode::RoundRobin, WorkerPool::new(&n, &[2, 3, 4], false)).unwrap();
        let order: Vec<u32> = (0..7).map(|_| ws.choose(&n).unwrap()).collect();
        assert_eq!(order, vec![2, 3, 4, 2, 3, 4, 2]);
        n.peer_lost(3);
        let order: Vec<u32> = (0..4).map(|_| ws.choose(&n).unwrap()).collect();
        assert_eq!(order, vec![4, 2, 4, 2]);
        n.peer_lost(2);
        n.peer_lost(4);
        assert_eq!(ws.choose(&n).unwrap_err().kind, ErrorKind::NoSuchProcess);
        n.close();
    }

    #[test]
    fn first_free_takes_the_longest_idle_and_queues_in_order() {
        // The order FF hands out workers is the pool's: idle ones oldest
        // first, returned ones at the back, queued takers FIFO.
        let n = node_with(&[5, 6, 7, 8]);
        let pool = WorkerPool::new(&n, &[5, 6, 7, 8], false);
        let got: Vec<u32> = (0..4).map(|_| pool.try_take().unwrap().unwrap()).collect();
        assert_eq!(got, vec![5, 6, 7, 8]);
        let log = Arc::new(Mutex::new(Vec::new()));
        for k in 0..4 {
            let l = log.clone();
            pool.take_with(100 + k, Box::new(move |r| l.lock().push((k, r.unwrap()))));
        }
        // They finish in the order 5, 6, 7, 8: queued calls get them so.
        for w in [5, 6, 7, 8] {
            pool.put(w);
        }
        assert_eq!(*log.lock(), vec![(0, 5), (1, 6), (2, 7), (3, 8)]);
        n.close();
    }
}
