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
//! **Failures** (this stage): a write waiting for a backup that dies
//! fails with ProcessExited naming it (applied on the primary: its outcome
//! is unknown); an operation on a partition whose primary died fails the
//! same way. Reconfiguration over the survivors (epochs, state transfer)
//! is the next stage; every message carries its sender's epoch, checked.

mod state;

pub use state::{fnv1a, partition, DictConfig, DictKind, Effect, Members, Spec, PARTITIONS};
use state::{Answer, Part};

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Departure, Future, Incoming, Node, Promise, ReplyTo, Service, HEAD_ID};
use crate::service::holders::Housekeeper;
use crate::wire::{self, Header, Kind, ServiceId};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

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
    pub const LAST: u16 = ACK;
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

/// A dict this process is a member of: its configuration and partitions.
struct Held {
    cfg: DictConfig,
    parts: Vec<Mutex<Part>>,
}

impl Held {
    fn new(me: u32, cfg: DictConfig) -> Held {
        Held { parts: (0..PARTITIONS).map(|_| Mutex::new(Part::new(me))).collect(), cfg }
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
}

impl Dicts {
    pub fn new() -> Arc<Dicts> {
        Arc::new(Dicts {
            held: RwLock::new(HashMap::new()),
            registry: Mutex::new(Registry::default()),
            functions: RwLock::new(HashMap::new()),
            housekeeping: Housekeeper::new("cluster-dict", ID),
        })
    }

