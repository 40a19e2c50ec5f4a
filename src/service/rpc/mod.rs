//! Remote calls: functions registered by name, incoming calls and their
//! replies, handler slots, interrupts. `RpcExt` gives a node the calls.

pub mod batch;
mod dispatch;

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::slot::Slot;
use crate::node::{Event, Future, Incoming, Lender, Node, ReplyTo, Service, Value};
use crate::wire::{self, ServiceId};
use dispatch::Dispatcher;
use parking_lot::{Mutex, RwLock};
use std::cell::Cell;
use crate::node::fast_map::{self, FastMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ID: ServiceId = 2;

pub(crate) mod op {
    pub const CALL: u16 = 1;
    pub const INTERRUPT: u16 = 2;
    /// One function on several argument sets, in one message (see `batch`).
    pub const CALL_BATCH: u16 = 3;
}

/// Host events of this service.
pub mod events {
    /// `interrupt` reached this process: cancel the running calls.
    pub const INTERRUPT: u16 = 0;
}

/// Pass as the target process to pick the next worker round-robin.
pub const ANY_WORKER: u32 = 0;

/// A registered function. It receives the call by value and answers it
/// with `Call::reply` or `Call::fail`, now or later from any thread.
pub type Handler = Arc<dyn Fn(Call) + Send + Sync>;

/// A call as it arrives, before it runs.
pub struct IncomingCall {
    caller: u32,
    name: String,
    args: Vec<u8>,
    reply: ReplyTo,
    cancel: Arc<AtomicBool>,
    token: u64,
}

/// What waits for a handler slot: one call, or a batch of calls of one
/// function that runs in one slot, element after element.
enum Work {
    One(IncomingCall),
    Batch(BatchCall),
}

/// A batch as it arrives: the function, the arguments of each element
/// (ranges of `payload`), and where the encoded outcomes go.
struct BatchCall {
    caller: u32,
    name: String,
    payload: Vec<u8>,
    ranges: Vec<std::ops::Range<usize>>,
    reply: ReplyTo,
}

/// A running call, handed to its handler. Dropping it unanswered answers
/// with an error, so a caller never waits for a reply that cannot come.
pub struct Call {
    inner: Option<IncomingCall>,
    node: Arc<Node>,
    rpc: Arc<Rpc>,
}

impl Call {
    pub fn args(&self) -> &[u8] {
        &self.live().args
    }
    pub fn caller(&self) -> u32 {
        self.live().caller
    }
    pub fn name(&self) -> &str {
        &self.live().name
    }
    fn live(&self) -> &IncomingCall {
        self.inner.as_ref().expect("live call")
    }
    /// True once `interrupt` reached this process during the call.
    pub fn is_cancelled(&self) -> bool {
        self.live().cancel.load(Ordering::Acquire)
    }
    /// The cancellation flag, to watch from elsewhere.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.live().cancel.clone()
    }
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
    pub fn reply(mut self, value: &[u8]) {
        self.finish(Ok(value));
    }
    pub fn fail(mut self, message: &str) {
        let e = Error::at(ErrorKind::Remote, self.node.myid(), message);
        self.finish(Err(e));
    }

    fn finish(&mut self, outcome: std::result::Result<&[u8], Error>) {
        let Some(call) = self.inner.take() else { return };
        self.rpc.running.lock().remove(&call.token);
        let outcome = if call.cancel.load(Ordering::Acquire) {
            Err(Error::at(ErrorKind::Interrupted, self.node.myid(), format!("call to {} interrupted on process {}", call.name, self.node.myid())))
        } else {
            outcome
        };
        let conn = match &call.reply {
            ReplyTo::Remote { conn, .. } => Some(conn.clone()),
            _ => None,
        };
        if let Some(e) = call.reply.send(&self.node, outcome) {
            self.node.log.error(format!("remote_do {} from process {} failed: {}", call.name, call.caller, e.message));
        }
        if let Some(c) = conn {
            c.recycle(call.args);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let why = if std::thread::panicking() { "the handler panicked" } else { "the handler returned without replying" };
            let name = self.name().to_string();
            let e = Error::at(ErrorKind::Remote, self.node.myid(), format!("{name}: {why}"));
            self.finish(Err(e));
        }
    }
}

