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
//! **Failure.** A participant that leaves fails the call on every other,
//! naming it (membership tells each of them); a timeout names a process
//! not heard from. Participants whose blocks straddle the ring threshold
//! would run different algorithms: the first to notice aborts the call on
//! every participant with an error saying so.
//!
//! **Protocol** (service 10, one-way):
//!
//! | op    | meta                   | payload                          |
//! |-------|------------------------|----------------------------------|
//! | DATA  | `Round` (key, round, algorithm) | blocks, parts layout    |
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
    /// Messages that came before they were needed, by round: sender,
    /// algorithm, blocks.
    early: BTreeMap<u32, (u32, Algorithm, Vec<u8>)>,
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
    /// The next sequence number of each (tag, set) this process used.
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
                Some(mismatch(from, algorithm, run.algorithm))
            } else if from != run.ranks[expect_from] {
                Some(Error::at(ErrorKind::Protocol, from, format!("round {} came from process {from}, not {}: the participants disagree on the set", run.round, run.ranks[expect_from])))
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
                sends.push(Self::send_round(run, key));
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

    fn send_round(run: &Running, key: Key) -> Outgoing {
        let (to, ranks, _) = run.algorithm.round(run.ranks.len(), run.me, run.round);
        let mut payload = Vec::new();
        for r in ranks {
            if let Some(b) = &run.blocks[r] {
                parts::push_part(&mut payload, run.ranks[r], b);
            }
        }
        let meta = wire::encode_meta(&Round { key, round: run.round, algorithm: run.algorithm });
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
            self.calls.lock().by_key.remove(&key);
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
    /// Starts this process's next call with (tag, set): its key, what to
    /// send and the outcome if it ended at once.
    fn call(&mut self, tag: u64, set: u64, mut run: Running) -> (Key, Vec<Outgoing>, Ended) {
        let next = self.seqs.entry((tag, set)).or_insert(0);
        let key = Key { tag, set, seq: *next };
        *next += 1;
        run.expect_next();
        let inst = self.by_key.entry(key).or_default();
        if let Some(e) = inst.aborted.take() {
            self.by_key.remove(&key);
            return (key, Vec::new(), run.promise.take().map(|p| (p, Err(e))));
        }
        let first = (run.algorithm.rounds(run.ranks.len()) > 0).then(|| Collectives::send_round(&run, key));
        inst.running = Some(run);
        let (mut sends, outcome) = Collectives::advance(inst, key);
        sends.splice(0..0, first);
        (key, sends, outcome)
    }

    /// A round's message from `from`.
    fn data(&mut self, from: u32, r: &Round, payload: Vec<u8>) -> Result<(Vec<Outgoing>, Ended)> {
        let inst = self.by_key.entry(r.key).or_default();
        if inst.early.insert(r.round, (from, r.algorithm, payload)).is_some() {
            return Err(Error::at(ErrorKind::Protocol, from, format!("round {} of an all-gather twice", r.round)));
        }
        Ok(Collectives::advance(inst, r.key))
    }

    /// Another participant aborted call `key` with `e`.
    fn abort(&mut self, key: Key, e: Error) -> Ended {
        let inst = self.by_key.entry(key).or_default();
        match inst.running.as_mut() {
            None => {
                inst.aborted = Some(e);
                None
            }
            Some(run) => {
                let p = run.promise.take();
                self.by_key.remove(&key);
                p.map(|p| (p, Err(e)))
            }
        }
    }
}

fn mismatch(from: u32, theirs: Algorithm, ours: Algorithm) -> Error {
    Error::at(
        ErrorKind::InvalidArgument,
        from,
        format!(
            "process {from} runs this all-gather as {theirs:?} and this one as {ours:?}: their blocks straddle the ring threshold ({RING_MIN_BLOCK} bytes); give blocks of one size class"
        ),
    )
}

fn abort_all(run: &Running, key: Key, e: &Error) -> Vec<Outgoing> {
    let me = run.ranks[run.me];
    let meta = wire::encode_meta(&Round { key, round: 0, algorithm: run.algorithm });
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
                let e = Error::at(ErrorKind::InvalidArgument, msg.from, format!("process {} aborted the all-gather: {why}", msg.from));
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
                    !inst.early.is_empty()
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
            let run = Running { ranks: ranks.clone(), me: r, order: ranks.clone(), algorithm, round: 0, blocks, promise: Some(node.promise(1).1), next: Arc::default(), deadline: None };
            if algorithm.rounds(n) > 0 {
                wire.push((r, Collectives::send_round(&run, key)));
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
