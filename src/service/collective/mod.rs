//! Collectives over a process set: all-gather (ClusterUtils' `swapmsgs`,
//! MPI's `MPI_Allgather`). Every participant gives a byte string; each
//! ends with everyone's.
//!
//! **Matching.** A call is known by its set (a hash of the sorted ids),
//! the caller's tag and a sequence number: the k-th call with a (set,
//! tag) on one process meets the k-th on the others, as MPI orders the
//! collectives of a communicator. Messages that come before the local
//! call wait for it.
//!
//! **Algorithms**, as MPI chooses them (rank = place in the sorted set,
//! n = its size): blocks under `RING_MIN_BLOCK` use recursive doubling
//! when n is a power of two (log2 n rounds, each an exchange with rank
//! XOR 2^k of everything held) and Bruck's otherwise (ceil(log2 n)
//! rounds: round k sends the first min(2^k, n - 2^k) blocks held to
//! rank minus 2^k and receives as many from rank plus 2^k); larger blocks use the ring
//! (n - 1 rounds, each passing one block to the next rank), which only
//! ever talks to neighbours. Each round is one message to one process and
//! one from another; a round's message is sent once the previous round's
//! has arrived. Everything runs on the thread a message arrives on: no
//! thread waits.
//!
//! **Blocks of any sizes.** Participants whose blocks straddle the ring
//! threshold start with different algorithms. The first message of another
//! algorithm a participant gets shows it: the call runs again, round the
//! ring, on every participant (`Calls::data` says how each learns of it),
//! within the same call: no participant ends the first run, so none can
//! end the call another way than the others. (Failing it everywhere for
//! the callers to run again hung whenever one participant did not see
//! that failure: the others' second call never met it.)
//!
//! **Failure.** A participant that leaves fails the call on every other,
//! naming it (membership tells each of them); a timeout names a process
//! not heard from. A message that breaks the protocol fails the call on
//! every participant (ABORT).
//!
//! **Protocol** (service 10, one-way):
//!
//! | op    | meta                   | payload                          |
//! |-------|------------------------|----------------------------------|
//! | DATA  | `Round` (key, round, algorithm, rerun) | blocks, parts layout |
//! | ABORT | `Round`                | why (UTF-8)                      |

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Departure, Future, Incoming, Node, Promise, Service, Topology};
use crate::wire::{self, parts, ServiceId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub const ID: ServiceId = 10;

#[doc(hidden)]
pub mod op {
    pub const DATA: u16 = 1;
    pub const ABORT: u16 = 2;
}

/// Blocks of at least this size go round the ring.
pub const RING_MIN_BLOCK: usize = 64 * 1024;

/// How an all-gather runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    RecursiveDoubling,
    Bruck,
    Ring,
}

impl Algorithm {
    /// MPI's choice for `n` processes and blocks of `block` bytes.
    pub fn choose(n: usize, block: usize) -> Algorithm {
        if block >= RING_MIN_BLOCK && n > 2 {
            Algorithm::Ring
        } else if n.is_power_of_two() {
            Algorithm::RecursiveDoubling
        } else {
            Algorithm::Bruck
        }
    }

    fn rounds(self, n: usize) -> u32 {
        match self {
            Algorithm::Ring => n as u32 - 1,
            _ => n.next_power_of_two().trailing_zeros(),
        }
    }

    /// Round `k` for rank `r` of `n`: where it sends, which ranks' blocks,
    /// and from where it receives.
    fn round(self, n: usize, r: usize, k: u32) -> (usize, Vec<usize>, usize) {
        match self {
            Algorithm::RecursiveDoubling => {
                let d = 1usize << k;
                let base = r & !(d - 1);
                (r ^ d, (base..base + d).collect(), r ^ d)
            }
            Algorithm::Bruck => {
                let d = 1usize << k;
                let count = d.min(n - d);
                ((r + n - d) % n, (0..count).map(|j| (r + j) % n).collect(), (r + d) % n)
            }
            Algorithm::Ring => {
                let k = k as usize;
                ((r + 1) % n, vec![(r + n - k) % n], (r + n - 1) % n)
            }
        }
    }
}

/// What names one all-gather on every participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    pub tag: u64,
    pub set: u64,
    pub seq: u64,
}

