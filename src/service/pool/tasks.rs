//! PTools' queued tasks (`QUEUEDTASKS.md` of amitmurthy/PTools.jl): tasks
//! queued for workers, run in priority order as workers become free.
//!
//! A task (`QueuedWorkerTask(task, method, callback, target)`) is a
//! function registered by name, its argument bytes (the `WorkerTask`), an
//! optional callback and a target: a process, a list of processes, a host
//! (name or address) or a list of hosts, any worker (`:wrkr_any`) or all
//! workers (`:wrkr_all`). As in PTools, a task sits in one queue per
//! target (the "any" queue, a process's queue, a host's queue), each entry
//! with its own priority, PTools' `Inf` unless given; a free worker runs
//! the entry with the lowest priority value among the queues it serves,
//! the oldest among equals (PTools' priority queues do not promise that).
//! A task for several targets runs once (taking it removes its other
//! entries); a task for all workers runs once on each.
//!
//! Each worker runs one task of a queue at a time (PTools' feeder per
//! process). Results go to the callback (once per run) and to the task's
//! future. A task whose targets have all died fails instead of waiting
//! forever; a dequeued task's future fails with `Interrupted`.

use super::mailbox::Mailbox;
use super::pool::{is_live, no_worker};
use super::{decode_host_info, HostInfo, PoolExt};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{Future, Node, Promise};
use crate::service::rpc::RpcExt;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Where a task may run.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Pid(u32),
    Pids(Vec<u32>),
    /// A host name (or its first label) or address, as `prep_remotes` saw it.
    Host(String),
    Hosts(Vec<String>),
    /// PTools' `:wrkr_any`.
    Any,
    /// PTools' `:wrkr_all`: once on each worker there is when it is queued.
    All,
}

/// What a task's result callback is told, once per run.
pub struct TaskDone<'a> {
    pub id: u64,
    /// The worker it ran on (or was to run on, if that worker died first).
    pub pid: u32,
    pub outcome: std::result::Result<&'a [u8], &'a Error>,
}

pub type TaskCallback = Arc<dyn Fn(&TaskDone) + Send + Sync>;

pub struct TaskSpec {
    /// The registered function (PTools' `remote_method`).
    pub name: String,
    /// Its argument (PTools' `WorkerTask`).
    pub args: Vec<u8>,
    pub target: Target,
    /// Lower runs first; PTools' default is `Inf`.
    pub priority: f64,
    /// Runs on the thread that completes the run (inside `poll` in host mode).
    pub callback: Option<TaskCallback>,
}

impl TaskSpec {
    pub fn new(name: &str, args: &[u8], target: Target) -> TaskSpec {
        TaskSpec { name: name.to_string(), args: args.to_vec(), target, priority: f64::INFINITY, callback: None }
    }
}

/// A queue a task entry waits in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueKey {
    /// PTools' `:wrkr_any` queue.
    Any,
    Pid(u32),
    Host(String),
}

/// A queued task as `set_priorities` and `dequeue_if` see it.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub id: u64,
    pub name: String,
    /// The queue of this entry (`set_priorities` is asked per queue, as
    /// PTools' `calc_prio(target, task, priority)`).
    pub queue: QueueKey,
    pub priority: f64,
    /// When it was queued, seconds since the Unix epoch (PTools' `qtime`).
    pub queued_at: f64,
    /// A task for all workers.
    pub all: bool,
}

