//! Cluster dictionaries (ClusterDicts' GlobalDict and DistributedDict):
//! byte keys and values over a set of member processes, created and
//! released through the head, used from any process through a handle.
//!
//! **Shape.** The head keeps the registry (name -> configuration). A
//! configuration (`DictConfig`) lists, for each of 64 partitions (a key's
//! partition is FNV-1a of its bytes mod 64, the same in every process and
//! run), its replicas, the primary first: a Global dict stores every
//! partition on every member (primaries rotated over the members), a
//! Distributed one on `r` consecutive members (default r = min(2, n)).
//!
//! **Writes** (set, set with a value function, get-or-insert that inserts,
//! pop, delete) go to the partition's primary, which orders them (a
//! sequence number per partition), applies them, sends them to the other
//! replicas, and answers the writer only once every replica applied it
//! (synchronous primary-backup, as PacificA). A backup applies a
//! partition's writes strictly in sequence order, buffering what arrives
//! early. So every replica applies a key's writes in one order, and an
//! acknowledged write is on every replica.
//!
//! **Reads**: a member of a Global dict reads its own copy, with no
//! message; anyone else asks the partition's primary. Length and the
//! listings ask each member for the partitions it is primary of (a Global
//! dict: one member, or this one, for all).
//!
//! **Protocol** (service 6; every message's meta is `Msg { id, epoch,
//! part, arg }`: the dict, the sender's configuration epoch, a partition,
//! the op's argument):
//!
//! | op            | kind             | what                                              |
//! |---------------|------------------|---------------------------------------------------|
//! | CREATE        | request to head  | payload: a `Spec`; answered with the configuration (creating it, or opening the dict of that name if the spec is the same) once every member installed it |
//! | RELEASE       | request to head  | answered once no member holds the dict; the name is free |
//! | INSTALL       | one-way, head    | payload: the configuration; the member answers INSTALLED |
//! | INSTALLED     | one-way, to head | the sender holds dict `id`                        |
//! | DROP          | one-way, head    | the member forgets dict `id`, answers DROPPED      |
//! | DROPPED       | one-way, to head | the sender holds nothing of dict `id`             |
//! | SET           | request, primary | payload: key length (u32 LE), key, value          |
//! | SET_F         | request, primary | payload: (key, function, args): the value is function(args) where stored |
//! | GET           | request          | payload: the key; answered 0 (absent) or 1 + value |
//! | HASKEY        | request          | answered with one byte, 0 or 1                    |
//! | GET_OR_INSERT | request, primary | payload as SET: the value there, or the one given, inserted |
//! | POP           | request, primary | as GET, and removes it                            |
//! | DELETE        | request, primary | payload: the key                                  |
//! | LENGTH        | request, member  | pairs of the partitions it is primary of (Global: all), u64 LE |
//! | ENTRIES       | request, member  | the same pairs' keys (`arg` 0), values (1) or pairs (2), as a list |
//! | REPLICATE     | one-way, primary | partition `part`, write number `arg`, payload: the `Effect` |
//! | ACK           | one-way, backup  | write `arg` of `part` applied (payload: why its value function failed, if it did) |
//! | RECONFIG      | one-way, head    | payload: the configuration of a new epoch (a member died) |
//! | STATE         | one-way, primary | partition `part` up to write `arg`, payload: its pairs (a new primary to its backups) |
//! | STATE_ACK     | one-way, backup  | the state of `part` up to write `arg` is installed |
//! | LOOKUP        | request to head  | answered with dict `id`'s current configuration |
//! | SET_MANY      | request, primary | payload: pairs (`encode_pairs`) of keys this process is primary of; each is a SET, answered once all are on every replica |
//! | REPLICATE_ANSWER | one-way, primary | REPLICATE, whose writer the (only) backup answers once it applied it; payload: (`Effect`, `BackupAnswer`) |
//! | ACK_ANSWERED  | one-way, backup  | ACK of a REPLICATE_ANSWER: the backup answered the writer |
//!
//! **The backup answers.** A SET or SET_F from a process other than its
//! partition's two replicas (replication 2), with no other such write of
//! that process in flight (pipelined, the primary's answers go corked
//! together), names the backup in `arg`
//! when the writer has a connection to it, and takes the backup's answer
//! as the primary's. The primary then sends REPLICATE_ANSWER, and the
//! backup answers the writer as soon as it applied the write, telling the
//! primary (ACK_ANSWERED): three hops, not four. The primary keeps the
//! write's reply until then and answers it itself when the backup dies
//! (or could not answer: no connection to the writer); the writer's
//! request fails when the backup leaves (it takes the backup's answer,
//! so its loss too), and is retried. The primary's reads of the key
//! still wait for the backup's word, so that no reader sees a write the
//! primary's death could still take back.
//!
//! **Who waits where.** A client's request has an ordinary future in the
//! node's pending table (failed with ProcessExited naming the process if
//! it dies). A write waiting for its backups is parked on the primary with
//! its reply (no thread waits); the create and release waiting for their
//! members are parked on the head the same way. Every message a member or
//! the head sends on its own is one-way and never waits: on the existing
//! connection, queued when the socket is full, or through the service's
//! one sending thread when a worker-to-worker connection must be made.
//!
//! **A member's death.** The head, which decides who is in the cluster,
//! makes the next epoch of every dict the dead process was a member of
//! (`DictConfig::without`): each partition keeps its surviving replicas in
//! order, the first its primary (with synchronous replication it holds
//! every acknowledged write), and gets new members until it has `r`
//! replicas again where the survivors allow; a partition left with no
//! replica (replication 1) is lost, naming the dead process. The head
//! sends RECONFIG to the survivors. A member installs it holding every
//! partition's lock; the primary of a partition whose replicas changed
//! sends its state (pairs and last write number) to all its backups, who
//! replace theirs with it and acknowledge (STATE_ACK); writes of the new
//! epoch that reach a backup first wait behind it. A primary stops waiting
//! for a backup that died (its writes are on every survivor). Every message
//! carries its sender's epoch: an older one is refused (STALE: the client
//! looks the configuration up on the head and retries), one from a later
//! epoch waits on the member until its RECONFIG arrives.
//!
//! **Clients** hold the newest configuration they know. The blocking forms
//! retry on a newer one (for up to 12 s, the head noticing a death within
//! its heartbeat timeout) when told theirs is stale, or when the process
//! they asked died and the operation may run twice (all but pop: a pop
//! whose primary died has an unknown outcome and fails with
//! ProcessExited). The `_async` forms retry the same way without a
//! thread waiting (the lookup and the next attempt go out from the timer
//! thread). An
//! operation on a lost partition fails with ProcessExited naming the dead
//! member ("... were lost with process N"); so do length and the listings
//! of a dict with a lost partition (they would be wrong).
//!
//! **Reads.** At the primary, a read (get, haskey, a get-or-insert that
//! finds the key) of a key whose last write is not yet on every replica
//! waits for it, parked with its answer: a read never returns what a
//! primary's death could still take back, so every operation on a key of
//! a Distributed dict is linearizable. A Global member reads its own copy
//! (no message): it sees a write once it applied it, possibly before the
//! writer's answer.

mod state;

pub use state::{fnv1a, partition, DictConfig, DictKind, Effect, Members, Spec, PARTITIONS};
use state::{Answer, Applied, BackupAnswer, Part};

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Departure, Future, Incoming, Node, Promise, ReplyTo, Service, HEAD_ID};
use crate::service::holders::Housekeeper;
use crate::wire::{self, Header, Kind, ServiceId};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const ID: ServiceId = 6;

#[doc(hidden)]
pub mod op {
    pub const CREATE: u16 = 1;
    pub const RELEASE: u16 = 2;
    pub const INSTALL: u16 = 3;
    pub const INSTALLED: u16 = 4;
    pub const DROP: u16 = 5;
    pub const DROPPED: u16 = 6;
    pub const SET: u16 = 7;
    pub const SET_F: u16 = 8;
    pub const GET: u16 = 9;
    pub const HASKEY: u16 = 10;
    pub const GET_OR_INSERT: u16 = 11;
    pub const POP: u16 = 12;
    pub const DELETE: u16 = 13;
    pub const LENGTH: u16 = 14;
    pub const ENTRIES: u16 = 15;
    pub const REPLICATE: u16 = 16;
    pub const ACK: u16 = 17;
    pub const RECONFIG: u16 = 18;
    pub const STATE: u16 = 19;
    pub const STATE_ACK: u16 = 20;
    pub const LOOKUP: u16 = 21;
    pub const SET_MANY: u16 = 22;
    pub const REPLICATE_ANSWER: u16 = 23;
    pub const ACK_ANSWERED: u16 = 24;
    pub const LAST: u16 = ACK_ANSWERED;
}

/// The meta of every dict message.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    pub id: u64,
    pub epoch: u64,
    pub part: u32,
    pub arg: u64,
}

/// What ENTRIES lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    Keys = 0,
    Values = 1,
    Pairs = 2,
}

/// The built-in value function for values computed beforehand on each
/// process that stores one (Julia's `ValueF` on a GlobalDict: the binding
/// runs the function on every member, then writes the results as one
/// write): its arguments are `encode_each`'s, and each replica stores its own.
pub const EACH: &str = "cluster.each";

/// `EACH`'s arguments: a value per process, each as its id (u32 LE), its
/// length (u64 LE) and its bytes, one after another (simple to write from
/// any language).
pub fn encode_each(values: &[(u32, Vec<u8>)]) -> Vec<u8> {
    wire::parts::encode_parts(values.iter().map(|(p, v)| (*p, v.as_slice())))
}

fn each_value(me: u32, args: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut at = 0;
    while let Some((pid, v)) = wire::parts::next_part(args, &mut at).map_err(|_| format!("bad {EACH} arguments"))? {
        if pid == me {
            return Ok(v.to_vec());
        }
    }
    Err(format!("no value was computed for process {me}"))
}

/// A value function: computes the value to store from its arguments, on
/// the process storing it, under the partition's lock (it must be quick).
pub type ValueFn = Arc<dyn Fn(&Arc<Node>, &[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync>;

// ---- payload encodings ---------------------------------------------------

/// A key and a value: the key's length (u32 LE), the key, the value.
#[doc(hidden)]
pub fn encode_kv(key: &[u8], value: &[u8]) -> Vec<u8> {
    [&(key.len() as u32).to_le_bytes()[..], key, value].concat()
}

pub(crate) fn decode_kv(b: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = || Error::new(ErrorKind::Protocol, "malformed dict key and value");
    let n = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
    let key = b.get(4..4usize.checked_add(n).ok_or_else(bad)?).ok_or_else(bad)?;
    Ok((key, &b[4 + n..]))
}

/// An optional value as GET and POP answer: 0, or 1 then the value.
fn encode_opt(v: Option<&[u8]>) -> Vec<u8> {
    match v {
        None => vec![0],
        Some(v) => [&[1u8][..], v].concat(),
    }
}

/// Reads a GET or POP future's value.
pub fn decode_opt(b: &[u8]) -> Result<Option<&[u8]>> {
    match b.first() {
        Some(0) if b.len() == 1 => Ok(None),
        Some(1) => Ok(Some(&b[1..])),
        _ => Err(Error::new(ErrorKind::Protocol, "malformed dict answer")),
    }
}

/// Reads a LENGTH future's value.
pub fn decode_len(b: &[u8]) -> Result<usize> {
    let a: [u8; 8] = b.try_into().map_err(|_| Error::new(ErrorKind::Protocol, "malformed dict length"))?;
    Ok(u64::from_le_bytes(a) as usize)
}

/// Reads an ENTRIES future's value of keys or values.
pub fn decode_list(b: &[u8]) -> Result<Vec<Vec<u8>>> {
    wire::decode_payload(b)
}

/// Reads an ENTRIES future's value of pairs.
pub fn decode_pairs(b: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    wire::decode_payload(b)
}

// ---- the service ---------------------------------------------------------

fn name_of(cfg: &DictConfig) -> String {
    format!("dict {:?} ({:#x})", cfg.name, cfg.id)
}

fn unknown(node: &Node, id: u64) -> Error {
    let me = node.myid();
    Error::at(ErrorKind::InvalidArgument, me, format!("no dict {id:#x} on process {me} (released, or never created)"))
}

/// Begins the message of an error telling a client to look up the
/// configuration again and retry.
const STALE: &str = "stale configuration";

fn stale(me: u32, cfg: &DictConfig, asked: u64) -> Error {
    Error::at(ErrorKind::NotReady, me, format!("{STALE} of {}: epoch {asked} asked, {} on process {me}", name_of(cfg), cfg.epoch))
}

fn released(cfg: &DictConfig) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("{} was released", name_of(cfg)))
}

/// Sends the answers, after the partition's lock is released: local
/// futures first, then other processes (never waits).
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
            node.log.debug(format!("dict message failed: {e}"));
        }
    }
}

/// A one-way message to send once locks are released.
struct Outgoing {
    to: u32,
    op: u16,
    m: Msg,
    payload: Vec<u8>,
}

/// A message of a later epoch than this member's, kept until its
/// configuration arrives.
struct Early {
    from: u32,
    op: u16,
    m: Msg,
    payload: Vec<u8>,
}

/// A write a backup applied, with the answer it owes the writer.
type Owed = (u64, Option<String>, BackupAnswer);

/// A dict this process is a member of: its configuration and partitions.
/// A new configuration is installed holding every partition's lock.
struct Held {
    cfg: RwLock<Arc<DictConfig>>,
    parts: Vec<Mutex<Part>>,
    early: Mutex<Vec<Early>>,
}

