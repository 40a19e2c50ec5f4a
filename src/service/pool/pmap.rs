//! `pmap`: a function registered by name applied to every element of an
//! array of byte buffers on the workers of a pool, results in input order.
//!
//! No thread per element and none per map: the map is a state machine fed
//! by events (a worker granted by the pool, a call completed, a retry
//! due) through a mailbox, on whichever thread delivers them — the caller
//! at the start, then mostly the connection readers completing calls.
//! Each completion dispatches the next batch to the worker that finished.
//!
//! Workers are leased from the pool: a leased worker gets up to
//! `max_in_flight` calls at a time, and goes back to the pool as soon as
//! no work is left for it, or after its current calls when another taker
//! waits on the pool (so maps sharing a pool take turns, as Distributed's
//! take!/put! per element does). A worker that dies fails its calls like
//! any other error: only the lost elements are retried (when retries are
//! asked for), on the workers left; none left fails what remains with
//! "no active worker available in pool".

use super::mailbox::Mailbox;
use super::pool::{new_owner, WorkerPool};
use super::split;
use crate::error::{Error, ErrorKind, Result};
use crate::node::slot::Slot;
use crate::node::{Future, Node, Promise};
use crate::service::rpc::{batch, RpcExt};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How many elements go in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    /// Distributed's `:auto`: from the number of elements and workers
    /// (`split::auto_batch_size`).
    Auto,
}

/// An element about to be retried: the retry check decides.
pub struct Retry<'a> {
    pub index: usize,
    /// Retries already made for this element (0 before the first).
    pub attempt: usize,
    pub error: &'a Error,
}

pub type RetryCheck = Arc<dyn Fn(&Retry) -> bool + Send + Sync>;

/// Elements done (successfully or not), of which failed, out of total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    pub done: usize,
    pub failed: usize,
    pub total: usize,
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

#[derive(Clone)]
pub struct PmapOptions {
    pub batch_size: BatchSize,
    /// Keep each failed element's error as its result and go on, instead
    /// of failing the map at its first failure (Distributed's `on_error`).
    pub on_error: bool,
    /// A retry per delay, waited before it (Distributed's `retry_delays`).
    /// A worker's death counts like any other error.
    pub retry_delays: Vec<Duration>,
    /// Whether to retry a failure (Distributed's `retry_check`); all are
    /// retried when `None`. In host mode it runs inside `poll`.
    pub retry_check: Option<RetryCheck>,
    /// Told of completed elements at most every `progress_interval`, and
    /// once at the end, before the map's future completes. Runs on the
    /// thread completing elements (inside `poll` in host mode). Neither
    /// callback runs once the map's future has completed (the map's end
    /// waits for one running): they must not wait for the map.
    pub progress: Option<ProgressFn>,
    pub progress_interval: Duration,
    /// The most calls in flight to one worker at a time. Distributed has 1:
    /// a worker then idles for a round trip between elements. Up to this
    /// bound a map keeps 2 (the next element waits at the worker while it
    /// runs one, as a worker of Python's `multiprocessing.Pool` finds its
    /// next task in its pipe), and more for short elements: as many as keep
    /// about 250 us of work queued there, by the cost measured for that
    /// worker. Default 16.
    pub max_in_flight: usize,
}

impl Default for PmapOptions {
    fn default() -> Self {
        PmapOptions {
            batch_size: BatchSize::Fixed(1),
            on_error: false,
            retry_delays: Vec::new(),
            retry_check: None,
            progress: None,
            progress_interval: Duration::from_millis(100),
            max_in_flight: 16,
        }
    }
}

/// The elements of a map: byte buffers, stored back to back.
#[derive(Clone, Default, Debug)]
pub struct Items {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Items {
    pub fn new() -> Items {
        Items::default()
    }
    pub fn with_capacity(items: usize, bytes: usize) -> Items {
        Items { buf: Vec::with_capacity(bytes), ends: Vec::with_capacity(items) }
    }
    pub fn push(&mut self, item: &[u8]) {
        self.buf.extend_from_slice(item);
        self.ends.push(self.buf.len());
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }
}

impl<'a> FromIterator<&'a [u8]> for Items {
    fn from_iter<I: IntoIterator<Item = &'a [u8]>>(it: I) -> Items {
        let mut items = Items::new();
        for i in it {
            items.push(i);
        }
        items
    }
}

/// One element's result value, kept without a copy when it is large.
#[derive(Clone)]
pub struct Output(Out);