thread_local! {
    /// The rpc service whose handler slot this thread holds, if any.
    static IN_HANDLER: Cell<usize> = const { Cell::new(0) };
}

/// The rpc service of one node.
pub struct Rpc {
    functions: RwLock<FastMap<String, Handler>>,
    running: Mutex<FastMap<u64, Arc<AtomicBool>>>,
    dispatcher: Dispatcher<Work>,
    next_token: AtomicU64,
    host_mode: bool,
    rr: AtomicUsize,
}

impl Rpc {
    pub fn new(handler_threads: usize, host_mode: bool) -> Arc<Rpc> {
        Arc::new(Rpc {
            functions: RwLock::new(fast_map::new()),
            running: Mutex::new(fast_map::new()),
            dispatcher: Dispatcher::new(handler_threads),
            next_token: AtomicU64::new(1),
            host_mode,
            rr: AtomicUsize::new(0),
        })
    }

    fn new_incoming(&self, caller: u32, name: String, args: Vec<u8>, reply: ReplyTo) -> IncomingCall {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        IncomingCall { caller, name, args, reply, cancel: Arc::new(AtomicBool::new(false)), token }
    }

    /// Queues `work` to run: on the host's thread in host mode, else a job
    /// that runs it (and the work queued behind it) when a slot is free.
    fn enqueue(self: &Arc<Self>, node: &Arc<Node>, work: Work) -> Option<Job> {
        if self.host_mode {
            let (rpc, n) = (self.clone(), node.clone());
            let _ = node.to_host(Box::new(move || rpc.run_work(&n, work)));
            return None;
        }
        self.dispatcher.offer(work).map(|w| {
            let (rpc, n) = (self.clone(), node.clone());
            Box::new(move || rpc.run_calls(&n, w)) as Job
        })
    }

    fn call_here(self: &Arc<Self>, node: &Arc<Node>, name: &str, args: Vec<u8>, reply: ReplyTo) -> Result<()> {
        let call = self.new_incoming(node.myid(), name.to_string(), args, reply);
        self.run_here(node, Work::One(call))
    }

    /// A blocking call to this process: the caller's thread runs it when a
    /// handler slot is free (no thread made, no wake-up), then hands the
    /// slot on to queued work, if any, on a thread of its own.
    fn call_inline(self: &Arc<Self>, node: &Arc<Node>, name: &str, args: Vec<u8>, reply: ReplyTo) -> Result<()> {
        let call = self.new_incoming(node.myid(), name.to_string(), args, reply);
        if self.host_mode {
            return self.run_here(node, Work::One(call));
        }
        if let Some(work) = self.dispatcher.offer(Work::One(call)) {
            let outer = IN_HANDLER.with(|h| h.replace(Arc::as_ptr(self) as usize));
            self.run_work(node, work);
            IN_HANDLER.with(|h| h.set(outer));
            if let Some(next) = self.dispatcher.finish() {
                let (rpc, n) = (self.clone(), node.clone());
                std::thread::Builder::new().name("cluster-local".into()).spawn(move || rpc.run_calls(&n, next)).map_err(|e| Error::io("spawn", e))?;
            }
        }
        Ok(())
    }

    fn run_here(self: &Arc<Self>, node: &Arc<Node>, work: Work) -> Result<()> {
        if let Some(job) = self.enqueue(node, work) {
            std::thread::Builder::new().name("cluster-local".into()).spawn(job).map_err(|e| Error::io("spawn", e))?;
        }
        Ok(())
    }

