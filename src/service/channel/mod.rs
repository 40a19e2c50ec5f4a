//! RemoteChannels: a FIFO queue of byte elements kept by one process (its
//! owner), with a capacity, used from any process through references.
//! Semantics are those of Julia's `Channel` / Distributed's `RemoteChannel`
//! (see `state`).
//!
//! **Protocol** (service 4; every message's meta is `Msg { id, arg }`):
//!
//! | op         | kind     | what                                          |
//! |------------|----------|-----------------------------------------------|
//! | CREATE     | one-way  | a channel of capacity `arg`, held by its sender |
//! | PUT        | request  | payload: the element; answered once it is in  |
//! |            | one-way  | the same, unanswered (`put_nowait`)           |
//! | TAKE       | request  | answered with the first element, removed      |
//! | FETCH      | request  | answered with a copy of the first element     |
//! | WAIT       | request  | answered once an element is there             |
//! | QUERY      | request  | answered with a `ChannelState` (17 bytes)     |
//! | CLOSE      | request  | closes it                                     |
//! | BIND       | request  | closes it when process `arg` leaves           |
//! | ADD_REF    | request  | a reference is on its way to some process     |
//! | ADD_CLIENT | one-way  | the sender imported a reference: it holds it  |
//! | DEL_REF    | one-way  | the sender released a reference it held       |
//! | CANCEL     | one-way  | withdraws the sender's parked request `arg`   |
//! | UNTAKE     | one-way  | payload: an element given back, first in line |
//!
//! **Who waits where.** A put into a full channel, and a take, fetch or
//! wait on an empty one, is parked on the owner as a pending reply (its
//! `ReplyTo`): no thread waits anywhere. The caller has an ordinary future
//! in the node's pending table, completed when the owner answers, or
//! failed with ProcessExited naming the owner when the owner dies.
//!
//! **Creation needs no round trip**: the creator picks the id (its own
//! process id in the high bits, a counter below) and sends CREATE on its
//! connection to the owner, ahead of anything else it sends there.
//!
//! **References** are counted as refs counts futures
//! (`service::holders`): per holder process, plus those in flight; the
//! channel is freed once none is left, and a process that leaves releases
//! what it held, and its parked operations are dropped (a reader that is
//! gone must never be handed an element). A future of a take, fetch or wait
//! dropped before it completed withdraws its request (CANCEL); a take
//! served meanwhile gives its element back (UNTAKE).
//!
//! **Bind**: a channel bound to a process closes when that process leaves,
//! gracefully or not, so its readers fail instead of waiting forever.

mod state;

pub use state::ChannelState;
use state::{Answer, Chan, Reader, Want, Writer};

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::slot::Slot;
use crate::node::{Departure, Future, Incoming, Node, ReplyTo, Service, Value};
use crate::service::holders::{Holders, Housekeeper};
use crate::wire::{self, ServiceId};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use crate::node::fast_map::{self, FastMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const ID: ServiceId = 4;

/// The capacity of a channel that never fills.
pub const UNBOUNDED: usize = usize::MAX;

pub(crate) mod op {
    pub const CREATE: u16 = 1;
    pub const PUT: u16 = 2;
    pub const TAKE: u16 = 3;
    pub const FETCH: u16 = 4;
    pub const WAIT: u16 = 5;
    pub const QUERY: u16 = 6;
    pub const CLOSE: u16 = 7;
    pub const BIND: u16 = 8;
    pub const ADD_REF: u16 = 9;
    pub const ADD_CLIENT: u16 = 10;
    pub const DEL_REF: u16 = 11;
    pub const CANCEL: u16 = 12;
    pub const UNTAKE: u16 = 13;
}

/// The meta of every channel message: the channel, and the op's argument
/// (CREATE: the capacity, u64::MAX unbounded; BIND: a process id; CANCEL:
/// the request id; else 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Msg {
    pub id: u64,
    pub arg: u64,
}

/// A channel id's creator is in its bits above this.
const CREATOR_SHIFT: u32 = 40;

/// How long a blocking operation that timed out waits for the owner to
/// confirm its withdrawal.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The small, copyable name of a channel that any process can import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelRef {
    /// The process keeping the channel.
    pub owner: u32,
    pub id: u64,
}

