//! Server tasks (PTools' `start_stasks`, `pmap_stasks`, `stop_stasks`,
//! `count_stasks`): one long-lived task per process of a set, each with
//! state its calls keep from one to the next.
//!
//! **Shape.** A task is a record on its process (service 8 keeps them by
//! the set's id): its index and a state slot, empty until a call puts
//! something there. `pmap_stasks(h, f, args)` calls the function `f`
//! registered by name (an ordinary rpc function) on task i's process with
//! `args[i]`, prefixed by the set's id and i: inside the handler,
//! `task_of(call)` finds the task and gives its state and the user's
//! arguments. A set's `pmap_stasks` runs each task's calls one after
//! another (it waits for every task before it returns); two running at
//! once on one set may reach a task together, so a state slot is behind a
//! lock. `stop_stasks` runs an optional function on every task (to free
//! what its state holds), then drops the records.
//!
//! **Protocol** (service 8; meta is empty):
//!
//! | op    | kind    | what                                              |
//! |-------|---------|---------------------------------------------------|
//! | START | request | payload: set id (u64 LE), task index (u32 LE); makes the record |
//! | STOP  | request | payload: set id; drops the set's records here      |

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Departure, Future, Incoming, Node, Service};
use crate::service::rpc::{Call, RpcExt};
use crate::wire::ServiceId;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const ID: ServiceId = 8;

#[doc(hidden)]
pub mod op {
    pub const START: u16 = 1;
    pub const STOP: u16 = 2;
    pub const LAST: u16 = STOP;
}

/// What every server-task call's arguments start with.
const MAGIC: &[u8; 4] = b"STK1";
const PREFIX: usize = 4 + 8 + 4;

/// A task's record on its process.
pub struct Task {
    pub index: usize,
    /// What the task's calls keep (task_local_storage), empty at first.
    pub state: Mutex<Option<Box<dyn Any + Send>>>,
}

/// The service: the tasks this process runs, by set.
pub struct Stasks {
    tasks: Mutex<HashMap<u64, Arc<Task>>>,
    next: AtomicU64,
}

impl Stasks {
    pub fn new() -> Arc<Stasks> {
        Arc::new(Stasks { tasks: Mutex::new(HashMap::new()), next: AtomicU64::new(1) })
    }
    /// Sets with a task here.
    pub fn running(&self) -> usize {
        self.tasks.lock().len()
    }
}

fn ids(payload: &[u8]) -> Result<(u64, Option<u32>)> {
    let bad = || Error::new(ErrorKind::Protocol, "a server-task message starts with a set id");
    let id = u64::from_le_bytes(payload.get(..8).ok_or_else(bad)?.try_into().expect("8"));
    let index = payload.get(8..12).map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    Ok((id, index))
}

#[doc(hidden)]
pub fn decode(op: u16, _meta: &[u8], payload: &[u8]) -> Result<()> {
    match op {
        op::START if payload.len() == 12 => Ok(()),
        op::STOP if payload.len() == 8 => Ok(()),
        op::START | op::STOP => Err(Error::new(ErrorKind::Protocol, "a server-task message of the wrong size")),
        o => Err(unknown_op("stasks", o)),
    }
}

impl Service for Stasks {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "stasks"
    }
    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        decode(msg.op(), &msg.meta, &msg.payload)?;
        let (id, index) = ids(&msg.payload)?;
        match msg.op() {
            op::START => {
                let index = index.expect("checked") as usize;
                self.tasks.lock().insert(id, Arc::new(Task { index, state: Mutex::new(None) }));
            }
            op::STOP => {
                self.tasks.lock().remove(&id);
            }
            o => return Err(unknown_op("stasks", o)),
        }
        let _ = msg.reply.send(node, Ok(&[]));
        Ok(None)
    }
    fn on_peer_left(&self, _node: &Arc<Node>, _pid: u32, _how: Departure) {}
    fn on_close(&self, _node: &Node) {
        self.tasks.lock().clear();
    }
}