#[derive(Clone)]
enum Out {
    Small(Arc<[u8]>),
    Shared(Arc<Slot>, usize, usize),
}

/// How much work (by its measured cost) may wait at a worker behind the
/// call it runs: enough to cover a round trip for short elements, while a
/// long element never waits at a busy worker when another frees up.
const QUEUED_WORK: Duration = Duration::from_micros(250);

/// Calls in flight for a worker whose calls cost `busy_ns` each (0: not
/// measured yet), at most `max`.
fn depth_for(busy_ns: f64, max: usize) -> usize {
    let want = if busy_ns > 0.0 { 1 + (QUEUED_WORK.as_nanos() as f64 / busy_ns).min(1e6) as usize } else { 2 };
    want.clamp(2.min(max), max)
}

/// Values up to this size are copied out of their reply, so the reply
/// (and its slot) can go.
const SMALL: usize = 256;

fn empty() -> Arc<[u8]> {
    static EMPTY: OnceLock<Arc<[u8]>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from(&[][..])).clone()
}

impl Output {
    fn of(slot: Arc<Slot>, start: usize, end: usize) -> Output {
        let len = end - start;
        if len > SMALL {
            return Output(Out::Shared(slot, start, end));
        }
        let bytes = match slot.get() {
            Some(Ok(v)) => &v[start..end],
            _ => &[],
        };
        Output(Out::Small(if bytes.is_empty() { empty() } else { Arc::from(bytes) }))
    }
}

impl std::ops::Deref for Output {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Out::Small(b) => b,
            Out::Shared(s, a, b) => match s.get() {
                Some(Ok(v)) => &v[*a..*b],
                _ => &[],
            },
        }
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Output({} bytes)", self.len())
    }
}

enum Res {
    Pending,
    Val(Output),
    Err(Box<Error>),
}

/// Elements sent in one call: a run of the input, or one retried element.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    Run(u32, u32),
    One(u32),
}

impl Chunk {
    fn indices(self) -> std::ops::Range<usize> {
        match self {
            Chunk::Run(a, b) => a as usize..b as usize,
            Chunk::One(i) => i as usize..i as usize + 1,
        }
    }
}

enum Ev {
    Start,
    Granted(u32),
    TakeFailed(Error),
    Done { pid: u32, chunk: Chunk, batched: bool, outcome: std::result::Result<Arc<Slot>, Error> },
    RetryDue(u32),
    Decided { index: u32, retry: bool, error: Error },
    Stop(Error),
}

enum Act {
    Send(u32, Chunk),
    Take,
    CancelTake,
    Put(u32),
    After(Duration, u32),
    Check(u32, usize, Error),
    Progress(Progress),
    /// Marks a progress report due after the interval.
    ArmProgress,
    Complete(Result<()>),
}

struct Lease {
    pid: u32,
    in_flight: usize,
    /// The time one call keeps the worker busy, 0 until measured: the time
    /// since its calls began (while it always had one) over the calls done
    /// since. An average over the whole stretch, since replies come back
    /// in bursts (a worker writes the replies to requests it read together
    /// at once).
    busy_ns: f64,
    busy_since: Option<Instant>,
    done_since: u32,
    /// Another taker waits on the pool: no more calls, back when idle.
    yielding: bool,
    /// Its process died: no more calls.
    dead: bool,
}

struct St {
    /// The next element not sent yet (the first pass over the input).
    cursor: usize,
    /// Elements to send again, oldest first.
    retry_q: VecDeque<u32>,
    /// Retries made per element (allocated only with retries).
    attempts: Vec<u8>,
    results: Vec<Res>,
    leases: Vec<Lease>,
    taking: bool,
    /// The pool granted a worker this map holds already: do not ask again
    /// until something changes.
    saturated: bool,
    in_flight: usize,
    /// Retry timers and checks under way.
    waiting: usize,
    done: usize,
    failed: usize,
    stopped: bool,
    /// What ended the map, until its future has it.
    error: Option<Error>,
    completed: bool,
    reported: usize,
}

struct Engine {
    node: Arc<Node>,
    pool: Arc<WorkerPool>,
    name: String,
    items: Items,
    batch: usize,
    opts: PmapOptions,
    owner: u64,
    slot: Arc<Slot>,
    promise: Mutex<Option<Promise>>,
    /// Set just before the map's future completes: no callback of the map
    /// starts afterwards.
    ended: AtomicBool,
    /// Held while a callback runs, so the map's end waits for it.
    cb: Mutex<()>,
    /// The progress interval has passed since the last report.
    progress_due: AtomicBool,
    mailbox: Mailbox<Ev>,
    st: Mutex<St>,
}