    /// Runs `first`, then queued work while this thread holds the slot.
    fn run_calls(self: &Arc<Self>, node: &Arc<Node>, first: Work) {
        let me = Arc::as_ptr(self) as usize;
        let outer = IN_HANDLER.with(|h| h.replace(me));
        let mut next = Some(first);
        while let Some(work) = next {
            self.run_work(node, work);
            next = self.dispatcher.finish();
        }
        IN_HANDLER.with(|h| h.set(outer));
    }

    fn run_work(self: &Arc<Self>, node: &Arc<Node>, work: Work) {
        match work {
            Work::One(call) => self.run_call(node, call),
            Work::Batch(b) => self.run_batch(node, b),
        }
    }

    /// Runs a batch's elements one after another in this slot, each as a
    /// call of its own answered into a local slot; once every element is
    /// answered (a handler may defer), the outcomes go back in one reply.
    fn run_batch(self: &Arc<Self>, node: &Arc<Node>, b: BatchCall) {
        let me = node.myid();
        let slots: Vec<Arc<Slot>> = b.ranges.iter().map(|_| Arc::new(Slot::new(0, me))).collect();
        for (r, slot) in b.ranges.iter().zip(&slots) {
            let call = self.new_incoming(b.caller, b.name.clone(), b.payload[r.clone()].to_vec(), ReplyTo::Local(slot.clone()));
            self.run_call(node, call);
        }
        struct Gather {
            left: AtomicUsize,
            slots: Vec<Arc<Slot>>,
            reply: Mutex<Option<ReplyTo>>,
            node: Arc<Node>,
        }
        let g = Arc::new(Gather { left: AtomicUsize::new(slots.len() + 1), slots, reply: Mutex::new(Some(b.reply)), node: node.clone() });
        fn one_done(g: &Gather) {
            if g.left.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            let out = batch::encode_outcomes(g.slots.iter().map(|s| match s.get() {
                Some(Ok(v)) => Ok(&v[..]),
                Some(Err(e)) => Err(e),
                None => unreachable!("every element is answered"),
            }));
            if let Some(reply) = g.reply.lock().take() {
                if let Some(e) = reply.send(&g.node, Ok(&out)) {
                    g.node.log.debug(format!("batch reply not sent: {e}"));
                }
            }
        }
        for s in &g.slots {
            let g2 = g.clone();
            s.on_complete(move |_| one_done(&g2));
        }
        one_done(&g);
    }

    fn run_call(self: &Arc<Self>, node: &Arc<Node>, call: IncomingCall) {
        self.running.lock().insert(call.token, call.cancel.clone());
        let handler = self.functions.read().get(&call.name).cloned();
        let call = Call { inner: Some(call), node: node.clone(), rpc: self.clone() };
        match handler {
            None => {
                let msg = format!("function {} is not registered on process {}", call.name(), node.myid());
                call.fail(&msg);
            }
            Some(h) => {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(call))) {
                    let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
                    node.log.error(format!("a handler panicked: {what}"));
                }
            }
        }
    }

    fn interrupt_local(&self, node: &Node) {
        let running = self.running.lock();
        if running.is_empty() {
            return;
        }
        for flag in running.values() {
            flag.store(true, Ordering::Release);
        }
        drop(running);
        node.log.info("interrupt: cancelling running calls");
        if node.host.is_some() {
            node.emit(Event { service: ID, kind: events::INTERRUPT, id: 0, pid: 0, status: 0 });
        }
    }

    /// Calls waiting for a slot right now (a gauge for tests).
    pub fn running_calls(&self) -> usize {
        self.running.lock().len()
    }
}

/// A thread parked on a future inside a handler lends its slot.
struct SlotLender(std::sync::Weak<Rpc>);