impl ChannelRef {
    /// 12 bytes: owner as a little-endian u32, then id as a little-endian u64.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.owner.to_le_bytes());
        b[4..].copy_from_slice(&self.id.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<ChannelRef> {
        if b.len() != 12 {
            return None;
        }
        Some(ChannelRef { owner: u32::from_le_bytes(b[..4].try_into().ok()?), id: u64::from_le_bytes(b[4..].try_into().ok()?) })
    }
}

fn name(owner: u32, id: u64) -> String {
    format!("channel {owner}:{id:#x}")
}

fn unknown(node: &Node, id: u64) -> Error {
    let me = node.myid();
    Error::at(ErrorKind::InvalidArgument, me, format!("no {} on process {me} (freed, or never created)", name(me, id)))
}

/// Whether `pid` is this process or a peer that has not left.
fn live(node: &Node, pid: u32) -> bool {
    pid == node.myid() || node.peer(pid).is_some_and(|p| !p.is_gone())
}

/// Sends the answers, after the channel's lock is released. Local
/// futures first (each gets its element without a copy): what their
/// continuations send (an echo's put) then goes out ahead of the answers
/// to other processes, so a requester that reads both in one go finds
/// the echo there when its own answer arrives.
fn deliver(node: &Node, answers: Vec<Answer>) {
    let mut remote = Vec::new();
    for Answer(reply, r) in answers {
        match reply {
            ReplyTo::Local(slot) => {
                slot.complete(r);
            }
            other => remote.push((other, r)),
        }
    }
    for (reply, r) in remote {
        if let Some(e) = reply.send(node, r.as_deref().map_err(|e| e.clone())) {
            node.log.debug(format!("channel message failed: {e}"));
        }
    }
}

type Shared = Arc<Mutex<Chan>>;

/// The channel service of one node: the channels it owns.
pub struct Channels {
    chans: RwLock<FastMap<u64, Shared>>,
    next: AtomicU64,
    housekeeping: Housekeeper,
}

impl Channels {
    pub fn new() -> Arc<Channels> {
        Arc::new(Channels { chans: RwLock::new(fast_map::new()), next: AtomicU64::new(1), housekeeping: Housekeeper::new("cluster-chan", ID) })
    }

    /// Channels this process keeps (for references held here or elsewhere).
    pub fn owned_count(&self) -> usize {
        self.chans.read().len()
    }

    fn get(&self, id: u64) -> Option<Shared> {
        self.chans.read().get(&id).cloned()
    }

    /// Runs `f` on channel `id` under its lock, frees it if that left it
    /// unreferenced, then sends the answers.
    fn with_chan(&self, node: &Node, id: u64, reply: ReplyTo, f: impl FnOnce(&mut Chan, ReplyTo, &mut Vec<Answer>)) {
        let mut out = Vec::new();
        let mut free = false;
        match self.get(id) {
            None => out.push(Answer(reply, Err(unknown(node, id)))),
            Some(ch) => {
                let mut c = ch.lock();
                if c.freed {
                    out.push(Answer(reply, Err(unknown(node, id))));
                } else {
                    f(&mut c, reply, &mut out);
                    free = Self::free_if_unreferenced(node, &mut c, &mut out);
                }
            }
        }
        if free {
            self.chans.write().remove(&id);
        }
        deliver(node, out);
    }

    fn free_if_unreferenced(node: &Node, c: &mut Chan, out: &mut Vec<Answer>) -> bool {
        if c.freed || !c.refs.unreferenced() {
            return false;
        }
        c.freed = true;
        let e = Error::at(ErrorKind::ChannelClosed, node.myid(), format!("{} was freed: no process holds it", c.name));
        c.fail_all(&e, out);
        true
    }

    fn create(&self, node: &Node, from: u32, id: u64, capacity: usize) {
        if (id >> CREATOR_SHIFT) as u32 != from {
            return node.log.warn(format!("process {from} created a channel with another process's id {id:#x}: ignored"));
        }
        if !live(node, from) {
            return;
        }
        let mut chans = self.chans.write();
        if chans.contains_key(&id) {
            drop(chans);
            return node.log.warn(format!("process {from} created {} twice: ignored", name(node.myid(), id)));
        }
        chans.insert(id, Arc::new(Mutex::new(Chan::new(name(node.myid(), id), capacity, Holders::held_by(from)))));
    }