#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub struct Round {
    pub key: Key,
    pub round: u32,
    pub algorithm: Algorithm,
    /// The call's second run, round the ring (its blocks straddle the
    /// ring threshold).
    pub rerun: bool,
}

/// A deterministic hash of a sorted set (the same in every process and run).
fn set_hash(sorted: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in sorted {
        for b in p.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A call this process has made.
struct Running {
    ranks: Vec<u32>,
    me: usize,
    /// The caller's order, for the result.
    order: Vec<u32>,
    algorithm: Algorithm,
    /// The round whose message is awaited.
    round: u32,
    blocks: Vec<Option<Vec<u8>>>,
    promise: Option<Promise>,
    /// The process whose message the current round awaits (0 once done):
    /// a waiter reads its connection (`Future::following`).
    next: Arc<AtomicU32>,
    /// When it times out, and the timeout asked for.
    deadline: Option<(Instant, Duration)>,
}

impl Running {
    fn expect_next(&self) {
        let n = self.ranks.len();
        let pid = if self.round < self.algorithm.rounds(n) { self.ranks[self.algorithm.round(n, self.me, self.round).2] } else { 0 };
        self.next.store(pid, Ordering::Release);
    }
}

#[derive(Default)]
struct Instance {
    running: Option<Running>,
    /// Messages of the current run that came before they were needed, by
    /// round: sender, algorithm, blocks. All of one algorithm: a message
    /// of another one starts the rerun, which drops them.
    early: BTreeMap<u32, (u32, Algorithm, Vec<u8>)>,
    /// The call runs again round the ring (set once, never cleared): two
    /// algorithms met, here or (a rerun's message says so) elsewhere.
    rerun: bool,
    /// Another participant aborted it before this process called.
    aborted: Option<Error>,
}

/// A message to send: to, op, meta, payload.
type Outgoing = (u32, u16, Vec<u8>, Vec<u8>);
/// A call that ended: its promise and outcome.
type Ended = Option<(Promise, Result<Vec<u8>>)>;

/// This process's calls and the messages for them, under one lock.
#[derive(Default)]
struct Calls {
    by_key: HashMap<Key, Instance>,
    /// The next sequence number of each (tag, set) this process used: a
    /// message for an earlier one without an instance is for a call that
    /// ended here (a first run's, sent before its sender heard of the
    /// rerun), and is dropped rather than kept for ever.
    seqs: HashMap<(u64, u64), u64>,
}

#[derive(Default)]
pub struct Collectives {
    calls: Mutex<Calls>,
    /// A sweep for timed-out calls is scheduled: one timer for all calls,
    /// not one per call (a hot loop of calls with long timeouts would
    /// pile up entries until they fire).
    sweeping: AtomicBool,
    /// This machine's cores, read once (std reads cgroup files for it).
    cores: usize,
}

/// How often running calls with a timeout are checked.
const SWEEP: Duration = Duration::from_millis(20);

impl Collectives {
    pub fn new() -> Arc<Collectives> {
        Arc::new(Collectives { cores: std::thread::available_parallelism().map_or(1, |c| c.get()), ..Collectives::default() })
    }

    /// Calls in progress or awaited (messages waiting for a local call).
    pub fn in_progress(&self) -> usize {
        self.calls.lock().by_key.len()
    }

    /// Moves the call `key` as far as its messages allow; what to send and
    /// the outcome, if it ended, are returned to act on without the lock.
    fn advance(inst: &mut Instance, key: Key) -> (Vec<Outgoing>, Ended) {
        let mut sends = Vec::new();
        let rerun = inst.rerun;
        let Some(run) = inst.running.as_mut() else { return (sends, None) };
        let n = run.ranks.len();
        let total = run.algorithm.rounds(n);
        loop {
            if run.round == total {
                let mut out = Vec::with_capacity(run.blocks.iter().map(|b| 12 + b.as_ref().map_or(0, Vec::len)).sum());
                for p in &run.order {
                    let r = run.ranks.binary_search(p).expect("a participant");
                    parts::push_part(&mut out, *p, run.blocks[r].as_deref().unwrap_or_default());
                }
                return (sends, run.promise.take().map(|p| (p, Ok(out))));
            }
            let Some((from, algorithm, payload)) = inst.early.remove(&run.round) else { break };
            let (_, _, expect_from) = run.algorithm.round(n, run.me, run.round);
            let failure = if algorithm != run.algorithm {
                Some(Error::at(ErrorKind::Protocol, from, format!("round {} came as {algorithm:?}, not {:?}", run.round, run.algorithm)))
            } else if from != run.ranks[expect_from] {
                Some(Error::at(
                    ErrorKind::Protocol,
                    from,
                    format!("round {} came from process {from}, not {}: the participants disagree on the set", run.round, run.ranks[expect_from]),
                ))
            } else {
                Self::merge(run, &payload).err()
            };
            if let Some(e) = failure {
                sends.extend(abort_all(run, key, &e));
                return (sends, run.promise.take().map(|p| (p, Err(e))));
            }
            run.round += 1;
            run.expect_next();
            if run.round < total {
                sends.push(Self::send_round(run, key, rerun));
            }
        }
        (sends, None)
    }

    fn merge(run: &mut Running, payload: &[u8]) -> Result<()> {
        for (pid, b) in parts::decode_parts(payload)? {
            let r = run.ranks.binary_search(&pid).map_err(|_| Error::at(ErrorKind::Protocol, pid, format!("a block from process {pid}, not a participant")))?;
            run.blocks[r] = Some(b.to_vec());
        }
        Ok(())
    }

    fn send_round(run: &Running, key: Key, rerun: bool) -> Outgoing {
        let (to, ranks, _) = run.algorithm.round(run.ranks.len(), run.me, run.round);
        let mut payload = Vec::new();
        for r in ranks {
            if let Some(b) = &run.blocks[r] {
                parts::push_part(&mut payload, run.ranks[r], b);
            }
        }
        let meta = wire::encode_meta(&Round { key, round: run.round, algorithm: run.algorithm, rerun });
        (run.ranks[to], op::DATA, meta, payload)
    }

    /// Fails call `key` here (if it is still running) with `e`.
    fn fail(&self, key: Key, e: Error) {
        let done = {
            let mut calls = self.calls.lock();
            let p = calls.by_key.get_mut(&key).and_then(|i| i.running.as_mut()).and_then(|r| r.promise.take());
            if p.is_some() {
                calls.by_key.remove(&key);
            }
            p
        };
        if let Some(p) = done {
            p.complete(Err(e));
        }
    }

    fn act(&self, node: &Arc<Node>, key: Key, sends: Vec<Outgoing>, outcome: Ended) {
        if let Some((p, r)) = outcome {
            p.complete(r);
        }
        for (to, op, meta, payload) in sends {
            if let Err(e) = node.send_oneway_now(to, ID, op, &meta, &payload) {
                // The participant is gone or unreachable: membership fails
                // the call when it leaves; a send that fails otherwise
                // fails it now.
                if op == op::DATA {
                    self.fail(key, e);
                }
            }
        }
    }
}

impl Calls {
    /// The instance of call `key` for a message about it; None when that
    /// call ended here.
    fn instance(&mut self, key: Key) -> Option<&mut Instance> {
        let ended = !self.by_key.contains_key(&key) && self.seqs.get(&(key.tag, key.set)).is_some_and(|&next| key.seq < next);
        (!ended).then(|| self.by_key.entry(key).or_default())
    }

    /// Forgets call `key` once it ended.
    fn ended(&mut self, key: Key, outcome: &Ended) {
        if outcome.is_some() {
            self.by_key.remove(&key);
        }
    }

    /// Starts this process's next call with (tag, set): its key, what to
    /// send and the outcome if it ended at once.
    fn call(&mut self, tag: u64, set: u64, mut run: Running) -> (Key, Vec<Outgoing>, Ended) {
        let next = self.seqs.entry((tag, set)).or_insert(0);
        let key = Key { tag, set, seq: *next };
        *next += 1;
        let inst = self.by_key.entry(key).or_default();
        if let Some(e) = inst.aborted.take() {
            self.by_key.remove(&key);
            return (key, Vec::new(), run.promise.take().map(|p| (p, Err(e))));
        }
        if !inst.rerun && inst.early.values().any(|(_, a, _)| *a != run.algorithm) {
            inst.rerun = true;
            inst.early.clear();
        }
        if inst.rerun {
            run.algorithm = Algorithm::Ring;
        }
        run.expect_next();
        let first = (run.algorithm.rounds(run.ranks.len()) > 0).then(|| Collectives::send_round(&run, key, inst.rerun));
        inst.running = Some(run);
        let (mut sends, outcome) = Collectives::advance(inst, key);
        sends.splice(0..0, first);
        self.ended(key, &outcome);
        (key, sends, outcome)
    }

    /// A round's message from `from`.
    ///
    /// Participants whose blocks straddle the ring threshold start with
    /// different algorithms. A message of an algorithm other than this
    /// call's (or of the rerun) shows it: the call runs again round the
    /// ring, from its own block, and tells the next rank with its round 0.
    /// Every one learns of it so (at worst round the ring), as none can end
    /// the first run: every block has to cross from one algorithm to the
    /// other to reach everyone, and no message of one is taken by the
    /// other. First-run messages that come later are dropped.
    fn data(&mut self, from: u32, r: &Round, payload: Vec<u8>) -> Result<(Vec<Outgoing>, Ended)> {
        let Some(inst) = self.instance(r.key) else { return Ok((Vec::new(), None)) };
        let mut sends = Vec::new();
        if !inst.rerun {
            let ours = inst.running.as_ref().map(|run| run.algorithm).or_else(|| inst.early.values().next().map(|(_, a, _)| *a));
            if r.rerun || ours.is_some_and(|a| a != r.algorithm) {
                inst.rerun = true;
                inst.early.clear();
                if let Some(run) = inst.running.as_mut() {
                    run.algorithm = Algorithm::Ring;
                    run.round = 0;
                    for (i, b) in run.blocks.iter_mut().enumerate() {
                        if i != run.me {
                            *b = None;
                        }
                    }
                    run.expect_next();
                    sends.push(Collectives::send_round(run, r.key, true));
                }
            }
        }
        if r.rerun == inst.rerun {
            if inst.early.insert(r.round, (from, r.algorithm, payload)).is_some() {
                return Err(Error::at(ErrorKind::Protocol, from, format!("round {} of an all-gather twice", r.round)));
            }
            let (more, outcome) = Collectives::advance(inst, r.key);
            sends.extend(more);
            self.ended(r.key, &outcome);
            return Ok((sends, outcome));
        }
        Ok((sends, None))
    }

    /// Another participant aborted call `key` with `e`.
    fn abort(&mut self, key: Key, e: Error) -> Ended {
        let inst = self.instance(key)?;
        match inst.running.as_mut() {
            None => {
                inst.aborted = Some(e);
                None
            }
            Some(run) => {
                let outcome = run.promise.take().map(|p| (p, Err(e)));
                self.by_key.remove(&key);
                outcome
            }
        }
    }
}

fn abort_all(run: &Running, key: Key, e: &Error) -> Vec<Outgoing> {
    let me = run.ranks[run.me];
    let meta = wire::encode_meta(&Round { key, round: 0, algorithm: run.algorithm, rerun: false });
    run.ranks.iter().filter(|&&p| p != me).map(|&p| (p, op::ABORT, meta.clone(), e.message.clone().into_bytes())).collect()
}

#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8]) -> Result<()> {
    match op {
        op::DATA | op::ABORT => wire::decode_meta::<Round>(meta).map(|_| ()),
        o => Err(unknown_op("collective", o)),
    }
}

impl Service for Collectives {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "collective"
    }
    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        let r: Round = wire::decode_meta(&msg.meta)?;
        match msg.op() {
            op::DATA => {
                let (sends, outcome) = self.calls.lock().data(msg.from, &r, msg.payload)?;
                self.act(node, r.key, sends, outcome);
            }
            op::ABORT => {
                let why = String::from_utf8_lossy(&msg.payload).into_owned();
                let e = Error::at(ErrorKind::Protocol, msg.from, format!("process {} aborted the all-gather: {why}", msg.from));
                let outcome = self.calls.lock().abort(r.key, e);
                self.act(node, r.key, Vec::new(), outcome);
            }
            o => return Err(unknown_op("collective", o)),
        }
        Ok(None)
    }

    fn on_peer_left(&self, _node: &Arc<Node>, pid: u32, how: Departure) {
        let failed: Vec<Promise> = {
            let mut calls = self.calls.lock();
            let mut out = Vec::new();
            calls.by_key.retain(|_, inst| match inst.running.as_mut() {
                Some(run) if run.ranks.binary_search(&pid).is_ok() => {
                    out.extend(run.promise.take());
                    false
                }
                Some(_) => true,
                // Messages waiting for a call: the call will see the
                // participant gone; what came from it is dropped.
                None => {
                    inst.early.retain(|_, (from, _, _)| *from != pid);
                    !inst.early.is_empty() || inst.rerun || inst.aborted.is_some()
                }
            });
            out
        };
        let what = if how.graceful { "left" } else { "died" };
        for p in failed {
            p.complete(Err(Error::at(ErrorKind::ProcessExited, pid, format!("process {pid} {what} during the all-gather"))));
        }
    }

    fn on_close(&self, _node: &Node) {
        let failed: Vec<Promise> = self.calls.lock().by_key.drain().filter_map(|(_, mut i)| i.running.as_mut().and_then(|r| r.promise.take())).collect();
        for p in failed {
            p.complete(Err(Error::new(ErrorKind::Shutdown, "the cluster closed during the all-gather")));
        }
    }
}