impl Held {
    fn new(me: u32, cfg: DictConfig) -> Held {
        Held { parts: (0..PARTITIONS).map(|_| Mutex::new(Part::new(me))).collect(), cfg: RwLock::new(Arc::new(cfg)), early: Mutex::new(Vec::new()) }
    }
    fn cfg(&self) -> Arc<DictConfig> {
        self.cfg.read().clone()
    }
}

/// A dict in the head's registry.
struct Entry {
    cfg: DictConfig,
    phase: Phase,
    /// Creates (or releases) waiting for the members.
    replies: Vec<ReplyTo>,
    /// Members that have not installed (or dropped) it yet.
    waiting: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Installing,
    Ready,
    Releasing,
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Entry>,
    names: HashMap<u64, String>,
    next_id: u64,
    next_name: u64,
}

/// The dict service of one node: the dicts it holds as a member, the
/// registry (on the head), the value functions registered here.
pub struct Dicts {
    held: RwLock<HashMap<u64, Arc<Held>>>,
    registry: Mutex<Registry>,
    functions: RwLock<HashMap<String, ValueFn>>,
    housekeeping: Housekeeper,
    /// Writes this process answered as backup for their primary.
    answered: AtomicU64,
    /// This process's writes in flight that their backup answers.
    answered_in_flight: AtomicUsize,
}

impl Dicts {
    pub fn new() -> Arc<Dicts> {
        Arc::new(Dicts {
            held: RwLock::new(HashMap::new()),
            registry: Mutex::new(Registry::default()),
            functions: RwLock::new(HashMap::new()),
            housekeeping: Housekeeper::new("cluster-dict", ID),
            answered: AtomicU64::new(0),
            answered_in_flight: AtomicUsize::new(0),
        })
    }

