//! Work distribution: Distributed's worker pools and `pmap`, the split of
//! `@distributed`, and PTools' `WorkerSet` and queued tasks.
//!
//! - `pool`: `WorkerPool` (take / put / push, dead workers skipped, calls
//!   that return their worker when they complete) and the default pool;
//! - `pmap`: the parallel map, driven by completions (no thread per
//!   element), with batches, `on_error`, retries and progress;
//! - `split`: `splitrange`, the batch size of `:auto`, range chunks;
//! - `workerset`: PTools' `WorkerSet` (round robin, first free);
//! - `tasks`: PTools' queued tasks (targets, priorities, dequeueing);
//! - `mailbox`: how the state machines above take their events.
//!
//! Pools, maps, worker sets and task queues live in the process that
//! makes them; only `HOST_INFO` (a worker's host name and address, for
//! the task queue's host targets) crosses the wire. Using a pool from
//! another process (as Distributed does through the pool's RemoteChannel)
//! needs ops for take / put / push / length addressed to the owner, and a
//! reference to the pool that other processes hold, freed with its
//! holders as `refs` frees futures.

mod mailbox;
pub mod pmap;
#[allow(clippy::module_inception)]
pub mod pool;
pub mod split;
pub mod tasks;
pub mod workerset;

pub use pmap::{BatchSize, Items, Output, Pmap, PmapOptions, Progress, ProgressFn, Retry, RetryCheck};
pub use pool::WorkerPool;
pub use tasks::{QueueKey, Target, TaskDone, TaskInfo, TaskQueue, TaskSpec};
pub use workerset::{WorkerSet, WsMode};

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Departure, Future, Incoming, Node, Service};
use crate::wire::{self, ServiceId};
use parking_lot::Mutex;
use pmap::Stoppable;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock, Weak};

pub const ID: ServiceId = 5;

pub(crate) mod op {
    /// A worker's host name and listening address.
    pub const HOST_INFO: u16 = 1;
}

/// Where a process runs, as the task queue's host targets name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    /// The address it listens on (its host part).
    pub ip: String,
}

impl HostInfo {
    fn here(node: &Node) -> HostInfo {
        let ip = node.address().rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_default();
        HostInfo { hostname: crate::sys::hostname(), ip }
    }
}

/// The pool service of one node: its default pool, and what it tells of
/// members leaving and of the node closing.
#[derive(Default)]
pub struct Pools {
    default: OnceLock<Arc<WorkerPool>>,
    pools: Mutex<Vec<Weak<WorkerPool>>>,
    maps: Mutex<Vec<Weak<dyn Stoppable>>>,
    queues: Mutex<Vec<Weak<TaskQueue>>>,
}

impl Pools {
    pub fn new() -> Arc<Pools> {
        Arc::new(Pools::default())
    }

    fn default_pool(&self, node: &Arc<Node>) -> Arc<WorkerPool> {
        self.default.get_or_init(|| WorkerPool::new(node, &node.workers(), true)).clone()
    }

    fn track<T: ?Sized>(list: &Mutex<Vec<Weak<T>>>, w: Weak<T>) {
        let mut l = list.lock();
        if l.len() >= 16 && l.len().is_power_of_two() {
            l.retain(|x| x.strong_count() > 0);
        }
        l.push(w);
    }

    fn live<T: ?Sized>(list: &Mutex<Vec<Weak<T>>>) -> Vec<Arc<T>> {
        let mut l = list.lock();
        l.retain(|x| x.strong_count() > 0);
        l.iter().filter_map(|w| w.upgrade()).collect()
    }
}

impl Service for Pools {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "pool"
    }

    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        match msg.op() {
            op::HOST_INFO => {
                let info = wire::encode_meta(&HostInfo::here(node));
                msg.respond(node, Ok(&info));
                Ok(None)
            }
            o => Err(unknown_op("pool", o)),
        }
    }

    fn on_peer_joined(&self, _node: &Arc<Node>, _pid: u32) {
        if let Some(d) = self.default.get() {
            d.sync();
        }
        for q in Self::live(&self.queues) {
            q.membership_changed();
        }
    }

    fn on_peer_left(&self, _node: &Arc<Node>, pid: u32, _how: Departure) {
        for p in Self::live(&self.pools) {
            p.remove(pid);
        }
        if let Some(d) = self.default.get() {
            d.remove(pid);
        }
        for q in Self::live(&self.queues) {
            q.peer_left(pid);
        }
    }

    fn on_close(&self, _node: &Node) {
        for m in Self::live(&self.maps) {
            m.stop(Error::new(ErrorKind::Shutdown, "the cluster was shut down"));
        }
        for p in Self::live(&self.pools) {
            p.close();
        }
        if let Some(d) = self.default.get() {
            d.close();
        }
        for q in Self::live(&self.queues) {
            q.close();
        }
    }
}

/// Decodes a pool message exactly as the service does (for fuzzing).
#[doc(hidden)]
pub fn decode(op: u16, _meta: &[u8]) -> Result<()> {
    match op {
        op::HOST_INFO => Ok(()),
        o => Err(unknown_op("pool", o)),
    }
}