    /// Names of the dicts this process holds state for, sorted.
    pub fn local_dicts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.held.read().values().map(|h| h.cfg.name.clone()).collect();
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
                    v.push((h.cfg.name.clone(), i as u32, p.seq, p.waiting(), p.ahead()));
                }
            }
        }
        v
    }

    /// Dicts in the registry (the head).
    pub fn registered(&self) -> usize {
        self.registry.lock().by_name.len()
    }

    fn held(&self, id: u64) -> Option<Arc<Held>> {
        self.held.read().get(&id).cloned()
    }

    fn compute(&self, node: &Arc<Node>, f: &str, args: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let func = self.functions.read().get(f).cloned();
        match func {
            Some(func) => func(node, args),
            None => Err(format!("no value function {f:?} on process {}", node.myid())),
        }
    }

    /// Sends one-way messages without waiting: on the open connection
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
            let conn = node.peer(s.to).and_then(|p| p.conn.lock().clone()).filter(|c| !c.is_closed());
            match conn {
                Some(c) => {
                    if let Err(e) = c.send_nowait(Header::new(Kind::Oneway, ID, s.op, 0), &meta, &s.payload) {
                        node.log.debug(format!("dict message to {} not sent: {e}", s.to));
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
                        Phase::Releasing => out.push(Answer(reply, Err(Error::new(ErrorKind::InvalidArgument, format!("{} is being released", name_of(&e.cfg)))))),
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
        let why = released(&h.cfg);
        let mut out = Vec::new();
        for p in &h.parts {
            p.lock().fail_all(&why, &mut out);
        }
        deliver(node, out);
    }

    /// Checks a request for partition `part` reached its primary in the
    /// sender's epoch.
    fn check_primary(node: &Node, h: &Held, m: &Msg, part: u32) -> Result<()> {
        let me = node.myid();
        if m.epoch != h.cfg.epoch {
            return Err(Error::at(
                ErrorKind::NotReady,
                me,
                format!("stale configuration of {}: epoch {} asked, {} here", name_of(&h.cfg), m.epoch, h.cfg.epoch),
            ));
        }
        if h.cfg.primary(part) != me {
            return Err(Error::at(ErrorKind::NotReady, me, format!("process {me} is not the primary of partition {part} of {}", name_of(&h.cfg))));
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
        let global_read = read && h.cfg.kind == DictKind::Global && h.cfg.stores(me, part);
        if !global_read {
            if let Err(e) = Self::check_primary(node, &h, &m, part) {
                deliver(node, vec![Answer(reply, Err(e))]);
                return Ok(());
            }
        }
        let backups: Vec<u32> = h.cfg.replicas(part).iter().copied().filter(|&p| p != me).collect();
        let compute = |f: &str, a: &[u8]| self.compute(node, f, a);
        let mut out = Vec::new();
        let mut seq = None;
        let mut effect = None;
        {
            let mut p = h.parts[part as usize].lock();
            match op {
                op::GET => out.push(Answer(reply, Ok(encode_opt(p.store.get(&key).map(|v| &v[..]))))),
                op::HASKEY => out.push(Answer(reply, Ok(vec![p.store.contains_key(&key) as u8]))),
                op::SET => {
                    let e = Effect::Set { key, value: decode_kv(&payload)?.1.to_vec() };
                    effect = Some(e.clone());
                    seq = p.write(e, &compute, reply, Vec::new(), &backups, &mut out);
                }
                op::SET_F => {
                    let (key, f, args) = wire::decode_payload::<(Vec<u8>, String, Vec<u8>)>(&payload)?;
                    // Global: each replica computes its own; Distributed: the primary's value replicates.
                    let e = match h.cfg.kind {
                        DictKind::Global => Ok(Effect::SetF { key, f, args }),
                        DictKind::Distributed => compute(&f, &args).map(|value| Effect::Set { key, value }),
                    };
                    match e {
                        Ok(e) => {
                            effect = Some(e.clone());
                            seq = p.write(e, &compute, reply, Vec::new(), &backups, &mut out);
                        }
                        Err(msg) => out.push(Answer(reply, Err(Error::at(ErrorKind::Remote, me, msg)))),
                    }
                }
                op::GET_OR_INSERT => match p.store.get(&key) {
                    Some(v) => out.push(Answer(reply, Ok(v.clone()))),
                    None => {
                        let value = decode_kv(&payload)?.1.to_vec();
                        let e = Effect::Set { key, value: value.clone() };
                        effect = Some(e.clone());
                        seq = p.write(e, &compute, reply, value, &backups, &mut out);
                    }
                },
                op::POP | op::DELETE => match p.store.get(&key).cloned() {
                    None => out.push(Answer(reply, Ok(if op == op::POP { encode_opt(None) } else { Vec::new() }))),
                    Some(v) => {
                        let e = Effect::Delete { key };
                        effect = Some(e.clone());
                        let result = if op == op::POP { encode_opt(Some(&v)) } else { Vec::new() };
                        seq = p.write(e, &compute, reply, result, &backups, &mut out);
                    }
                },
                o => return Err(unknown_op("dict", o)),
            }
        }
        if let (Some(seq), Some(e)) = (seq, effect) {
            if !backups.is_empty() {
                let payload = wire::encode_payload(&e);
                let m = Msg { id: h.cfg.id, epoch: h.cfg.epoch, part, arg: seq };
                let sends = backups.iter().map(|&to| Outgoing { to, op: op::REPLICATE, m, payload: payload.clone() }).collect();
                self.send_all(node, sends);
            }
        }
        deliver(node, out);
        Ok(())
    }

    /// The pairs this member answers LENGTH and ENTRIES for: of the
    /// partitions it is primary of (a Global dict: all).
    fn summary(&self, node: &Node, h: &Held, what: Option<Entries>) -> Vec<u8> {
        let me = node.myid();
        let mine = |p: u32| h.cfg.kind == DictKind::Global || h.cfg.primary(p) == me;
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
                    Some(h) if h.cfg.epoch != m.epoch => Err(Error::at(ErrorKind::NotReady, me, format!("stale configuration of {}", name_of(&h.cfg)))),
                    Some(h) => Ok(self.summary(node, &h, what)),
                };
                deliver(node, vec![Answer(reply, r)]);
            }
            op::REPLICATE => {
                let e: Effect = wire::decode_payload(&payload)?;
                let part = m.part;
                if part >= PARTITIONS {
                    return Err(Error::new(ErrorKind::Protocol, format!("no dict partition {part}")));
                }
                let acks: Vec<(u64, Option<String>)> = match self.held(m.id) {
                    None => vec![(m.arg, Some(format!("dict {:#x} is not held on process {me}", m.id)))],
                    Some(h) if h.cfg.primary(part) != from || h.cfg.epoch != m.epoch => {
                        node.log.warn(format!("a write for {} from process {from}, not its primary in epoch {}: ignored", name_of(&h.cfg), h.cfg.epoch));
                        return Ok(());
                    }
                    Some(h) => {
                        let compute = |f: &str, a: &[u8]| self.compute(node, f, a);
                        let mut p = h.parts[part as usize].lock();
                        p.replicate(m.arg, e, &compute)
                    }
                };
                let sends = acks
                    .into_iter()
                    .map(|(seq, err)| Outgoing { to: from, op: op::ACK, m: Msg { arg: seq, ..m }, payload: err.map(String::into_bytes).unwrap_or_default() })
                    .collect();
                self.send_all(node, sends);
            }
            op::ACK => {
                let Some(h) = self.held(m.id) else { return Ok(()) };
                if m.part >= PARTITIONS {
                    return Err(Error::new(ErrorKind::Protocol, format!("no dict partition {}", m.part)));
                }
                let err = (!payload.is_empty()).then(|| Error::at(ErrorKind::Remote, from, String::from_utf8_lossy(&payload).into_owned()));
                let mut out = Vec::new();
                h.parts[m.part as usize].lock().ack(m.arg, from, err, &mut out);
                deliver(node, out);
            }
            o => return Err(unknown_op("dict", o)),
        }
        Ok(())
    }

    /// A request of this process to itself: no message, a future completed
    /// by the answer.
    fn local_request(&self, node: &Arc<Node>, op: u16, m: Msg, payload: Vec<u8>) -> Result<Future> {
        node.check_open()?;
        let (f, slot) = node.local_future(node.myid());
        self.handle(node, node.myid(), op, m, payload, ReplyTo::Local(slot))?;
        Ok(f)
    }

    /// `op` to process `pid` (this one: handled here).
    fn request(&self, node: &Arc<Node>, pid: u32, op: u16, m: Msg, payload: Vec<u8>) -> Result<Future> {
        if pid == node.myid() {
            self.local_request(node, op, m, payload)
        } else {
            node.request(pid, ID, op, &wire::encode_meta(&m), &payload)
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
        for h in all {
            if !h.cfg.is_member(pid) {
                continue;
            }
            let how = if how.graceful { "left" } else { "died" };
            let why = Error::at(ErrorKind::ProcessExited, pid, format!("process {pid}, a replica of {}, {how} before it applied the write", name_of(&h.cfg)));
            for p in &h.parts {
                p.lock().backup_lost(pid, &why, &mut out);
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
        {
            let mut reg = self.registry.lock();
            let me = node.myid();
            for (name, e) in reg.by_name.iter_mut() {
                if !e.waiting.contains(&pid) {
                    continue;
                }
                e.waiting.retain(|&p| p != pid);
                match e.phase {
                    Phase::Installing => {
                        let why = Error::at(ErrorKind::ProcessExited, pid, format!("process {pid}, a member of {}, left while it was being created", name_of(&e.cfg)));
                        out.extend(std::mem::take(&mut e.replies).into_iter().map(|r| Answer(r, Err(why.clone()))));
                        for &p in e.cfg.members.iter().filter(|&&p| p != pid) {
                            if p == me {
                                drop_here.push(e.cfg.id);
                            } else {
                                sends.push(Outgoing { to: p, op: op::DROP, m: Msg { id: e.cfg.id, epoch: e.cfg.epoch, ..Msg::default() }, payload: Vec::new() });
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
        op::INSTALL => wire::decode_payload::<DictConfig>(payload)?.check(),
        op::SET | op::GET_OR_INSERT => decode_kv(payload).map(drop),
        op::SET_F => wire::decode_payload::<(Vec<u8>, String, Vec<u8>)>(payload).map(drop),
        op::ENTRIES if m.arg > 2 => Err(Error::new(ErrorKind::Protocol, format!("unknown dict listing {}", m.arg))),
        op::REPLICATE | op::ACK if m.part >= PARTITIONS => Err(Error::new(ErrorKind::Protocol, format!("no dict partition {}", m.part))),
        op::REPLICATE => wire::decode_payload::<Effect>(payload).map(drop),
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
    cfg: DictConfig,
}

/// A dict as any process uses it: its configuration (no reference is
/// counted: a dict lives until `release`, as in ClusterDicts). Clones
/// share it; `to_bytes` passes it to another process (`DictExt::open_dict`).
/// Every operation that waits has an `_async` form returning a `Future`.
#[derive(Clone)]
pub struct Dict(Arc<Inner>);

impl std::fmt::Debug for Dict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&name_of(&self.0.cfg))
    }
}

impl Dict {
    fn new(node: &Arc<Node>, svc: Arc<Dicts>, cfg: DictConfig) -> Dict {
        Dict(Arc::new(Inner { node: node.clone(), svc, cfg }))
    }

    pub fn name(&self) -> &str {
        &self.0.cfg.name
    }
    pub fn kind(&self) -> DictKind {
        self.0.cfg.kind
    }
    pub fn members(&self) -> &[u32] {
        &self.0.cfg.members
    }
    pub fn config(&self) -> &DictConfig {
        &self.0.cfg
    }
    pub fn node(&self) -> &Arc<Node> {
        &self.0.node
    }
    /// The handle as bytes, for another process's `open_dict`.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_payload(&self.0.cfg)
    }

    fn msg(&self, part: u32, arg: u64) -> Msg {
        Msg { id: self.0.cfg.id, epoch: self.0.cfg.epoch, part, arg }
    }

    /// Whether this process reads `part` from its own copy.
    fn local_copy(&self, part: u32) -> Option<Arc<Held>> {
        let me = self.0.node.myid();
        (self.0.cfg.kind == DictKind::Global && self.0.cfg.stores(me, part)).then(|| self.0.svc.held(self.0.cfg.id)).flatten()
    }

    fn to_primary(&self, op: u16, key: &[u8], payload: Vec<u8>) -> Result<Future> {
        let part = partition(key);
        let p = self.0.cfg.primary(part);
        self.0.svc.request(&self.0.node, p, op, self.msg(part, 0), payload)
    }

    fn ready(&self, v: Result<Vec<u8>>) -> Future {
        let (f, p) = self.0.node.promise(self.0.node.myid());
        p.complete(v);
        f
    }

    /// Sets `key` to `value` on every replica; the future completes once
    /// all of them applied it.
    pub fn set_async(&self, key: &[u8], value: &[u8]) -> Result<Future> {
        self.to_primary(op::SET, key, encode_kv(key, value))
    }
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.set_async(key, value)?.wait(None)
    }

    /// Sets `key` to `f(args)` computed where it is stored (ValueF): on
    /// each member of a Global dict, on the primary of a Distributed one.
    /// `f` is a value function registered by that name there.
    pub fn set_with_async(&self, key: &[u8], f: &str, args: &[u8]) -> Result<Future> {
        self.to_primary(op::SET_F, key, wire::encode_payload(&(key, f, args)))
    }
    pub fn set_with(&self, key: &[u8], f: &str, args: &[u8]) -> Result<()> {
        self.set_with_async(key, f, args)?.wait(None)
    }

    /// The future's value: `decode_opt` gives the value, if any. A member
    /// of a Global dict reads its own copy (the future is ready at once).
    pub fn get_async(&self, key: &[u8]) -> Result<Future> {
        match self.local_copy(partition(key)) {
            Some(h) => Ok(self.ready(Ok(encode_opt(h.parts[partition(key) as usize].lock().store.get(key).map(|v| &v[..]))))),
            None => self.to_primary(op::GET, key, key.to_vec()),
        }
    }
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let f = self.get_async(key)?;
        Ok(decode_opt(f.fetch(None)?)?.map(<[u8]>::to_vec))
    }
    /// `d[k]`: the value, or NotFound.
    pub fn index(&self, key: &[u8]) -> Result<Vec<u8>> {
        self.get(key)?.ok_or_else(|| self.not_found(key))
    }
    /// `get(d, k, default)`: the value, or `default` (nothing is stored).
    pub fn get_or(&self, key: &[u8], default: &[u8]) -> Result<Vec<u8>> {
        Ok(self.get(key)?.unwrap_or_else(|| default.to_vec()))
    }

    fn not_found(&self, key: &[u8]) -> Error {
        Error::new(ErrorKind::NotFound, format!("key {:?} not found in {}", String::from_utf8_lossy(key), name_of(&self.0.cfg)))
    }

    /// The future's value: one byte, 1 when `key` is there.
    pub fn haskey_async(&self, key: &[u8]) -> Result<Future> {
        match self.local_copy(partition(key)) {
            Some(h) => Ok(self.ready(Ok(vec![h.parts[partition(key) as usize].lock().store.contains_key(key) as u8]))),
            None => self.to_primary(op::HASKEY, key, key.to_vec()),
        }
    }
    pub fn haskey(&self, key: &[u8]) -> Result<bool> {
        Ok(self.haskey_async(key)?.fetch(None)? == [1])
    }

    /// `get!(d, k, default)`: the value there, or `default` inserted on
    /// every replica (atomic at the primary); the future's value is the
    /// value the key has.
    pub fn get_or_insert_async(&self, key: &[u8], default: &[u8]) -> Result<Future> {
        self.to_primary(op::GET_OR_INSERT, key, encode_kv(key, default))
    }
    pub fn get_or_insert(&self, key: &[u8], default: &[u8]) -> Result<Vec<u8>> {
        Ok(self.get_or_insert_async(key, default)?.fetch(None)?.to_vec())
    }

    /// Removes `key` everywhere; the future's value (`decode_opt`) is the
    /// value it had, if any.
    pub fn pop_async(&self, key: &[u8]) -> Result<Future> {
        self.to_primary(op::POP, key, key.to_vec())
    }
    pub fn pop(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let f = self.pop_async(key)?;
        Ok(decode_opt(f.fetch(None)?)?.map(<[u8]>::to_vec))
    }
    /// `pop!(d, k, default)`.
    pub fn pop_or(&self, key: &[u8], default: &[u8]) -> Result<Vec<u8>> {
        Ok(self.pop(key)?.unwrap_or_else(|| default.to_vec()))
    }

    /// `delete!(d, k)`: removes `key` everywhere (nothing if absent).
    pub fn delete_async(&self, key: &[u8]) -> Result<Future> {
        self.to_primary(op::DELETE, key, key.to_vec())
    }
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.delete_async(key)?.wait(None)
    }

    /// Asks the members that answer for the whole dict (Distributed: each
    /// for the partitions it is primary of; Global: this process if a
    /// member, else one member) and merges their answers.
    fn gather(&self, op: u16, arg: u64, merge: fn(Vec<Vec<u8>>) -> Result<Vec<u8>>) -> Result<Future> {
        let node = &self.0.node;
        let me = node.myid();
        let cfg = &self.0.cfg;
        let targets: Vec<u32> = match cfg.kind {
            DictKind::Distributed => cfg.members.clone(),
            DictKind::Global if cfg.is_member(me) => vec![me],
            DictKind::Global => vec![cfg.members[0]],
        };
        let futures = targets.iter().map(|&p| self.0.svc.request(node, p, op, self.msg(0, arg), Vec::new())).collect::<Result<Vec<Future>>>()?;
        let (f, p) = node.promise(targets[0]);
        struct Gather {
            got: Vec<Option<Vec<u8>>>,
            left: usize,
            promise: Option<Promise>,
        }
        let g = Arc::new(Mutex::new(Gather { got: vec![None; futures.len()], left: futures.len(), promise: Some(p) }));
        let mut f = f;
        for (i, part) in futures.into_iter().enumerate() {
            let g = g.clone();
            part.on_complete(move |r| {
                let mut s = g.lock();
                let Some(_) = s.promise.as_ref() else { return };
                match r {
                    Err(e) => {
                        let p = s.promise.take().expect("present");
                        drop(s);
                        p.complete(Err(e.clone()));
                    }
                    Ok(v) => {
                        s.got[i] = Some(v.clone());
                        s.left -= 1;
                        if s.left == 0 {
                            let p = s.promise.take().expect("present");
                            let all = s.got.drain(..).map(|v| v.expect("every answer")).collect();
                            drop(s);
                            p.complete(merge(all));
                        }
                    }
                }
            });
            f = f.keeping(part);
        }
        Ok(f)
    }

    /// `length(d)`; the future's value: `decode_len`.
    pub fn length_async(&self) -> Result<Future> {
        self.gather(op::LENGTH, 0, |all| {
            let mut n = 0usize;
            for v in all {
                n += decode_len(&v)?;
            }
            Ok((n as u64).to_le_bytes().to_vec())
        })
    }
    pub fn length(&self) -> Result<usize> {
        decode_len(self.length_async()?.fetch(None)?)
    }
    /// True only when no member holds any pair.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.length()? == 0)
    }

    /// The keys, values or pairs; the future's value: `decode_list` (keys,
    /// values) or `decode_pairs`.
    pub fn entries_async(&self, what: Entries) -> Result<Future> {
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
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        decode_list(self.entries_async(Entries::Keys)?.fetch(None)?)
    }
    pub fn values(&self) -> Result<Vec<Vec<u8>>> {
        decode_list(self.entries_async(Entries::Values)?.fetch(None)?)
    }
    /// Every pair (iteration), in no particular order.
    pub fn pairs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        decode_pairs(self.entries_async(Entries::Pairs)?.fetch(None)?)
    }

    /// What this process stores of the dict (every partition it is a
    /// replica of; empty on a non-member), read here with no message.
    pub fn localpart(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(h) = self.0.svc.held(self.0.cfg.id) else { return Vec::new() };
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
    use std::time::Duration;

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

    fn is_request(op: u16) -> bool {
        !matches!(op, op::INSTALL | op::INSTALLED | op::DROP | op::DROPPED | op::REPLICATE | op::ACK)
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
        n.peer(pid).unwrap().state.store(3, std::sync::atomic::Ordering::Release);
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
        send(&n, &d, 7, op::GET, m(p, 0), &k, &out);
        assert_eq!(decode_opt(&pop(&out).unwrap()).unwrap(), Some(&b"v1"[..]));
        send(&n, &d, 5, op::ACK, m(p, 1), &[], &out);
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
        // Backup 5 dies with a write waiting for it: the writer is told.
        send(&n, &d, 7, op::SET, m(p, 0), &encode_kv(&k, b"lost?"), &out);
        leave(&n, &d, 5);
        let e = pop(&out).unwrap_err();
        assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, 5));
        assert!(e.message.contains("replica"), "{e}");
        n.close();
    }

    #[test]
    fn own_dicts_through_the_api() {
        let (n, _) = head();
        n.register_value_fn("myid", |node, args| Ok([&node.myid().to_le_bytes()[..], args].concat())).unwrap();
        for kind in [DictKind::Global, DictKind::Distributed] {
            let d = n.dict(&Spec::new(kind, Members::Workers)).unwrap();
            assert_eq!(d.members(), &[1], "the head alone is the workers");
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