    /// One message, from a peer or from this process (`req` names it for
    /// CANCEL: the request id on its sender).
    #[allow(clippy::too_many_arguments)]
    fn handle(&self, node: &Arc<Node>, from: u32, op: u16, m: Msg, req: u64, payload: Vec<u8>, reply: ReplyTo) -> Result<()> {
        let me = node.myid();
        match op {
            op::CREATE => self.create(node, from, m.id, usize::try_from(m.arg).unwrap_or(UNBOUNDED)),
            op::PUT => self.with_chan(node, m.id, reply, |c, reply, out| {
                if !reply.expects_reply() && !c.is_open() {
                    node.log.warn(format!("a put without answer from process {from} into {} failed: it is closed", c.name));
                }
                // A put from a process that left is void (nobody waits for its answer).
                if live(node, from) {
                    c.put(Writer { from, req, item: payload, reply }, out)
                }
            }),
            op::TAKE | op::FETCH | op::WAIT => {
                let want = match op {
                    op::TAKE => Want::Take,
                    op::FETCH => Want::Fetch,
                    _ => Want::Wait,
                };
                self.with_chan(node, m.id, reply, |c, reply, out| {
                    // Never park a reader that is gone: it would swallow an element.
                    if live(node, from) {
                        c.get(Reader { from, req, want, reply }, out)
                    }
                })
            }
            op::QUERY => self.with_chan(node, m.id, reply, |c, reply, out| out.push(Answer(reply, Ok(c.state().to_bytes().to_vec())))),
            op::CLOSE => self.with_chan(node, m.id, reply, |c, reply, out| {
                let why = Error::at(ErrorKind::ChannelClosed, me, format!("{} was closed by process {from}", c.name));
                c.close(why, out);
                out.push(Answer(reply, Ok(Vec::new())));
            }),
            op::BIND => {
                let pid = u32::try_from(m.arg).unwrap_or(u32::MAX);
                self.with_chan(node, m.id, reply, |c, reply, out| {
                    // Checked under the channel's lock: a departure either
                    // happened before (the peer is gone now) or will find
                    // the pid bound.
                    if pid == me || live(node, pid) {
                        if pid != me && !c.bound.contains(&pid) {
                            c.bound.push(pid);
                        }
                        out.push(Answer(reply, Ok(Vec::new())));
                    } else {
                        let e = node.unknown_process(pid);
                        if e.kind == ErrorKind::ProcessExited {
                            // Bound to a process already gone: closed at once.
                            let why =
                                Error::at(ErrorKind::ChannelClosed, pid, format!("{} was closed: process {pid}, to which it was bound, has left", c.name));
                            c.close(why, out);
                            out.push(Answer(reply, Ok(Vec::new())));
                        } else {
                            out.push(Answer(reply, Err(e)));
                        }
                    }
                })
            }
            op::ADD_REF => self.with_chan(node, m.id, reply, |c, reply, out| {
                c.refs.add_transit();
                out.push(Answer(reply, Ok(Vec::new())));
            }),
            op::ADD_CLIENT => self.with_chan(node, m.id, reply, |c, _, _| {
                if live(node, from) {
                    c.refs.claim(from)
                }
            }),
            op::DEL_REF => self.with_chan(node, m.id, reply, |c, _, _| c.refs.release(from)),
            op::CANCEL => self.with_chan(node, m.id, reply, |c, _, out| {
                let why = Error::at(ErrorKind::Timeout, me, format!("timed out waiting on {} (the operation was withdrawn)", c.name));
                c.cancel(from, m.arg, why, out);
            }),
            op::UNTAKE => self.with_chan(node, m.id, reply, |c, _, out| c.untake(payload, out)),
            o => return Err(unknown_op("channel", o)),
        }
        Ok(())
    }

    /// A request of this process to a channel it owns: no message, a
    /// future completed by the answer.
    fn local_request(&self, node: &Arc<Node>, op: u16, m: Msg, payload: Vec<u8>) -> Result<Future> {
        node.check_open()?;
        let (f, slot) = node.local_future(node.myid());
        let req = slot.id;
        // A put here that answers another process's take goes out with the
        // caller's next request to it (an echo's `put!; take!`), in one write.
        crate::net::conn::lingering(|| self.handle(node, node.myid(), op, m, req, payload, ReplyTo::Local(slot)))?;
        Ok(f)
    }

    /// A one-way message of this process to channel `r`, wherever it is;
    /// never blocks.
    fn tell(&self, node: &Arc<Node>, r: ChannelRef, op: u16, arg: u64, payload: Vec<u8>) {
        let m = Msg { id: r.id, arg };
        if r.owner == node.myid() {
            let _ = self.handle(node, r.owner, op, m, 0, payload, ReplyTo::Nobody);
        } else {
            self.housekeeping.send(node, r.owner, op, wire::encode_meta(&m), payload);
        }
    }
}

impl Service for Channels {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "channel"
    }

    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        let m: Msg = msg.meta_as()?;
        let (from, op, req) = (msg.from, msg.op(), msg.header.id);
        self.handle(node, from, op, m, req, msg.payload, msg.reply)?;
        Ok(None)
    }

    /// A process left: its parked operations and references go, and the
    /// channels bound to it close.
    fn on_peer_left(&self, node: &Arc<Node>, pid: u32, how: Departure) {
        let all: Vec<(u64, Shared)> = self.chans.read().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut out = Vec::new();
        let mut freed = Vec::new();
        for (id, ch) in all {
            let mut c = ch.lock();
            if c.freed {
                continue;
            }
            if c.drop_process(pid, &mut out) {
                let how = if how.graceful { "left" } else { "died" };
                let why = Error::at(ErrorKind::ChannelClosed, pid, format!("{} was closed: process {pid}, to which it is bound, {how}", c.name));
                c.close(why, &mut out);
            }
            if Self::free_if_unreferenced(node, &mut c, &mut out) {
                freed.push(id);
            }
        }
        if !freed.is_empty() {
            let mut chans = self.chans.write();
            for id in freed {
                chans.remove(&id);
            }
        }
        deliver(node, out);
    }

    fn on_close(&self, node: &Node) {
        self.housekeeping.stop();
        let all: Vec<Shared> = self.chans.write().drain().map(|(_, v)| v).collect();
        let e = Error::new(ErrorKind::Shutdown, "the cluster was shut down");
        let mut out = Vec::new();
        for ch in all {
            let mut c = ch.lock();
            c.freed = true;
            c.fail_all(&e, &mut out);
        }
        deliver(node, out);
    }
}