impl Lender for SlotLender {
    fn lend(&self, node: &Arc<Node>) -> bool {
        let Some(rpc) = self.0.upgrade() else { return false };
        if rpc.host_mode || IN_HANDLER.with(|h| h.get()) != Arc::as_ptr(&rpc) as usize {
            return false;
        }
        if let Some(next) = rpc.dispatcher.finish() {
            let n = node.clone();
            let r = rpc.clone();
            std::thread::spawn(move || r.run_calls(&n, next));
        }
        true
    }
    fn reclaim(&self) {
        if let Some(rpc) = self.0.upgrade() {
            rpc.dispatcher.reclaim();
        }
    }
}

impl Rpc {
    /// Lets handlers that wait on futures lend their slot.
    pub fn lender(self: &Arc<Self>) -> Arc<dyn Lender> {
        Arc::new(SlotLender(Arc::downgrade(self)))
    }
}

fn decode_call(meta: Vec<u8>) -> Result<String> {
    String::from_utf8(meta).map_err(|_| Error::new(ErrorKind::Protocol, "function name is not UTF-8"))
}

impl Service for Rpc {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "rpc"
    }
    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        let me = node.service::<Rpc>().expect("rpc is installed");
        match msg.op() {
            op::CALL => {
                let name = decode_call(msg.meta)?;
                let call = me.new_incoming(msg.from, name, msg.payload, msg.reply);
                Ok(me.enqueue(node, Work::One(call)))
            }
            op::CALL_BATCH => {
                let name = decode_call(msg.meta)?;
                match batch::decode_items(&msg.payload) {
                    Ok(ranges) => {
                        let b = BatchCall { caller: msg.from, name, payload: msg.payload, ranges, reply: msg.reply };
                        Ok(me.enqueue(node, Work::Batch(b)))
                    }
                    Err(e) => {
                        let e = Error::at(e.kind, node.myid(), e.message);
                        msg.reply.send(node, Err(e));
                        Ok(None)
                    }
                }
            }
            op::INTERRUPT => {
                self.interrupt_local(node);
                Ok(None)
            }
            o => Err(unknown_op("rpc", o)),
        }
    }
    fn on_close(&self, _node: &Node) {
        drop(self.dispatcher.drain());
    }
}

/// Decodes an rpc message exactly as the service does (for fuzzing).
#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8]) -> Result<()> {
    match op {
        op::CALL | op::CALL_BATCH => decode_call(meta.to_vec()).map(drop),
        op::INTERRUPT => Ok(()),
        o => Err(unknown_op("rpc", o)),
    }
}

fn rpc(node: &Node) -> Result<Arc<Rpc>> {
    node.service::<Rpc>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no rpc service on this node"))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > wire::MAX_META {
        return Err(Error::new(ErrorKind::InvalidArgument, "function names are 1 to 65535 bytes"));
    }
    Ok(())
}

/// Remote calls, on any node with the rpc service.
pub trait RpcExt {
    /// Registers `handler` under `name`, replacing any earlier one.
    fn register(&self, name: &str, handler: Handler) -> Result<()>;
    /// Registers a plain function of the arguments.
    fn register_fn<F>(&self, name: &str, f: F) -> Result<()>
    where
        F: Fn(&Call) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static;
    fn unregister(&self, name: &str) -> bool;
    /// Calls `name` on `pid` (or `ANY_WORKER`) and returns at once. The
    /// arguments are written to the socket before it returns, uncopied.
    fn remotecall(&self, pid: u32, name: &str, args: &[u8]) -> Result<Future>;
    /// One round trip: call and wait for the value.
    fn remotecall_fetch(&self, pid: u32, name: &str, args: &[u8]) -> Result<Value>;
    /// Call and wait for completion; the value stays in the future.
    fn remotecall_wait(&self, pid: u32, name: &str, args: &[u8]) -> Result<Future>;
    /// Fire and forget; a failure is logged on the callee.
    fn remote_do(&self, pid: u32, name: &str, args: &[u8]) -> Result<()>;
    /// Calls `name` on `pid` once per element of `items`, in one message;
    /// the callee runs them in order in one handler slot. The future's
    /// value holds every element's outcome: read it with
    /// `batch::decode_outcomes`. A failing element fails only itself.
    fn remotecall_batch(&self, pid: u32, name: &str, items: &[&[u8]]) -> Result<Future>;
    /// Calls `name` on every process of `pids` (all when `None`) and waits
    /// for all; every failure is listed in one `Composite` error.
    fn everywhere(&self, pids: Option<&[u32]>, name: &str, args: &[u8], timeout: Option<Duration>) -> Result<()>;
    /// `everywhere` as a future, completed once every call is done.
    fn everywhere_async(&self, pids: Option<&[u32]>, name: &str, args: &[u8], timeout: Option<Duration>) -> Result<Future>;
    /// Cancels the calls running on `pids`; idle processes ignore it.
    fn interrupt(&self, pids: &[u32]) -> Result<()>;
}