    /// Names of the dicts this process holds state for, sorted.
    pub fn local_dicts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.held.read().values().map(|h| h.cfg().name.clone()).collect();
        v.sort();
        v
    }

    /// What is parked here, for diagnosis: per dict and partition with
    /// anything parked, its last write number, the writes waiting for
    /// backups and those buffered ahead of a missing one.
    #[doc(hidden)]
    pub fn parked(&self) -> Vec<(String, u32, u64, usize, usize)> {
        let mut v = Vec::new();
        for h in self.held.read().values() {
            for (i, p) in h.parts.iter().enumerate() {
                let p = p.lock();
                if p.waiting() + p.ahead() > 0 {
                    v.push((h.cfg().name.clone(), i as u32, p.seq, p.waiting(), p.ahead()));
                }
            }
        }
        v
    }

    /// Writes this process answered as a backup, for their primary (a
    /// gauge for tests: see "The backup answers").
    #[doc(hidden)]
    pub fn answered_for_primaries(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Dicts in the registry (the head).
    pub fn registered(&self) -> usize {
        self.registry.lock().by_name.len()
    }

    fn held(&self, id: u64) -> Option<Arc<Held>> {
        self.held.read().get(&id).cloned()
    }

    /// The configuration of dict `id` this process holds (a member) or
    /// keeps (the head), whichever is newer.
    fn known_config(&self, id: u64) -> Option<Arc<DictConfig>> {
        let held = self.held(id).map(|h| h.cfg());
        let kept = {
            let reg = self.registry.lock();
            reg.names.get(&id).and_then(|n| reg.by_name.get(n)).map(|e| e.cfg.clone())
        };
        match (held, kept) {
            (Some(h), Some(k)) if k.epoch > h.epoch => Some(Arc::new(k)),
            (Some(h), _) => Some(h),
            (None, k) => k.map(Arc::new),
        }
    }

    fn compute(&self, node: &Arc<Node>, f: &str, args: &[u8]) -> std::result::Result<Vec<u8>, String> {
        if f == EACH {
            return each_value(node.myid(), args);
        }
        let func = self.functions.read().get(f).cloned();
        match func {
            Some(func) => func(node, args),
            None => Err(format!("no value function {f:?} on process {}", node.myid())),
        }
    }

    /// Sends one-way messages without waiting, at once: on the open connection
    /// (queued if the socket is full), else through the sending thread,
    /// which connects. Order between the two paths is not kept; nothing
    /// here needs it (a backup orders writes by their numbers).
    fn send_all(&self, node: &Arc<Node>, sends: Vec<Outgoing>) {
        for s in sends {
            let meta = wire::encode_meta(&s.m);
            if s.to == node.myid() {
                let _ = self.handle(node, s.to, s.op, s.m, s.payload, ReplyTo::Nobody);
                continue;
            }
            match node.open_conn(s.to) {
                Some(c) => {
                    // Written at once, never corked: every one of these is a
                    // step another process waits for (a write's replication,
                    // its acknowledgement, a reconfiguration's state).
                    if let Err(e) = c.send_now(Header::new(Kind::Oneway, ID, s.op, 0), &meta, &s.payload) {
                        // Closed meanwhile: the sending thread connects again
                        // (a write waits for this message's answer).
                        node.log.debug(format!("dict message to {} not sent ({e}): through the sending thread", s.to));
                        self.housekeeping.send(node, s.to, s.op, meta, s.payload);
                    }
                }
                None => self.housekeeping.send(node, s.to, s.op, meta, s.payload),
            }
        }
    }

    // ---- the registry (head) ----

    fn resolve(node: &Node, spec: &Spec) -> Result<Vec<u32>> {
        let mut v = match &spec.members {
            Members::All => node.procs(),
            Members::Workers => node.workers(),
            Members::Pids(p) => p.clone(),
        };
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "a dict needs at least one member"));
        }
        let live = node.procs();
        if let Some(&p) = v.iter().find(|p| !live.contains(p)) {
            return Err(node.unknown_process(p));
        }
        // Replicas talk to each other: two workers cannot under master_worker.
        if node.topology() == crate::node::Topology::MasterWorker && v.iter().filter(|&&p| p != HEAD_ID).count() > 1 {
            return Err(Error::new(
                ErrorKind::Topology,
                format!("a dict over workers {:?} needs worker-to-worker connections: the topology is master_worker", v),
            ));
        }
        Ok(v)
    }

    fn create(&self, node: &Arc<Node>, from: u32, spec: Spec, reply: ReplyTo) {
        let mut out = Vec::new();
        let mut sends = Vec::new();
        let mut install_here = None;
        {
            let mut reg = self.registry.lock();
            let members = match Self::resolve(node, &spec) {
                Ok(m) => m,
                Err(e) => {
                    drop(reg);
                    return deliver(node, vec![Answer(reply, Err(e))]);
                }
            };
            let mut name = spec.name.clone();
            if name.is_empty() {
                loop {
                    reg.next_name += 1;
                    name = format!("dict-{from}-{}", reg.next_name);
                    if !reg.by_name.contains_key(&name) {
                        break;
                    }
                }
            }
            let want = DictConfig::new(0, name.clone(), spec.kind, members, spec.replication, spec.type_tag.clone());
            if let Some(e) = reg.by_name.get_mut(&name) {
                if !e.cfg.same_spec(&want) {
                    let err = Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "{} exists with another specification: {:?} over {:?}, replication {}, type tag {:?}; asked for {:?} over {:?}, replication {}, type tag {:?}",
                            name_of(&e.cfg),
                            e.cfg.kind,
                            e.cfg.members,
                            e.cfg.replication,
                            String::from_utf8_lossy(&e.cfg.type_tag),
                            want.kind,
                            want.members,
                            want.replication,
                            String::from_utf8_lossy(&want.type_tag)
                        ),
                    );
                    out.push(Answer(reply, Err(err)));
                } else {
                    match e.phase {
                        Phase::Ready => out.push(Answer(reply, Ok(wire::encode_payload(&e.cfg)))),
                        Phase::Installing => e.replies.push(reply),
                        Phase::Releasing => {
                            out.push(Answer(reply, Err(Error::new(ErrorKind::InvalidArgument, format!("{} is being released", name_of(&e.cfg))))))
                        }
                    }
                }
            } else {
                reg.next_id += 1;
                let mut cfg = want;
                cfg.id = reg.next_id;
                let me = node.myid();
                let payload = wire::encode_payload(&cfg);
                let mut waiting = Vec::new();
                for &p in &cfg.members {
                    if p == me {
                        install_here = Some(cfg.clone());
                    } else {
                        waiting.push(p);
                        sends.push(Outgoing { to: p, op: op::INSTALL, m: Msg { id: cfg.id, epoch: cfg.epoch, ..Msg::default() }, payload: payload.clone() });
                    }
                }
                reg.names.insert(cfg.id, name.clone());
                let phase = if waiting.is_empty() { Phase::Ready } else { Phase::Installing };
                if phase == Phase::Ready {
                    out.push(Answer(reply, Ok(payload)));
                    reg.by_name.insert(name, Entry { cfg, phase, replies: Vec::new(), waiting });
                } else {
                    reg.by_name.insert(name, Entry { cfg, phase, replies: vec![reply], waiting });
                }
            }
        }
        if let Some(cfg) = install_here {
            self.install(node.myid(), cfg);
        }
        self.send_all(node, sends);
        deliver(node, out);
    }

    /// A member installed (`installed`) or dropped dict `id`.
    fn member_done(&self, node: &Arc<Node>, from: u32, id: u64, installed: bool) {
        let mut out = Vec::new();
        {
            let mut reg = self.registry.lock();
            let Some(name) = reg.names.get(&id).cloned() else { return };
            let Some(e) = reg.by_name.get_mut(&name) else { return };
            let phase = if installed { Phase::Installing } else { Phase::Releasing };
            if e.phase != phase || !e.waiting.contains(&from) {
                return;
            }
            e.waiting.retain(|&p| p != from);
            if !e.waiting.is_empty() {
                return;
            }
            let replies = std::mem::take(&mut e.replies);
            if installed {
                e.phase = Phase::Ready;
                let v = wire::encode_payload(&e.cfg);
                out.extend(replies.into_iter().map(|r| Answer(r, Ok(v.clone()))));
            } else {
                reg.by_name.remove(&name);
                reg.names.remove(&id);
                out.extend(replies.into_iter().map(|r| Answer(r, Ok(Vec::new()))));
            }
        }
        deliver(node, out);
    }

    fn release(&self, node: &Arc<Node>, id: u64, reply: ReplyTo) {
        let mut out = Vec::new();
        let mut sends = Vec::new();
        let mut drop_here = false;
        {
            let mut reg = self.registry.lock();
            let name = reg.names.get(&id).cloned();
            match name.and_then(|n| reg.by_name.get_mut(&n).map(|e| (n, e))) {
                // Released already (or never made): nothing is held.
                None => out.push(Answer(reply, Ok(Vec::new()))),
                Some((_, e)) if e.phase == Phase::Releasing => e.replies.push(reply),
                Some((_, e)) if e.phase == Phase::Installing => {
                    out.push(Answer(reply, Err(Error::new(ErrorKind::NotReady, format!("{} is still being created", name_of(&e.cfg))))))
                }
                Some((name, e)) => {
                    let me = node.myid();
                    e.phase = Phase::Releasing;
                    e.waiting = e.cfg.members.iter().copied().filter(|&p| p != me).collect();
                    drop_here = e.cfg.is_member(me);
                    for &p in &e.waiting {
                        sends.push(Outgoing { to: p, op: op::DROP, m: Msg { id, epoch: e.cfg.epoch, ..Msg::default() }, payload: Vec::new() });
                    }
                    if e.waiting.is_empty() {
                        reg.by_name.remove(&name);
                        reg.names.remove(&id);
                        out.push(Answer(reply, Ok(Vec::new())));
                    } else {
                        e.replies.push(reply);
                    }
                }
            }
        }
        if drop_here {
            self.forget(node, id);
        }
        self.send_all(node, sends);
        deliver(node, out);
    }

    // ---- members ----

    fn install(&self, me: u32, cfg: DictConfig) {
        self.held.write().entry(cfg.id).or_insert_with(|| Arc::new(Held::new(me, cfg)));
    }

    /// Drops dict `id` here; what waits on it fails.
    fn forget(&self, node: &Node, id: u64) {
        let Some(h) = self.held.write().remove(&id) else { return };
        let why = released(&h.cfg());
        let mut out = Vec::new();
        for p in &h.parts {
            p.lock().fail_all(&why, &mut out);
        }
        deliver(node, out);
    }

    /// Checks a request for partition `part` reached its primary in the
    /// sender's epoch.
    fn check_primary(node: &Node, cfg: &DictConfig, m: &Msg, part: u32) -> Result<()> {
        let me = node.myid();
        if m.epoch != cfg.epoch {
            return Err(stale(me, cfg, m.epoch));
        }
        if cfg.primary(part) != me {
            return Err(Error::at(ErrorKind::NotReady, me, format!("{STALE}: process {me} is not the primary of partition {part} of {}", name_of(cfg))));
        }
        Ok(())
    }

    /// A client operation on one key, at its partition's primary (a read
    /// of a Global dict at any member).
    fn keyed(&self, node: &Arc<Node>, op: u16, m: Msg, payload: Vec<u8>, reply: ReplyTo) -> Result<()> {
        let me = node.myid();
        let Some(h) = self.held(m.id) else {
            deliver(node, vec![Answer(reply, Err(unknown(node, m.id)))]);
            return Ok(());
        };
        let key: Vec<u8> = match op {
            op::SET | op::GET_OR_INSERT => decode_kv(&payload)?.0.to_vec(),
            op::SET_F => wire::decode_payload::<(Vec<u8>, String, Vec<u8>)>(&payload)?.0,
            _ => payload.clone(),
        };
        let part = partition(&key);
        let read = matches!(op, op::GET | op::HASKEY);
        let compute = |f: &str, a: &[u8]| self.compute(node, f, a);
        let mut out = Vec::new();
        let mut seq = None;
        let mut effect = None;
        let mut p = h.parts[part as usize].lock();
        // Read under the partition's lock: a new configuration is installed under it.
        let cfg = h.cfg();
        let global_read = read && cfg.kind == DictKind::Global && cfg.stores(me, part) && !p.awaiting;
        if !global_read {
            if let Err(e) = Self::check_primary(node, &cfg, &m, part) {
                drop(p);
                deliver(node, vec![Answer(reply, Err(e))]);
                return Ok(());
            }
        }
        let backups: Vec<u32> = cfg.replicas(part).iter().copied().filter(|&p| p != me).collect();
        // A writer that takes its answer from the backup (see "The backup answers").
        let backup_answers = |reply: &ReplyTo| match reply {
            ReplyTo::Remote { conn, header } if m.arg != 0 && backups.len() == 1 && u64::from(backups[0]) == m.arg && u64::from(conn.peer()) != m.arg => {
                Some(BackupAnswer { to: conn.peer(), request: header.id, op: header.op, result: Vec::new() })
            }
            _ => None,
        };
        let mut answer = None;
        {
            match op {
                // At the primary, a read of a key whose last write is not on
                // every replica yet waits for it; a Global member's own copy
                // answers at once.
                op::GET if global_read => out.push(Answer(reply, Ok(encode_opt(p.store.get(&key).map(|v| &v[..]))))),
                op::HASKEY if global_read => out.push(Answer(reply, Ok(vec![p.store.contains_key(&key) as u8]))),
                op::GET => {
                    let v = encode_opt(p.store.get(&key).map(|v| &v[..]));
                    p.read(&key, reply, v, &mut out);
                }
                op::HASKEY => {
                    let v = vec![p.store.contains_key(&key) as u8];
                    p.read(&key, reply, v, &mut out);
                }
                op::SET => {
                    let e = Effect::Set { key, value: decode_kv(&payload)?.1.to_vec() };
                    effect = (!backups.is_empty()).then(|| e.clone());
                    answer = backup_answers(&reply);
                    seq = p.write(e, &compute, reply, Vec::new(), &backups, &mut out);
                }
                op::SET_F => {
                    let (key, f, args) = wire::decode_payload::<(Vec<u8>, String, Vec<u8>)>(&payload)?;
                    // Global: each replica computes its own; Distributed: the primary's value replicates.
                    let e = match cfg.kind {
                        DictKind::Global => Ok(Effect::SetF { key, f, args }),
                        DictKind::Distributed => compute(&f, &args).map(|value| Effect::Set { key, value }),
                    };
                    match e {
                        Ok(e) => {
                            effect = (!backups.is_empty()).then(|| e.clone());
                            answer = backup_answers(&reply);
                            seq = p.write(e, &compute, reply, Vec::new(), &backups, &mut out);
                        }
                        Err(msg) => out.push(Answer(reply, Err(Error::at(ErrorKind::Remote, me, msg)))),
                    }
                }
                op::GET_OR_INSERT => match p.store.get(&key).cloned() {
                    Some(v) => p.read(&key, reply, v, &mut out),
                    None => {
                        let value = decode_kv(&payload)?.1.to_vec();
                        let e = Effect::Set { key, value: value.clone() };
                        effect = (!backups.is_empty()).then(|| e.clone());
                        seq = p.write(e, &compute, reply, value, &backups, &mut out);
                    }
                },
                op::POP | op::DELETE => match p.store.get(&key).cloned() {
                    None => out.push(Answer(reply, Ok(if op == op::POP { encode_opt(None) } else { Vec::new() }))),
                    Some(v) => {
                        let e = Effect::Delete { key };
                        effect = (!backups.is_empty()).then(|| e.clone());
                        let result = if op == op::POP { encode_opt(Some(&v)) } else { Vec::new() };
                        seq = p.write(e, &compute, reply, result, &backups, &mut out);
                    }
                },
                o => return Err(unknown_op("dict", o)),
            }
        }
        drop(p);
        if let (Some(seq), Some(e)) = (seq, effect) {
            if !backups.is_empty() {
                let (op, payload) = match answer {
                    Some(a) => (op::REPLICATE_ANSWER, wire::encode_payload(&(e, a))),
                    None => (op::REPLICATE, wire::encode_payload(&e)),
                };
                let m = Msg { id: cfg.id, epoch: cfg.epoch, part, arg: seq };
                let sends = backups.iter().map(|&to| Outgoing { to, op, m, payload: payload.clone() }).collect();
                self.send_all(node, sends);
                if op == op::REPLICATE_ANSWER {
                    // The next step is the backup's, and this process has
                    // none until the writer's next request: once this
                    // reader has nothing more to read, the CPU is better
                    // spent on the backup, if it waits for one (three
                    // spinning processes on two cores).
                    crate::sys::yield_when_read_out();
                }
            }
        }
        deliver(node, out);
        Ok(())
    }

    /// A batch of sets at their primary: the pairs of each partition are
    /// one write (ordered, applied, replicated and acknowledged as one);
    /// the batch is answered once every partition's is on every replica,
    /// with the first error if one failed (the others stay applied: a
    /// retried batch sets them again).
    fn set_many(&self, node: &Arc<Node>, m: Msg, payload: &[u8], reply: ReplyTo) -> Result<()> {
        let pairs = decode_pairs(payload)?;
        let Some(h) = self.held(m.id) else {
            deliver(node, vec![Answer(reply, Err(unknown(node, m.id)))]);
            return Ok(());
        };
        let mut parts: std::collections::BTreeMap<u32, state::Pairs> = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            parts.entry(partition(&k)).or_default().push((k, v));
        }
        if parts.is_empty() {
            deliver(node, vec![Answer(reply, Ok(Vec::new()))]);
            return Ok(());
        }
        struct Batch {
            left: usize,
            error: Option<Error>,
            reply: Option<ReplyTo>,
        }
        let batch = Arc::new(Mutex::new(Batch { left: parts.len(), error: None, reply: Some(reply) }));
        let me = node.myid();
        let compute = |f: &str, a: &[u8]| self.compute(node, f, a);
        let mut out = Vec::new();
        let mut sends = Vec::new();
        for (part, pairs) in parts {
            let slot = Arc::new(crate::node::slot::Slot::new(0, me));
            let (b, n) = (batch.clone(), node.clone());
            slot.on_complete(move |r| {
                let mut g = b.lock();
                if let (Err(e), None) = (r, &g.error) {
                    g.error = Some(e.clone());
                }
                g.left -= 1;
                if g.left == 0 {
                    let reply = g.reply.take().expect("one answer");
                    let r = g.error.take().map_or(Ok(Vec::new()), Err);
                    drop(g);
                    deliver(&n, vec![Answer(reply, r)]);
                }
            });
            let sub = ReplyTo::Local(slot);
            let mut p = h.parts[part as usize].lock();
            let cfg = h.cfg();
            if let Err(e) = Self::check_primary(node, &cfg, &m, part) {
                drop(p);
                out.push(Answer(sub, Err(e)));
                continue;
            }
            let backups: Vec<u32> = cfg.replicas(part).iter().copied().filter(|&p| p != me).collect();
            let e = Effect::SetMany { pairs };
            let payload = (!backups.is_empty()).then(|| wire::encode_payload(&e));
            let seq = p.write(e, &compute, sub, Vec::new(), &backups, &mut out);
            drop(p);
            if let (Some(seq), Some(payload)) = (seq, payload) {
                let m = Msg { id: cfg.id, epoch: cfg.epoch, part, arg: seq };
                sends.extend(backups.iter().map(|&to| Outgoing { to, op: op::REPLICATE, m, payload: payload.clone() }));
            }
        }
        self.send_all(node, sends);
        deliver(node, out);
        Ok(())
    }

    /// The pairs this member answers LENGTH and ENTRIES for: of the
    /// partitions it is primary of (a Global dict: all).
    fn summary(&self, node: &Node, h: &Held, what: Option<Entries>) -> Vec<u8> {
        let me = node.myid();
        let cfg = h.cfg();
        let mine = |p: u32| if cfg.kind == DictKind::Global { cfg.stores(me, p) } else { cfg.primary(p) == me };
        let mut n = 0u64;
        let (mut ks, mut vs, mut ps) = (Vec::new(), Vec::new(), Vec::new());
        for (i, part) in h.parts.iter().enumerate() {
            if !mine(i as u32) {
                continue;
            }
            let p = part.lock();
            n += p.store.len() as u64;
            match what {
                None => {}
                Some(Entries::Keys) => ks.extend(p.store.keys().cloned()),
                Some(Entries::Values) => vs.extend(p.store.values().cloned()),
                Some(Entries::Pairs) => ps.extend(p.store.iter().map(|(k, v)| (k.clone(), v.clone()))),
            }
        }
        match what {
            None => n.to_le_bytes().to_vec(),
            Some(Entries::Keys) => wire::encode_payload(&ks),
            Some(Entries::Values) => wire::encode_payload(&vs),
            Some(Entries::Pairs) => wire::encode_payload(&ps),
        }
    }

    /// Splits the writes a backup just applied into those it acknowledges
    /// and those whose writers it answers (`answer_after`).
    fn owed_answers(p: &mut Part, applied: Vec<Applied>) -> (Vec<Applied>, Vec<Owed>) {
        let mut acks = Vec::new();
        let mut answers = Vec::new();
        for (seq, err) in applied {
            match p.take_answer(seq) {
                Some(a) => answers.push((seq, err, a)),
                None => acks.push((seq, err)),
            }
        }
        (acks, answers)
    }

    /// Backup: answers the writers it owes an answer (first: they wait
    /// for it) and tells the primary `from`, then acknowledges the other
    /// writes applied. A writer it has no connection to is left to the
    /// primary (an ordinary ACK).
    fn acknowledge(&self, node: &Arc<Node>, from: u32, m: Msg, acks: Vec<Applied>, answers: Vec<Owed>) {
        let me = node.myid();
        let ack = |seq: u64, err: Option<String>| Outgoing {
            to: from,
            op: op::ACK,
            m: Msg { arg: seq, ..m },
            payload: err.map(String::into_bytes).unwrap_or_default(),
        };
        let mut sends = Vec::with_capacity(acks.len() + answers.len());
        let answered = !answers.is_empty();
        for (seq, err, a) in answers {
            let outcome = match &err {
                None => Ok(&a.result[..]),
                Some(msg) => Err(Error::at(ErrorKind::Remote, me, msg.clone())),
            };
            // Not sent (no connection, or it closed): the primary answers.
            let sent = node.open_conn(a.to).is_some_and(|conn| node.respond_now(&conn, &Header::new(Kind::Request, ID, a.op, a.request), outcome));
            if sent {
                self.answered.fetch_add(1, Ordering::Relaxed);
                sends.push(Outgoing { to: from, op: op::ACK_ANSWERED, m: Msg { arg: seq, ..m }, payload: Vec::new() });
            } else {
                sends.push(ack(seq, err));
            }
        }
        sends.extend(acks.into_iter().map(|(seq, err)| ack(seq, err)));
        self.send_all(node, sends);
        if answered {
            // The writer's next step (its next request) is its own and its
            // primary's: as at the primary, the CPU goes to them.
            crate::sys::yield_when_read_out();
        }
    }

    /// One message, from a peer or from this process.
    fn handle(&self, node: &Arc<Node>, from: u32, op: u16, m: Msg, payload: Vec<u8>, reply: ReplyTo) -> Result<()> {
        let me = node.myid();
        match op {
            op::CREATE | op::RELEASE if !node.is_head() => {
                deliver(node, vec![Answer(reply, Err(Error::at(ErrorKind::NotHead, me, "dicts are created and released by the head")))]);
            }
            op::CREATE => {
                let spec: Spec = wire::decode_payload(&payload)?;
                self.create(node, from, spec, reply);
            }
            op::RELEASE => self.release(node, m.id, reply),
            op::INSTALL => {
                let cfg: DictConfig = wire::decode_payload(&payload)?;
                cfg.check()?;
                if from != HEAD_ID || cfg.id != m.id || !cfg.is_member(me) {
                    node.log.warn(format!("process {from} installed a dict here that is not its to install: ignored"));
                    return Ok(());
                }
                self.install(me, cfg);
                self.send_all(node, vec![Outgoing { to: HEAD_ID, op: op::INSTALLED, m, payload: Vec::new() }]);
            }
            op::DROP => {
                if from != HEAD_ID {
                    node.log.warn(format!("process {from} dropped a dict here: ignored"));
                    return Ok(());
                }
                self.forget(node, m.id);
                self.send_all(node, vec![Outgoing { to: HEAD_ID, op: op::DROPPED, m, payload: Vec::new() }]);
            }
            op::INSTALLED | op::DROPPED => {
                if node.is_head() {
                    self.member_done(node, from, m.id, op == op::INSTALLED);
                }
            }
            op::SET..=op::DELETE => self.keyed(node, op, m, payload, reply)?,
            op::SET_MANY => self.set_many(node, m, &payload, reply)?,
            op::LENGTH | op::ENTRIES => {
                let what = match (op, m.arg) {
                    (op::LENGTH, _) => None,
                    (_, 0) => Some(Entries::Keys),
                    (_, 1) => Some(Entries::Values),
                    (_, 2) => Some(Entries::Pairs),
                    (_, a) => return Err(Error::new(ErrorKind::Protocol, format!("unknown dict listing {a}"))),
                };
                let r = match self.held(m.id) {
                    None => Err(unknown(node, m.id)),
                    Some(h) if h.cfg().epoch != m.epoch => Err(stale(me, &h.cfg(), m.epoch)),
                    Some(h) => Ok(self.summary(node, &h, what)),
                };
                deliver(node, vec![Answer(reply, r)]);
            }
            op::REPLICATE | op::REPLICATE_ANSWER => {
                let (e, answer) = if op == op::REPLICATE {
                    (wire::decode_payload::<Effect>(&payload)?, None)
                } else {
                    let (e, a) = wire::decode_payload::<(Effect, BackupAnswer)>(&payload)?;
                    (e, Some(a))
                };
                let part = m.part;
                if part >= PARTITIONS {
                    return Err(Error::new(ErrorKind::Protocol, format!("no dict partition {part}")));
                }
                let (acks, answers) = match self.held(m.id) {
                    None => (vec![(m.arg, Some(format!("dict {:#x} is not held on process {me}", m.id)))], Vec::new()),
                    Some(h) => {
                        let compute = |f: &str, a: &[u8]| self.compute(node, f, a);
                        let mut p = h.parts[part as usize].lock();
                        let cfg = h.cfg();
                        if m.epoch > cfg.epoch {
                            // Kept under the partition's lock: its RECONFIG
                            // is installed under it, then looks here.
                            h.early.lock().push(Early { from, op, m, payload });
                            return Ok(());
                        }
                        if cfg.primary(part) != from || m.epoch < p.since {
                            // From before the partition's replicas changed:
                            // the new primary's state supersedes it.
                            return Ok(());
                        }
                        if let Some(a) = answer {
                            p.answer_after(m.arg, a);
                        }
                        let applied = p.replicate(m.arg, e, &compute);
                        Self::owed_answers(&mut p, applied)
                    }
                };
                self.acknowledge(node, from, m, acks, answers);
            }
            op::ACK | op::ACK_ANSWERED => {
                let Some(h) = self.held(m.id) else { return Ok(()) };
                if m.part >= PARTITIONS {
                    return Err(Error::new(ErrorKind::Protocol, format!("no dict partition {}", m.part)));
                }
                let mut out = Vec::new();
                let mut p = h.parts[m.part as usize].lock();
                if op == op::ACK_ANSWERED {
                    p.ack_answered(m.arg, from, &mut out);
                } else {
                    let err = (!payload.is_empty()).then(|| Error::at(ErrorKind::Remote, from, String::from_utf8_lossy(&payload).into_owned()));
                    p.ack(m.arg, from, err, &mut out);
                }
                drop(p);
                deliver(node, out);
            }
            op::STATE => {
                let pairs: Vec<(Vec<u8>, Vec<u8>)> = wire::decode_payload(&payload)?;
                if m.part >= PARTITIONS {
                    return Err(Error::new(ErrorKind::Protocol, format!("no dict partition {}", m.part)));
                }
                let Some(h) = self.held(m.id) else { return Ok(()) };
                let compute = |f: &str, a: &[u8]| self.compute(node, f, a);
                let mut p = h.parts[m.part as usize].lock();
                let cfg = h.cfg();
                if m.epoch > cfg.epoch {
                    h.early.lock().push(Early { from, op, m, payload: wire::encode_payload(&pairs) });
                    return Ok(());
                }
                // The state of the epoch this partition changed in (a later
                // epoch may have left it as it is).
                if m.epoch != p.since || cfg.primary(m.part) != from || !cfg.stores(me, m.part) {
                    return Ok(());
                }
                let applied = p.install_state(m.arg, pairs, &compute);
                let (acks, answers) = Self::owed_answers(&mut p, applied);
                drop(p);
                self.send_all(node, vec![Outgoing { to: from, op: op::STATE_ACK, m, payload: Vec::new() }]);
                self.acknowledge(node, from, m, acks, answers);
            }
            op::STATE_ACK => {
                let Some(h) = self.held(m.id) else { return Ok(()) };
                if m.part >= PARTITIONS {
                    return Err(Error::new(ErrorKind::Protocol, format!("no dict partition {}", m.part)));
                }
                let mut out = Vec::new();
                let mut p = h.parts[m.part as usize].lock();
                if p.since == m.epoch {
                    p.state_acked(from, m.arg, &mut out);
                }
                drop(p);
                deliver(node, out);
            }
            op::RECONFIG => {
                let cfg: DictConfig = wire::decode_payload(&payload)?;
                cfg.check()?;
                if from != HEAD_ID || cfg.id != m.id {
                    node.log.warn(format!("process {from} sent a dict configuration: ignored"));
                    return Ok(());
                }
                self.reconfigure(node, cfg);
            }
            op::LOOKUP if !node.is_head() => {
                deliver(node, vec![Answer(reply, Err(Error::at(ErrorKind::NotHead, me, "dicts are looked up on the head")))]);
            }
            op::LOOKUP => {
                let r = {
                    let reg = self.registry.lock();
                    reg.names.get(&m.id).and_then(|n| reg.by_name.get(n)).filter(|e| e.phase == Phase::Ready).map(|e| wire::encode_payload(&e.cfg))
                };
                let r = r.ok_or_else(|| Error::at(ErrorKind::InvalidArgument, me, format!("no dict {:#x} (released)", m.id)));
                deliver(node, vec![Answer(reply, r)]);
            }
            o => return Err(unknown_op("dict", o)),
        }
        Ok(())
    }

    /// Installs a new configuration of a dict held here (a member died):
    /// under every partition's lock, so no operation sees a partition
    /// between two configurations. A partition whose replicas changed gets
    /// its (new) primary's state: this process sends it as primary, or
    /// waits for it as backup. Then the messages of the new epoch that came
    /// early are handled.
    fn reconfigure(&self, node: &Arc<Node>, new: DictConfig) {
        let Some(h) = self.held(new.id) else { return };
        let me = node.myid();
        let mut out = Vec::new();
        let mut sends = Vec::new();
        {
            let mut parts: Vec<_> = h.parts.iter().map(|p| p.lock()).collect();
            let old = h.cfg();
            if new.epoch <= old.epoch {
                return;
            }
            let new = Arc::new(new);
            *h.cfg.write() = new.clone();
            let why = Error::at(ErrorKind::InvalidArgument, me, format!("process {me} no longer stores this partition of {}", name_of(&new)));
            for (i, p) in parts.iter_mut().enumerate() {
                let i = i as u32;
                let (was, now) = (old.replicas(i), new.replicas(i));
                if !now.contains(&me) {
                    p.clear(&why, &mut out);
                    continue;
                }
                let backups: Vec<u32> = now.iter().copied().filter(|&x| x != me).collect();
                if was == now {
                    continue;
                }
                p.since = new.epoch;
                if now[0] == me {
                    let (pairs, seq) = p.become_primary(&backups, &mut out);
                    let payload = wire::encode_payload(&pairs);
                    for &b in &backups {
                        sends.push(Outgoing { to: b, op: op::STATE, m: Msg { id: new.id, epoch: new.epoch, part: i, arg: seq }, payload: payload.clone() });
                    }
                } else {
                    p.become_backup(&why, &mut out);
                }
            }
        }
        self.send_all(node, sends);
        deliver(node, out);
        let epoch = h.cfg().epoch;
        let early: Vec<Early> = {
            let mut e = h.early.lock();
            let (now, later): (Vec<Early>, Vec<Early>) = std::mem::take(&mut *e).into_iter().partition(|x| x.m.epoch <= epoch);
            *e = later;
            now
        };
        for x in early {
            if let Err(e) = self.handle(node, x.from, x.op, x.m, x.payload, ReplyTo::Nobody) {
                node.log.warn(format!("a dict message of process {} kept for epoch {}: {e}", x.from, x.m.epoch));
            }
        }
    }

    /// A request of this process to itself: no message, a future completed
    /// by the answer.
    fn local_request(&self, node: &Arc<Node>, op: u16, m: Msg, payload: Vec<u8>, quiet: bool) -> Result<Future> {
        node.check_open()?;
        let me = node.myid();
        // No promise: the reply may be parked past this call (a write waiting for backups).
        let slot = if quiet { Arc::new(crate::node::slot::Slot::new(node.next_request_id(), me)) } else { node.new_slot(me) };
        let f = Future::new(node, slot.clone(), None);
        self.handle(node, me, op, m, payload, ReplyTo::Local(slot))?;
        Ok(f)
    }

    /// `op` to process `pid` (this one: handled here).
    fn request(&self, node: &Arc<Node>, pid: u32, op: u16, m: Msg, payload: Vec<u8>) -> Result<Future> {
        if pid == node.myid() {
            self.local_request(node, op, m, payload, false)
        } else {
            node.request(pid, ID, op, &wire::encode_meta(&m), &payload)
        }
    }

    /// `request` for a part of another future (no host event of its own).
    fn request_quiet(&self, node: &Arc<Node>, pid: u32, op: u16, m: Msg, payload: Vec<u8>) -> Result<Future> {
        if pid == node.myid() {
            self.local_request(node, op, m, payload, true)
        } else {
            node.request_quiet(pid, ID, op, &wire::encode_meta(&m), &payload)
        }
    }
}