/// A map under way (or done): its future, its results, its progress.
pub struct Pmap {
    e: Arc<Engine>,
}

impl Pmap {
    /// Starts the map. The elements are dispatched from this thread until
    /// the pool runs out of free workers; the rest follows completions.
    pub(crate) fn start(node: &Arc<Node>, pool: Arc<WorkerPool>, name: &str, items: Items, opts: PmapOptions) -> Result<(Pmap, Weak<dyn Stoppable>)> {
        node.check_open()?;
        if name.is_empty() || name.len() > crate::wire::MAX_META {
            return Err(Error::new(ErrorKind::InvalidArgument, "function names are 1 to 65535 bytes"));
        }
        if items.len() > u32::MAX as usize - 1 {
            return Err(Error::new(ErrorKind::InvalidArgument, "too many elements"));
        }
        if opts.retry_delays.len() > u8::MAX as usize {
            return Err(Error::new(ErrorKind::InvalidArgument, "at most 255 retries"));
        }
        let batch = match opts.batch_size {
            BatchSize::Fixed(0) => return Err(Error::new(ErrorKind::InvalidArgument, "a batch size is at least 1")),
            BatchSize::Fixed(b) => b.min(batch::MAX_ITEMS),
            BatchSize::Auto => split::auto_batch_size(items.len(), pool.len()),
        };
        let (fut, promise) = node.promise(node.myid());
        let n = items.len();
        let st = St {
            cursor: 0,
            retry_q: VecDeque::new(),
            attempts: if opts.retry_delays.is_empty() { Vec::new() } else { vec![0; n] },
            results: (0..n).map(|_| Res::Pending).collect(),
            leases: Vec::new(),
            taking: false,
            saturated: false,
            in_flight: 0,
            waiting: 0,
            done: 0,
            failed: 0,
            stopped: false,
            error: None,
            completed: false,
            reported: usize::MAX,
        };
        let e = Arc::new(Engine {
            node: node.clone(),
            pool,
            name: name.to_string(),
            items,
            batch,
            opts: PmapOptions { max_in_flight: opts.max_in_flight.max(1), ..opts },
            owner: new_owner(),
            slot: fut.slot.clone(),
            promise: Mutex::new(Some(promise)),
            ended: AtomicBool::new(false),
            cb: Mutex::new(()),
            progress_due: AtomicBool::new(false),
            mailbox: Mailbox::default(),
            st: Mutex::new(st),
        });
        drop(fut);
        e.post(Ev::Start);
        let weak: Weak<dyn Stoppable> = Arc::downgrade(&(e.clone() as Arc<dyn Stoppable>));
        Ok((Pmap { e }, weak))
    }

    /// A future completed when the map is: with no value on success, with
    /// the error that ended it otherwise. Every call gives a new future
    /// for the same completion.
    pub fn future(&self) -> Future {
        Future::from_slot(&self.e.node, self.e.slot.clone())
    }

    /// Waits for the map to end.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        self.future().wait(timeout)
    }

    pub fn len(&self) -> usize {
        self.e.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.e.items.is_empty()
    }

    /// The batch size in use (the one `BatchSize::Auto` chose).
    pub fn batch_size(&self) -> usize {
        self.e.batch
    }

    /// Element `i`'s result: `None` while it is not done (or if the map
    /// ended before it was), else its value or error. Values stay at
    /// their address as long as the map lives.
    pub fn result(&self, i: usize) -> Option<std::result::Result<Output, Error>> {
        match self.e.st.lock().results.get(i)? {
            Res::Pending => None,
            Res::Val(v) => Some(Ok(v.clone())),
            Res::Err(e) => Some(Err((**e).clone())),
        }
    }

    /// Every result, in input order (see `result`).
    pub fn results(&self) -> Vec<Option<std::result::Result<Output, Error>>> {
        let st = self.e.st.lock();
        st.results
            .iter()
            .map(|r| match r {
                Res::Pending => None,
                Res::Val(v) => Some(Ok(v.clone())),
                Res::Err(e) => Some(Err((**e).clone())),
            })
            .collect()
    }

    pub fn progress(&self) -> Progress {
        let st = self.e.st.lock();
        Progress { done: st.done, failed: st.failed, total: self.e.items.len() }
    }

    /// Stops the map: nothing more is sent, and it fails with
    /// `Interrupted` (calls under way finish on their workers).
    pub fn cancel(&self) {
        self.e.post(Ev::Stop(Error::new(ErrorKind::Interrupted, "the map was cancelled")));
    }
}