/// Decodes a channel message exactly as the service does (for fuzzing).
#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8]) -> Result<()> {
    match op {
        op::CREATE..=op::UNTAKE => wire::decode_meta::<Msg>(meta).map(drop),
        o => Err(unknown_op("channel", o)),
    }
}

fn channels(node: &Node) -> Result<Arc<Channels>> {
    node.service::<Channels>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no channel service on this node"))
}

/// One reference to a channel, held by this process; released (DEL_REF)
/// when the last handle and future using it are dropped.
struct Held {
    node: Arc<Node>,
    svc: Arc<Channels>,
    r: ChannelRef,
}

impl Held {
    /// A future of `op` was dropped: a wait still parked on the owner is
    /// withdrawn, and an element a take got meanwhile goes back.
    fn abandoned(self: &Arc<Held>, op: u16, slot: &Arc<Slot>) {
        if slot.is_done() || !matches!(op, op::TAKE | op::FETCH | op::WAIT) {
            return;
        }
        self.svc.tell(&self.node, self.r, op::CANCEL, slot.id, Vec::new());
        if op == op::TAKE {
            let held = self.clone();
            slot.on_complete(move |r| {
                if let Ok(item) = r {
                    held.svc.tell(&held.node, held.r, op::UNTAKE, 0, item.clone());
                }
            });
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.svc.tell(&self.node, self.r, op::DEL_REF, 0, Vec::new());
    }
}

/// A channel as this process uses it: a handle holding one reference
/// (clones share it). Operations that can wait have an `_async` form
/// returning a `Future` at once; the blocking forms wait on it, and their
/// `_timeout` forms withdraw the operation when time runs out, so a
/// timed-out put never goes in and a timed-out take never loses an element.
#[derive(Clone)]
pub struct Channel(Arc<Held>);

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&name(self.0.r.owner, self.0.r.id))
    }
}

impl Channel {
    fn new(node: &Arc<Node>, svc: Arc<Channels>, r: ChannelRef) -> Channel {
        Channel(Arc::new(Held { node: node.clone(), svc, r }))
    }

    /// The process keeping the channel.
    pub fn owner(&self) -> u32 {
        self.0.r.owner
    }
    /// The channel's name (not a counted reference: see `export`).
    pub fn reference(&self) -> ChannelRef {
        self.0.r
    }
    pub fn node(&self) -> &Arc<Node> {
        &self.0.node
    }

    /// Sends `op` to the owner (or runs it here when this process is the
    /// owner); the future keeps this reference alive, and withdraws a
    /// wait when it is dropped unfinished.
    fn call(&self, op: u16, arg: u64, payload: &[u8]) -> Result<Future> {
        let h = &self.0;
        let m = Msg { id: h.r.id, arg };
        let f = if h.r.owner == h.node.myid() {
            h.svc.local_request(&h.node, op, m, payload.to_vec())?
        } else {
            h.node.request(h.r.owner, ID, op, &wire::encode_meta(&m), payload)?
        };
        let held = h.clone();
        let slot = f.slot.clone();
        Ok(f.on_drop(move || held.abandoned(op, &slot)))
    }