impl Service for Dicts {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "dict"
    }

    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        let m: Msg = msg.meta_as()?;
        let (from, op) = (msg.from, msg.op());
        self.handle(node, from, op, m, msg.payload, msg.reply)?;
        Ok(None)
    }

    /// A process left: the writes waiting for it as a backup fail; on the
    /// head, a create waiting for it fails (and is undone), a release
    /// stops waiting for it.
    fn on_peer_left(&self, node: &Arc<Node>, pid: u32, how: Departure) {
        let all: Vec<Arc<Held>> = self.held.read().values().cloned().collect();
        let mut out = Vec::new();
        let me = node.myid();
        let _ = how;
        for h in all {
            for (i, p) in h.parts.iter().enumerate() {
                let mut p = p.lock();
                let cfg = h.cfg();
                if !cfg.is_member(pid) || cfg.primary(i as u32) != me {
                    continue;
                }
                let backups: Vec<u32> = cfg.replicas(i as u32).iter().copied().filter(|&x| x != me && x != pid).collect();
                p.keep_backups(&backups, &mut out);
            }
        }
        deliver(node, out);
        if !node.is_head() {
            return;
        }
        let mut out = Vec::new();
        let mut sends = Vec::new();
        let mut drop_here = Vec::new();
        let mut done = Vec::new();
        let mut reconfigure_here = Vec::new();
        {
            let mut reg = self.registry.lock();
            let me = node.myid();
            for (name, e) in reg.by_name.iter_mut() {
                if e.phase == Phase::Ready && e.cfg.is_member(pid) {
                    // A new epoch over the survivors.
                    e.cfg = e.cfg.without(pid);
                    let payload = wire::encode_payload(&e.cfg);
                    for &p in &e.cfg.members {
                        if p == me {
                            reconfigure_here.push(e.cfg.clone());
                        } else {
                            sends.push(Outgoing {
                                to: p,
                                op: op::RECONFIG,
                                m: Msg { id: e.cfg.id, epoch: e.cfg.epoch, ..Msg::default() },
                                payload: payload.clone(),
                            });
                        }
                    }
                    continue;
                }
                if !e.waiting.contains(&pid) {
                    continue;
                }
                e.waiting.retain(|&p| p != pid);
                match e.phase {
                    Phase::Installing => {
                        let why = Error::at(
                            ErrorKind::ProcessExited,
                            pid,
                            format!("process {pid}, a member of {}, left while it was being created", name_of(&e.cfg)),
                        );
                        out.extend(std::mem::take(&mut e.replies).into_iter().map(|r| Answer(r, Err(why.clone()))));
                        for &p in e.cfg.members.iter().filter(|&&p| p != pid) {
                            if p == me {
                                drop_here.push(e.cfg.id);
                            } else {
                                sends.push(Outgoing {
                                    to: p,
                                    op: op::DROP,
                                    m: Msg { id: e.cfg.id, epoch: e.cfg.epoch, ..Msg::default() },
                                    payload: Vec::new(),
                                });
                            }
                        }
                        done.push((name.clone(), e.cfg.id));
                    }
                    Phase::Releasing if e.waiting.is_empty() => {
                        out.extend(std::mem::take(&mut e.replies).into_iter().map(|r| Answer(r, Ok(Vec::new()))));
                        done.push((name.clone(), e.cfg.id));
                    }
                    _ => {}
                }
            }
            for (name, id) in done {
                reg.by_name.remove(&name);
                reg.names.remove(&id);
            }
        }
        for id in drop_here {
            self.forget(node, id);
        }
        for cfg in reconfigure_here {
            self.reconfigure(node, cfg);
        }
        self.send_all(node, sends);
        deliver(node, out);
    }

    fn on_close(&self, node: &Node) {
        self.housekeeping.stop();
        let all: Vec<Arc<Held>> = self.held.write().drain().map(|(_, v)| v).collect();
        let e = Error::new(ErrorKind::Shutdown, "the cluster was shut down");
        let mut out = Vec::new();
        for h in all {
            for p in &h.parts {
                p.lock().fail_all(&e, &mut out);
            }
        }
        let mut reg = self.registry.lock();
        for (_, en) in reg.by_name.iter_mut() {
            out.extend(std::mem::take(&mut en.replies).into_iter().map(|r| Answer(r, Err(e.clone()))));
        }
        drop(reg);
        deliver(node, out);
    }
}