impl RpcExt for Arc<Node> {
    fn register(&self, name: &str, handler: Handler) -> Result<()> {
        check_name(name)?;
        rpc(self)?.functions.write().insert(name.to_string(), handler);
        Ok(())
    }

    fn register_fn<F>(&self, name: &str, f: F) -> Result<()>
    where
        F: Fn(&Call) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static,
    {
        self.register(
            name,
            Arc::new(move |call: Call| match f(&call) {
                Ok(v) => call.reply(&v),
                Err(m) => call.fail(&m),
            }),
        )
    }

    fn unregister(&self, name: &str) -> bool {
        rpc(self).map(|r| r.functions.write().remove(name).is_some()).unwrap_or(false)
    }

    fn remotecall(&self, pid: u32, name: &str, args: &[u8]) -> Result<Future> {
        self.check_open()?;
        check_name(name)?;
        let r = rpc(self)?;
        let pid = if pid == ANY_WORKER { pick_worker(self, &r) } else { pid };
        if pid == self.myid() {
            let (fut, slot) = self.local_future(pid);
            r.call_here(self, name, args.to_vec(), ReplyTo::Local(slot))?;
            return Ok(fut);
        }
        self.request(pid, ID, op::CALL, name.as_bytes(), args)
    }

    fn remotecall_fetch(&self, pid: u32, name: &str, args: &[u8]) -> Result<Value> {
        if pid == self.myid() {
            self.check_open()?;
            check_name(name)?;
            let r = rpc(self)?;
            let (fut, slot) = self.local_future(pid);
            r.call_inline(self, name, args.to_vec(), ReplyTo::Local(slot))?;
            return fut.value();
        }
        self.remotecall(pid, name, args)?.value()
    }

    fn remotecall_wait(&self, pid: u32, name: &str, args: &[u8]) -> Result<Future> {
        let f = self.remotecall(pid, name, args)?;
        f.wait(None)?;
        Ok(f)
    }

    fn remote_do(&self, pid: u32, name: &str, args: &[u8]) -> Result<()> {
        self.check_open()?;
        check_name(name)?;
        let r = rpc(self)?;
        let pid = if pid == ANY_WORKER { pick_worker(self, &r) } else { pid };
        if pid == self.myid() {
            return r.call_here(self, name, args.to_vec(), ReplyTo::Nobody);
        }
        self.send_oneway(pid, ID, op::CALL, name.as_bytes(), args)
    }

    fn remotecall_batch(&self, pid: u32, name: &str, items: &[&[u8]]) -> Result<Future> {
        self.check_open()?;
        check_name(name)?;
        let r = rpc(self)?;
        let pid = if pid == ANY_WORKER { pick_worker(self, &r) } else { pid };
        let payload = batch::encode_items(items.iter().copied());
        if pid == self.myid() {
            let ranges = batch::decode_items(&payload)?;
            let (fut, slot) = self.local_future(pid);
            let b = BatchCall { caller: pid, name: name.to_string(), payload, ranges, reply: ReplyTo::Local(slot) };
            r.run_here(self, Work::Batch(b))?;
            return Ok(fut);
        }
        self.request(pid, ID, op::CALL_BATCH, name.as_bytes(), &payload)
    }