/// What the pool service stops when the node closes.
pub(crate) trait Stoppable: Send + Sync {
    fn stop(self: Arc<Self>, e: Error);
}

impl Stoppable for Engine {
    fn stop(self: Arc<Self>, e: Error) {
        self.post(Ev::Stop(e));
    }
}

impl Engine {
    fn post(self: &Arc<Self>, ev: Ev) {
        let me = self.clone();
        self.mailbox.post(ev, move |batch| me.handle(batch));
    }

    /// Handles a batch of events under the lock, then does what they call
    /// for without it (which may post more: they queue for the next batch).
    fn handle(self: &Arc<Self>, batch: &mut VecDeque<Ev>) {
        let mut acts = Vec::new();
        {
            let mut st = self.st.lock();
            for ev in batch.drain(..) {
                self.on_event(&mut st, ev, &mut acts);
            }
            self.dispatch(&mut st, &mut acts);
        }
        for a in acts {
            self.perform(a);
        }
    }

    fn has_work(&self, st: &St) -> bool {
        !st.stopped && (st.cursor < self.items.len() || !st.retry_q.is_empty())
    }

    fn next_chunk(&self, st: &mut St) -> Option<Chunk> {
        if st.stopped {
            return None;
        }
        if let Some(i) = st.retry_q.pop_front() {
            return Some(Chunk::One(i));
        }
        let n = self.items.len();
        if st.cursor >= n {
            return None;
        }
        let a = st.cursor;
        let b = (a + self.batch).min(n);
        st.cursor = b;
        Some(Chunk::Run(a as u32, b as u32))
    }