/// Decodes a dict message exactly as the service does (for fuzzing): the
/// meta, and the payloads it reads as values.
#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8], payload: &[u8]) -> Result<()> {
    if !(op::CREATE..=op::LAST).contains(&op) {
        return Err(unknown_op("dict", op));
    }
    let m: Msg = wire::decode_meta(meta)?;
    match op {
        op::CREATE => wire::decode_payload::<Spec>(payload).map(drop),
        op::INSTALL | op::RECONFIG => wire::decode_payload::<DictConfig>(payload)?.check(),
        op::SET | op::GET_OR_INSERT => decode_kv(payload).map(drop),
        op::SET_MANY => decode_pairs(payload).map(drop),
        op::SET_F => wire::decode_payload::<(Vec<u8>, String, Vec<u8>)>(payload).map(drop),
        op::ENTRIES if m.arg > 2 => Err(Error::new(ErrorKind::Protocol, format!("unknown dict listing {}", m.arg))),
        op::REPLICATE | op::REPLICATE_ANSWER | op::ACK | op::ACK_ANSWERED | op::STATE | op::STATE_ACK if m.part >= PARTITIONS => {
            Err(Error::new(ErrorKind::Protocol, format!("no dict partition {}", m.part)))
        }
        op::REPLICATE => wire::decode_payload::<Effect>(payload).map(drop),
        op::REPLICATE_ANSWER => wire::decode_payload::<(Effect, BackupAnswer)>(payload).map(drop),
        op::STATE => wire::decode_payload::<Vec<(Vec<u8>, Vec<u8>)>>(payload).map(drop),
        _ => Ok(()),
    }
}

fn dicts(node: &Node) -> Result<Arc<Dicts>> {
    node.service::<Dicts>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no dict service on this node"))
}

// ---- handles ---------------------------------------------------------------

struct Inner {
    node: Arc<Node>,
    svc: Arc<Dicts>,
    name: String,
    kind: DictKind,
    /// The newest configuration this handle knows (looked up again when an
    /// answer says it is stale).
    cfg: RwLock<Arc<DictConfig>>,
}

/// How long a blocking operation keeps retrying on newer configurations
/// after a member died (the head notices a death within the heartbeat
/// timeout, 5 s by default).
const RETRY_FOR: Duration = Duration::from_secs(12);

/// Marks the error of an operation on a lost partition (never retried).
const LOST: &str = "were lost";

/// Makes an operation's value from its answer.
type Map = fn(&Dict, &[u8]) -> Result<Vec<u8>>;

/// Sends one attempt of an operation.
type Attempt = Box<dyn Fn(&Dict) -> Result<Future> + Send + Sync>;

/// Pairs of borrowed keys and values.
pub type PairRefs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// An `_async` operation under way (`Dict::retry_async`).
struct AsyncOp {
    dict: Dict,
    again_on_exit: bool,
    attempt: Attempt,
    map: Map,
    deadline: std::time::Instant,
    pause: Mutex<Duration>,
    promise: Mutex<Option<Promise>>,
    /// The attempt under way (kept alive until it completes).
    current: Mutex<Option<Future>>,
}

impl AsyncOp {
    fn watch(self: &Arc<Self>, f: Future) {
        let me = self.clone();
        f.on_complete(move |r| me.answered(r));
        // Kept only while it may still complete (else the cycle through
        // the slot's callback would outlive it).
        if !f.is_ready() {
            *self.current.lock() = Some(f);
        }
    }

    fn answered(self: &Arc<Self>, r: &Result<Vec<u8>>) {
        match r {
            Ok(v) => self.finish((self.map)(&self.dict, v)),
            Err(e) if std::time::Instant::now() < self.deadline && self.dict.retryable(e, self.again_on_exit) => {
                let pause = {
                    let mut p = self.pause.lock();
                    let now = *p;
                    *p = (now * 2).min(Duration::from_millis(50));
                    now
                };
                let me = self.clone();
                self.dict.0.node.after(pause, move || me.refresh());
            }
            Err(e) => self.finish(Err(e.clone())),
        }
    }

    /// On the timer thread: asks the head for the configuration, then tries again.
    fn refresh(self: &Arc<Self>) {
        let d = &self.dict;
        let cfg = d.cfg();
        let lookup = d.0.svc.request_quiet(&d.0.node, HEAD_ID, op::LOOKUP, Msg { id: cfg.id, epoch: cfg.epoch, ..Msg::default() }, Vec::new());
        match lookup {
            Err(e) => self.finish(Err(e)),
            Ok(f) => {
                let me = self.clone();
                f.on_complete(move |r| match r.as_ref().map_err(Clone::clone).and_then(|b| me.dict.install_config(b)) {
                    Err(e) if e.kind == ErrorKind::InvalidArgument => me.finish(Err(e)),
                    _ => {
                        let again = me.clone();
                        me.dict.0.node.after(Duration::ZERO, move || again.again());
                    }
                });
                *self.current.lock() = Some(f);
            }
        }
    }

    fn again(self: &Arc<Self>) {
        match (self.attempt)(&self.dict) {
            Ok(f) => self.watch(f),
            Err(e) => self.answered(&Err(e)),
        }
    }

    fn finish(&self, r: Result<Vec<u8>>) {
        let p = self.promise.lock().take();
        if let Some(p) = p {
            p.complete(r);
        }
        self.current.lock().take();
    }
}

/// A dict as any process uses it: its configuration (no reference is
/// counted: a dict lives until `release`, as in ClusterDicts). Clones
/// share it; `to_bytes` passes it to another process (`DictExt::open_dict`).
/// Every operation that waits has an `_async` form returning a `Future`.
#[derive(Clone)]
pub struct Dict(Arc<Inner>);

impl std::fmt::Debug for Dict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&name_of(&self.cfg()))
    }
}

impl Dict {
    fn new(node: &Arc<Node>, svc: Arc<Dicts>, cfg: DictConfig) -> Dict {
        Dict(Arc::new(Inner { node: node.clone(), svc, name: cfg.name.clone(), kind: cfg.kind, cfg: RwLock::new(Arc::new(cfg)) }))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn kind(&self) -> DictKind {
        self.0.kind
    }
    /// The members now (the survivors, after a member died), as far as
    /// this process knows: see `config`.
    pub fn members(&self) -> Vec<u32> {
        self.config().members.clone()
    }
    /// The newest configuration this process knows: the handle's, or the
    /// one this process holds as a member or keeps as the head, when newer
    /// (a handle learns of a new epoch only when an operation meets it).
    pub fn config(&self) -> Arc<DictConfig> {
        let cfg = self.cfg();
        match self.0.svc.known_config(cfg.id) {
            Some(newer) if newer.epoch > cfg.epoch => {
                let mut c = self.0.cfg.write();
                if newer.epoch > c.epoch {
                    *c = newer;
                }
                c.clone()
            }
            _ => cfg,
        }
    }
    fn cfg(&self) -> Arc<DictConfig> {
        self.0.cfg.read().clone()
    }
    pub fn node(&self) -> &Arc<Node> {
        &self.0.node
    }
    /// The handle as bytes, for another process's `open_dict`.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_payload(&*self.cfg())
    }

    /// Looks up the dict's current configuration on the head.
    pub fn refresh(&self) -> Result<()> {
        let cfg = self.cfg();
        let f = self.0.svc.request_quiet(&self.0.node, HEAD_ID, op::LOOKUP, Msg { id: cfg.id, epoch: cfg.epoch, ..Msg::default() }, Vec::new())?;
        self.install_config(f.fetch(Some(Duration::from_secs(10)))?)
    }

    /// Keeps a configuration the head sent, if newer than this handle's.
    fn install_config(&self, bytes: &[u8]) -> Result<()> {
        let new: DictConfig = wire::decode_payload(bytes)?;
        new.check()?;
        let mut c = self.0.cfg.write();
        if new.epoch > c.epoch {
            *c = Arc::new(new);
        }
        Ok(())
    }