    fn everywhere(&self, pids: Option<&[u32]>, name: &str, args: &[u8], timeout: Option<Duration>) -> Result<()> {
        let (all, parts) = everywhere_parts(self, pids, name, args, timeout)?;
        // Waiting on each part reads its connection on this thread: no
        // wake-up per reply.
        let deadline = timeout.map(|t| Instant::now() + t);
        for p in &parts {
            let _ = p.wait(deadline.map(|d| d.saturating_duration_since(Instant::now())));
        }
        all.wait(None)
    }

    fn everywhere_async(&self, pids: Option<&[u32]>, name: &str, args: &[u8], timeout: Option<Duration>) -> Result<Future> {
        everywhere_parts(self, pids, name, args, timeout).map(|(f, _)| f)
    }

    fn interrupt(&self, pids: &[u32]) -> Result<()> {
        let r = rpc(self)?;
        for &p in pids {
            if p == self.myid() {
                r.interrupt_local(self);
                continue;
            }
            self.send_oneway_nowait(p, ID, op::INTERRUPT, &[], &[])?;
        }
        Ok(())
    }
}

fn everywhere_parts(node: &Arc<Node>, pids: Option<&[u32]>, name: &str, args: &[u8], timeout: Option<Duration>) -> Result<(Future, Vec<Future>)> {
    node.check_open()?;
    check_name(name)?;
    let targets = pids.map(|p| p.to_vec()).unwrap_or_else(|| node.procs());
    let calls: Vec<(u32, Result<Future>)> = targets.iter().map(|&p| (p, node.remotecall(p, name, args))).collect();
    Ok(all_of(node, calls, timeout))
}

fn pick_worker(node: &Node, r: &Rpc) -> u32 {
    let ws = node.workers();
    ws[r.rr.fetch_add(1, Ordering::Relaxed) % ws.len()]
}

/// One future completed once every part is done: Ok when all succeeded,
/// else one `Composite` error listing each failure in target order. After
/// `timeout` it fails with `Timeout` (the parts go on).
fn all_of(node: &Arc<Node>, parts: Vec<(u32, Result<Future>)>, timeout: Option<Duration>) -> (Future, Vec<Future>) {
    struct Gather {
        left: Mutex<usize>,
        failures: Mutex<Vec<(usize, String)>>,
        done: Mutex<Vec<bool>>,
        targets: Vec<u32>,
        total: usize,
        promise: crate::node::Promise,
    }
    let (fut, promise) = node.promise(node.myid());
    let total = parts.len();
    let targets: Vec<u32> = parts.iter().map(|(p, _)| *p).collect();
    let g = Arc::new(Gather { left: Mutex::new(total + 1), failures: Mutex::new(Vec::new()), done: Mutex::new(vec![false; total]), targets, total, promise });
    fn finish_one(g: &Gather) {
        let mut left = g.left.lock();
        *left -= 1;
        if *left > 0 {
            return;
        }
        drop(left);
        let mut f = std::mem::take(&mut *g.failures.lock());
        if f.is_empty() {
            g.promise.complete(Ok(Vec::new()));
        } else {
            f.sort_by_key(|(i, _)| *i);
            let list: Vec<String> = f.into_iter().map(|(_, m)| m).collect();
            let msg = format!("{} of {} processes failed: {}", list.len(), g.total, list.join("; "));
            g.promise.complete(Err(Error::new(ErrorKind::Composite, msg)));
        }
    }
    let mut held = Vec::new();
    for (i, (p, r)) in parts.into_iter().enumerate() {
        match r {
            Err(e) => {
                g.failures.lock().push((i, format!("process {p}: {}", e.message)));
                finish_one(&g);
            }
            Ok(f) => {
                let g2 = g.clone();
                f.on_complete(move |r| {
                    if let Err(e) = r {
                        g2.failures.lock().push((i, format!("process {p}: {}", e.message)));
                    }
                    g2.done.lock()[i] = true;
                    finish_one(&g2);
                });
                held.push(f);
            }
        }
    }
    finish_one(&g);
    if let Some(t) = timeout {
        let weak = Arc::downgrade(&g);
        node.after(t, move || {
            if let Some(g) = weak.upgrade() {
                // Every process not done yet failed, by timing out.
                let mut f = g.failures.lock().clone();
                for (i, done) in g.done.lock().iter().enumerate() {
                    if !done && !f.iter().any(|(j, _)| *j == i) {
                        f.push((i, format!("process {}: timed out after {t:?}", g.targets[i])));
                    }
                }
                f.sort_by_key(|(i, _)| *i);
                let list: Vec<String> = f.into_iter().map(|(_, m)| m).collect();
                let msg = format!("{} of {} processes failed: {}", list.len(), g.total, list.join("; "));
                g.promise.complete(Err(Error::new(ErrorKind::Composite, msg)));
            }
        });
    }
    (fut, held)
}