/// START or STOP on process `pid`: a request, or applied here at once.
fn send(node: &Arc<Node>, pid: u32, op: u16, payload: &[u8]) -> Result<Future> {
    if pid != node.myid() {
        return node.request(pid, ID, op, &[], payload);
    }
    let svc = stasks(node)?;
    let (id, index) = ids(payload)?;
    match (op, index) {
        (op::START, Some(i)) => {
            svc.tasks.lock().insert(id, Arc::new(Task { index: i as usize, state: Mutex::new(None) }));
        }
        _ => {
            svc.tasks.lock().remove(&id);
        }
    }
    let (f, p) = node.promise(pid);
    p.complete(Ok(Vec::new()));
    Ok(f)
}

fn stasks(node: &Node) -> Result<Arc<Stasks>> {
    node.service::<Stasks>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no server-task service on this node"))
}

/// A set of server tasks: task i runs on `pids()[i]`.
#[derive(Clone)]
pub struct ServerTasks {
    node: Arc<Node>,
    id: u64,
    pids: Vec<u32>,
}

impl std::fmt::Debug for ServerTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTasks({:#x} on {:?})", self.id, self.pids)
    }
}

impl ServerTasks {
    pub fn id(&self) -> u64 {
        self.id
    }
    /// `count_stasks(h)`.
    pub fn count(&self) -> usize {
        self.pids.len()
    }
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    fn check_args(&self, n: usize) -> Result<()> {
        if n != self.pids.len() {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("pmap_stasks: {n} argument(s) for {} server task(s): one per task", self.pids.len())));
        }
        Ok(())
    }

    /// `pmap_stasks`: calls `f` on every task, task i with `args[i]`; a
    /// future per task, in task order (a task whose process is gone has a
    /// failed one).
    pub fn pmap_async(&self, f: &str, args: &[&[u8]]) -> Result<Vec<Future>> {
        self.check_args(args.len())?;
        let mut out = Vec::with_capacity(args.len());
        for (i, (a, &pid)) in args.iter().zip(&self.pids).enumerate() {
            let mut framed = Vec::with_capacity(PREFIX + a.len());
            framed.extend_from_slice(MAGIC);
            framed.extend_from_slice(&self.id.to_le_bytes());
            framed.extend_from_slice(&(i as u32).to_le_bytes());
            framed.extend_from_slice(a);
            // A task whose process is gone fails alone, as its future.
            out.push(self.node.remotecall(pid, f, &framed).unwrap_or_else(|e| {
                let (fut, p) = self.node.promise(pid);
                p.complete(Err(e));
                fut
            }));
        }
        Ok(out)
    }

    /// `pmap_stasks`, waited for: each task's result, in task order.
    pub fn pmap(&self, f: &str, args: &[&[u8]]) -> Result<Vec<Result<Vec<u8>>>> {
        let fs = self.pmap_async(f, args)?;
        Ok(fs.iter().map(|f| f.fetch(None).map(<[u8]>::to_vec)).collect())
    }

    /// `stop_stasks`: runs `f` (if given) on every task, with an empty
    /// argument, to free what its state holds, then drops the tasks.
    /// Tasks whose process left are gone already; the first other failure
    /// of `f` is returned (the tasks are dropped all the same).
    pub fn stop(&self, f: Option<&str>) -> Result<()> {
        self.stop_async(f)?.wait(Some(Duration::from_secs(60)))
    }

    /// `stop` as a future, returned at once.
    pub fn stop_async(&self, f: Option<&str>) -> Result<Future> {
        let me = self.node.myid();
        let (out, promise) = self.node.promise(me);
        let calls = match f {
            Some(f) => self.pmap_async(f, &vec![&[][..]; self.pids.len()])?,
            None => Vec::new(),
        };
        // Each call's failure, collected whatever the others do.
        let first: Arc<Mutex<Option<Error>>> = Arc::default();
        let calls: Vec<Future> = calls
            .into_iter()
            .inspect(|c| {
                let first = first.clone();
                c.on_complete(move |r| {
                    if let Err(e) = r {
                        if e.kind != ErrorKind::ProcessExited {
                            first.lock().get_or_insert(e.clone());
                        }
                    }
                });
            })
            .collect();
        let settled = self.node.join(me, calls.into_iter().map(|c| self.settled(c)).collect(), |_| Ok(Vec::new()));
        let h = self.clone();
        settled.on_complete(move |_| {
            let payload = h.id.to_le_bytes();
            let stops: Vec<Future> = h.pids.iter().map(|&p| h.settled_or_ready(send(&h.node, p, op::STOP, &payload))).collect();
            let all = h.node.join(me, stops, |_| Ok(Vec::new()));
            all.on_complete(move |_| {
                promise.complete(first.lock().take().map_or(Ok(Vec::new()), Err));
            });
        });
        Ok(out.keeping(settled))
    }

    /// A future that completes (successfully) once `f` does, either way.
    fn settled(&self, f: Future) -> Future {
        let (out, p) = self.node.promise(f.pid());
        f.on_complete(move |_| {
            p.complete(Ok(Vec::new()));
        });
        out.keeping(f)
    }

    fn settled_or_ready(&self, f: Result<Future>) -> Future {
        match f {
            Ok(f) => self.settled(f),
            Err(_) => {
                let (out, p) = self.node.promise(self.node.myid());
                p.complete(Ok(Vec::new()));
                out
            }
        }
    }
}