    /// Waits for `f`; after `timeout`, withdraws the operation and returns
    /// what the owner says: its outcome if it was served meanwhile, else
    /// Timeout.
    fn finish(&self, f: Future, timeout: Option<Duration>) -> Result<Future> {
        match f.wait(timeout) {
            Ok(()) => Ok(f),
            Err(e) if e.kind == ErrorKind::Timeout && !f.is_ready() => {
                self.0.svc.tell(&self.0.node, self.0.r, op::CANCEL, f.id(), Vec::new());
                f.wait(Some(CANCEL_WAIT))?;
                Ok(f)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts `data` (copied or sent before this returns); the future
    /// completes once it is in the channel. A dropped future does not
    /// withdraw the put. Into a channel kept here, the answer to another
    /// process's waiting take lingers for this thread's next message to it
    /// or its next wait (at most about a millisecond; `put` sends it before
    /// it returns).
    pub fn put_async(&self, data: &[u8]) -> Result<Future> {
        self.call(op::PUT, 0, data)
    }
    /// Puts `data`, waiting while the channel is full.
    pub fn put(&self, data: &[u8]) -> Result<()> {
        self.put_timeout(data, None)
    }
    /// `put`, giving up after `timeout` (Timeout: the element did not go in).
    pub fn put_timeout(&self, data: &[u8], timeout: Option<Duration>) -> Result<()> {
        let r = self.finish(self.put_async(data)?, timeout).map(drop);
        // A blocking put has answered a waiting taker once it returns (the
        // async form leaves the answer for this thread's next write there).
        crate::net::conn::flush_lingering();
        r
    }

    /// Puts `data` and asks for no answer (as `remote_do` is to
    /// `remotecall`): returns once it is written, never waits, even while
    /// the channel is full (the element then waits on the owner: no
    /// back-pressure). A failure (a closed channel) is only logged on the
    /// owner; one to reach the owner is returned.
    pub fn put_nowait(&self, data: &[u8]) -> Result<()> {
        let h = &self.0;
        let m = Msg { id: h.r.id, arg: 0 };
        if h.r.owner == h.node.myid() {
            h.node.check_open()?;
            h.svc.handle(&h.node, h.r.owner, op::PUT, m, 0, data.to_vec(), ReplyTo::Nobody)
        } else {
            h.node.send_oneway(h.r.owner, ID, op::PUT, &wire::encode_meta(&m), data)
        }
    }

    /// Takes the first element; the future's value is the element.
    pub fn take_async(&self) -> Result<Future> {
        self.call(op::TAKE, 0, &[])
    }
    /// Takes the first element, waiting while there is none; fails with
    /// ChannelClosed once the channel is closed and empty.
    pub fn take(&self) -> Result<Value> {
        self.take_timeout(None)
    }
    pub fn take_timeout(&self, timeout: Option<Duration>) -> Result<Value> {
        self.finish(self.take_async()?, timeout)?.value()
    }

    /// A copy of the first element, left in the channel.
    pub fn fetch_async(&self) -> Result<Future> {
        self.call(op::FETCH, 0, &[])
    }
    pub fn fetch(&self) -> Result<Value> {
        self.fetch_timeout(None)
    }
    pub fn fetch_timeout(&self, timeout: Option<Duration>) -> Result<Value> {
        self.finish(self.fetch_async()?, timeout)?.value()
    }

    /// Completes once an element is there (Julia's `wait(::Channel)`).
    pub fn wait_async(&self) -> Result<Future> {
        self.call(op::WAIT, 0, &[])
    }
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        self.finish(self.wait_async()?, timeout).map(drop)
    }

    /// The channel's state; the future's value is `ChannelState::to_bytes`.
    pub fn state_async(&self) -> Result<Future> {
        self.call(op::QUERY, 0, &[])
    }
    pub fn state(&self) -> Result<ChannelState> {
        let f = self.state_async()?;
        let v = f.fetch(None)?;
        ChannelState::from_bytes(v).ok_or_else(|| Error::at(ErrorKind::Protocol, self.owner(), "malformed channel state"))
    }
    /// An element is there (a take would not wait).
    pub fn is_ready(&self) -> Result<bool> {
        Ok(self.state()?.is_ready())
    }
    /// No element is there; never takes one.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.state()?.is_empty())
    }
    pub fn is_open(&self) -> Result<bool> {
        Ok(self.state()?.open)
    }

    /// Closes the channel: waiting puts fail, waiting takes fail once it is
    /// empty, later puts fail; what is buffered can still be taken.
    pub fn close_async(&self) -> Result<Future> {
        self.call(op::CLOSE, 0, &[])
    }
    pub fn close(&self) -> Result<()> {
        self.close_async()?.wait(None)
    }

    /// Ties the channel to process `pid`: it closes when `pid` leaves
    /// (at once if it already has).
    pub fn bind_async(&self, pid: u32) -> Result<Future> {
        self.call(op::BIND, pid as u64, &[])
    }
    pub fn bind(&self, pid: u32) -> Result<()> {
        self.bind_async(pid)?.wait(None)
    }

    /// `export` as a future, at once: its value is the reference's 12
    /// bytes (`ChannelRef::to_bytes`). Only a process other than the owner
    /// needs the round trip (ADD_REF) that makes `export` wait.
    pub fn export_async(&self) -> Result<Future> {
        let node = &self.0.node;
        let ack = self.call(op::ADD_REF, 0, &[])?;
        let (f, p) = node.promise(self.owner());
        let bytes = self.0.r.to_bytes().to_vec();
        ack.on_complete(move |r| {
            p.complete(r.as_ref().map(|_| bytes).map_err(|e| e.clone()));
        });
        Ok(f.keeping(ack))
    }
    /// A reference for another process to import (`import_channel`) once:
    /// the owner keeps the channel until every exported reference has been
    /// imported and released.
    pub fn export(&self) -> Result<ChannelRef> {
        self.export_async()?.wait(Some(CANCEL_WAIT))?;
        Ok(self.0.r)
    }

    /// Takes elements until the channel is closed and empty (Julia's
    /// `for x in channel`); another failure is the last item.
    pub fn iter(&self) -> Iter<'_> {
        Iter { ch: self, done: false }
    }
}