#[derive(Clone, Copy, Debug)]
struct Prio(f64);
impl PartialEq for Prio {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0).is_eq()
    }
}
impl Eq for Prio {}
impl PartialOrd for Prio {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Prio {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// A queue's entry: priority, then arrival, then the task.
type Entry = (Prio, u64, u64);

struct Task {
    name: String,
    args: Arc<Vec<u8>>,
    all: bool,
    entries: Vec<(QueueKey, Prio, u64)>,
    runs_left: usize,
    started: usize,
    value: Option<Result<Vec<u8>>>,
    failures: Vec<String>,
    callback: Option<TaskCallback>,
    promise: Option<Promise>,
    queued_at: f64,
}

#[derive(Default)]
struct St {
    tasks: HashMap<u64, Task>,
    queues: HashMap<QueueKey, BTreeSet<Entry>>,
    /// Workers running a task of this queue now.
    busy: HashSet<u32>,
    hosts: HashMap<u32, HostInfo>,
    next_id: u64,
    next_seq: u64,
    closed: bool,
}

enum Ev {
    Kick,
    Done { pid: u32, id: u64, outcome: Result<Vec<u8>> },
    Left(u32),
    Close,
}

enum Act {
    Run(u32, u64, String, Arc<Vec<u8>>),
    Callback(TaskCallback, u64, u32, Result<Vec<u8>>),
    Complete(Promise, Result<Vec<u8>>),
}

pub struct TaskQueue {
    node: Weak<Node>,
    st: Mutex<St>,
    mailbox: Mailbox<Ev>,
    weak: Weak<TaskQueue>,
    prepared: AtomicUsize,
    /// Held while a callback runs; `Some(())` until `silence`.
    cb: Mutex<bool>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn short(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

impl St {
    fn insert(&mut self, key: QueueKey, e: Entry) {
        self.queues.entry(key).or_default().insert(e);
    }

    fn unqueue(&mut self, key: &QueueKey, e: &Entry) {
        if let Some(q) = self.queues.get_mut(key) {
            q.remove(e);
            if q.is_empty() {
                self.queues.remove(key);
            }
        }
    }

    /// The queues worker `p` serves: its own, its hosts', and "any" when
    /// it is one of the workers.
    fn keys_for(&self, p: u32, worker: bool) -> Vec<QueueKey> {
        let mut keys = vec![QueueKey::Pid(p)];
        if worker {
            keys.push(QueueKey::Any);
        }
        if let Some(h) = self.hosts.get(&p) {
            keys.push(QueueKey::Host(h.hostname.clone()));
            keys.push(QueueKey::Host(h.ip.clone()));
        }
        keys
    }

    /// The entry worker `p` runs next: the lowest priority, then the
    /// oldest, over the queues it serves.
    fn next_for(&self, p: u32, worker: bool) -> Option<(QueueKey, Entry)> {
        self.keys_for(p, worker).into_iter().filter_map(|k| self.queues.get(&k).and_then(|q| q.first().copied()).map(|e| (k, e))).min_by(|a, b| a.1.cmp(&b.1))
    }

    /// Takes entry `e` of queue `key` to run: the task's only entry taken
    /// for an all-workers task, every entry otherwise.
    fn take(&mut self, key: &QueueKey, e: Entry) -> u64 {
        let id = e.2;
        let entries = {
            let t = self.tasks.get_mut(&id).expect("a queued task exists");
            t.started += 1;
            if t.all {
                t.entries.retain(|(k, p, s)| !(k == key && (*p, *s) == (e.0, e.1)));
                vec![(key.clone(), e.0, e.1)]
            } else {
                std::mem::take(&mut t.entries)
            }
        };
        for (k, p, s) in entries {
            self.unqueue(&k, &(p, s, id));
        }
        id
    }

    fn hosts_serving(&self, name: &str, live: &dyn Fn(u32) -> bool) -> bool {
        self.hosts.iter().any(|(p, h)| live(*p) && (h.hostname == name || h.ip == name))
    }
}

impl TaskQueue {
    pub(crate) fn new(node: &Arc<Node>) -> Arc<TaskQueue> {
        Arc::new_cyclic(|w| TaskQueue {
            node: Arc::downgrade(node),
            st: Mutex::new(St { next_id: 1, ..St::default() }),
            mailbox: Mailbox::default(),
            weak: w.clone(),
            prepared: AtomicUsize::new(0),
            cb: Mutex::new(true),
        })
    }

    fn node(&self) -> Result<Arc<Node>> {
        self.node.upgrade().ok_or_else(|| Error::new(ErrorKind::Shutdown, "the cluster is shut down"))
    }

    fn post(&self, ev: Ev) {
        let Some(me) = self.weak.upgrade() else { return };
        let me2 = me.clone();
        me.mailbox.post(ev, move |batch| me2.handle(batch));
    }

    /// PTools' `prep_remotes(force)`: learns every worker's host name and
    /// address (for host targets). Done once unless `force`. The future
    /// completes once all have answered (workers that fail to are left
    /// out).
    pub fn prep_remotes_async(&self, force: bool) -> Result<Future> {
        let node = self.node()?;
        node.check_open()?;
        let (fut, promise) = node.promise(node.myid());
        if self.prepared.load(Ordering::Acquire) > 0 && !force {
            promise.complete(Ok(Vec::new()));
            return Ok(fut);
        }
        let workers = node.workers();
        struct Gather {
            left: AtomicUsize,
            got: Mutex<HashMap<u32, HostInfo>>,
            promise: Mutex<Option<Promise>>,
            q: Weak<TaskQueue>,
        }
        let g = Arc::new(Gather { left: AtomicUsize::new(workers.len() + 1), got: Mutex::default(), promise: Mutex::new(Some(promise)), q: self.weak.clone() });
        fn one(g: &Gather) {
            if g.left.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            let got = std::mem::take(&mut *g.got.lock());
            if let Some(q) = g.q.upgrade() {
                q.prepared.store(got.len().max(1), Ordering::Release);
                q.st.lock().hosts = got;
                q.post(Ev::Kick);
            }
            if let Some(p) = g.promise.lock().take() {
                p.complete(Ok(Vec::new()));
            }
        }
        for w in workers {
            match node.host_info_async(w) {
                Ok(f) => {
                    let g2 = g.clone();
                    f.on_complete(move |r| {
                        if let Some(info) = r.as_ref().ok().and_then(|v| decode_host_info(v).ok()) {
                            g2.got.lock().insert(w, info);
                        }
                        one(&g2);
                    });
                }
                Err(_) => one(&g),
            }
        }
        one(&g);
        Ok(fut)
    }

    /// PTools' `num_remotes()`: the workers `prep_remotes` learned of
    /// (PTools counts the head too, which runs tasks there; here tasks run
    /// on workers).
    pub fn num_remotes(&self) -> usize {
        self.st.lock().hosts.len()
    }

    /// The host information `prep_remotes` gathered for `pid`.
    pub fn host_of(&self, pid: u32) -> Option<HostInfo> {
        self.st.lock().hosts.get(&pid).cloned()
    }

    /// PTools' `queue_worker_task`: queues a task; returns its id and a
    /// future of its result (for a task on all workers: no value once
    /// every run succeeded, else a `Composite` error listing the failed
    /// runs).
    pub fn queue(&self, spec: TaskSpec) -> Result<(u64, Future)> {
        let node = self.node()?;
        node.check_open()?;
        if spec.name.is_empty() || spec.name.len() > crate::wire::MAX_META {
            return Err(Error::new(ErrorKind::InvalidArgument, "function names are 1 to 65535 bytes"));
        }
        if spec.priority.is_nan() {
            return Err(Error::new(ErrorKind::InvalidArgument, "a priority is a number, not NaN"));
        }
        let live = |p: u32| is_live(&node, p);
        let mut st = self.st.lock();
        if st.closed {
            return Err(Error::new(ErrorKind::Shutdown, "the cluster is shut down"));
        }
        let resolve_hosts = |st: &St, names: &[String]| -> Result<Vec<String>> {
            if st.hosts.is_empty() {
                return Err(Error::new(ErrorKind::InvalidArgument, "host targets need prep_remotes first"));
            }
            let known = |n: &str| st.hosts_serving(n, &live);
            let mut keys: Vec<String> = names.iter().filter(|n| known(n)).cloned().collect();
            if keys.is_empty() {
                // PTools tries the names' first labels next.
                for n in names {
                    for (p, h) in &st.hosts {
                        if live(*p) && short(&h.hostname) == short(n) && !keys.contains(&h.hostname) {
                            keys.push(h.hostname.clone());
                        }
                    }
                }
            }
            if keys.is_empty() {
                return Err(Error::new(ErrorKind::NoSuchProcess, format!("no worker on {}", names.join(", "))));
            }
            Ok(keys)
        };
        let (keys, all): (Vec<QueueKey>, bool) = match &spec.target {
            Target::Pid(p) => {
                if !live(*p) {
                    return Err(node.unknown_process(*p));
                }
                (vec![QueueKey::Pid(*p)], false)
            }
            Target::Pids(ps) => {
                let mut v: Vec<QueueKey> = Vec::new();
                for &p in ps {
                    if live(p) && !v.contains(&QueueKey::Pid(p)) {
                        v.push(QueueKey::Pid(p));
                    }
                }
                if v.is_empty() {
                    return Err(Error::new(ErrorKind::NoSuchProcess, "no live process among the task's targets"));
                }
                (v, false)
            }
            Target::Host(h) => (resolve_hosts(&st, std::slice::from_ref(h))?.into_iter().map(QueueKey::Host).collect(), false),
            Target::Hosts(hs) => (resolve_hosts(&st, hs)?.into_iter().map(QueueKey::Host).collect(), false),
            Target::Any => (vec![QueueKey::Any], false),
            Target::All => (node.workers().into_iter().map(QueueKey::Pid).collect(), true),
        };
        let id = st.next_id;
        st.next_id += 1;
        let (fut, promise) = node.promise(node.myid());
        let prio = Prio(spec.priority);
        let mut entries = Vec::with_capacity(keys.len());
        for k in keys {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.insert(k.clone(), (prio, seq, id));
            entries.push((k, prio, seq));
        }
        let runs = if all { entries.len() } else { 1 };
        st.tasks.insert(
            id,
            Task {
                name: spec.name,
                args: Arc::new(spec.args),
                all,
                entries,
                runs_left: runs,
                started: 0,
                value: None,
                failures: Vec::new(),
                callback: spec.callback,
                promise: Some(promise),
                queued_at: now_secs(),
            },
        );
        drop(st);
        self.post(Ev::Kick);
        Ok((id, fut))
    }

    /// PTools' `execute_worker_task`: queues the task and returns the
    /// future of its result (wait on it for PTools' blocking form).
    pub fn execute(&self, spec: TaskSpec) -> Result<Future> {
        self.queue(spec).map(|(_, f)| f)
    }

    /// PTools' `dequeue_worker_task(task)`: removes a task that has not
    /// started (for a task on all workers: its runs that have not). False
    /// when nothing of it was queued.
    pub fn dequeue(&self, id: u64) -> bool {
        let mut acts = Vec::new();
        let removed = {
            let mut st = self.st.lock();
            self.dequeue_locked(&mut st, id, &mut acts)
        };
        self.perform(acts);
        if removed {
            self.post(Ev::Kick);
        }
        removed
    }

    fn dequeue_locked(&self, st: &mut St, id: u64, acts: &mut Vec<Act>) -> bool {
        let Some(t) = st.tasks.get_mut(&id) else { return false };
        if t.entries.is_empty() {
            return false;
        }
        let entries = std::mem::take(&mut t.entries);
        let n = entries.len();
        if t.all {
            t.runs_left -= n;
        } else {
            t.runs_left = 0;
        }
        for (k, p, s) in entries {
            st.unqueue(&k, &(p, s, id));
        }
        let t = st.tasks.get_mut(&id).unwrap();
        if t.runs_left == 0 {
            let t = st.tasks.remove(&id).unwrap();
            let outcome = if t.started == 0 { Err(Error::new(ErrorKind::Interrupted, format!("task {id} was dequeued"))) } else { Self::outcome(&t) };
            if let Some(p) = t.promise {
                acts.push(Act::Complete(p, outcome));
            }
        }
        true
    }

    /// PTools' `dequeue_worker_task(filter_fn)`: dequeues every queued task
    /// for which `keep` returns false; returns how many.
    pub fn dequeue_if(&self, mut keep: impl FnMut(&TaskInfo) -> bool) -> usize {
        let infos: Vec<TaskInfo> = {
            let st = self.st.lock();
            st.tasks.iter().filter(|(_, t)| !t.entries.is_empty()).map(|(&id, t)| Self::info(id, t, &t.entries[0])).collect()
        };
        let mut n = 0;
        for i in infos {
            if !keep(&i) && self.dequeue(i.id) {
                n += 1;
            }
        }
        n
    }

    fn info(id: u64, t: &Task, e: &(QueueKey, Prio, u64)) -> TaskInfo {
        TaskInfo { id, name: t.name.clone(), queue: e.0.clone(), priority: e.1 .0, queued_at: t.queued_at, all: t.all }
    }

    /// Sets every queued entry of task `id` to `priority`.
    pub fn set_priority(&self, id: u64, priority: f64) -> Result<()> {
        if priority.is_nan() {
            return Err(Error::new(ErrorKind::InvalidArgument, "a priority is a number, not NaN"));
        }
        let mut st = self.st.lock();
        let entries = match st.tasks.get(&id) {
            Some(t) if !t.entries.is_empty() => t.entries.clone(),
            _ => return Err(Error::new(ErrorKind::InvalidArgument, format!("task {id} is not queued"))),
        };
        let mut new = Vec::with_capacity(entries.len());
        for (k, p, s) in entries {
            st.unqueue(&k, &(p, s, id));
            st.insert(k.clone(), (Prio(priority), s, id));
            new.push((k, Prio(priority), s));
        }
        st.tasks.get_mut(&id).unwrap().entries = new;
        Ok(())
    }

    /// PTools' `set_priorities(calc_prio)`: every queued entry gets the
    /// priority `calc` gives it (from its queue, task and priority now).
    /// `calc` runs on this thread, without the queue's lock.
    pub fn set_priorities(&self, mut calc: impl FnMut(&TaskInfo) -> f64) {
        let all: Vec<TaskInfo> = {
            let st = self.st.lock();
            st.tasks.iter().flat_map(|(&id, t)| t.entries.iter().map(move |e| Self::info(id, t, e))).collect()
        };
        let new: Vec<(TaskInfo, f64)> = all
            .into_iter()
            .map(|i| {
                let p = calc(&i);
                (i, p)
            })
            .collect();
        let mut st = self.st.lock();
        for (i, p) in new {
            if p.is_nan() {
                continue;
            }
            let Some(t) = st.tasks.get_mut(&i.id) else { continue };
            let Some(pos) = t.entries.iter().position(|(k, _, _)| *k == i.queue) else { continue };
            let (k, old, seq) = t.entries[pos].clone();
            t.entries[pos].1 = Prio(p);
            st.unqueue(&k, &(old, seq, i.id));
            st.insert(k, (Prio(p), seq, i.id));
        }
    }

    /// The tasks queued and not started, in no particular order.
    pub fn queued(&self) -> Vec<TaskInfo> {
        let st = self.st.lock();
        st.tasks.iter().filter(|(_, t)| !t.entries.is_empty()).map(|(&id, t)| Self::info(id, t, &t.entries[0])).collect()
    }

    /// Tasks queued or running.
    pub fn len(&self) -> usize {
        self.st.lock().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No result callback runs once this returns (one running on another
    /// thread is waited for); tasks still run, their futures complete.
    pub fn silence(&self) {
        *self.cb.lock() = false;
    }

    pub(crate) fn membership_changed(&self) {
        self.post(Ev::Kick);
    }

    pub(crate) fn peer_left(&self, pid: u32) {
        self.post(Ev::Left(pid));
    }

    pub(crate) fn close(&self) {
        self.post(Ev::Close);
    }

    fn outcome(t: &Task) -> Result<Vec<u8>> {
        if t.all {
            if t.failures.is_empty() {
                Ok(Vec::new())
            } else {
                Err(Error::new(
                    ErrorKind::Composite,
                    format!("{} of {} runs failed: {}", t.failures.len(), t.started.max(t.failures.len()), t.failures.join("; ")),
                ))
            }
        } else {
            t.value.clone().unwrap_or_else(|| Err(no_worker()))
        }
    }

    fn handle(&self, batch: &mut VecDeque<Ev>) {
        let Ok(node) = self.node() else { return };
        let mut acts = Vec::new();
        {
            let mut st = self.st.lock();
            for ev in batch.drain(..) {
                match ev {
                    Ev::Kick => {}
                    Ev::Done { pid, id, outcome } => {
                        st.busy.remove(&pid);
                        Self::finish_run(&mut st, id, pid, outcome, &mut acts);
                    }
                    Ev::Left(pid) => self.drop_dead(&node, &mut st, pid, &mut acts),
                    Ev::Close => {
                        st.closed = true;
                        let ids: Vec<u64> = st.tasks.keys().copied().collect();
                        for id in ids {
                            let mut t = st.tasks.remove(&id).unwrap();
                            if let Some(p) = t.promise.take() {
                                acts.push(Act::Complete(p, Err(Error::new(ErrorKind::Shutdown, "the cluster was shut down"))));
                            }
                        }
                        st.queues.clear();
                    }
                }
            }
            if !st.closed {
                Self::dispatch(&node, &mut st, &mut acts);
            }
        }
        self.perform(acts);
    }

    fn finish_run(st: &mut St, id: u64, pid: u32, outcome: Result<Vec<u8>>, acts: &mut Vec<Act>) {
        let Some(t) = st.tasks.get_mut(&id) else { return };
        t.runs_left -= 1;
        if let Some(cb) = &t.callback {
            acts.push(Act::Callback(cb.clone(), id, pid, outcome.clone()));
        }
        if t.all {
            if let Err(e) = &outcome {
                t.failures.push(format!("process {pid}: {}", e.message));
            }
        } else {
            t.value = Some(outcome);
        }
        if t.runs_left == 0 {
            let mut t = st.tasks.remove(&id).unwrap();
            let r = Self::outcome(&t);
            if let Some(p) = t.promise.take() {
                acts.push(Act::Complete(p, r));
            }
        }
    }

    /// A worker died: the entries only it could run fail.
    fn drop_dead(&self, node: &Node, st: &mut St, pid: u32, acts: &mut Vec<Act>) {
        let live = |p: u32| p != pid && is_live(node, p);
        let mut gone: Vec<QueueKey> = vec![QueueKey::Pid(pid)];
        for k in st.queues.keys() {
            if let QueueKey::Host(h) = k {
                if !st.hosts_serving(h, &live) {
                    gone.push(k.clone());
                }
            }
        }
        for k in gone {
            let Some(q) = st.queues.remove(&k) else { continue };
            for (p, s, id) in q {
                let Some(t) = st.tasks.get_mut(&id) else { continue };
                t.entries.retain(|(k2, p2, s2)| !(k2 == &k && (*p2, *s2) == (p, s)));
                let e = Error::at(ErrorKind::ProcessExited, pid, format!("no live worker left for task {id} (process {pid} exited)"));
                // A run of an all-workers task fails; another task fails
                // once it has no queue left and never started.
                if t.all || (t.entries.is_empty() && t.started == 0) {
                    t.started += 1;
                    Self::finish_run(st, id, pid, Err(e), acts);
                }
            }
        }
    }

    fn dispatch(node: &Node, st: &mut St, acts: &mut Vec<Act>) {
        if st.tasks.is_empty() {
            return;
        }
        let workers = node.workers();
        let mut cands: Vec<(u32, bool)> = workers.iter().map(|&w| (w, true)).collect();
        for k in st.queues.keys() {
            if let QueueKey::Pid(p) = k {
                if !workers.contains(p) && is_live(node, *p) {
                    cands.push((*p, false));
                }
            }
        }
        for (p, worker) in cands {
            if st.busy.contains(&p) {
                continue;
            }
            let Some((key, e)) = st.next_for(p, worker) else { continue };
            let id = st.take(&key, e);
            st.busy.insert(p);
            let t = &st.tasks[&id];
            acts.push(Act::Run(p, id, t.name.clone(), t.args.clone()));
        }
    }

    fn perform(&self, acts: Vec<Act>) {
        let node = self.node().ok();
        for a in acts {
            match a {
                Act::Run(pid, id, name, args) => {
                    let Some(node) = &node else { continue };
                    let weak = self.weak.clone();
                    let done = move |outcome: Result<Vec<u8>>| {
                        if let Some(q) = weak.upgrade() {
                            q.post(Ev::Done { pid, id, outcome });
                        }
                    };
                    match node.remotecall(pid, &name, &args) {
                        Ok(f) => f.on_complete(move |r| done(r.clone())),
                        Err(e) => done(Err(e)),
                    }
                }
                Act::Callback(cb, id, pid, outcome) => {
                    let weak = self.weak.clone();
                    let task = Box::new(move || {
                        let Some(q) = weak.upgrade() else { return };
                        let on = q.cb.lock();
                        if *on {
                            let o = outcome.as_ref().map(|v| &v[..]);
                            cb(&TaskDone { id, pid, outcome: o });
                        }
                        drop(on);
                    });
                    match &node {
                        Some(n) => {
                            if let Some(t) = n.to_host(task) {
                                t();
                            }
                        }
                        None => task(),
                    }
                }
                Act::Complete(p, r) => {
                    p.complete(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st_with(tasks: &[(u64, f64, Vec<QueueKey>, bool)]) -> St {
        let mut st = St { next_id: 100, ..St::default() };
        for (id, prio, keys, all) in tasks {
            let mut entries = Vec::new();
            for k in keys {
                let seq = st.next_seq;
                st.next_seq += 1;
                st.insert(k.clone(), (Prio(*prio), seq, *id));
                entries.push((k.clone(), Prio(*prio), seq));
            }
            let runs = if *all { entries.len() } else { 1 };
            st.tasks.insert(
                *id,
                Task {
                    name: "f".into(),
                    args: Arc::new(Vec::new()),
                    all: *all,
                    entries,
                    runs_left: runs,
                    started: 0,
                    value: None,
                    failures: Vec::new(),
                    callback: None,
                    promise: None,
                    queued_at: 0.0,
                },
            );
        }
        st
    }

    fn run_next(st: &mut St, p: u32) -> Option<u64> {
        let (k, e) = st.next_for(p, true)?;
        Some(st.take(&k, e))
    }

    #[test]
    fn lower_priority_first_and_fifo_among_equals() {
        let inf = f64::INFINITY;
        let mut st = st_with(&[
            (1, inf, vec![QueueKey::Any], false),
            (2, 5.0, vec![QueueKey::Any], false),
            (3, inf, vec![QueueKey::Any], false),
            (4, 5.0, vec![QueueKey::Any], false),
            (5, -1.0, vec![QueueKey::Pid(2)], false),
        ]);
        let order: Vec<u64> = std::iter::from_fn(|| run_next(&mut st, 2)).collect();
        assert_eq!(order, vec![5, 2, 4, 1, 3]);
    }

    #[test]
    fn a_multi_target_task_runs_once_an_all_task_once_on_each() {
        let mut st = st_with(&[(1, 1.0, vec![QueueKey::Pid(2), QueueKey::Pid(3)], false), (2, 2.0, vec![QueueKey::Pid(2), QueueKey::Pid(3)], true)]);
        assert_eq!(run_next(&mut st, 3), Some(1));
        assert_eq!(run_next(&mut st, 2), Some(2), "task 1 is gone from 2's queue");
        assert_eq!(run_next(&mut st, 2), None);
        assert_eq!(run_next(&mut st, 3), Some(2), "the all-workers task runs on 3 too");
        assert_eq!(run_next(&mut st, 3), None);
        assert!(st.queues.is_empty());
    }

    #[test]
    fn host_queues_are_served_by_their_workers() {
        let mut st = st_with(&[(1, 1.0, vec![QueueKey::Host("b".into())], false), (2, 3.0, vec![QueueKey::Host("10.0.0.1".into())], false)]);
        st.hosts.insert(2, HostInfo { hostname: "a".into(), ip: "10.0.0.1".into() });
        st.hosts.insert(3, HostInfo { hostname: "b".into(), ip: "10.0.0.2".into() });
        assert_eq!(run_next(&mut st, 2), Some(2));
        assert_eq!(run_next(&mut st, 2), None);
        assert_eq!(run_next(&mut st, 3), Some(1));
    }
}