/// Schedules a sweep: calls past their deadline fail with Timeout naming a
/// process not heard from; another sweep follows while any call has one.
fn sweep_later(node: &Arc<Node>, svc: &Arc<Collectives>) {
    let (weak_node, weak_svc): (Weak<Node>, Weak<Collectives>) = (Arc::downgrade(node), Arc::downgrade(svc));
    node.after(SWEEP, move || {
        let (Some(node), Some(svc)) = (weak_node.upgrade(), weak_svc.upgrade()) else { return };
        let now = Instant::now();
        let (expired, more) = {
            let calls = svc.calls.lock();
            let mut expired = Vec::new();
            let mut more = false;
            for (key, inst) in calls.by_key.iter() {
                let Some(r) = inst.running.as_ref() else { continue };
                let Some((at, t)) = r.deadline else { continue };
                if at <= now {
                    let (_, _, from) = r.algorithm.round(r.ranks.len(), r.me, r.round);
                    expired.push((*key, r.ranks[from], r.round, t));
                } else {
                    more = true;
                }
            }
            (expired, more)
        };
        for (key, pid, round, t) in expired {
            svc.fail(key, Error::at(ErrorKind::Timeout, pid, format!("all-gather timed out after {t:?} waiting for process {pid} (round {round})")));
        }
        if more {
            sweep_later(&node, &svc);
            return;
        }
        svc.sweeping.store(false, Ordering::Release);
        // A call armed between the scan and now found a sweep scheduled.
        let armed = svc.calls.lock().by_key.values().any(|i| i.running.as_ref().is_some_and(|r| r.deadline.is_some()));
        if armed && !svc.sweeping.swap(true, Ordering::AcqRel) {
            sweep_later(&node, &svc);
        }
    });
}