    fn on_event(&self, st: &mut St, ev: Ev, acts: &mut Vec<Act>) {
        match ev {
            Ev::Start => {
                if self.opts.progress.is_some() && self.opts.progress_interval >= Duration::from_millis(1) {
                    acts.push(Act::ArmProgress);
                }
            }
            Ev::Granted(pid) => {
                st.taking = false;
                if st.leases.iter().any(|l| l.pid == pid) {
                    // Ours already (the pool had it as free): keep it.
                    st.saturated = true;
                } else if self.has_work(st) {
                    st.leases.push(Lease { pid, in_flight: 0, busy_ns: 0.0, busy_since: None, done_since: 0, yielding: false, dead: false });
                } else {
                    acts.push(Act::Put(pid));
                }
            }
            Ev::TakeFailed(e) => {
                st.taking = false;
                if st.leases.iter().all(|l| l.dead) && st.in_flight == 0 {
                    // No worker to run what is left: it fails with the
                    // pool's error (and is retried, if asked for).
                    while let Some(c) = self.next_chunk(st) {
                        for i in c.indices() {
                            self.fail(st, i as u32, e.clone(), acts);
                        }
                    }
                } else {
                    st.saturated = true;
                }
            }
            Ev::Done { pid, chunk, batched, outcome } => {
                st.in_flight -= 1;
                st.saturated = false;
                let yielding = self.pool.has_waiters_except(self.owner);
                let mut died = false;
                match outcome {
                    Ok(slot) if !batched => {
                        let len = match slot.get() {
                            Some(Ok(v)) => v.len(),
                            _ => 0,
                        };
                        self.succeed(st, chunk.indices().start, Output::of(slot, 0, len));
                    }
                    Ok(slot) => {
                        let decoded = match slot.get() {
                            Some(Ok(v)) => batch::decode_outcomes(v, pid),
                            _ => Err(Error::new(ErrorKind::Protocol, "no batch reply")),
                        };
                        match decoded {
                            Ok(outs) if outs.len() == chunk.indices().len() => {
                                for (i, o) in chunk.indices().zip(outs) {
                                    match o {
                                        Ok(r) => self.succeed(st, i, Output::of(slot.clone(), r.start, r.end)),
                                        Err(e) => self.fail(st, i as u32, e, acts),
                                    }
                                }
                            }
                            other => {
                                let e = other.err().unwrap_or_else(|| Error::at(ErrorKind::Protocol, pid, "a batch reply of the wrong length"));
                                for i in chunk.indices() {
                                    self.fail(st, i as u32, e.clone(), acts);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        died = e.kind == ErrorKind::ProcessExited && e.pid == pid;
                        for i in chunk.indices() {
                            self.fail(st, i as u32, e.clone(), acts);
                        }
                    }
                }
                if let Some(l) = st.leases.iter_mut().find(|l| l.pid == pid) {
                    if let Some(since) = l.busy_since {
                        l.done_since += 1;
                        l.busy_ns = since.elapsed().as_nanos() as f64 / l.done_since as f64;
                    }
                    l.in_flight -= 1;
                    if l.in_flight == 0 {
                        l.busy_since = None;
                        l.done_since = 0;
                    }
                    l.dead |= died;
                    l.yielding |= yielding;
                }
                if yielding && st.taking {
                    // Take turns: our own queued take goes behind theirs.
                    st.taking = false;
                    acts.push(Act::CancelTake);
                }
            }
            Ev::RetryDue(i) => {
                st.waiting -= 1;
                if !st.stopped {
                    st.retry_q.push_back(i);
                }
            }
            Ev::Decided { index, retry, error } => {
                st.waiting -= 1;
                if retry {
                    self.schedule_retry(st, index, acts);
                } else {
                    self.give_up(st, index, error);
                }
            }
            Ev::Stop(e) => self.halt(st, e),
        }
    }

    /// Calls in flight `l` may have: enough to keep its worker busy across a
    /// round trip while at most `QUEUED_WORK` of calls wait there, at
    /// least 2 (one running, the next waiting) and at most `max_in_flight`.
    fn depth(&self, l: &Lease) -> usize {
        depth_for(l.busy_ns, self.opts.max_in_flight)
    }

    fn succeed(&self, st: &mut St, i: usize, v: Output) {
        if st.stopped || !matches!(st.results[i], Res::Pending) {
            return;
        }
        st.results[i] = Res::Val(v);
        st.done += 1;
    }

    /// Element `i` failed: retried if retries are left (and the check
    /// agrees), else it fails for good.
    fn fail(&self, st: &mut St, i: u32, e: Error, acts: &mut Vec<Act>) {
        if st.stopped {
            return;
        }
        let attempt = st.attempts.get(i as usize).copied().unwrap_or(0) as usize;
        if attempt < self.opts.retry_delays.len() {
            if self.opts.retry_check.is_some() {
                st.waiting += 1;
                acts.push(Act::Check(i, attempt, e));
            } else {
                self.schedule_retry(st, i, acts);
            }
        } else {
            self.give_up(st, i, e);
        }
    }

    fn schedule_retry(&self, st: &mut St, i: u32, acts: &mut Vec<Act>) {
        if st.stopped {
            return;
        }
        let attempt = &mut st.attempts[i as usize];
        let delay = self.opts.retry_delays[*attempt as usize];
        *attempt += 1;
        st.waiting += 1;
        acts.push(Act::After(delay, i));
    }

    fn give_up(&self, st: &mut St, i: u32, e: Error) {
        if st.stopped {
            return;
        }
        if self.opts.on_error {
            st.results[i as usize] = Res::Err(Box::new(e));
            st.done += 1;
            st.failed += 1;
        } else {
            let msg = match e.pid {
                0 => format!("pmap: element {} failed: {}", i + 1, e.message),
                p => format!("pmap: element {} failed on process {p}: {}", i + 1, e.message),
            };
            self.halt(st, Error::at(e.kind, e.pid, msg));
        }
    }

    /// Ends the map with `e`: nothing more is sent; calls under way finish
    /// and their workers go back to the pool.
    fn halt(&self, st: &mut St, e: Error) {
        if st.stopped || st.completed {
            return;
        }
        st.stopped = true;
        st.retry_q.clear();
        // Completed at the end of this dispatch, after idle workers went back.
        st.error = Some(e);
    }

    /// Feeds the leased workers, asks the pool for more while there is
    /// work for them, returns idle ones, and completes the map at its end.
    fn dispatch(&self, st: &mut St, acts: &mut Vec<Act>) {
        let mut i = 0;
        while i < st.leases.len() {
            let l = &st.leases[i];
            if !l.dead && !l.yielding && l.in_flight < self.depth(l) {
                if let Some(c) = self.next_chunk(st) {
                    let l = &mut st.leases[i];
                    if l.in_flight == 0 {
                        l.busy_since = Some(Instant::now());
                    }
                    l.in_flight += 1;
                    st.in_flight += 1;
                    acts.push(Act::Send(l.pid, c));
                    continue;
                }
            }
            i += 1;
        }
        let work = self.has_work(st);
        let mut kept = Vec::with_capacity(st.leases.len());
        for l in st.leases.drain(..) {
            if l.in_flight == 0 && (!work || l.yielding || l.dead) {
                acts.push(Act::Put(l.pid));
            } else {
                kept.push(l);
            }
        }
        st.leases = kept;
        if work && !st.taking && !st.saturated {
            st.taking = true;
            acts.push(Act::Take);
        } else if !work && st.taking {
            st.taking = false;
            acts.push(Act::CancelTake);
        }
        let n = self.items.len();
        let finished = !st.stopped && st.cursor >= n && st.retry_q.is_empty() && st.in_flight == 0 && st.waiting == 0;
        if self.opts.progress.is_some() && !st.completed {
            // A timer marks a report due (per element, the cost is one
            // atomic load); intervals under 1 ms report on every change.
            let every = self.opts.progress_interval < Duration::from_millis(1);
            let due = finished || every || (self.progress_due.load(Ordering::Relaxed) && self.progress_due.swap(false, Ordering::AcqRel));
            if due && st.reported != st.done {
                st.reported = st.done;
                acts.push(Act::Progress(Progress { done: st.done, failed: st.failed, total: n }));
            }
            if due && !every && !finished {
                acts.push(Act::ArmProgress);
            }
        }
        if finished && !st.completed {
            st.completed = true;
            acts.push(Act::Complete(Ok(())));
        }
        if let Some(e) = st.error.take() {
            st.completed = true;
            acts.push(Act::Complete(Err(e)));
        }
    }

    fn perform(self: &Arc<Self>, a: Act) {
        match a {
            Act::Send(pid, chunk) => self.send(pid, chunk),
            Act::Take => {
                let me = self.clone();
                self.pool.take_with(
                    self.owner,
                    Box::new(move |r| {
                        me.post(match r {
                            Ok(pid) => Ev::Granted(pid),
                            Err(e) => Ev::TakeFailed(e),
                        })
                    }),
                );
            }
            Act::CancelTake => {
                self.pool.cancel_take(self.owner);
            }
            Act::Put(pid) => self.pool.put(pid),
            Act::After(d, i) => {
                let me = self.clone();
                self.node.after(d, move || me.post(Ev::RetryDue(i)));
            }
            Act::Check(i, attempt, error) => {
                let me = self.clone();
                let check = self.opts.retry_check.clone().expect("a retry check");
                let task = Box::new(move || {
                    let retry = {
                        let _g = me.cb.lock();
                        !me.ended.load(Ordering::Acquire) && check(&Retry { index: i as usize, attempt, error: &error })
                    };
                    me.post(Ev::Decided { index: i, retry, error });
                });
                if let Some(t) = self.node.to_host(task) {
                    t();
                }
            }
            Act::Progress(p) => {
                let f = self.opts.progress.clone().expect("a progress callback");
                let me = self.clone();
                let task = Box::new(move || {
                    let _g = me.cb.lock();
                    if !me.ended.load(Ordering::Acquire) {
                        f(p)
                    }
                });
                if let Some(t) = self.node.to_host(task) {
                    t();
                }
            }
            Act::ArmProgress => {
                let weak = Arc::downgrade(self);
                self.node.after(self.opts.progress_interval, move || {
                    if let Some(me) = weak.upgrade() {
                        me.progress_due.store(true, Ordering::Release);
                    }
                });
            }
            Act::Complete(r) => {
                let me = self.clone();
                let complete: crate::node::events::Task = Box::new(move || {
                    me.ended.store(true, Ordering::Release);
                    // A callback running on another thread (the host's) ends first.
                    drop(me.cb.lock());
                    if let Some(p) = me.promise.lock().take() {
                        p.complete(r.map(|_| Vec::new()));
                    }
                });
                // A host runs the last progress report from its queue: the
                // map completes after it, in the same order, so that the
                // report is neither lost nor made after the end.
                if self.opts.progress.is_none() {
                    complete();
                } else if let Some(t) = self.node.to_host(complete) {
                    t();
                }
            }
        }
    }

    fn send(self: &Arc<Self>, pid: u32, chunk: Chunk) {
        let idx = chunk.indices();
        let batched = self.batch > 1;
        let sent = if batched {
            let items: Vec<&[u8]> = idx.map(|i| self.items.get(i)).collect();
            self.node.remotecall_batch(pid, &self.name, &items)
        } else {
            self.node.remotecall(pid, &self.name, self.items.get(idx.start))
        };
        match sent {
            Ok(f) => {
                let me = self.clone();
                let slot = f.slot.clone();
                f.on_complete(move |r| {
                    let outcome = match r {
                        Ok(_) => Ok(slot),
                        Err(e) => Err(e.clone()),
                    };
                    me.post(Ev::Done { pid, chunk, batched, outcome });
                });
            }
            Err(e) => self.post(Ev::Done { pid, chunk, batched, outcome: Err(e) }),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The map on a lone head (its default pool is the head itself, so
    //! calls run here, without sockets).
    use super::*;
    use crate::node::Config;
    use crate::service::pool::{PoolExt, Pools};
    use crate::service::rpc::Rpc;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn node() -> Arc<Node> {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, handler_threads: 2, ..Config::default() }, true).unwrap();
        let r = Rpc::new(2, false);
        n.set_lender(r.lender());
        n.install(r).unwrap();
        n.install(Pools::new()).unwrap();
        n.start().unwrap();
        n.register_fn("sq", |c| {
            let x = u32::from_le_bytes(c.args().try_into().map_err(|_| "want a u32")?);
            if x % 7 == 3 {
                return Err(format!("{x} is unlucky"));
            }
            Ok((x * x).to_le_bytes().to_vec())
        })
        .unwrap();
        n
    }

    fn items(n: u32) -> Items {
        (0..n).map(|i| i.to_le_bytes()).collect::<Vec<_>>().iter().map(|b| &b[..]).collect()
    }

    fn u32s(m: &Pmap) -> Vec<std::result::Result<u32, Error>> {
        m.results().into_iter().map(|r| r.expect("done").map(|v| u32::from_le_bytes(v[..4].try_into().unwrap()))).collect()
    }

    #[test]
    fn calls_in_flight_follow_the_cost_of_a_call() {
        assert_eq!(depth_for(0.0, 16), 2, "not measured: one running, one waiting");
        assert_eq!(depth_for(10_000.0, 16), 16, "10 us calls: as many as allowed");
        assert_eq!(depth_for(100_000.0, 16), 3, "100 us calls: 250 us of work queued");
        assert_eq!(depth_for(20_000_000.0, 16), 2, "20 ms calls: never more than the next");
        assert_eq!(depth_for(10_000.0, 1), 1, "Distributed's one at a time");
        assert_eq!(depth_for(1.0, 4), 4);
    }

    #[test]
    fn results_come_in_input_order_in_any_batch_size() {
        let n = node();
        for bs in [BatchSize::Fixed(1), BatchSize::Fixed(4), BatchSize::Auto] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s = seen.clone();
            let opts =
                PmapOptions { batch_size: bs, on_error: true, max_in_flight: 3, progress: Some(Arc::new(move |p| s.lock().push(p))), ..PmapOptions::default() };
            let m = n.pmap(None, "sq", items(50), opts).unwrap();
            m.wait(Some(Duration::from_secs(20))).unwrap();
            let r = u32s(&m);
            for (i, v) in r.iter().enumerate() {
                if i % 7 == 3 {
                    assert!(v.as_ref().unwrap_err().message.contains("unlucky"));
                } else {
                    assert_eq!(*v.as_ref().unwrap(), (i * i) as u32);
                }
            }
            let last = *seen.lock().last().expect("a final progress report");
            assert_eq!(last, Progress { done: 50, failed: 7, total: 50 });
            assert_eq!(m.progress(), last);
        }
        assert_eq!(n.pmap(None, "sq", items(0), PmapOptions::default()).unwrap().wait(Some(Duration::from_secs(5))), Ok(()));
        n.close();
    }

    #[test]
    fn without_on_error_the_first_failure_ends_the_map() {
        let n = node();
        // One call at a time: the first failure is element 4's.
        let m = n.pmap(None, "sq", items(20), PmapOptions { max_in_flight: 1, ..PmapOptions::default() }).unwrap();
        let e = m.wait(Some(Duration::from_secs(20))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Remote);
        assert!(e.message.contains("element 4") && e.message.contains("unlucky"), "{e}");
        // The pool has its worker back.
        // The worker comes back as its last call's completion is handled,
        // which may trail the map's own failure by a moment.
        let pool = n.default_pool().unwrap();
        let back = (0..500).find_map(|_| {
            pool.try_take().unwrap().or_else(|| {
                std::thread::sleep(Duration::from_millis(10));
                None
            })
        });
        assert_eq!(back, Some(1));
        n.close();
    }

    #[test]
    fn retries_run_again_what_failed_and_the_check_can_refuse() {
        let n = node();
        let tries: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
        let t = tries.clone();
        n.register_fn("flaky", move |c| {
            let x = u32::from_le_bytes(c.args().try_into().unwrap());
            let mut t = t.lock();
            let k = t.entry(x).or_insert(0);
            *k += 1;
            if *k <= x % 3 {
                return Err(format!("attempt {k} of {x}"));
            }
            Ok(vec![*k as u8])
        })
        .unwrap();
        let opts = PmapOptions { retry_delays: vec![Duration::ZERO, Duration::from_millis(5)], ..PmapOptions::default() };
        let m = n.pmap(None, "flaky", items(30), opts).unwrap();
        m.wait(Some(Duration::from_secs(20))).unwrap();
        for (i, r) in m.results().into_iter().enumerate() {
            assert_eq!(&*r.unwrap().unwrap(), &[(i % 3) as u8 + 1]);
        }
        // A check that refuses: the element fails at once (on_error keeps it).
        tries.lock().clear();
        let checked = Arc::new(AtomicUsize::new(0));
        let c = checked.clone();
        let opts = PmapOptions {
            on_error: true,
            retry_delays: vec![Duration::ZERO; 3],
            retry_check: Some(Arc::new(move |r: &Retry| {
                c.fetch_add(1, Ordering::SeqCst);
                r.index != 2
            })),
            ..PmapOptions::default()
        };
        let m = n.pmap(None, "flaky", items(6), opts).unwrap();
        m.wait(Some(Duration::from_secs(20))).unwrap();
        let r = m.results();
        assert!(r[2].as_ref().unwrap().is_err(), "element 2 was not retried");
        assert!(r[5].as_ref().unwrap().is_ok(), "element 5 was, twice");
        assert_eq!(checked.load(Ordering::SeqCst), 1 + 1 + 1 + 2, "elements 1, 2, 4 once, 5 twice");
        n.close();
    }

    #[test]
    fn a_pool_without_workers_fails_the_map_clearly() {
        let n = node();
        let empty = n.worker_pool(&[]).unwrap();
        let e = n.pmap(Some(&empty), "sq", items(5), PmapOptions::default()).unwrap().wait(Some(Duration::from_secs(5))).unwrap_err();
        assert!(e.message.contains("no active worker available"), "{e}");
        let m = n.pmap(Some(&empty), "sq", items(5), PmapOptions { on_error: true, ..PmapOptions::default() }).unwrap();
        m.wait(Some(Duration::from_secs(5))).unwrap();
        assert!(m.results().iter().all(|r| r.as_ref().unwrap().is_err()));
        n.close();
    }

    #[test]
    fn a_cancelled_map_fails_and_gives_its_workers_back() {
        let n = node();
        n.register_fn("slow", |_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(Vec::new())
        })
        .unwrap();
        let m = n.pmap(None, "slow", items(100), PmapOptions::default()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        m.cancel();
        assert_eq!(m.wait(Some(Duration::from_secs(5))).unwrap_err().kind, ErrorKind::Interrupted);
        let done = m.progress().done;
        assert!(done < 100);
        std::thread::sleep(Duration::from_millis(100));
        // The worker comes back as its last call's completion is handled,
        // which may trail the map's own failure by a moment.
        let pool = n.default_pool().unwrap();
        let back = (0..500).find_map(|_| {
            pool.try_take().unwrap().or_else(|| {
                std::thread::sleep(Duration::from_millis(10));
                None
            })
        });
        assert_eq!(back, Some(1));
        n.close();
    }

    #[test]
    fn closing_the_node_ends_a_map_waiting_for_a_retry() {
        let n = node();
        n.register_fn("never", |_| Err("no".into())).unwrap();
        let m = n.pmap(None, "never", items(1), PmapOptions { retry_delays: vec![Duration::from_secs(60)], ..PmapOptions::default() }).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        n.close();
        assert_eq!(m.wait(Some(Duration::from_secs(5))).unwrap_err().kind, ErrorKind::Shutdown);
    }
}
