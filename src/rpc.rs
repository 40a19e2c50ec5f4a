//! Remote calls: the function registry, incoming calls and their replies,
//! handler slots (how many calls run at once), futures and references to
//! them, interrupts, and host-driven polling.

use crate::cluster::{op, Node};
use crate::error::{Error, ErrorKind, Result};
use crate::future::{self, Slot};
use crate::host::Event;
use crate::sys;
use crate::transport::{Conn, Job};
use crate::wire::{self, service, Frame, Header, Kind};
use parking_lot::{Condvar, Mutex, RwLock};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) const CALL: u16 = 1;

/// Pass as the target process to pick the next worker round-robin.
pub const ANY_WORKER: u32 = 0;

/// A registered function. It receives the call by value and answers it
/// with `Call::reply` or `Call::fail`, now or later from any thread.
pub type Handler = Arc<dyn Fn(Call) + Send + Sync>;

pub(crate) enum ReplyTo {
    Remote { conn: Arc<Conn>, header: Header },
    Local(Arc<Slot>),
    Nobody,
}

/// A call as it arrives, before it runs.
pub struct IncomingCall {
    caller: u32,
    name: String,
    args: Vec<u8>,
    reply: ReplyTo,
    cancel: Arc<AtomicBool>,
    token: u64,
}

/// A running call, handed to its handler. Dropping it unanswered answers
/// with an error, so a caller never waits for a reply that cannot come.
pub struct Call {
    inner: Option<IncomingCall>,
    node: Arc<Node>,
}

impl Call {
    pub fn args(&self) -> &[u8] {
        &self.inner.as_ref().expect("live call").args
    }
    pub fn caller(&self) -> u32 {
        self.inner.as_ref().expect("live call").caller
    }
    pub fn name(&self) -> &str {
        &self.inner.as_ref().expect("live call").name
    }
    /// True once `interrupt` reached this process during the call.
    pub fn is_cancelled(&self) -> bool {
        self.inner.as_ref().expect("live call").cancel.load(Ordering::Acquire)
    }
    /// The cancellation flag, to watch from elsewhere.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.inner.as_ref().expect("live call").cancel.clone()
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
        self.node.dispatcher.running.lock().remove(&call.token);
        let outcome = if call.cancel.load(Ordering::Acquire) {
            Err(Error::at(
                ErrorKind::Interrupted,
                self.node.myid(),
                format!("call to {} interrupted on process {}", call.name, self.node.myid()),
            ))
        } else {
            outcome
        };
        match call.reply {
            ReplyTo::Remote { conn, header } => {
                self.node.respond(&conn, &header, outcome);
                conn.recycle(call.args);
            }
            ReplyTo::Local(slot) => {
                slot.complete(outcome.map(|v| v.to_vec()));
            }
            ReplyTo::Nobody => {
                if let Err(e) = outcome {
                    self.node.log.error(format!("remote_do {} from process {} failed: {}", call.name, call.caller, e.message));
                }
            }
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

struct Slots {
    free: usize,
    queue: VecDeque<IncomingCall>,
    resumers: usize,
}

/// Registry and handler slots. A call runs when a slot is free, else it
/// waits its turn in arrival order. A handler that blocks on a future
/// lends its slot meanwhile, as a Julia task yields, so calls that call
/// back into this process cannot deadlock.
pub(crate) struct Dispatcher {
    pub functions: RwLock<HashMap<String, Handler>>,
    pub running: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    slots: Mutex<Slots>,
    cv: Condvar,
    next_token: AtomicU64,
}

thread_local! {
    /// The node whose handler slot this thread holds, if any.
    static IN_HANDLER: Cell<usize> = const { Cell::new(0) };
}

impl Dispatcher {
    pub fn new(slots: usize) -> Dispatcher {
        Dispatcher {
            functions: RwLock::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            slots: Mutex::new(Slots { free: slots, queue: VecDeque::new(), resumers: 0 }),
            cv: Condvar::new(),
            next_token: AtomicU64::new(1),
        }
    }

    /// Takes a slot for `call` (returned: run it now) or queues it.
    pub fn offer(&self, call: IncomingCall) -> Option<IncomingCall> {
        let mut s = self.slots.lock();
        if s.free > 0 && s.queue.is_empty() {
            s.free -= 1;
            Some(call)
        } else {
            s.queue.push_back(call);
            None
        }
    }

    /// Gives the slot back, or keeps it for the next queued call.
    fn finish(&self) -> Option<IncomingCall> {
        let mut s = self.slots.lock();
        if s.resumers == 0 {
            if let Some(c) = s.queue.pop_front() {
                return Some(c);
            }
        }
        s.free += 1;
        self.cv.notify_one();
        None
    }

    fn reclaim(&self) {
        let mut s = self.slots.lock();
        s.resumers += 1;
        while s.free == 0 {
            self.cv.wait(&mut s);
        }
        s.free -= 1;
        s.resumers -= 1;
    }
}

/// A value this process keeps for references to it: those exported and not
/// yet imported, and those held, per process, until released or the
/// holder dies.
pub(crate) struct Owned {
    pub slot: Arc<Slot>,
    pub in_transit: u64,
    pub holders: HashMap<u32, u64>,
}

impl Owned {
    fn new(slot: Arc<Slot>) -> Owned {
        Owned { slot, in_transit: 0, holders: HashMap::new() }
    }
    fn unreferenced(&self) -> bool {
        self.in_transit == 0 && self.holders.is_empty()
    }
}

/// A reference to a future that another process can wait on and fetch.
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

enum Origin {
    /// Created here by a call from this process.
    Local,
    /// A reference this process owns, handed back to it: counted.
    Imported,
    /// A reference to a value held by `owner`.
    Remote { owner: u32, id: u64, requested: AtomicBool },
}

/// The result of a remote call, to wait on and fetch.
pub struct Future {
    node: Arc<Node>,
    slot: Arc<Slot>,
    conn: OnceLock<Arc<Conn>>,
    origin: Origin,
}

/// A fetched value, kept alive without a copy.
pub struct Value(Arc<Slot>);

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({} bytes)", self.len())
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
    /// Unique among this process's futures; names it in host events.
    pub fn id(&self) -> u64 {
        self.slot.id
    }
    /// The process that computes (or holds) the value.
    pub fn pid(&self) -> u32 {
        self.slot.pid
    }

    pub fn is_ready(&self) -> bool {
        if !self.slot.is_done() {
            self.request_remote();
        }
        self.slot.is_done()
    }

    /// Waits for completion; the call's own failure is returned as the error.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        self.request_remote();
        let deadline = timeout.map(|t| Instant::now() + t);
        if !self.node.wait_slot(&self.slot, self.conn.get(), deadline) {
            return Err(Error::at(ErrorKind::Timeout, self.slot.pid, "timed out waiting for the future"));
        }
        future::outcome(&self.slot).map(|_| ())
    }