/// See `Channel::iter`.
pub struct Iter<'a> {
    ch: &'a Channel,
    done: bool,
}

impl Iterator for Iter<'_> {
    type Item = Result<Value>;
    fn next(&mut self) -> Option<Result<Value>> {
        if self.done {
            return None;
        }
        match self.ch.take() {
            Ok(v) => Some(Ok(v)),
            Err(e) => {
                self.done = true;
                (e.kind != ErrorKind::ChannelClosed).then_some(Err(e))
            }
        }
    }
}

/// Channels, on any node with the channel service.
pub trait ChannelExt {
    /// A new channel kept by process `pid` (0: this one) with room for
    /// `capacity` elements (`UNBOUNDED`: no limit; 0: unbuffered, a put
    /// waits for a taker). Returns at once: the owner is told on the
    /// connection every later request of this process goes on.
    fn channel(&self, pid: u32, capacity: usize) -> Result<Channel>;
    /// A reference made by `Channel::export`, here or in another process.
    fn import_channel(&self, r: ChannelRef) -> Result<Channel>;
    /// Channels this process keeps.
    fn owned_channels(&self) -> usize;
}

impl ChannelExt for Arc<Node> {
    fn channel(&self, pid: u32, capacity: usize) -> Result<Channel> {
        self.check_open()?;
        let svc = channels(self)?;
        let me = self.myid();
        let pid = if pid == 0 { me } else { pid };
        let seq = svc.next.fetch_add(1, Ordering::Relaxed) & ((1 << CREATOR_SHIFT) - 1);
        let id = ((me as u64) << CREATOR_SHIFT) | seq;
        let cap = if capacity == UNBOUNDED { u64::MAX } else { capacity as u64 };
        if pid == me {
            svc.create(self, me, id, capacity);
        } else {
            self.send_oneway(pid, ID, op::CREATE, &wire::encode_meta(&Msg { id, arg: cap }), &[])?;
        }
        Ok(Channel::new(self, svc, ChannelRef { owner: pid, id }))
    }

    fn import_channel(&self, r: ChannelRef) -> Result<Channel> {
        self.check_open()?;
        let svc = channels(self)?;
        if r.owner == self.myid() {
            let ch = svc.get(r.id).ok_or_else(|| unknown(self, r.id))?;
            let mut c = ch.lock();
            if c.freed {
                return Err(unknown(self, r.id));
            }
            c.refs.claim(r.owner);
        } else {
            if self.peer(r.owner).is_none() {
                return Err(self.unknown_process(r.owner));
            }
            svc.housekeeping.send(self, r.owner, op::ADD_CLIENT, wire::encode_meta(&Msg { id: r.id, arg: 0 }), Vec::new());
        }
        Ok(Channel::new(self, svc, r))
    }