    /// Runs `attempt` (an operation, waited for) again on a newer
    /// configuration while the answer says the configuration changed, or
    /// (`again_on_exit`: the operation may run twice) the process asked
    /// died: the head then makes a new epoch over the survivors. Gives up
    /// after `RETRY_FOR`, with the last error.
    fn retrying<T>(&self, again_on_exit: bool, attempt: impl Fn() -> Result<T>) -> Result<T> {
        let deadline = std::time::Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(1);
        loop {
            match attempt() {
                Err(e) if std::time::Instant::now() < deadline && self.retryable(&e, again_on_exit) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                    if let Err(r) = self.refresh() {
                        if r.kind == ErrorKind::InvalidArgument {
                            return Err(r);
                        }
                    }
                }
                r => return r,
            }
        }
    }

    fn retryable(&self, e: &Error, again_on_exit: bool) -> bool {
        match e.kind {
            ErrorKind::NotReady => e.message.contains(STALE),
            ErrorKind::ProcessExited => again_on_exit && e.pid != HEAD_ID && !e.message.contains(LOST),
            _ => false,
        }
    }

    fn msg(&self, part: u32, arg: u64) -> Msg {
        let cfg = self.cfg();
        Msg { id: cfg.id, epoch: cfg.epoch, part, arg }
    }

    /// This process's copy of a Global dict's `part`, if it holds one.
    fn local_copy(&self, part: u32) -> Option<Arc<Held>> {
        if self.0.kind != DictKind::Global {
            return None;
        }
        let me = self.0.node.myid();
        self.0.svc.held(self.cfg().id).filter(|h| h.cfg().stores(me, part))
    }

    /// The error for a key of a partition lost with its only replica.
    fn lost(&self, cfg: &DictConfig, part: u32) -> Option<Error> {
        let pid = cfg.lost.get(part as usize).copied().unwrap_or(0);
        (pid != 0).then(|| {
            Error::at(ErrorKind::ProcessExited, pid, format!("the keys of partition {part} of {} {LOST} with process {pid} (replication 1)", name_of(cfg)))
        })
    }

    fn to_primary(&self, op: u16, key: &[u8], payload: Vec<u8>) -> Result<Future> {
        let part = partition(key);
        let cfg = self.cfg();
        if let Some(e) = self.lost(&cfg, part) {
            return Err(e);
        }
        let m = Msg { id: cfg.id, epoch: cfg.epoch, part, arg: 0 };
        if let Some(f) = self.answered_by_backup(op, &cfg, m, &payload) {
            return f;
        }
        self.0.svc.request_quiet(&self.0.node, cfg.primary(m.part), op, m, payload)
    }

    /// A set (see "The backup answers" above) from a process that is
    /// neither of its partition's two replicas and has a connection to the
    /// backup, one at a time: with others in flight (pipelined), the
    /// primary's answers travel corked together. None: not such a set.
    fn answered_by_backup(&self, op: u16, cfg: &DictConfig, m: Msg, payload: &[u8]) -> Option<Result<Future>> {
        let (node, svc) = (&self.0.node, &self.0.svc);
        let &[primary, backup] = cfg.replicas(m.part) else { return None };
        let me = node.myid();
        if !matches!(op, op::SET | op::SET_F) || me == primary || me == backup || svc.answered_in_flight.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let conn = node.open_conn(backup)?;
        let m = Msg { arg: u64::from(backup), ..m };
        Some(node.request_quiet_answered_by(primary, (backup, conn), ID, op, &wire::encode_meta(&m), payload).inspect(|f| {
            svc.answered_in_flight.fetch_add(1, Ordering::Relaxed);
            let svc = svc.clone();
            f.on_complete(move |_| {
                svc.answered_in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }))
    }

    /// The `_async` form of an operation: `attempt` sends it (a raw
    /// future), `map` makes the value the caller sees. Retried as the
    /// blocking forms are (`retrying`), with no thread waiting: a stale
    /// configuration or a dead primary schedules a lookup on the head and
    /// another attempt on the timer thread.
    fn retry_async(&self, again_on_exit: bool, attempt: impl Fn(&Dict) -> Result<Future> + Send + Sync + 'static, map: Map) -> Result<Future> {
        let first = match attempt(self) {
            Err(e) if self.retryable(&e, again_on_exit) => Err(e),
            Err(e) => return Err(e),
            Ok(f) => Ok(f),
        };
        let node = self.0.node.clone();
        let pid = first.as_ref().map(Future::pid).unwrap_or_else(|e| e.pid);
        let (outer, promise) = node.promise(pid);
        let op = Arc::new(AsyncOp {
            dict: self.clone(),
            again_on_exit,
            attempt: Box::new(attempt),
            map,
            deadline: std::time::Instant::now() + RETRY_FOR,
            pause: Mutex::new(Duration::from_millis(1)),
            promise: Mutex::new(Some(promise)),
            current: Mutex::new(None),
        });
        match first {
            Ok(f) => {
                let outer = outer.keeping_conn_of(&f);
                op.watch(f);
                Ok(outer)
            }
            Err(e) => {
                op.answered(&Err(e));
                Ok(outer)
            }
        }
    }

    fn ready(&self, v: Result<Vec<u8>>) -> Future {
        let (f, p) = self.0.node.promise_quiet(self.0.node.myid());
        p.complete(v);
        f
    }

    /// Sets `key` to `value` on every replica; the future completes once
    /// all of them applied it.
    fn set_raw(&self, key: &[u8], value: &[u8]) -> Result<Future> {
        self.to_primary(op::SET, key, encode_kv(key, value))
    }
    /// Sets `key` to `value` on every replica; the future completes (empty)
    /// once all of them applied it. Every `_async` form retries as its
    /// blocking form does (on a newer configuration after a member died),
    /// with no thread waiting.
    pub fn set_async(&self, key: &[u8], value: &[u8]) -> Result<Future> {
        let (k, v) = (key.to_vec(), value.to_vec());
        self.retry_async(true, move |d| d.set_raw(&k, &v), |_, _| Ok(Vec::new()))
    }
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.retrying(true, || self.set_raw(key, value)?.wait(None))
    }

    /// Sets `key` to `f(args)` computed where it is stored (ValueF): on
    /// each member of a Global dict, on the primary of a Distributed one.
    /// `f` is a value function registered by that name there.
    fn set_with_raw(&self, key: &[u8], f: &str, args: &[u8]) -> Result<Future> {
        self.to_primary(op::SET_F, key, wire::encode_payload(&(key, f, args)))
    }
    pub fn set_with_async(&self, key: &[u8], f: &str, args: &[u8]) -> Result<Future> {
        let (k, f, a) = (key.to_vec(), f.to_string(), args.to_vec());
        self.retry_async(true, move |d| d.set_with_raw(&k, &f, &a), |_, _| Ok(Vec::new()))
    }
    pub fn set_with(&self, key: &[u8], f: &str, args: &[u8]) -> Result<()> {
        self.retrying(true, || self.set_with_raw(key, f, args)?.wait(None))
    }

    /// The future's value: `decode_opt` gives the value, if any. A member
    /// of a Global dict reads its own copy (the future is ready at once).
    fn get_raw(&self, key: &[u8]) -> Result<Future> {
        match self.local_copy(partition(key)) {
            Some(h) => Ok(self.ready(Ok(encode_opt(h.parts[partition(key) as usize].lock().store.get(key).map(|v| &v[..]))))),
            None => self.to_primary(op::GET, key, key.to_vec()),
        }
    }
    /// Reads `key` from this process's own copy, never waiting: `None`
    /// unless this process is a member of a Global dict (then
    /// `Some(value or None)`), as `get` would without a message.
    pub fn get_local(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let part = partition(key);
        self.local_copy(part).map(|h| h.parts[part as usize].lock().store.get(key).cloned())
    }

    /// The process that owns `key` now (its partition's primary, which
    /// orders its writes; a Distributed dict's value functions run there).
    pub fn owner(&self, key: &[u8]) -> u32 {
        self.cfg().primary(partition(key))
    }

    /// Sets many keys at once: one request to each primary concerned,
    /// carrying its pairs (each still a write of its own, ordered and
    /// replicated as `set`); the future completes once every pair is on
    /// every replica, or fails with the first error (pairs already applied
    /// stay applied).
    pub fn set_many_async(&self, pairs: &[(&[u8], &[u8])]) -> Result<Future> {
        let owned: Vec<(Vec<u8>, Vec<u8>)> = pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        self.retry_async(true, move |d| d.set_many_raw(&owned), |_, _| Ok(Vec::new()))
    }
    pub fn set_many(&self, pairs: &[(&[u8], &[u8])]) -> Result<()> {
        self.retrying(true, || self.set_many_raw(pairs)?.wait(None))
    }

    fn set_many_raw<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<Future> {
        let cfg = self.cfg();
        let mut by_primary: std::collections::BTreeMap<u32, PairRefs<'_>> = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            let part = partition(k.as_ref());
            if let Some(e) = self.lost(&cfg, part) {
                return Err(e);
            }
            by_primary.entry(cfg.primary(part)).or_default().push((k.as_ref(), v.as_ref()));
        }
        let node = &self.0.node;
        let futures = by_primary
            .iter()
            .map(|(&p, batch)| {
                self.0.svc.request_quiet(node, p, op::SET_MANY, Msg { id: cfg.id, epoch: cfg.epoch, part: 0, arg: 0 }, wire::encode_payload(batch))
            })
            .collect::<Result<Vec<Future>>>()?;
        let pid = by_primary.keys().next().copied().unwrap_or(node.myid());
        Ok(node.join_quiet(pid, futures, |_| Ok(Vec::new())))
    }

    /// The future's value is the value; a missing key fails it with
    /// NotFound.
    pub fn get_async(&self, key: &[u8]) -> Result<Future> {
        let k = key.to_vec();
        self.retry_async(true, move |d| d.get_raw(&k), |d, b| d.found(b))
    }
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let part = partition(key);
        if let Some(h) = self.local_copy(part) {
            return Ok(h.parts[part as usize].lock().store.get(key).cloned());
        }
        self.retrying(true, || {
            let f = self.get_raw(key)?;
            Ok(decode_opt(f.fetch(None)?)?.map(<[u8]>::to_vec))
        })
    }
    /// `d[k]`: the value, or NotFound.
    pub fn index(&self, key: &[u8]) -> Result<Vec<u8>> {
        self.get(key)?.ok_or_else(|| self.not_found(key))
    }
    /// `get(d, k, default)`: the value, or `default` (nothing is stored).
    pub fn get_or(&self, key: &[u8], default: &[u8]) -> Result<Vec<u8>> {
        Ok(self.get(key)?.unwrap_or_else(|| default.to_vec()))
    }

    /// A GET or POP answer as the value, or NotFound.
    fn found(&self, answer: &[u8]) -> Result<Vec<u8>> {
        decode_opt(answer)?.map(<[u8]>::to_vec).ok_or_else(|| Error::new(ErrorKind::NotFound, format!("key not found in {}", name_of(&self.cfg()))))
    }

    fn not_found(&self, key: &[u8]) -> Error {
        Error::new(ErrorKind::NotFound, format!("key {:?} not found in {}", String::from_utf8_lossy(key), name_of(&self.cfg())))
    }

    /// The future's value: one byte, 1 when `key` is there.
    fn haskey_raw(&self, key: &[u8]) -> Result<Future> {
        match self.local_copy(partition(key)) {
            Some(h) => Ok(self.ready(Ok(vec![h.parts[partition(key) as usize].lock().store.contains_key(key) as u8]))),
            None => self.to_primary(op::HASKEY, key, key.to_vec()),
        }
    }
    /// The future's value: one byte, 1 when `key` is there.
    pub fn haskey_async(&self, key: &[u8]) -> Result<Future> {
        let k = key.to_vec();
        self.retry_async(true, move |d| d.haskey_raw(&k), |_, b| Ok(b.to_vec()))
    }
    pub fn haskey(&self, key: &[u8]) -> Result<bool> {
        let part = partition(key);
        if let Some(h) = self.local_copy(part) {
            return Ok(h.parts[part as usize].lock().store.contains_key(key));
        }
        self.retrying(true, || Ok(self.haskey_raw(key)?.fetch(None)? == [1]))
    }

    /// `get!(d, k, default)`: the value there, or `default` inserted on
    /// every replica (atomic at the primary); the future's value is the
    /// value the key has.
    fn get_or_insert_raw(&self, key: &[u8], default: &[u8]) -> Result<Future> {
        self.to_primary(op::GET_OR_INSERT, key, encode_kv(key, default))
    }
    /// The future's value is the value the key has.
    pub fn get_or_insert_async(&self, key: &[u8], default: &[u8]) -> Result<Future> {
        let (k, v) = (key.to_vec(), default.to_vec());
        self.retry_async(true, move |d| d.get_or_insert_raw(&k, &v), |_, b| Ok(b.to_vec()))
    }
    pub fn get_or_insert(&self, key: &[u8], default: &[u8]) -> Result<Vec<u8>> {
        self.retrying(true, || Ok(self.get_or_insert_raw(key, default)?.fetch(None)?.to_vec()))
    }

    /// Removes `key` everywhere; the future's value (`decode_opt`) is the
    /// value it had, if any.
    fn pop_raw(&self, key: &[u8]) -> Result<Future> {
        self.to_primary(op::POP, key, key.to_vec())
    }
    /// The future's value is the value the key had; a missing key fails
    /// it with NotFound.
    pub fn pop_async(&self, key: &[u8]) -> Result<Future> {
        let k = key.to_vec();
        self.retry_async(false, move |d| d.pop_raw(&k), |d, b| d.found(b))
    }
    /// Retried on a newer configuration only when it was refused unapplied
    /// (after the primary died its outcome is unknown: ProcessExited).
    pub fn pop(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.retrying(false, || {
            let f = self.pop_raw(key)?;
            Ok(decode_opt(f.fetch(None)?)?.map(<[u8]>::to_vec))
        })
    }
    /// `pop!(d, k, default)`.
    pub fn pop_or(&self, key: &[u8], default: &[u8]) -> Result<Vec<u8>> {
        Ok(self.pop(key)?.unwrap_or_else(|| default.to_vec()))
    }

    /// `delete!(d, k)`: removes `key` everywhere (nothing if absent).
    fn delete_raw(&self, key: &[u8]) -> Result<Future> {
        self.to_primary(op::DELETE, key, key.to_vec())
    }
    pub fn delete_async(&self, key: &[u8]) -> Result<Future> {
        let k = key.to_vec();
        self.retry_async(true, move |d| d.delete_raw(&k), |_, _| Ok(Vec::new()))
    }
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.retrying(true, || self.delete_raw(key)?.wait(None))
    }

    /// Asks the members that answer for the whole dict (Distributed: each
    /// for the partitions it is primary of; Global: this process if a
    /// member, else one member) and merges their answers.
    fn gather(&self, op: u16, arg: u64, merge: fn(Vec<Vec<u8>>) -> Result<Vec<u8>>) -> Result<Future> {
        let node = &self.0.node;
        let me = node.myid();
        let cfg = self.cfg();
        if let Some(e) = (0..PARTITIONS).find_map(|p| self.lost(&cfg, p)) {
            return Err(e);
        }
        let targets: Vec<u32> = match cfg.kind {
            DictKind::Distributed => cfg.members.clone(),
            DictKind::Global if cfg.is_member(me) => vec![me],
            DictKind::Global => cfg.members.first().copied().into_iter().collect(),
        };
        if targets.is_empty() {
            return Err(Error::new(ErrorKind::ProcessExited, format!("every member of {} is gone", name_of(&cfg))));
        }
        let futures = targets.iter().map(|&p| self.0.svc.request_quiet(node, p, op, self.msg(0, arg), Vec::new())).collect::<Result<Vec<Future>>>()?;
        Ok(node.join_quiet(targets[0], futures, merge))
    }

    /// `length(d)`; the future's value: `decode_len`.
    fn length_raw(&self) -> Result<Future> {
        self.gather(op::LENGTH, 0, |all| {
            let mut n = 0usize;
            for v in all {
                n += decode_len(&v)?;
            }
            Ok((n as u64).to_le_bytes().to_vec())
        })
    }
    /// The future's value: the length as a u64, little-endian (`decode_len`).
    pub fn length_async(&self) -> Result<Future> {
        self.retry_async(true, |d| d.length_raw(), |_, b| Ok(b.to_vec()))
    }
    pub fn length(&self) -> Result<usize> {
        self.retrying(true, || decode_len(self.length_raw()?.fetch(None)?))
    }
    /// True only when no member holds any pair.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.length()? == 0)
    }

    /// The keys, values or pairs; the future's value: `decode_list` (keys,
    /// values) or `decode_pairs`.
    fn entries_raw(&self, what: Entries) -> Result<Future> {
        let merge: fn(Vec<Vec<u8>>) -> Result<Vec<u8>> = match what {
            Entries::Pairs => |all| {
                let mut v = Vec::new();
                for a in all {
                    v.extend(decode_pairs(&a)?);
                }
                Ok(wire::encode_payload(&v))
            },
            _ => |all| {
                let mut v = Vec::new();
                for a in all {
                    v.extend(decode_list(&a)?);
                }
                Ok(wire::encode_payload(&v))
            },
        };
        self.gather(op::ENTRIES, what as u64, merge)
    }
    /// The future's value: `decode_list` (keys, values) or `decode_pairs`.
    pub fn entries_async(&self, what: Entries) -> Result<Future> {
        self.retry_async(true, move |d| d.entries_raw(what), |_, b| Ok(b.to_vec()))
    }
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.retrying(true, || decode_list(self.entries_raw(Entries::Keys)?.fetch(None)?))
    }
    pub fn values(&self) -> Result<Vec<Vec<u8>>> {
        self.retrying(true, || decode_list(self.entries_raw(Entries::Values)?.fetch(None)?))
    }
    /// Every pair (iteration), in no particular order.
    pub fn pairs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.retrying(true, || decode_pairs(self.entries_raw(Entries::Pairs)?.fetch(None)?))
    }

    /// What this process stores of the dict (every partition it is a
    /// replica of; empty on a non-member), read here with no message.
    pub fn localpart(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(h) = self.0.svc.held(self.cfg().id) else { return Vec::new() };
        h.parts.iter().flat_map(|p| p.lock().store.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()).collect()
    }

    /// `delete!(d)`: releases the dict on every member; once the future
    /// completes no member holds anything of it and its name is free.
    pub fn release_async(&self) -> Result<Future> {
        self.0.svc.request(&self.0.node, HEAD_ID, op::RELEASE, self.msg(0, 0), Vec::new())
    }
    pub fn release(&self) -> Result<()> {
        self.release_async()?.wait(None)
    }
}