    /// Waits, then borrows the value, which stays cached in the future.
    pub fn fetch(&self, timeout: Option<Duration>) -> Result<&[u8]> {
        self.wait(timeout)?;
        future::outcome(&self.slot)
    }

    pub fn value(&self) -> Result<Value> {
        self.wait(None)?;
        Ok(Value(self.slot.clone()))
    }

    /// A reference another process can import. The owner keeps the value
    /// until every reference made this way has been freed by its importer.
    pub fn export(&self) -> Result<FutureRef> {
        match &self.origin {
            Origin::Local | Origin::Imported => {
                let mut owned = self.node.owned.lock();
                let e = owned.entry(self.slot.id).or_insert_with(|| Owned::new(self.slot.clone()));
                e.in_transit += 1;
                Ok(FutureRef { owner: self.node.myid(), id: self.slot.id })
            }
            Origin::Remote { owner, id, .. } => {
                let ack = self.node.control_request(*owner, op::ADD_REF, *id)?;
                if !self.node.wait_slot(&ack, None, Some(Instant::now() + Duration::from_secs(30))) {
                    return Err(Error::at(ErrorKind::Timeout, *owner, "timed out adding a reference"));
                }
                future::outcome(&ack)?;
                Ok(FutureRef { owner: *owner, id: *id })
            }
        }
    }

    fn request_remote(&self) {
        let Origin::Remote { owner, id, requested } = &self.origin else { return };
        if requested.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.node.conn_for(*owner) {
            Err(e) => {
                self.slot.complete(Err(e));
            }
            Ok((peer, conn)) => {
                let _ = self.conn.set(conn.clone());
                if peer.expect(&self.slot) {
                    let h = Header::new(Kind::Request, service::CONTROL, op::FETCH_REF, self.slot.id);
                    if let Err(e) = conn.send(h, &wire::encode_meta(id), &[]) {
                        peer.pending.lock().remove(&self.slot.id);
                        self.slot.complete(Err(e));
                    }
                }
            }
        }
    }
}