#[cfg(test)]
mod tests {
    //! The service alone: calls handed to it directly, replies captured.
    use super::*;
    use crate::node::Config;
    use crate::wire::{Header, Kind};

    type Out = Arc<Mutex<Vec<Result<Vec<u8>>>>>;

    fn node() -> (Arc<Node>, Arc<Rpc>) {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        let r = Rpc::new(1, false);
        n.set_lender(r.lender());
        n.install(r.clone()).unwrap();
        n.start().unwrap();
        (n, r)
    }

    fn call(n: &Arc<Node>, r: &Rpc, name: &str, args: &[u8], out: &Out) -> Option<Job> {
        let msg = Incoming::test(4, Header::new(Kind::Request, ID, op::CALL, 1), name.as_bytes().to_vec(), args.to_vec(), out);
        r.on_message(n, msg).unwrap()
    }

    #[test]
    fn calls_run_in_their_job_and_answer_their_caller() {
        let (n, r) = node();
        n.register_fn("caller_and_len", |c| Ok(vec![c.caller() as u8, c.args().len() as u8])).unwrap();
        let out: Out = Arc::default();
        let job = call(&n, &r, "caller_and_len", b"abc", &out).expect("a free slot: the call runs now");
        assert!(out.lock().is_empty(), "nothing runs before the job");
        job();
        assert_eq!(out.lock().pop().unwrap().unwrap(), vec![4, 3]);
        let job = call(&n, &r, "nobody", b"", &out).unwrap();
        job();
        let e = out.lock().pop().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Remote);
        assert!(e.message.contains("not registered"), "{e}");
        n.close();
    }

    #[test]
    fn one_slot_queues_the_second_call_behind_the_first() {
        let (n, r) = node();
        n.register_fn("id", |c| Ok(c.args().to_vec())).unwrap();
        let out: Out = Arc::default();
        let first = call(&n, &r, "id", b"1", &out).unwrap();
        assert!(call(&n, &r, "id", b"2", &out).is_none(), "no slot: queued");
        first();
        // The slot's holder ran the queued call after its own.
        let got: Vec<Vec<u8>> = out.lock().drain(..).map(|r| r.unwrap()).collect();
        assert_eq!(got, vec![b"1".to_vec(), b"2".to_vec()]);
        n.close();
    }

    #[test]
    fn a_batch_runs_its_elements_in_one_slot_and_answers_each() {
        let (n, r) = node();
        n.register_fn("sq", |c| {
            let x = c.args().first().copied().ok_or("empty")?;
            if x == 3 {
                return Err("three".into());
            }
            Ok(vec![x * x])
        })
        .unwrap();
        // An element answered later, from another thread.
        n.register(
            "later",
            Arc::new(|c: Call| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    let v = c.args().to_vec();
                    c.reply(&v);
                });
            }),
        )
        .unwrap();
        let out: Out = Arc::default();
        let items: Vec<&[u8]> = vec![&[2], &[3], &[], &[4]];
        let msg = Incoming::test(4, Header::new(Kind::Request, ID, op::CALL_BATCH, 1), b"sq".to_vec(), batch::encode_items(items.into_iter()), &out);
        let job = r.on_message(&n, msg).unwrap().expect("a free slot");
        // A second call queues behind the whole batch.
        assert!(call(&n, &r, "sq", &[5], &out).is_none());
        job();
        let got: Vec<Result<Vec<u8>>> = out.lock().drain(..).collect();
        assert_eq!(got.len(), 2, "the batch's one reply, then the queued call");
        let reply = got[0].as_ref().unwrap();
        let outs = batch::decode_outcomes(reply, 1).unwrap();
        assert_eq!(&reply[outs[0].clone().unwrap()], &[4]);
        assert!(outs[1].clone().unwrap_err().message.contains("three"));
        assert!(outs[2].clone().unwrap_err().message.contains("empty"));
        assert_eq!(&reply[outs[3].clone().unwrap()], &[16]);
        assert_eq!(got[1].as_ref().unwrap(), &vec![25]);
        // Deferred elements: the reply waits for them.
        let items: Vec<&[u8]> = vec![b"a", b"b"];
        let msg = Incoming::test(4, Header::new(Kind::Request, ID, op::CALL_BATCH, 2), b"later".to_vec(), batch::encode_items(items.into_iter()), &out);
        r.on_message(&n, msg).unwrap().unwrap()();
        assert!(out.lock().is_empty(), "not before every element is answered");
        std::thread::sleep(Duration::from_millis(100));
        let reply = out.lock().pop().unwrap().unwrap();
        let outs = batch::decode_outcomes(&reply, 1).unwrap();
        assert_eq!(&reply[outs[1].clone().unwrap()], b"b");
        // A malformed batch is answered with an error, the connection kept.
        let msg = Incoming::test(4, Header::new(Kind::Request, ID, op::CALL_BATCH, 3), b"sq".to_vec(), vec![9, 0, 0, 0], &out);
        assert!(r.on_message(&n, msg).unwrap().is_none());
        assert_eq!(out.lock().pop().unwrap().unwrap_err().kind, ErrorKind::Protocol);
        n.close();
    }

    #[test]
    fn a_handler_that_never_answers_still_answers_its_caller() {
        let (n, r) = node();
        n.register("drop", Arc::new(|c: Call| drop(c))).unwrap();
        n.register_fn("boom", |_| panic!("on purpose")).unwrap();
        let out: Out = Arc::default();
        call(&n, &r, "drop", b"", &out).unwrap()();
        assert!(out.lock().pop().unwrap().unwrap_err().message.contains("without replying"));
        call(&n, &r, "boom", b"", &out).unwrap()();
        assert!(out.lock().pop().unwrap().unwrap_err().message.contains("panicked"));
        n.close();
    }

    #[test]
    fn an_interrupt_cancels_the_running_call_only() {
        let (n, r) = node();
        let seen = Arc::new(AtomicBool::new(false));
        let s = seen.clone();
        n.register_fn("watch", move |c| {
            let oneway =
                Incoming { from: 1, header: Header::new(Kind::Oneway, ID, op::INTERRUPT, 0), meta: Vec::new(), payload: Vec::new(), reply: ReplyTo::Nobody };
            let node = c.node().clone();
            node.service::<Rpc>().unwrap().on_message(&node, oneway).unwrap();
            s.store(c.is_cancelled(), Ordering::SeqCst);
            Ok(Vec::new())
        })
        .unwrap();
        let out: Out = Arc::default();
        call(&n, &r, "watch", b"", &out).unwrap()();
        assert!(seen.load(Ordering::SeqCst), "the running call saw the interrupt");
        assert_eq!(out.lock().pop().unwrap().unwrap_err().kind, ErrorKind::Interrupted);
        assert_eq!(r.running_calls(), 0);
        n.close();
    }
}