/// Dictionaries, on any node with the dict service.
pub trait DictExt {
    /// Creates the dict `spec` describes, or opens the one of that name if
    /// its specification is the same (an error if not); returns once every
    /// member installed it. The future's value is the handle's bytes
    /// (`open_dict`).
    fn dict_async(&self, spec: &Spec) -> Result<Future>;
    fn dict(&self, spec: &Spec) -> Result<Dict>;
    /// A handle from `Dict::to_bytes`, made in any process.
    fn open_dict(&self, bytes: &[u8]) -> Result<Dict>;
    /// The dicts this process holds state for (as a member), by name.
    fn local_dicts(&self) -> Vec<String>;
    /// Registers the value function `name` here (`Dict::set_with`): it
    /// runs where a value is stored, so every member that stores one needs it.
    fn register_value_fn<F>(&self, name: &str, f: F) -> Result<()>
    where
        F: Fn(&Arc<Node>, &[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static;
}

impl DictExt for Arc<Node> {
    fn dict_async(&self, spec: &Spec) -> Result<Future> {
        self.check_open()?;
        let svc = dicts(self)?;
        svc.request(self, HEAD_ID, op::CREATE, Msg::default(), wire::encode_payload(spec))
    }

    fn dict(&self, spec: &Spec) -> Result<Dict> {
        let f = self.dict_async(spec)?;
        self.open_dict(f.fetch(None)?)
    }

    fn open_dict(&self, bytes: &[u8]) -> Result<Dict> {
        let svc = dicts(self)?;
        let cfg: DictConfig = wire::decode_payload(bytes).map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("not a dict handle: {}", e.message)))?;
        cfg.check().map_err(|e| Error::new(ErrorKind::InvalidArgument, e.message))?;
        Ok(Dict::new(self, svc, cfg))
    }

    fn local_dicts(&self) -> Vec<String> {
        dicts(self).map(|d| d.local_dicts()).unwrap_or_default()
    }

    fn register_value_fn<F>(&self, name: &str, f: F) -> Result<()>
    where
        F: Fn(&Arc<Node>, &[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static,
    {
        if name.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "a value function needs a name"));
        }
        dicts(self)?.functions.write().insert(name.to_string(), Arc::new(f));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The service alone, without sockets: messages from made-up peers
    //! handed to it with `Incoming::test`, answers captured; this
    //! process's own dicts through the public API.
    use super::*;
    use crate::node::{peer_state, Config};

    type Out = Arc<Mutex<Vec<Result<Vec<u8>>>>>;

    fn head() -> (Arc<Node>, Arc<Dicts>) {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        let d = Dicts::new();
        n.install(d.clone()).unwrap();
        n.start().unwrap();
        (n, d)
    }

    fn with_peers() -> (Arc<Node>, Arc<Dicts>) {
        let (n, d) = head();
        for p in 5..=9 {
            n.add_peer(p, peer_state::READY);
        }
        (n, d)
    }

    #[test]
    fn each_value_picks_this_process_entry_and_refuses_garbage() {
        let args = encode_each(&[(2, b"two".to_vec()), (3, Vec::new()), (4, b"four".to_vec())]);
        assert_eq!(each_value(2, &args).unwrap(), b"two");
        assert_eq!(each_value(3, &args).unwrap(), b"");
        assert_eq!(each_value(4, &args).unwrap(), b"four");
        assert!(each_value(5, &args).unwrap_err().contains("process 5"));
        assert!(each_value(4, &args[..args.len() - 1]).is_err());
        let mut huge = 2u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(each_value(2, &huge).is_err());
    }

    fn is_request(op: u16) -> bool {
        !matches!(
            op,
            op::INSTALL
                | op::INSTALLED
                | op::DROP
                | op::DROPPED
                | op::REPLICATE
                | op::REPLICATE_ANSWER
                | op::ACK
                | op::ACK_ANSWERED
                | op::RECONFIG
                | op::STATE
                | op::STATE_ACK
        )
    }

    fn send(n: &Arc<Node>, d: &Dicts, from: u32, op: u16, m: Msg, payload: &[u8], out: &Out) {
        let kind = if is_request(op) { Kind::Request } else { Kind::Oneway };
        let msg = Incoming::test(from, Header::new(kind, ID, op, 1), wire::encode_meta(&m), payload.to_vec(), out);
        assert!(d.on_message(n, msg).unwrap().is_none());
    }

    fn pop(out: &Out) -> Result<Vec<u8>> {
        out.lock().pop().expect("an answer")
    }

    fn cfg_of(v: Vec<u8>) -> DictConfig {
        wire::decode_payload(&v).unwrap()
    }

    fn leave(n: &Arc<Node>, d: &Dicts, pid: u32) {
        n.peer(pid).unwrap().state.store(3, Ordering::Release);
        d.on_peer_left(n, pid, Departure { graceful: false, was_ready: true });
    }

    /// A key whose partition's primary is `pid` in `cfg`.
    fn key_on(cfg: &DictConfig, pid: u32, skip: usize) -> Vec<u8> {
        (0..).map(|i| format!("k{i}").into_bytes()).filter(|k| cfg.primary(partition(k)) == pid).nth(skip).unwrap()
    }