impl Drop for Future {
    fn drop(&mut self) {
        match &self.origin {
            Origin::Local => {}
            Origin::Imported => self.node.release_ref(self.slot.id, self.node.myid()),
            Origin::Remote { owner, id, .. } => self.node.defer_del_ref(*owner, *id),
        }
    }
}

impl Node {
    /// Registers `handler` under `name`, replacing any earlier one.
    pub fn register(&self, name: &str, handler: Handler) -> Result<()> {
        if name.is_empty() || name.len() > wire::MAX_META {
            return Err(Error::new(ErrorKind::InvalidArgument, "function names are 1 to 65535 bytes"));
        }
        self.dispatcher.functions.write().insert(name.to_string(), handler);
        Ok(())
    }

    /// Registers a plain function of the arguments.
    pub fn register_fn<F>(&self, name: &str, f: F) -> Result<()>
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

    pub fn unregister(&self, name: &str) -> bool {
        self.dispatcher.functions.write().remove(name).is_some()
    }

    fn pick_worker(&self) -> u32 {
        let ws = self.workers();
        ws[self.round_robin(ws.len())]
    }

    fn watch(self: &Arc<Self>, slot: &Arc<Slot>) {
        if self.host.is_some() {
            let weak = Arc::downgrade(self);
            let id = slot.id;
            slot.on_complete(move |_| {
                if let Some(h) = weak.upgrade().as_ref().and_then(|n| n.host.as_ref()) {
                    h.push_event(Event::FutureReady(id));
                }
            });
        }
    }

    fn new_future(self: &Arc<Self>, slot: Arc<Slot>, conn: Option<Arc<Conn>>, origin: Origin) -> Future {
        let cell = OnceLock::new();
        if let Some(c) = conn {
            let _ = cell.set(c);
        }
        Future { node: self.clone(), slot, conn: cell, origin }
    }

    /// Calls `name` on `pid` (or `ANY_WORKER`) and returns at once. The
    /// arguments are written to the socket before it returns, uncopied.
    pub fn remotecall(self: &Arc<Self>, pid: u32, name: &str, args: &[u8]) -> Result<Future> {
        self.check_open()?;
        self.check_name(name)?;
        let pid = if pid == ANY_WORKER { self.pick_worker() } else { pid };
        let slot = Arc::new(Slot::new(self.next_request_id(), pid));
        self.watch(&slot);
        if pid == self.myid() {
            self.call_here(name, args.to_vec(), ReplyTo::Local(slot.clone()))?;
            return Ok(self.new_future(slot, None, Origin::Local));
        }
        let (peer, conn) = self.conn_for(pid)?;
        if peer.expect(&slot) {
            let h = Header::new(Kind::Request, service::RPC, CALL, slot.id);
            if let Err(e) = conn.send(h, name.as_bytes(), args) {
                // Never sent: say so now rather than through the future.
                peer.pending.lock().remove(&slot.id);
                slot.complete(Err(e.clone()));
                return Err(e);
            }
        }
        Ok(self.new_future(slot, Some(conn), Origin::Local))
    }

    /// One round trip: call and wait for the value.
    pub fn remotecall_fetch(self: &Arc<Self>, pid: u32, name: &str, args: &[u8]) -> Result<Value> {
        self.remotecall(pid, name, args)?.value()
    }

    /// Call and wait for completion; the value stays in the future.
    pub fn remotecall_wait(self: &Arc<Self>, pid: u32, name: &str, args: &[u8]) -> Result<Future> {
        let f = self.remotecall(pid, name, args)?;
        f.wait(None)?;
        Ok(f)
    }

    /// Fire and forget; a failure is logged on the callee.
    pub fn remote_do(self: &Arc<Self>, pid: u32, name: &str, args: &[u8]) -> Result<()> {
        self.check_open()?;
        self.check_name(name)?;
        let pid = if pid == ANY_WORKER { self.pick_worker() } else { pid };
        if pid == self.myid() {
            return self.call_here(name, args.to_vec(), ReplyTo::Nobody);
        }
        let (_, conn) = self.conn_for(pid)?;
        conn.send(Header::new(Kind::Oneway, service::RPC, CALL, 0), name.as_bytes(), args)
    }