    fn owned_channels(&self) -> usize {
        channels(self).map(|c| c.owned_count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    //! The service alone, without sockets: messages from made-up peers
    //! handed to it with `Incoming::test`, answers captured; this
    //! process's own channels through the public API.
    use super::*;
    use crate::node::{peer_state, Config};
    use crate::wire::{Header, Kind};

    type Out = Arc<Mutex<Vec<Result<Vec<u8>>>>>;

    fn node() -> (Arc<Node>, Arc<Channels>) {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        let c = Channels::new();
        n.install(c.clone()).unwrap();
        n.start().unwrap();
        for p in 5..=9 {
            n.add_peer(p, peer_state::READY);
        }
        (n, c)
    }

    fn is_request(op: u16) -> bool {
        !matches!(op, op::CREATE | op::ADD_CLIENT | op::DEL_REF | op::CANCEL | op::UNTAKE)
    }

    /// Process `from` sends `op` (request id `req`) about channel `id`.
    #[allow(clippy::too_many_arguments)]
    fn send(n: &Arc<Node>, c: &Channels, from: u32, op: u16, id: u64, arg: u64, req: u64, payload: &[u8], out: &Out) {
        let kind = if is_request(op) { Kind::Request } else { Kind::Oneway };
        let msg = Incoming::test(from, Header::new(kind, ID, op, req), wire::encode_meta(&Msg { id, arg }), payload.to_vec(), out);
        assert!(c.on_message(n, msg).unwrap().is_none());
    }

    fn pop(out: &Out) -> Result<Vec<u8>> {
        out.lock().pop().expect("an answer")
    }

    fn leave(n: &Arc<Node>, c: &Channels, pid: u32) {
        n.peer(pid).unwrap().state.store(3, Ordering::Release);
        c.on_peer_left(n, pid, Departure { graceful: false, was_ready: true });
    }

    #[test]
    fn a_channel_created_by_a_peer_serves_it_and_is_freed_with_its_last_reference() {
        let (n, c) = node();
        let out: Out = Arc::default();
        let id = (5u64 << CREATOR_SHIFT) | 1;
        send(&n, &c, 5, op::CREATE, id, 2, 0, &[], &out);
        assert_eq!(c.owned_count(), 1);
        // Another process's id is refused.
        send(&n, &c, 6, op::CREATE, id + 1, 2, 0, &[], &out);
        assert_eq!(c.owned_count(), 1);
        send(&n, &c, 5, op::PUT, id, 0, 1, b"a", &out);
        assert_eq!(pop(&out).unwrap(), b"");
        send(&n, &c, 5, op::QUERY, id, 0, 2, &[], &out);
        assert_eq!(ChannelState::from_bytes(&pop(&out).unwrap()).unwrap(), ChannelState { n_avail: 1, capacity: 2, open: true });
        // 5 exports it to 6 (in flight), releases its own: still kept.
        send(&n, &c, 5, op::ADD_REF, id, 0, 3, &[], &out);
        assert!(pop(&out).is_ok());
        send(&n, &c, 5, op::DEL_REF, id, 0, 0, &[], &out);
        assert_eq!(c.owned_count(), 1, "a reference is in flight");
        send(&n, &c, 6, op::ADD_CLIENT, id, 0, 0, &[], &out);
        send(&n, &c, 6, op::TAKE, id, 0, 4, &[], &out);
        assert_eq!(pop(&out).unwrap(), b"a");
        send(&n, &c, 6, op::DEL_REF, id, 0, 0, &[], &out);
        assert_eq!(c.owned_count(), 0, "freed with its last reference");
        send(&n, &c, 6, op::TAKE, id, 0, 5, &[], &out);
        assert!(pop(&out).unwrap_err().message.contains("freed, or never created"));
        n.close();
    }

    #[test]
    fn a_reader_that_leaves_never_gets_an_element_and_its_references_go() {
        let (n, c) = node();
        let out: Out = Arc::default();
        let id = (5u64 << CREATOR_SHIFT) | 1;
        send(&n, &c, 5, op::CREATE, id, 1, 0, &[], &out);
        send(&n, &c, 5, op::ADD_REF, id, 0, 1, &[], &out);
        pop(&out).unwrap();
        send(&n, &c, 7, op::ADD_CLIENT, id, 0, 0, &[], &out);
        send(&n, &c, 7, op::TAKE, id, 0, 2, &[], &out);
        assert!(out.lock().is_empty(), "parked");
        leave(&n, &c, 7);
        assert_eq!(c.owned_count(), 1, "5 still holds it");
        send(&n, &c, 5, op::PUT, id, 0, 3, b"x", &out);
        assert_eq!(pop(&out).unwrap(), b"");
        assert!(out.lock().is_empty(), "the element went to nobody");
        // A request from a process that left is never parked either.
        send(&n, &c, 7, op::TAKE, id, 0, 4, &[], &out);
        send(&n, &c, 5, op::TAKE, id, 0, 5, &[], &out);
        assert_eq!(pop(&out).unwrap(), b"x");
        leave(&n, &c, 5);
        assert_eq!(c.owned_count(), 0, "its last holder died");
        n.close();
    }

    #[test]
    fn a_bound_channel_closes_when_its_process_leaves() {
        let (n, c) = node();
        let out: Out = Arc::default();
        let id = (5u64 << CREATOR_SHIFT) | 1;
        send(&n, &c, 5, op::CREATE, id, 4, 0, &[], &out);
        send(&n, &c, 5, op::BIND, id, 8, 1, &[], &out);
        assert!(pop(&out).is_ok());
        send(&n, &c, 8, op::PUT, id, 0, 2, b"last", &out);
        pop(&out).unwrap();
        send(&n, &c, 5, op::TAKE, id, 0, 3, &[], &out);
        assert_eq!(pop(&out).unwrap(), b"last");
        send(&n, &c, 5, op::TAKE, id, 0, 4, &[], &out);
        assert!(out.lock().is_empty());
        leave(&n, &c, 8);
        let e = pop(&out).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ChannelClosed);
        assert_eq!(e.pid, 8);
        assert!(e.message.contains("process 8, to which it is bound, died"), "{e}");
        // Bound to a process already gone: closed at once; to one that never was: an error.
        let id2 = id + 1;
        send(&n, &c, 5, op::CREATE, id2, 1, 0, &[], &out);
        send(&n, &c, 5, op::BIND, id2, 8, 5, &[], &out);
        assert!(pop(&out).is_ok());
        send(&n, &c, 5, op::QUERY, id2, 0, 6, &[], &out);
        assert!(!ChannelState::from_bytes(&pop(&out).unwrap()).unwrap().open);
        send(&n, &c, 5, op::BIND, id2, 77, 7, &[], &out);
        assert_eq!(pop(&out).unwrap_err().kind, ErrorKind::NoSuchProcess);
        n.close();
    }

    #[test]
    fn a_withdrawn_take_is_answered_and_a_given_back_element_comes_first() {
        let (n, c) = node();
        let out: Out = Arc::default();
        let id = (5u64 << CREATOR_SHIFT) | 1;
        send(&n, &c, 5, op::CREATE, id, 1, 0, &[], &out);
        send(&n, &c, 5, op::TAKE, id, 0, 9, &[], &out);
        send(&n, &c, 5, op::CANCEL, id, 9, 0, &[], &out);
        assert_eq!(pop(&out).unwrap_err().kind, ErrorKind::Timeout, "the parked take is answered");
        send(&n, &c, 5, op::PUT, id, 0, 10, b"b", &out);
        pop(&out).unwrap();
        send(&n, &c, 5, op::UNTAKE, id, 0, 0, b"a", &out);
        send(&n, &c, 5, op::TAKE, id, 0, 11, &[], &out);
        assert_eq!(pop(&out).unwrap(), b"a");
        send(&n, &c, 5, op::TAKE, id, 0, 12, &[], &out);
        assert_eq!(pop(&out).unwrap(), b"b");
        n.close();
    }

    #[test]
    fn own_channels_through_the_api() {
        let (n, c) = node();
        let ch = n.channel(0, 1).unwrap();
        assert_eq!(ch.owner(), 1);
        assert_eq!(ch.reference().id >> CREATOR_SHIFT, 1);
        ch.put(b"1").unwrap();
        assert_eq!(ch.put_timeout(b"2", Some(Duration::from_millis(20))).unwrap_err().kind, ErrorKind::Timeout);
        assert_eq!(ch.state().unwrap().n_avail, 1, "the timed-out put did not go in");
        // A put waiting while full goes in once a take makes room.
        let p = ch.put_async(b"2").unwrap();
        assert!(!p.is_ready());
        assert_eq!(&*ch.take().unwrap(), b"1");
        assert!(p.is_ready());
        drop(p); // a future holds the channel as a handle does
        assert_eq!(&*ch.fetch().unwrap(), b"2");
        assert!(ch.is_ready().unwrap() && !ch.is_empty().unwrap());
        assert_eq!(&*ch.take().unwrap(), b"2");
        assert_eq!(ch.take_timeout(Some(Duration::from_millis(20))).unwrap_err().kind, ErrorKind::Timeout);
        // A take future dropped unfinished does not swallow the next element.
        let t = ch.take_async().unwrap();
        drop(t);
        ch.put(b"3").unwrap();
        assert_eq!(&*ch.take().unwrap(), b"3");
        // A put without answer goes in, or waits on the owner while full.
        ch.put_nowait(b"n1").unwrap();
        ch.put_nowait(b"n2").unwrap();
        assert_eq!(&*ch.take().unwrap(), b"n1");
        assert_eq!(&*ch.take().unwrap(), b"n2");
        // A reference imported at home holds it too.
        let r = ch.export().unwrap();
        let again = n.import_channel(r).unwrap();
        drop(ch);
        assert_eq!(c.owned_count(), 1);
        again.put(b"4").unwrap();
        again.close().unwrap();
        assert!(!again.is_open().unwrap());
        assert_eq!(again.put(b"5").unwrap_err().kind, ErrorKind::ChannelClosed);
        let got: Vec<Vec<u8>> = again.iter().map(|v| v.unwrap().to_vec()).collect();
        assert_eq!(got, vec![b"4".to_vec()], "iteration takes what was buffered, then ends");
        drop(again);
        assert_eq!(c.owned_count(), 0);
        // Unbounded.
        let u = n.channel(0, UNBOUNDED).unwrap();
        for i in 0..100u32 {
            u.put(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(u.state().unwrap(), ChannelState { n_avail: 100, capacity: UNBOUNDED, open: true });
        // Closing the node fails what waits.
        let w = u.take_async().unwrap();
        for _ in 0..99 {
            u.take().unwrap();
        }
        let w2 = u.take_async().unwrap();
        drop(w);
        n.close();
        assert_eq!(w2.wait(Some(Duration::from_secs(1))).unwrap_err().kind, ErrorKind::Shutdown);
    }

    #[test]
    fn malformed_and_unknown_messages_are_errors() {
        let (n, c) = node();
        let out: Out = Arc::default();
        let bad = Incoming::test(5, Header::new(Kind::Oneway, ID, op::DEL_REF, 0), vec![0xff; 3], Vec::new(), &out);
        assert!(c.on_message(&n, bad).is_err());
        let unknown = Incoming::test(5, Header::new(Kind::Oneway, ID, 99, 0), wire::encode_meta(&Msg { id: 1, arg: 0 }), Vec::new(), &out);
        assert!(c.on_message(&n, unknown).is_err());
        assert!(decode(op::PUT, &wire::encode_meta(&Msg { id: 1, arg: 2 })).is_ok());
        assert!(decode(0, &[]).is_err());
        n.close();
    }
}