fn collectives(node: &Node) -> Result<Arc<Collectives>> {
    node.service::<Collectives>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no collective service on this node"))
}

/// Collectives, on any node with the service.
pub trait CollectiveExt {
    /// All-gather over `pids` (which holds this process; the same set on
    /// every participant, in any order): everyone's `data`, in the order
    /// of `pids`.
    fn allgather(&self, pids: &[u32], tag: u64, data: &[u8], timeout: Option<Duration>) -> Result<Vec<(u32, Vec<u8>)>>;
    /// `allgather` as a future, its value in the parts layout.
    fn allgather_async(&self, pids: &[u32], tag: u64, data: &[u8], timeout: Option<Duration>) -> Result<Future>;
}

impl CollectiveExt for Arc<Node> {
    fn allgather(&self, pids: &[u32], tag: u64, data: &[u8], timeout: Option<Duration>) -> Result<Vec<(u32, Vec<u8>)>> {
        let f = self.allgather_async(pids, tag, data, timeout)?;
        Ok(parts::decode_parts(f.fetch(None)?)?.into_iter().map(|(p, b)| (p, b.to_vec())).collect())
    }

    fn allgather_async(&self, pids: &[u32], tag: u64, data: &[u8], timeout: Option<Duration>) -> Result<Future> {
        self.check_open()?;
        let svc = collectives(self)?;
        let me = self.myid();
        let mut ranks = pids.to_vec();
        ranks.sort_unstable();
        ranks.dedup();
        if ranks.len() != pids.len() || ranks.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "all-gather: the set is empty or names a process twice"));
        }
        let Ok(rank) = ranks.binary_search(&me) else {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("all-gather: process {me} is not in the set it gathers over")));
        };
        let live = self.procs();
        if let Some(&gone) = ranks.iter().find(|p| live.binary_search(p).is_err()) {
            return Err(self.host_of(gone).err().unwrap_or_else(|| Error::exited(gone)));
        }
        if !self.is_head() && self.topology() == Topology::MasterWorker && ranks.iter().any(|&p| p != me && p != crate::node::HEAD_ID) {
            return Err(Error::at(ErrorKind::Topology, me, "all-gather between workers needs the all_to_all topology"));
        }
        let set = set_hash(&ranks);
        let (out, promise) = self.promise(me);
        let next = Arc::new(AtomicU32::new(0));
        // More participants than cores (all here, at worst): a waiter
        // yields now and then to the one it waits for.
        let out = out.following(next.clone(), ranks.len() > svc.cores);
        let n = ranks.len();
        let algorithm = Algorithm::choose(n, data.len());
        let mut blocks = vec![None; n];
        blocks[rank] = Some(data.to_vec());
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        let run = Running { ranks, me: rank, order: pids.to_vec(), algorithm, round: 0, blocks, promise: Some(promise), next, deadline };
        let (key, sends, outcome) = svc.calls.lock().call(tag, set, run);
        svc.act(self, key, sends, outcome);
        if timeout.is_some() && !svc.sweeping.swap(true, Ordering::AcqRel) {
            sweep_later(self, &svc);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the algorithm's rounds among `n` simulated ranks, delivering
    /// messages in arbitrary (reversed) order, and checks every rank ends
    /// with every block.
    fn simulate(n: usize, algorithm: Algorithm) {
        let key = Key { tag: 1, set: 2, seq: 0 };
        let ranks: Vec<u32> = (0..n as u32).map(|r| r + 10).collect();
        let mut insts: Vec<Instance> = (0..n).map(|_| Instance::default()).collect();
        // In flight: (sending rank, message), delivered last-sent first.
        let mut wire: Vec<(usize, Outgoing)> = Vec::new();
        let mut outs: Vec<Option<Vec<u8>>> = vec![None; n];
        let node = Node::detached(crate::node::Config::default(), true).unwrap();
        for (r, inst) in insts.iter_mut().enumerate() {
            let mut blocks = vec![None; n];
            blocks[r] = Some(vec![r as u8; r + 1]);
            let run = Running {
                ranks: ranks.clone(),
                me: r,
                order: ranks.clone(),
                algorithm,
                round: 0,
                blocks,
                promise: Some(node.promise(1).1),
                next: Arc::default(),
                deadline: None,
            };
            if algorithm.rounds(n) > 0 {
                wire.push((r, Collectives::send_round(&run, key, false)));
            } else {
                outs[r] = Some(parts::encode_parts([(ranks[r], &run.blocks[r].as_ref().unwrap()[..])]));
            }
            inst.running = Some(run);
        }
        let mut steps = 0;
        while let Some((sender, (to, op, meta, payload))) = wire.pop() {
            steps += 1;
            assert!(steps < 10_000);
            assert_eq!(op, op::DATA);
            let r: Round = wire::decode_meta(&meta).unwrap();
            let dest = ranks.iter().position(|&p| p == to).unwrap();
            insts[dest].early.insert(r.round, (ranks[sender], r.algorithm, payload));
            let (sends, outcome) = Collectives::advance(&mut insts[dest], key);
            wire.splice(0..0, sends.into_iter().map(|m| (dest, m)));
            if let Some((_p, res)) = outcome {
                outs[dest] = Some(res.unwrap());
            }
        }
        for (r, o) in outs.iter().enumerate() {
            let o = o.as_ref().unwrap_or_else(|| panic!("rank {r} of {n} did not finish ({algorithm:?})"));
            let got = parts::decode_parts(o).unwrap();
            assert_eq!(got.len(), n);
            for (i, (pid, b)) in got.iter().enumerate() {
                assert_eq!(*pid, ranks[i]);
                assert_eq!(*b, &vec![i as u8; i + 1][..], "rank {r} block {i} ({algorithm:?}, n={n})");
            }
        }
    }

    /// Participants of one call, as the service runs them (`Calls`, what
    /// `on_message` and `allgather_async` call), over FIFO links between
    /// each pair, delivered in an order the test picks.
    /// Messages in flight from one rank to another: (op, meta, payload).
    type Link = std::collections::VecDeque<(u16, Vec<u8>, Vec<u8>)>;

    struct Sim {
        ranks: Vec<u32>,
        blocks: Vec<Vec<u8>>,
        calls: Vec<Calls>,
        links: BTreeMap<(usize, usize), Link>,
        outs: Vec<Option<Result<Vec<u8>>>>,
        node: Arc<Node>,
    }

    impl Sim {
        fn new(blocks: Vec<Vec<u8>>) -> Sim {
            let n = blocks.len();
            Sim {
                ranks: (0..n as u32).map(|r| r + 10).collect(),
                blocks,
                calls: (0..n).map(|_| Calls::default()).collect(),
                links: BTreeMap::new(),
                outs: vec![None; n],
                node: Node::detached(crate::node::Config::default(), true).unwrap(),
            }
        }

        fn rank(&self, pid: u32) -> usize {
            self.ranks.binary_search(&pid).unwrap()
        }

        fn took(&mut self, r: usize, sends: Vec<Outgoing>, outcome: Ended) {
            for (to, op, meta, payload) in sends {
                let to = self.rank(to);
                self.links.entry((r, to)).or_default().push_back((op, meta, payload));
            }
            if let Some((_p, res)) = outcome {
                assert!(self.outs[r].is_none(), "rank {r} ended twice");
                self.outs[r] = Some(res);
            }
        }

        /// Rank `r` calls.
        fn call(&mut self, r: usize) {
            let n = self.ranks.len();
            let mut blocks = vec![None; n];
            blocks[r] = Some(self.blocks[r].clone());
            let algorithm = Algorithm::choose(n, self.blocks[r].len());
            let promise = Some(self.node.promise(1).1);
            let run = Running {
                ranks: self.ranks.clone(),
                me: r,
                order: self.ranks.clone(),
                algorithm,
                round: 0,
                blocks,
                promise,
                next: Arc::default(),
                deadline: None,
            };
            let (_key, sends, outcome) = self.calls[r].call(1, set_hash(&self.ranks), run);
            self.took(r, sends, outcome);
        }

        /// The next message from rank `from` to rank `to`.
        fn deliver(&mut self, from: usize, to: usize) {
            let (op, meta, payload) = self.links.get_mut(&(from, to)).and_then(|l| l.pop_front()).expect("a message on the link");
            let r: Round = wire::decode_meta(&meta).unwrap();
            let (sends, outcome) = match op {
                op::DATA => self.calls[to]
                    .data(self.ranks[from], &r, payload)
                    .unwrap_or_else(|e| panic!("rank {to}: {e}: the node closes the connection to rank {from} on that, losing what is in flight on it")),
                _ => (Vec::new(), self.calls[to].abort(r.key, Error::new(ErrorKind::InvalidArgument, String::from_utf8_lossy(&payload)))),
            };
            self.took(to, sends, outcome);
        }

        /// Delivers what is in flight, oldest link first, until nothing is.
        fn drain(&mut self) {
            while let Some(&(from, to)) = self.links.iter().find(|(_, l)| !l.is_empty()).map(|(k, _)| k) {
                self.deliver(from, to);
            }
        }

        /// Every rank has every block, and no call or message is left behind.
        fn check(&self, what: &str) {
            for (r, o) in self.outs.iter().enumerate() {
                let o = o.as_ref().unwrap_or_else(|| panic!("{what}: rank {r} did not finish"));
                let got = parts::decode_parts(o.as_ref().unwrap_or_else(|e| panic!("{what}: rank {r}: {e}"))).unwrap();
                assert_eq!(got.len(), self.ranks.len(), "{what}");
                for (i, (pid, b)) in got.iter().enumerate() {
                    assert_eq!((*pid, *b), (self.ranks[i], &self.blocks[i][..]), "{what}: rank {r} block {i}");
                }
                assert_eq!(self.calls[r].by_key.len(), 0, "{what}: rank {r} keeps a call or late messages");
            }
            assert!(self.links.values().all(|l| l.is_empty()), "{what}");
        }
    }

    /// The blocks of rank 1 of 5 go round the ring, the others' Bruck's
    /// way; rank 2 calls last, after the ring's round 0 from rank 1 and
    /// Bruck's from rank 3 both reached it (in either order). That took
    /// the connection down (a round twice) and with it the abort in
    /// flight on it: rank 1 waited for ever (clusterutils.jl's mixed-size
    /// swapmsgs, once in CI).
    #[test]
    fn straddling_blocks_with_a_late_participant_gather_on_every_rank() {
        for ring_first in [true, false] {
            let mut sim = Sim::new((0..5u8).map(|r| vec![r; if r == 1 { RING_MIN_BLOCK } else { 8 }]).collect());
            for r in [0, 1, 3, 4] {
                sim.call(r);
            }
            let (a, b) = if ring_first { (1, 3) } else { (3, 1) };
            sim.deliver(a, 2);
            sim.deliver(b, 2);
            sim.drain();
            assert!(sim.outs.iter().all(Option::is_none), "none ends before rank 2 calls");
            sim.call(2);
            sim.drain();
            sim.check(&format!("ring_first {ring_first}"));
        }
    }

    /// Random schedules (calls and deliveries interleaved) over 3 to 8
    /// participants of random size classes: every one ends with every
    /// block, nothing closes a connection, nothing is left behind.
    #[test]
    fn every_schedule_of_mixed_size_classes_gathers_on_every_rank() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for case in 0..600 {
            let n = 3 + rand(6);
            let blocks: Vec<Vec<u8>> = (0..n).map(|r| vec![r as u8; if rand(3) == 0 { RING_MIN_BLOCK + r } else { r + 1 }]).collect();
            let mut sim = Sim::new(blocks);
            let mut waiting: Vec<usize> = (0..n).collect();
            loop {
                let busy: Vec<(usize, usize)> = sim.links.iter().filter(|(_, l)| !l.is_empty()).map(|(k, _)| *k).collect();
                if busy.is_empty() && waiting.is_empty() {
                    break;
                }
                if !waiting.is_empty() && (busy.is_empty() || rand(4) == 0) {
                    let r = waiting.swap_remove(rand(waiting.len()));
                    sim.call(r);
                } else {
                    let (from, to) = busy[rand(busy.len())];
                    sim.deliver(from, to);
                }
            }
            sim.check(&format!("case {case}, n {n}, sizes {:?}", sim.blocks.iter().map(Vec::len).collect::<Vec<_>>()));
        }
    }

    #[test]
    fn every_algorithm_gathers_every_block_on_every_rank() {
        for n in [1, 2, 4, 8, 16] {
            simulate(n, Algorithm::RecursiveDoubling);
        }
        for n in 2..=9 {
            simulate(n, Algorithm::Bruck);
            simulate(n, Algorithm::Ring);
        }
    }

    #[test]
    fn the_choice_follows_size_and_count() {
        assert_eq!(Algorithm::choose(8, 8), Algorithm::RecursiveDoubling);
        assert_eq!(Algorithm::choose(6, 1024), Algorithm::Bruck);
        assert_eq!(Algorithm::choose(8, RING_MIN_BLOCK), Algorithm::Ring);
        assert_eq!(Algorithm::choose(2, RING_MIN_BLOCK), Algorithm::RecursiveDoubling);
        assert_eq!(Algorithm::choose(1, 10), Algorithm::RecursiveDoubling);
        assert_eq!(Algorithm::RecursiveDoubling.rounds(1), 0);
        assert_eq!(Algorithm::Bruck.rounds(5), 3);
        assert_eq!(Algorithm::Ring.rounds(5), 4);
    }

    #[test]
    fn a_call_alone_completes_at_once() {
        let n = Node::detached(crate::node::Config { heartbeat_timeout: Duration::ZERO, ..Default::default() }, true).unwrap();
        n.install(Collectives::new()).unwrap();
        n.start().unwrap();
        let got = n.allgather(&[1], 5, b"me", None).unwrap();
        assert_eq!(got, vec![(1, b"me".to_vec())]);
        assert!(n.allgather(&[1, 1], 5, b"x", None).is_err());
        assert!(n.allgather(&[2], 5, b"x", None).is_err(), "the caller must take part");
        assert_eq!(n.service::<Collectives>().unwrap().in_progress(), 0);
    }
}