    /// Calls `name` on every process of `pids` (all when `None`) and waits
    /// for all; every failure is listed in one `Composite` error.
    pub fn everywhere(self: &Arc<Self>, pids: Option<&[u32]>, name: &str, args: &[u8], timeout: Option<Duration>) -> Result<()> {
        self.check_open()?;
        self.check_name(name)?;
        let targets = pids.map(|p| p.to_vec()).unwrap_or_else(|| self.procs());
        let deadline = timeout.map(|t| Instant::now() + t);
        let started: Vec<(u32, Result<Future>)> = targets.iter().map(|&p| (p, self.remotecall(p, name, args))).collect();
        let mut failures = Vec::new();
        for (p, f) in started {
            let r = f.and_then(|f| f.wait(deadline.map(|d| d.saturating_duration_since(Instant::now()))));
            if let Err(e) = r {
                failures.push(format!("process {p}: {}", e.message));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Composite, format!("{} of {} processes failed: {}", failures.len(), targets.len(), failures.join("; "))))
        }
    }

    /// Cancels the calls running on `pids`; idle processes ignore it.
    pub fn interrupt(self: &Arc<Self>, pids: &[u32]) -> Result<()> {
        for &p in pids {
            if p == self.myid() {
                self.interrupt_local();
                continue;
            }
            let (_, conn) = self.conn_for(p)?;
            conn.send(Header::new(Kind::Oneway, service::CONTROL, op::INTERRUPT, 0), &[], &[])?;
        }
        Ok(())
    }

    pub(crate) fn interrupt_local(&self) {
        let running = self.dispatcher.running.lock();
        if running.is_empty() {
            return;
        }
        for flag in running.values() {
            flag.store(true, Ordering::Release);
        }
        drop(running);
        self.log.info("interrupt: cancelling running calls");
        if let Some(h) = &self.host {
            h.push_event(Event::Interrupt);
        }
    }

    /// A reference made by `Future::export`, here or in another process.
    pub fn import(self: &Arc<Self>, r: FutureRef) -> Result<Future> {
        if r.owner == self.myid() {
            let slot = self.claim_ref(r.id, r.owner).ok_or_else(|| self.freed(r.id))?;
            return Ok(self.new_future(slot, None, Origin::Imported));
        }
        if !self.peers.read().contains_key(&r.owner) {
            return Err(Error::at(ErrorKind::NoSuchProcess, r.owner, format!("no process {}", r.owner)));
        }
        self.defer_add_client(r.owner, r.id);
        let slot = Arc::new(Slot::new(self.next_request_id(), r.owner));
        self.watch(&slot);
        let origin = Origin::Remote { owner: r.owner, id: r.id, requested: AtomicBool::new(false) };
        Ok(self.new_future(slot, None, origin))
    }

    fn freed(&self, id: u64) -> Error {
        Error::new(ErrorKind::InvalidArgument, format!("future {id} of process {} was freed", self.myid()))
    }

    /// An exported reference is on its way to some process.
    pub(crate) fn add_transit(&self, id: u64) -> bool {
        match self.owned.lock().get_mut(&id) {
            Some(e) => {
                e.in_transit += 1;
                true
            }
            None => false,
        }
    }

    /// `holder` imported a reference: it now holds it until it releases it
    /// or dies.
    pub(crate) fn claim_ref(&self, id: u64, holder: u32) -> Option<Arc<Slot>> {
        let mut owned = self.owned.lock();
        let e = owned.get_mut(&id)?;
        e.in_transit = e.in_transit.saturating_sub(1);
        *e.holders.entry(holder).or_insert(0) += 1;
        Some(e.slot.clone())
    }

    pub(crate) fn release_ref(&self, id: u64, holder: u32) {
        let mut owned = self.owned.lock();
        if let Some(e) = owned.get_mut(&id) {
            if let Some(n) = e.holders.get_mut(&holder) {
                *n -= 1;
                if *n == 0 {
                    e.holders.remove(&holder);
                }
            }
            if e.unreferenced() {
                owned.remove(&id);
            }
        }
    }

    /// A process died: the references it held are gone with it.
    pub(crate) fn drop_holder(&self, holder: u32) {
        self.owned.lock().retain(|_, e| {
            e.holders.remove(&holder);
            !e.unreferenced()
        });
    }

    /// Number of values this process keeps for references held elsewhere.
    pub fn owned_refs(&self) -> usize {
        self.owned.lock().len()
    }

    pub(crate) fn control_request(self: &Arc<Self>, pid: u32, op: u16, ref_id: u64) -> Result<Arc<Slot>> {
        let (peer, conn) = self.conn_for(pid)?;
        let slot = Arc::new(Slot::new(self.next_request_id(), pid));
        if peer.expect(&slot) {
            let h = Header::new(Kind::Request, service::CONTROL, op, slot.id);
            if let Err(e) = conn.send(h, &wire::encode_meta(&ref_id), &[]) {
                peer.pending.lock().remove(&slot.id);
                slot.complete(Err(e));
            }
        }
        Ok(slot)
    }

    /// Waits for `slot`: reads the reply connection itself for a while,
    /// then parks, lending its handler slot if it holds one.
    pub(crate) fn wait_slot(self: &Arc<Self>, slot: &Arc<Slot>, conn: Option<&Arc<Conn>>, deadline: Option<Instant>) -> bool {
        if slot.is_done() {
            return true;
        }
        let spin = self.cfg.spin;
        let done = match conn {
            Some(c) => c.drive(self, spin, &|| slot.is_done()),
            None => sys::spin_until(spin, || slot.is_done()),
        };
        if done {
            return true;
        }
        let me = Arc::as_ptr(self) as usize;
        let lending = self.host.is_none() && IN_HANDLER.with(|h| h.get()) == me;
        if lending {
            if let Some(next) = self.dispatcher.finish() {
                let node = self.clone();
                std::thread::spawn(move || node.run_calls(next));
            }
        }
        let done = slot.park_until(deadline);
        if lending {
            self.dispatcher.reclaim();
        }
        done
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.len() > wire::MAX_META {
            return Err(Error::new(ErrorKind::InvalidArgument, "function names are 1 to 65535 bytes"));
        }
        Ok(())
    }

    fn new_incoming(&self, caller: u32, name: String, args: Vec<u8>, reply: ReplyTo) -> IncomingCall {
        let token = self.dispatcher.next_token.fetch_add(1, Ordering::Relaxed);
        IncomingCall { caller, name, args, reply, cancel: Arc::new(AtomicBool::new(false)), token }
    }

    fn call_here(self: &Arc<Self>, name: &str, args: Vec<u8>, reply: ReplyTo) -> Result<()> {
        let call = self.new_incoming(self.myid(), name.to_string(), args, reply);
        if let Some(job) = self.enqueue_call(call) {
            std::thread::Builder::new()
                .name("cluster-local".into())
                .spawn(job)
                .map_err(|e| Error::io("spawn", e))?;
        }
        Ok(())
    }

    pub(crate) fn on_rpc(self: &Arc<Self>, conn: &Arc<Conn>, f: Frame) -> Result<Option<Job>> {
        if f.header.op != CALL {
            return Err(Error::new(ErrorKind::Protocol, format!("unknown rpc op {}", f.header.op)));
        }
        let name = String::from_utf8(f.meta).map_err(|_| Error::new(ErrorKind::Protocol, "function name is not UTF-8"))?;
        let reply = match f.header.kind {
            Kind::Request => ReplyTo::Remote { conn: conn.clone(), header: f.header },
            _ => ReplyTo::Nobody,
        };
        let call = self.new_incoming(conn.peer(), name, f.payload, reply);
        Ok(self.enqueue_call(call))
    }

    /// Runs `first`, then queued calls while this thread holds the slot.
    pub(crate) fn run_calls(self: &Arc<Self>, first: IncomingCall) {
        let me = Arc::as_ptr(self) as usize;
        let outer = IN_HANDLER.with(|h| h.replace(me));
        let mut next = Some(first);
        while let Some(call) = next {
            self.run_call(call);
            next = self.dispatcher.finish();
        }
        IN_HANDLER.with(|h| h.set(outer));
    }

    fn run_call(self: &Arc<Self>, call: IncomingCall) {
        self.dispatcher.running.lock().insert(call.token, call.cancel.clone());
        let handler = self.dispatcher.functions.read().get(&call.name).cloned();
        let call = Call { inner: Some(call), node: self.clone() };
        match handler {
            None => {
                let msg = format!("function {} is not registered on process {}", call.name(), self.myid());
                call.fail(&msg);
            }
            Some(h) => {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(call))) {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    self.log.error(format!("a handler panicked: {what}"));
                }
            }
        }
    }

    /// Host-driven mode: runs queued calls on this thread and returns up
    /// to `max_events` events. Never blocks.
    pub fn poll(self: &Arc<Self>, max_events: usize) -> Result<Vec<Event>> {
        let host = self.host_or_err()?;
        let (calls, events) = host.take(max_events);
        for c in calls {
            self.run_call(c);
        }
        self.log.drain_held();
        Ok(events)
    }

    /// The eventfd a host event loop watches (host-driven mode).
    pub fn event_fd(&self) -> Result<i32> {
        Ok(self.host_or_err()?.event_fd())
    }

    pub fn set_notify(&self, notify: Option<crate::host::Notify>) -> Result<()> {
        self.host_or_err()?.set_notify(notify);
        Ok(())
    }
}