    #[test]
    fn the_head_creates_once_every_member_installed_opens_the_same_spec_and_refuses_another() {
        let (n, d) = with_peers();
        let out: Out = Arc::default();
        let spec = Spec::new(DictKind::Distributed, Members::Pids(vec![6, 5])).named("d");
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        assert!(out.lock().is_empty(), "waits for 5 and 6 to install it");
        let id = 1;
        send(&n, &d, 5, op::INSTALLED, Msg { id, ..Msg::default() }, &[], &out);
        // Opening it meanwhile waits too.
        send(&n, &d, 8, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        assert!(out.lock().is_empty());
        send(&n, &d, 6, op::INSTALLED, Msg { id, ..Msg::default() }, &[], &out);
        let (a, b) = (cfg_of(pop(&out).unwrap()), cfg_of(pop(&out).unwrap()));
        assert_eq!(a, b);
        assert_eq!((a.id, a.name.as_str(), a.members.clone(), a.replication, a.epoch), (1, "d", vec![5, 6], 2, 1));
        // The same spec opens it at once; another is refused, naming both.
        send(&n, &d, 9, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        assert_eq!(cfg_of(pop(&out).unwrap()), a);
        let other = Spec::new(DictKind::Global, Members::Pids(vec![5, 6])).named("d");
        send(&n, &d, 9, op::CREATE, Msg::default(), &wire::encode_payload(&other), &out);
        let e = pop(&out).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("another specification") && e.message.contains("Global"), "{e}");
        let tagged = spec.clone().type_tag(b"Int,Int");
        send(&n, &d, 9, op::CREATE, Msg::default(), &wire::encode_payload(&tagged), &out);
        assert_eq!(pop(&out).unwrap_err().kind, ErrorKind::InvalidArgument, "the type tag is part of the spec");
        // Members that are not there.
        let gone = Spec::new(DictKind::Global, Members::Pids(vec![5, 42]));
        send(&n, &d, 9, op::CREATE, Msg::default(), &wire::encode_payload(&gone), &out);
        assert_eq!(pop(&out).unwrap_err().kind, ErrorKind::NoSuchProcess);
        // Generated names are unique.
        let anon = Spec::new(DictKind::Global, Members::Pids(vec![1]));
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&anon), &out);
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&anon), &out);
        let (x, y) = (cfg_of(pop(&out).unwrap()), cfg_of(pop(&out).unwrap()));
        assert_ne!(x.name, y.name);
        assert!(x.name.starts_with("dict-7-"), "{}", x.name);
        assert_eq!(d.local_dicts().len(), 2, "the head is their member");
        assert_eq!(d.registered(), 3);
        // Release waits for every member to drop it; then the name is free.
        send(&n, &d, 8, op::RELEASE, Msg { id, epoch: 1, ..Msg::default() }, &[], &out);
        assert!(out.lock().is_empty());
        send(&n, &d, 5, op::DROPPED, Msg { id, ..Msg::default() }, &[], &out);
        leave(&n, &d, 6);
        assert!(pop(&out).is_ok(), "a member that died holds nothing");
        assert_eq!(d.registered(), 2);
        send(&n, &d, 8, op::RELEASE, Msg { id, ..Msg::default() }, &[], &out);
        assert!(pop(&out).is_ok(), "released twice: nothing held");
        send(&n, &d, 8, op::RELEASE, Msg { id: x.id, ..Msg::default() }, &[], &out);
        assert!(pop(&out).is_ok());
        assert_eq!(d.local_dicts(), vec![y.name.clone()]);
        n.close();
    }

    #[test]
    fn a_create_waiting_for_a_member_that_dies_fails_naming_it() {
        let (n, d) = with_peers();
        let out: Out = Arc::default();
        let spec = Spec::new(DictKind::Global, Members::Pids(vec![1, 5, 6])).named("g");
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        send(&n, &d, 5, op::INSTALLED, Msg { id: 1, ..Msg::default() }, &[], &out);
        assert_eq!(d.local_dicts(), vec!["g".to_string()]);
        leave(&n, &d, 6);
        let e = pop(&out).unwrap_err();
        assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, 6));
        assert!(e.message.contains("process 6"), "{e}");
        assert!(d.local_dicts().is_empty() && d.registered() == 0, "undone");
        // Under master_worker, two workers cannot be members together.
        let mw =
            Node::detached(Config { heartbeat_timeout: Duration::ZERO, topology: crate::node::Topology::MasterWorker, ..Config::default() }, true).unwrap();
        let md = Dicts::new();
        mw.install(md.clone()).unwrap();
        mw.start().unwrap();
        mw.add_peer(5, peer_state::READY);
        mw.add_peer(6, peer_state::READY);
        let two = Spec::new(DictKind::Global, Members::Pids(vec![5, 6]));
        send(&mw, &md, 5, op::CREATE, Msg::default(), &wire::encode_payload(&two), &out);
        assert_eq!(pop(&out).unwrap_err().kind, ErrorKind::Topology);
        let with_head = Spec::new(DictKind::Global, Members::Pids(vec![1, 5]));
        send(&mw, &md, 5, op::CREATE, Msg::default(), &wire::encode_payload(&with_head), &out);
        assert!(out.lock().is_empty(), "the head and one worker: waits for 5 to install it");
        mw.close();
        // Only the head creates.
        let w = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, false).unwrap();
        let wd = Dicts::new();
        w.install(wd.clone()).unwrap();
        w.start().unwrap();
        send(&w, &wd, 5, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        assert_eq!(pop(&out).unwrap_err().kind, ErrorKind::NotHead);
        w.close();
        n.close();
    }

    #[test]
    fn the_primary_answers_a_write_once_its_backup_applied_it_and_a_backup_applies_in_order() {
        let (n, d) = with_peers();
        let out: Out = Arc::default();
        let spec = Spec::new(DictKind::Distributed, Members::Pids(vec![1, 5])).named("d");
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        send(&n, &d, 5, op::INSTALLED, Msg { id: 1, ..Msg::default() }, &[], &out);
        let cfg = cfg_of(pop(&out).unwrap());
        assert_eq!(cfg.replication, 2);
        let m = |part: u32, arg: u64| Msg { id: 1, epoch: 1, part, arg };
        // A key the head is primary of: the set waits for 5's ACK.
        let k = key_on(&cfg, 1, 0);
        let p = partition(&k);
        send(&n, &d, 7, op::SET, m(p, 0), &encode_kv(&k, b"v1"), &out);
        assert!(out.lock().is_empty(), "5 has not applied it");
        // A read of it waits too (it could still be lost with the head).
        send(&n, &d, 8, op::GET, m(p, 0), &k, &out);
        assert!(out.lock().is_empty());
        send(&n, &d, 5, op::ACK, m(p, 1), &[], &out);
        assert_eq!(decode_opt(&pop(&out).unwrap()).unwrap(), Some(&b"v1"[..]));
        assert_eq!(pop(&out).unwrap(), b"");
        // get! finds it; pop removes it (waits for 5 again); get! inserts.
        send(&n, &d, 8, op::GET_OR_INSERT, m(p, 0), &encode_kv(&k, b"other"), &out);
        assert_eq!(pop(&out).unwrap(), b"v1");
        send(&n, &d, 8, op::POP, m(p, 0), &k, &out);
        assert!(out.lock().is_empty());
        send(&n, &d, 5, op::ACK, m(p, 2), &[], &out);
        assert_eq!(decode_opt(&pop(&out).unwrap()).unwrap(), Some(&b"v1"[..]));
        send(&n, &d, 8, op::POP, m(p, 0), &k, &out);
        assert_eq!(decode_opt(&pop(&out).unwrap()).unwrap(), None, "absent: nothing to replicate");
        send(&n, &d, 8, op::GET_OR_INSERT, m(p, 0), &encode_kv(&k, b"first"), &out);
        send(&n, &d, 5, op::ACK, m(p, 3), &[], &out);
        assert_eq!(pop(&out).unwrap(), b"first");
        // A stale epoch, or a key the head is not primary of, is refused.
        send(&n, &d, 8, op::SET, Msg { epoch: 0, ..m(p, 0) }, &encode_kv(&k, b"x"), &out);
        assert!(pop(&out).unwrap_err().message.contains("stale configuration"));
        let k5 = key_on(&cfg, 5, 0);
        send(&n, &d, 8, op::GET, m(partition(&k5), 0), &k5, &out);
        assert!(pop(&out).unwrap_err().message.contains("not the primary"));
        // As 5's backup: writes 2 and 3 before 1, applied in order once 1 arrives.
        let q = partition(&k5);
        let eff = |e: Effect| wire::encode_payload(&e);
        send(&n, &d, 5, op::REPLICATE, m(q, 2), &eff(Effect::Set { key: k5.clone(), value: b"2".to_vec() }), &out);
        send(&n, &d, 5, op::REPLICATE, m(q, 3), &eff(Effect::Set { key: k5.clone(), value: b"3".to_vec() }), &out);
        let dict = n.open_dict(&wire::encode_payload(&cfg)).unwrap();
        assert!(!dict.localpart().iter().any(|(key, _)| key == &k5));
        send(&n, &d, 5, op::REPLICATE, m(q, 1), &eff(Effect::Set { key: k5.clone(), value: b"1".to_vec() }), &out);
        assert!(dict.localpart().contains(&(k5.clone(), b"3".to_vec())));
        // Not from the primary: ignored.
        send(&n, &d, 6, op::REPLICATE, m(q, 4), &eff(Effect::Delete { key: k5.clone() }), &out);
        assert!(dict.localpart().contains(&(k5.clone(), b"3".to_vec())));
        // LENGTH counts what the head is primary of.
        send(&n, &d, 8, op::LENGTH, m(0, 0), &[], &out);
        assert_eq!(decode_len(&pop(&out).unwrap()).unwrap(), 1);
        send(&n, &d, 8, op::ENTRIES, m(0, 2), &[], &out);
        assert_eq!(decode_pairs(&pop(&out).unwrap()).unwrap(), vec![(k.clone(), b"first".to_vec())]);
        // Backup 5 dies with a write waiting for it: the write is on every
        // survivor, so it is acknowledged; the head makes epoch 2 over [1],
        // where the head is the primary of 5's partitions with what it got.
        send(&n, &d, 7, op::SET, m(p, 0), &encode_kv(&k, b"kept"), &out);
        assert!(out.lock().is_empty());
        leave(&n, &d, 5);
        assert_eq!(pop(&out).unwrap(), b"");
        send(&n, &d, 7, op::GET, m(q, 0), &k5, &out);
        assert!(pop(&out).unwrap_err().message.contains("stale configuration"), "epoch 1 is refused");
        send(&n, &d, 7, op::LOOKUP, m(0, 0), &[], &out);
        let now = cfg_of(pop(&out).unwrap());
        assert_eq!((now.epoch, now.members.clone()), (2, vec![1]));
        let m2 = |part: u32| Msg { id: 1, epoch: 2, part, arg: 0 };
        send(&n, &d, 7, op::GET, m2(q), &k5, &out);
        assert_eq!(decode_opt(&pop(&out).unwrap()).unwrap(), Some(&b"3"[..]));
        send(&n, &d, 7, op::GET, m2(p), &k, &out);
        assert_eq!(decode_opt(&pop(&out).unwrap()).unwrap(), Some(&b"kept"[..]));
        // Writes there need no backup any more.
        send(&n, &d, 7, op::SET, m2(q), &encode_kv(&k5, b"4"), &out);
        assert_eq!(pop(&out).unwrap(), b"");
        n.close();
    }

    #[test]
    fn a_dead_members_partitions_are_lost_with_replication_1_and_a_new_backup_gets_the_state() {
        let (n, d) = with_peers();
        let out: Out = Arc::default();
        // Replication 1 over [1, 5]: 5's keys are lost with it, named.
        let spec = Spec::new(DictKind::Distributed, Members::Pids(vec![1, 5])).named("r1").replication(1);
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&spec), &out);
        send(&n, &d, 5, op::INSTALLED, Msg { id: 1, ..Msg::default() }, &[], &out);
        let cfg = cfg_of(pop(&out).unwrap());
        let dict = n.open_dict(&wire::encode_payload(&cfg)).unwrap();
        let mine = key_on(&cfg, 1, 0);
        dict.set(&mine, b"here").unwrap();
        // Replication 2 over [1, 5, 6]: 5 dies; 1 gets a new backup (6) for
        // the partitions 5 and 1 shared, and sends it their state.
        let spec2 = Spec::new(DictKind::Distributed, Members::Pids(vec![1, 5, 6])).named("r2");
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&spec2), &out);
        send(&n, &d, 5, op::INSTALLED, Msg { id: 2, ..Msg::default() }, &[], &out);
        send(&n, &d, 6, op::INSTALLED, Msg { id: 2, ..Msg::default() }, &[], &out);
        let cfg2 = cfg_of(pop(&out).unwrap());
        // And one over [5, 6], of which this process (the head) is no member.
        let spec3 = Spec::new(DictKind::Global, Members::Pids(vec![5, 6])).named("r3");
        send(&n, &d, 7, op::CREATE, Msg::default(), &wire::encode_payload(&spec3), &out);
        send(&n, &d, 5, op::INSTALLED, Msg { id: 3, ..Msg::default() }, &[], &out);
        send(&n, &d, 6, op::INSTALLED, Msg { id: 3, ..Msg::default() }, &[], &out);
        let not_mine = n.open_dict(&wire::encode_payload(&cfg_of(pop(&out).unwrap()))).unwrap();
        let held_here = n.open_dict(&wire::encode_payload(&cfg2)).unwrap();
        let shared = (0..PARTITIONS).find(|&p| cfg2.replicas(p) == [1, 5]).unwrap();
        let k = (0..).map(|i| format!("s{i}").into_bytes()).find(|k| partition(k) == shared).unwrap();
        let m = |part: u32, arg: u64| Msg { id: 2, epoch: 1, part, arg };
        send(&n, &d, 7, op::SET, m(shared, 0), &encode_kv(&k, b"v"), &out);
        send(&n, &d, 5, op::ACK, m(shared, 1), &[], &out);
        assert!(pop(&out).is_ok());
        leave(&n, &d, 5);
        // Handles know the new epoch without an operation: from the
        // configuration held here, and from the head's registry.
        assert_eq!(held_here.members(), vec![1, 6]);
        assert_eq!(not_mine.members(), vec![6]);
        let e = dict.index(&key_on(&cfg, 5, 0)).unwrap_err();
        assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, 5));
        assert!(e.message.contains("lost with process 5"), "{e}");
        assert_eq!(dict.index(&mine).unwrap(), b"here", "the survivor's keys are served");
        assert_eq!(dict.length().unwrap_err().pid, 5, "a length would be wrong: refused");
        send(&n, &d, 7, op::LOOKUP, Msg { id: 2, ..Msg::default() }, &[], &out);
        let now = cfg_of(pop(&out).unwrap());
        assert_eq!(now.replicas(shared), &[1, 6], "a new backup");
        // The write to 6's new partition waits for its state's ack.
        let m2 = |part: u32, arg: u64| Msg { id: 2, epoch: 2, part, arg };
        send(&n, &d, 7, op::SET, m2(shared, 0), &encode_kv(&k, b"w"), &out);
        assert!(out.lock().is_empty());
        send(&n, &d, 6, op::STATE_ACK, m2(shared, 1), &[], &out);
        assert!(out.lock().is_empty(), "the state held write 1, not write 2");
        send(&n, &d, 6, op::ACK, m2(shared, 2), &[], &out);
        assert!(pop(&out).is_ok());
        // A write 6 numbered in epoch 1 for a partition the death left as
        // it was ([6, 1]) is still applied and acknowledged here (refusing
        // it left its writer waiting for good).
        let same = (0..PARTITIONS).find(|&p| cfg2.replicas(p) == [6, 1]).unwrap();
        assert_eq!(now.replicas(same), &[6, 1]);
        let ks = (0..).map(|i| format!("u{i}").into_bytes()).find(|k| partition(k) == same).unwrap();
        let eff = wire::encode_payload(&Effect::Set { key: ks.clone(), value: b"old epoch".to_vec() });
        send(&n, &d, 6, op::REPLICATE, m(same, 1), &eff, &out);
        let r2 = n.open_dict(&wire::encode_payload(&now)).unwrap();
        assert!(r2.localpart().contains(&(ks.clone(), b"old epoch".to_vec())));
        // A message of a later epoch waits for its configuration, then is handled.
        let h = d.held(2).unwrap();
        let eff = wire::encode_payload(&Effect::Set { key: ks.clone(), value: b"epoch 3".to_vec() });
        send(&n, &d, 6, op::REPLICATE, Msg { id: 2, epoch: 3, part: same, arg: 2 }, &eff, &out);
        assert_eq!(h.early.lock().len(), 1);
        let mut next = now.clone();
        next.epoch = 3;
        d.reconfigure(&n, next);
        assert!(h.early.lock().is_empty());
        assert!(r2.localpart().contains(&(ks.clone(), b"epoch 3".to_vec())));
        n.close();
    }

    #[test]
    fn own_dicts_through_the_api() {
        let (n, _) = head();
        n.register_value_fn("myid", |node, args| Ok([&node.myid().to_le_bytes()[..], args].concat())).unwrap();
        for kind in [DictKind::Global, DictKind::Distributed] {
            let d = n.dict(&Spec::new(kind, Members::Workers)).unwrap();
            assert_eq!(d.members(), vec![1], "the head alone is the workers");
            assert!(d.is_empty().unwrap());
            assert_eq!(d.get(b"a").unwrap(), None);
            assert_eq!(d.index(b"a").unwrap_err().kind, ErrorKind::NotFound);
            assert_eq!(d.get_or(b"a", b"dflt").unwrap(), b"dflt");
            assert!(!d.haskey(b"a").unwrap());
            d.set(b"a", b"1").unwrap();
            d.set(b"a", b"2").unwrap();
            assert_eq!(d.index(b"a").unwrap(), b"2", "overwritten");
            assert!(d.haskey(b"a").unwrap());
            assert_eq!(d.get_or_insert(b"b", b"3").unwrap(), b"3");
            assert_eq!(d.get_or_insert(b"b", b"4").unwrap(), b"3");
            d.set_with(b"c", "myid", b"!").unwrap();
            assert_eq!(d.index(b"c").unwrap(), [&1u32.to_le_bytes()[..], b"!"].concat());
            assert_eq!(d.set_with(b"z", "nope", b"").unwrap_err().kind, ErrorKind::Remote);
            assert_eq!(d.length().unwrap(), 3);
            let mut keys = d.keys().unwrap();
            keys.sort();
            assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
            assert_eq!(d.values().unwrap().len(), 3);
            assert_eq!(d.pairs().unwrap().len(), 3);
            assert_eq!(d.localpart().len(), 3);
            assert_eq!(d.pop(b"a").unwrap(), Some(b"2".to_vec()));
            assert_eq!(d.pop(b"a").unwrap(), None);
            assert_eq!(d.pop_or(b"a", b"d").unwrap(), b"d");
            d.delete(b"b").unwrap();
            d.delete(b"b").unwrap();
            assert_eq!(d.length().unwrap(), 1);
            // The handle as bytes opens the same dict; so does the same spec by name.
            let again = n.open_dict(&d.to_bytes()).unwrap();
            assert!(again.haskey(b"c").unwrap());
            let by_name = n.dict(&Spec::new(kind, Members::All).named(d.name())).unwrap();
            assert!(by_name.haskey(b"c").unwrap(), "All is the same set here");
            assert_eq!(n.local_dicts(), vec![d.name().to_string()]);
            d.release().unwrap();
            assert!(n.local_dicts().is_empty());
            assert_eq!(again.get(b"c").unwrap_err().kind, ErrorKind::InvalidArgument, "released");
        }
        assert_eq!(n.open_dict(b"junk").unwrap_err().kind, ErrorKind::InvalidArgument);
        n.close();
    }

    #[test]
    fn malformed_and_unknown_messages_are_errors() {
        let (n, d) = with_peers();
        let out: Out = Arc::default();
        let bad = Incoming::test(5, Header::new(Kind::Oneway, ID, op::ACK, 0), vec![0xff; 3], Vec::new(), &out);
        assert!(d.on_message(&n, bad).is_err());
        let unknown = Incoming::test(5, Header::new(Kind::Oneway, ID, 99, 0), wire::encode_meta(&Msg::default()), Vec::new(), &out);
        assert!(d.on_message(&n, unknown).is_err());
        let m = wire::encode_meta(&Msg { id: 1, epoch: 1, part: 3, arg: 1 });
        assert!(decode(op::GET, &m, b"key").is_ok());
        assert!(decode(op::SET, &m, &encode_kv(b"k", b"v")).is_ok());
        assert!(decode(op::SET, &m, &[9, 0, 0, 0, 1]).is_err(), "a key longer than the payload");
        assert!(decode(op::REPLICATE, &m, &wire::encode_payload(&Effect::Delete { key: vec![1] })).is_ok());
        assert!(decode(op::REPLICATE, &wire::encode_meta(&Msg { part: 64, ..Msg::default() }), &wire::encode_payload(&Effect::Delete { key: vec![] })).is_err());
        let cfg = DictConfig::new(1, "x".into(), DictKind::Global, vec![1, 2], 0, vec![]);
        assert!(decode(op::INSTALL, &m, &wire::encode_payload(&cfg)).is_ok());
        let mut broken = cfg;
        broken.parts.pop();
        assert!(decode(op::INSTALL, &m, &wire::encode_payload(&broken)).is_err());
        assert!(decode(0, &m, &[]).is_err());
        assert!(decode(op::LAST + 1, &m, &[]).is_err());
        n.close();
    }
}