/// What a server-task call finds with `task_of`.
pub struct TaskCall<'a> {
    pub task: Arc<Task>,
    /// The set's id.
    pub set: u64,
    /// The arguments pmap_stasks gave this task.
    pub args: &'a [u8],
}

/// The task a call to a server task runs on, or None for any other call.
pub fn task_of(call: &Call) -> Option<TaskCall<'_>> {
    let a = call.args();
    if a.len() < PREFIX || &a[..4] != MAGIC {
        return None;
    }
    let set = u64::from_le_bytes(a[4..12].try_into().expect("8"));
    let index = u32::from_le_bytes(a[12..16].try_into().expect("4")) as usize;
    let task = stasks(call.node()).ok()?.tasks.lock().get(&set).cloned()?;
    (task.index == index).then_some(TaskCall { task, set, args: &a[PREFIX..] })
}

/// Server tasks, on any node with the service.
pub trait StasksExt {
    /// `start_stasks`: a task on each of `pids` (None: every worker, or
    /// this process when it has none); returns once every task exists.
    fn start_stasks(&self, pids: Option<&[u32]>) -> Result<ServerTasks>;
    /// `start_stasks` with a future that completes once every task
    /// exists (the set is usable then); on failure, stop the set.
    fn start_stasks_async(&self, pids: Option<&[u32]>) -> Result<(ServerTasks, Future)>;
}

impl StasksExt for Arc<Node> {
    fn start_stasks(&self, pids: Option<&[u32]>) -> Result<ServerTasks> {
        let (h, f) = self.start_stasks_async(pids)?;
        if let Err(e) = f.wait(Some(Duration::from_secs(30))) {
            let _ = h.stop(None);
            return Err(Error::at(e.kind, e.pid, format!("cannot start a server task on process {}: {}", e.pid, e.message)));
        }
        Ok(h)
    }

    fn start_stasks_async(&self, pids: Option<&[u32]>) -> Result<(ServerTasks, Future)> {
        self.check_open()?;
        let svc = stasks(self)?;
        let pids: Vec<u32> = match pids {
            Some([]) => return Err(Error::new(ErrorKind::InvalidArgument, "start_stasks: no processes")),
            Some(p) => p.to_vec(),
            None if self.workers().is_empty() => vec![self.myid()],
            None => self.workers(),
        };
        let id = (u64::from(self.myid()) << 40) | svc.next.fetch_add(1, Ordering::Relaxed);
        let mut fs = Vec::new();
        for (i, &p) in pids.iter().enumerate() {
            let mut payload = id.to_le_bytes().to_vec();
            payload.extend_from_slice(&(i as u32).to_le_bytes());
            fs.push(send(self, p, op::START, &payload)?);
        }
        let all = self.join(self.myid(), fs, |_| Ok(Vec::new()));
        Ok((ServerTasks { node: self.clone(), id, pids }, all))
    }
}