fn pools(node: &Node) -> Result<Arc<Pools>> {
    node.service::<Pools>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no pool service on this node"))
}

/// Pools, maps, worker sets and task queues, on any node with the pool
/// service (and rpc).
pub trait PoolExt {
    /// Distributed's `default_worker_pool()`: every worker, following
    /// joins and departures (the head itself while it has no worker).
    fn default_pool(&self) -> Result<Arc<WorkerPool>>;
    /// Distributed's `WorkerPool(pids)`.
    fn worker_pool(&self, pids: &[u32]) -> Result<Arc<WorkerPool>>;
    /// Starts `pmap` of the function `name` over `items` on `pool` (the
    /// default pool when `None`).
    fn pmap(&self, pool: Option<&Arc<WorkerPool>>, name: &str, items: Items, opts: PmapOptions) -> Result<Pmap>;
    /// `@distributed` over `first..=last`: `name` is called once per chunk
    /// with the chunk's bounds (two little-endian `i64`s) followed by
    /// `args`; the results, one per chunk in order, are the partial
    /// results a reducer combines. `chunk == 0`: Distributed's static
    /// split, one chunk per worker (`splitrange`); else chunks of that
    /// many elements handed out as workers finish.
    #[allow(clippy::too_many_arguments)]
    fn distributed(&self, pool: Option<&Arc<WorkerPool>>, name: &str, first: i64, last: i64, chunk: usize, args: &[u8], opts: PmapOptions) -> Result<Pmap>;
    /// PTools' `WorkerSet(pids, mode)`.
    fn worker_set(&self, pids: &[u32], mode: WsMode) -> Result<Arc<WorkerSet>>;
    /// A queue of PTools' queued tasks over this node's workers.
    fn task_queue(&self) -> Result<Arc<TaskQueue>>;
    /// Process `pid`'s host name and address.
    fn host_info_async(&self, pid: u32) -> Result<Future>;
}

impl PoolExt for Arc<Node> {
    fn default_pool(&self) -> Result<Arc<WorkerPool>> {
        Ok(pools(self)?.default_pool(self))
    }

    fn worker_pool(&self, pids: &[u32]) -> Result<Arc<WorkerPool>> {
        self.check_open()?;
        let svc = pools(self)?;
        for &p in pids {
            if p == 0 {
                return Err(Error::new(ErrorKind::InvalidArgument, "process ids start at 1"));
            }
        }
        let p = WorkerPool::new(self, pids, false);
        Pools::track(&svc.pools, Arc::downgrade(&p));
        Ok(p)
    }

    fn pmap(&self, pool: Option<&Arc<WorkerPool>>, name: &str, items: Items, opts: PmapOptions) -> Result<Pmap> {
        let svc = pools(self)?;
        let pool = match pool {
            Some(p) => p.clone(),
            None => svc.default_pool(self),
        };
        let (m, stop) = Pmap::start(self, pool, name, items, opts)?;
        Pools::track(&svc.maps, stop);
        Ok(m)
    }

    fn distributed(&self, pool: Option<&Arc<WorkerPool>>, name: &str, first: i64, last: i64, chunk: usize, args: &[u8], opts: PmapOptions) -> Result<Pmap> {
        let pool = match pool {
            Some(p) => p.clone(),
            None => self.default_pool()?,
        };
        let ranges = if chunk == 0 { split::splitrange(first, last, pool.len().max(1)) } else { split::chunks(first, last, chunk) };
        let mut items = Items::with_capacity(ranges.len(), ranges.len() * (16 + args.len()));
        let mut buf = Vec::with_capacity(16 + args.len());
        for (lo, hi) in ranges {
            buf.clear();
            buf.extend_from_slice(&lo.to_le_bytes());
            buf.extend_from_slice(&hi.to_le_bytes());
            buf.extend_from_slice(args);
            items.push(&buf);
        }
        self.pmap(Some(&pool), name, items, PmapOptions { batch_size: BatchSize::Fixed(1), ..opts })
    }

    fn worker_set(&self, pids: &[u32], mode: WsMode) -> Result<Arc<WorkerSet>> {
        let pool = self.worker_pool(pids)?;
        WorkerSet::new(self, pids, mode, pool)
    }

    fn task_queue(&self) -> Result<Arc<TaskQueue>> {
        self.check_open()?;
        let svc = pools(self)?;
        let q = TaskQueue::new(self);
        Pools::track(&svc.queues, Arc::downgrade(&q));
        Ok(q)
    }

    fn host_info_async(&self, pid: u32) -> Result<Future> {
        if pid == self.myid() {
            let (f, p) = self.promise(pid);
            p.complete(Ok(wire::encode_meta(&HostInfo::here(self))));
            return Ok(f);
        }
        self.request(pid, ID, op::HOST_INFO, &[], &[])
    }
}

/// A `HOST_INFO` reply.
pub fn decode_host_info(v: &[u8]) -> Result<HostInfo> {
    wire::decode_meta(v)
}
