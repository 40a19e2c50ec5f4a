//! A dict's configuration and one partition as a member keeps it: the
//! stored pairs, the sequence of writes, the writes applied here as the
//! partition's primary that wait for their backups, and the writes that
//! reached this backup ahead of their turn.
//!
//! Every operation only changes the state and lists what it makes (answers,
//! acknowledgements); the service sends them once it has released the
//! partition's lock.

use crate::error::{Error, ErrorKind};
use crate::node::ReplyTo;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Partitions of every dict: a key's partition is `partition(key)`.
pub const PARTITIONS: u32 = 64;

/// FNV-1a, 64 bits: the same in every process and every run.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition of `key`.
pub fn partition(key: &[u8]) -> u32 {
    (fnv1a(key) % PARTITIONS as u64) as u32
}

/// Every member holds every key (Global), or each key lives on the
/// replicas of its partition (Distributed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DictKind {
    Global,
    Distributed,
}

/// The processes a dict is over, as its creator gives them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Members {
    /// Every process, the head included.
    All,
    /// Every worker; the head alone when it has none.
    Workers,
    /// These processes.
    Pids(Vec<u32>),
}

/// What a creator asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Empty: the head makes one up.
    pub name: String,
    pub kind: DictKind,
    pub members: Members,
    /// Replicas of each key of a Distributed dict (0: the default,
    /// min(2, members)); ignored for a Global dict (all members).
    pub replication: u32,
    /// Opaque to the library; part of the specification (Julia puts its
    /// key and value types there).
    pub type_tag: Vec<u8>,
}

impl Spec {
    pub fn new(kind: DictKind, members: Members) -> Spec {
        Spec { name: String::new(), kind, members, replication: 0, type_tag: Vec::new() }
    }
    pub fn named(mut self, name: &str) -> Spec {
        self.name = name.to_string();
        self
    }
    pub fn replication(mut self, r: u32) -> Spec {
        self.replication = r;
        self
    }
    pub fn type_tag(mut self, tag: &[u8]) -> Spec {
        self.type_tag = tag.to_vec();
        self
    }
}

/// A dict's configuration as the head made it: who stores which partition.
/// A handle carries it; members install it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DictConfig {
    /// Unique in the cluster while the dict lives (the head's counter).
    pub id: u64,
    pub name: String,
    pub kind: DictKind,
    /// Bumped by the head on every change of `parts`.
    pub epoch: u64,
    /// Sorted, not empty.
    pub members: Vec<u32>,
    /// Replicas of each partition (Global: every member).
    pub replication: u32,
    pub type_tag: Vec<u8>,
    /// Partition -> its replicas, the primary first.
    pub parts: Vec<Vec<u32>>,
    /// Partition -> the process whose death lost its pairs (replication 1),
    /// 0 while it has a replica.
    pub lost: Vec<u32>,
}

impl DictConfig {
    /// The configuration of epoch 1 over `members` (sorted, deduplicated,
    /// not empty). Distributed: partition p on `r` consecutive members from
    /// p mod n; Global: on every member, rotated by p so primaries spread.
    pub fn new(id: u64, name: String, kind: DictKind, members: Vec<u32>, replication: u32, type_tag: Vec<u8>) -> DictConfig {
        let n = members.len();
        let r = match kind {
            DictKind::Global => n,
            DictKind::Distributed if replication == 0 => n.min(2),
            DictKind::Distributed => (replication as usize).min(n),
        }
        .max(1);
        let parts = (0..PARTITIONS as usize).map(|p| (0..r).map(|i| members[(p + i) % n]).collect()).collect();
        DictConfig { id, name, kind, epoch: 1, members, replication: r as u32, type_tag, parts, lost: vec![0; PARTITIONS as usize] }
    }

    /// The configuration of the next epoch once `pid` is gone: every
    /// partition keeps its surviving replicas in order (the first is its
    /// primary: it holds every acknowledged write), and gets new members
    /// (from p on, in member order) until it has `replication` again where
    /// the survivors allow (a Global dict: every survivor). A partition
    /// left without a replica is lost, naming `pid`.
    pub fn without(&self, pid: u32) -> DictConfig {
        let members: Vec<u32> = self.members.iter().copied().filter(|&p| p != pid).collect();
        let n = members.len();
        let mut parts = Vec::with_capacity(self.parts.len());
        let mut lost = self.lost.clone();
        for (p, old) in self.parts.iter().enumerate() {
            let mut list: Vec<u32> = old.iter().copied().filter(|&x| x != pid).collect();
            if list.is_empty() {
                if !old.is_empty() {
                    lost[p] = pid;
                }
                parts.push(list);
                continue;
            }
            let want = match self.kind {
                DictKind::Global => n,
                DictKind::Distributed => (self.replication as usize).min(n),
            };
            for i in 0..n {
                if list.len() >= want {
                    break;
                }
                let cand = members[(p + i) % n];
                if !list.contains(&cand) {
                    list.push(cand);
                }
            }
            parts.push(list);
        }
        DictConfig { members, parts, lost, epoch: self.epoch + 1, ..self.clone() }
    }

    pub fn replicas(&self, part: u32) -> &[u32] {
        self.parts.get(part as usize).map(|v| &v[..]).unwrap_or(&[])
    }
    /// The primary of `part` (0 when it has no replica left).
    pub fn primary(&self, part: u32) -> u32 {
        self.replicas(part).first().copied().unwrap_or(0)
    }
    pub fn is_member(&self, pid: u32) -> bool {
        self.members.binary_search(&pid).is_ok()
    }
    /// Whether `pid` stores `part`.
    pub fn stores(&self, pid: u32, part: u32) -> bool {
        self.replicas(part).contains(&pid)
    }
    /// The same specification: kind, members, replication, type tag.
    pub fn same_spec(&self, o: &DictConfig) -> bool {
        self.kind == o.kind && self.members == o.members && self.replication == o.replication && self.type_tag == o.type_tag
    }
    /// Checks what a peer sent is well formed (a config from the wire).
    pub fn check(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::new(ErrorKind::Protocol, format!("malformed dict configuration: {m}")));
        if self.parts.len() != PARTITIONS as usize || self.lost.len() != PARTITIONS as usize {
            return bad("wrong number of partitions");
        }
        if self.members.windows(2).any(|w| w[0] >= w[1]) {
            return bad("members not sorted");
        }
        if self.parts.iter().flatten().any(|p| !self.is_member(*p)) {
            return bad("a replica is no member");
        }
        Ok(())
    }
}

/// A write as the primary ordered it, applied on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// The value is `f(args)` computed on each replica (a Global dict's
    /// ValueF).
    SetF {
        key: Vec<u8>,
        f: String,
        args: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Many sets of one partition as one write (a batch's pairs at their
    /// primary): one number, one message to each backup.
    SetMany {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A partition's pairs, as a state transfer carries them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Computes a value function where it is stored: its name, its arguments.
pub type Compute<'a> = &'a dyn Fn(&str, &[u8]) -> Result<Vec<u8>, String>;

/// An answer to send once the partition's lock is released.
pub(crate) struct Answer(pub ReplyTo, pub Result<Vec<u8>, Error>);

/// A write a backup applied: its number, and why its value function
/// failed there, if it did.
pub type Applied = (u64, Option<String>);

/// A write's answer that its only backup gives the writer, for the
/// primary, once it applied the write: the writer's request (process, id,
/// op) and what it is answered with. This saves the primary's answer its
/// hop (the writer hears from the backup when the primary would hear).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupAnswer {
    pub to: u32,
    pub request: u64,
    pub op: u16,
    pub result: Vec<u8>,
}

/// A write applied here as primary, waiting for its backups.
struct Waiting {
    reply: ReplyTo,
    /// What the writer is answered with once every backup applied it.
    result: Vec<u8>,
    /// Backups that have not acknowledged it yet.
    outstanding: Vec<u32>,
    /// The first failure a backup reported.
    error: Option<Error>,
    /// The keys it writes.
    keys: Vec<Vec<u8>>,
}

/// One partition of one dict on one member.
#[derive(Default)]
pub(crate) struct Part {
    /// This process (names it in errors).
    pub me: u32,
    pub store: HashMap<Vec<u8>, Vec<u8>>,
    /// As primary: the last sequence number given to a write; as backup:
    /// the last one applied.
    pub seq: u64,
    /// Backup: writes that arrived ahead of their turn, by sequence number.
    ahead: BTreeMap<u64, Effect>,
    /// Backup: the answers it gives once it applied those writes.
    answers: BTreeMap<u64, BackupAnswer>,
    /// Primary: the keys with a write not acknowledged yet, and its number.
    unacked: HashMap<Vec<u8>, u64>,
    /// Primary: reads of such keys, with their answers, parked until that
    /// write is acknowledged (a read never returns what a failure could
    /// still take back).
    reads: BTreeMap<u64, Vec<(ReplyTo, Vec<u8>)>>,
    /// Primary: writes waiting for their backups, by sequence number.
    waiting: BTreeMap<u64, Waiting>,
    /// Backup in a new configuration: the primary's state is on its way;
    /// writes wait in `ahead` until it is here.
    pub awaiting: bool,
    /// The epoch since which this partition has its replicas: writes its
    /// primary numbered in an epoch from then on stay valid in later ones.
    pub since: u64,
}

impl Effect {
    pub fn keys(&self) -> Vec<Vec<u8>> {
        match self {
            Effect::Set { key, .. } | Effect::SetF { key, .. } | Effect::Delete { key } => vec![key.clone()],
            Effect::SetMany { pairs } => pairs.iter().map(|(k, _)| k.clone()).collect(),
        }
    }
}

impl Part {
    pub fn new(me: u32) -> Part {
        Part { me, since: 1, ..Part::default() }
    }

    /// Applies `e` to the store. A value function that fails leaves the
    /// key absent here (never a stale value) and reports why.
    fn apply(&mut self, e: Effect, compute: Compute) -> Result<(), String> {
        match e {
            Effect::Set { key, value } => {
                self.store.insert(key, value);
            }
            Effect::SetF { key, f, args } => match compute(&f, &args) {
                Ok(v) => {
                    self.store.insert(key, v);
                }
                Err(m) => {
                    self.store.remove(&key);
                    return Err(m);
                }
            },
            Effect::Delete { key } => {
                self.store.remove(&key);
            }
            Effect::SetMany { pairs } => self.store.extend(pairs),
        }
        Ok(())
    }

    /// Primary: orders `e` (the next sequence number), applies it here,
    /// and answers `result` to `reply` once every backup in `backups`
    /// acknowledged it (at once when there is none). Returns the sequence
    /// number to send the backups, or None when the write failed here
    /// (answered, nothing to replicate).
    pub fn write(&mut self, e: Effect, compute: Compute, reply: ReplyTo, result: Vec<u8>, backups: &[u32], out: &mut Vec<Answer>) -> Option<u64> {
        let keys = if backups.is_empty() { Vec::new() } else { e.keys() };
        if let Err(m) = self.apply(e, compute) {
            out.push(Answer(reply, Err(Error::at(ErrorKind::Remote, self.me, m))));
            return None;
        }
        self.seq += 1;
        if backups.is_empty() {
            out.push(Answer(reply, Ok(result)));
        } else {
            for k in &keys {
                self.unacked.insert(k.clone(), self.seq);
            }
            self.waiting.insert(self.seq, Waiting { reply, result, outstanding: backups.to_vec(), error: None, keys });
        }
        Some(self.seq)
    }

    /// Primary: answers a read of `key` with `answer` now, or once the
    /// write of `key` still waiting for its backups is acknowledged.
    pub fn read(&mut self, key: &[u8], reply: ReplyTo, answer: Vec<u8>, out: &mut Vec<Answer>) {
        match self.unacked.get(key) {
            Some(&s) => self.reads.entry(s).or_default().push((reply, answer)),
            None => out.push(Answer(reply, Ok(answer))),
        }
    }

    /// Write `seq` is on every replica: its writer is answered, and the
    /// reads waiting for it.
    fn finish(&mut self, seq: u64, out: &mut Vec<Answer>) {
        let Some(w) = self.waiting.remove(&seq) else { return };
        for k in &w.keys {
            if self.unacked.get(k) == Some(&seq) {
                self.unacked.remove(k);
            }
        }
        out.push(Answer(w.reply, w.error.map_or(Ok(w.result), Err)));
        for (reply, answer) in self.reads.remove(&seq).unwrap_or_default() {
            out.push(Answer(reply, Ok(answer)));
        }
    }

    /// Primary: backup `from` applied write `seq` (`err`: its value
    /// function failed there).
    pub fn ack(&mut self, seq: u64, from: u32, err: Option<Error>, out: &mut Vec<Answer>) {
        let Some(w) = self.waiting.get_mut(&seq) else { return };
        let before = w.outstanding.len();
        w.outstanding.retain(|&p| p != from);
        if w.outstanding.len() == before {
            return;
        }
        if w.error.is_none() {
            w.error = err;
        }
        if w.outstanding.is_empty() {
            self.finish(seq, out);
        }
    }

    /// Primary: backup `from` applied write `seq` and answered its writer
    /// itself (`BackupAnswer`): done here, with nothing more to answer.
    pub fn ack_answered(&mut self, seq: u64, from: u32, out: &mut Vec<Answer>) {
        if let Some(w) = self.waiting.get_mut(&seq) {
            if w.outstanding.contains(&from) {
                w.reply = ReplyTo::Nobody;
            }
        }
        self.ack(seq, from, None, out);
    }

    /// Backup: once it applies write `seq`, it answers `a` (see `take_answer`).
    pub fn answer_after(&mut self, seq: u64, a: BackupAnswer) {
        if self.awaiting || seq > self.seq {
            self.answers.insert(seq, a);
        }
    }

    /// Backup: the answer write `seq` (just applied) owes, if any.
    pub fn take_answer(&mut self, seq: u64) -> Option<BackupAnswer> {
        self.answers.remove(&seq)
    }

    /// Primary: only `backups` are this partition's backups now (one died,
    /// or a new configuration came): the writes stop waiting for any other,
    /// and those every remaining backup applied are answered. They are on
    /// every surviving replica.
    pub fn keep_backups(&mut self, backups: &[u32], out: &mut Vec<Answer>) {
        let mut done = Vec::new();
        for (s, w) in self.waiting.iter_mut() {
            w.outstanding.retain(|p| backups.contains(p));
            if w.outstanding.is_empty() {
                done.push(*s);
            }
        }
        for s in done {
            self.finish(s, out);
        }
    }

    /// Becomes the primary of a new configuration with `backups`: what
    /// arrived from the old primary beyond a gap was never acknowledged
    /// (every replica applies a write before it is) and goes. Returns the
    /// state to send the backups: the pairs and the last write number.
    pub fn become_primary(&mut self, backups: &[u32], out: &mut Vec<Answer>) -> (Pairs, u64) {
        self.ahead.clear();
        self.answers.clear();
        self.awaiting = false;
        self.keep_backups(backups, out);
        (self.store.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), self.seq)
    }

    /// Stays or becomes a backup of a new configuration under a new
    /// primary, whose state is on its way. What the old primary sent
    /// beyond a gap goes: it was never acknowledged (this replica had not
    /// applied it), and the new primary numbers its own writes from its
    /// state's number on, so an old write kept here would take the place
    /// of the new one with that number.
    pub fn become_backup(&mut self, why: &Error, out: &mut Vec<Answer>) {
        self.fail_all(why, out);
        self.ahead.clear();
        self.answers.clear();
        self.awaiting = true;
    }

    /// Primary: backup `from` installed the state up to write `seq`: it
    /// holds every write up to there.
    pub fn state_acked(&mut self, from: u32, seq: u64, out: &mut Vec<Answer>) {
        let hit: Vec<u64> = self.waiting.range(..=seq).map(|(s, _)| *s).collect();
        for s in hit {
            self.ack(s, from, None, out);
        }
    }

    /// Backup: the primary's state, up to write `seq`. Replaces what is
    /// here; the writes buffered after it are applied in order and
    /// returned (to acknowledge).
    pub fn install_state(&mut self, seq: u64, pairs: Pairs, compute: Compute) -> Vec<Applied> {
        self.store = pairs.into_iter().collect();
        self.seq = seq;
        self.awaiting = false;
        self.ahead = std::mem::take(&mut self.ahead).split_off(&(seq + 1));
        self.answers = std::mem::take(&mut self.answers).split_off(&(seq + 1));
        let mut done = Vec::new();
        while let Some(e) = self.ahead.remove(&(self.seq + 1)) {
            self.seq += 1;
            done.push((self.seq, self.apply(e, compute).err()));
        }
        done
    }

    /// No longer a replica: forget everything.
    pub fn clear(&mut self, why: &Error, out: &mut Vec<Answer>) {
        self.fail_all(why, out);
        self.store.clear();
        self.ahead.clear();
        self.answers.clear();
        self.seq = 0;
        self.awaiting = false;
    }

    /// Writes waiting for backups (a gauge for tests).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Fails every write waiting here (the dict is dropped, the node closes).
    pub fn fail_all(&mut self, why: &Error, out: &mut Vec<Answer>) {
        for (_, w) in std::mem::take(&mut self.waiting) {
            out.push(Answer(w.reply, Err(why.clone())));
        }
        for (reply, _) in std::mem::take(&mut self.reads).into_values().flatten() {
            out.push(Answer(reply, Err(why.clone())));
        }
        self.unacked.clear();
    }

    /// Backup: write `seq` from the primary. Applies it and every buffered
    /// one after it in sequence order; returns the writes applied now with
    /// the failure of each (to acknowledge). A write seen before is
    /// acknowledged again, not applied twice.
    pub fn replicate(&mut self, seq: u64, e: Effect, compute: Compute) -> Vec<Applied> {
        if self.awaiting {
            self.ahead.insert(seq, e);
            return Vec::new();
        }
        if seq <= self.seq {
            return vec![(seq, None)];
        }
        self.ahead.insert(seq, e);
        let mut done = Vec::new();
        while let Some(e) = self.ahead.remove(&(self.seq + 1)) {
            self.seq += 1;
            done.push((self.seq, self.apply(e, compute).err()));
        }
        done
    }

    /// Writes buffered ahead of a missing one (a gauge for tests).
    pub fn ahead(&self) -> usize {
        self.ahead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    type Out = Arc<Mutex<Vec<Result<Vec<u8>, Error>>>>;

    fn none(_: &str, _: &[u8]) -> Result<Vec<u8>, String> {
        Err("no functions".into())
    }

    fn sent(out: Vec<Answer>) -> Vec<Result<Vec<u8>, Error>> {
        out.into_iter()
            .map(|Answer(r, v)| match r {
                ReplyTo::Capture(c) => {
                    c.lock().push(v.clone());
                    v
                }
                _ => unreachable!(),
            })
            .collect()
    }

    fn set(k: &str, v: &str) -> Effect {
        Effect::Set { key: k.into(), value: v.into() }
    }

    #[test]
    fn configurations_spread_primaries_and_replicas() {
        let c = DictConfig::new(1, "d".into(), DictKind::Distributed, vec![2, 3, 4], 0, vec![]);
        assert_eq!(c.replication, 2);
        assert_eq!(c.replicas(0), &[2, 3]);
        assert_eq!(c.replicas(2), &[4, 2]);
        assert!(c.check().is_ok());
        let mut primaries: Vec<u32> = (0..PARTITIONS).map(|p| c.primary(p)).collect();
        primaries.dedup();
        assert!(primaries.len() > 3, "primaries rotate");
        let one = DictConfig::new(1, "d".into(), DictKind::Distributed, vec![2], 0, vec![]);
        assert_eq!(one.replication, 1);
        let r5 = DictConfig::new(1, "d".into(), DictKind::Distributed, vec![2, 3], 5, vec![]);
        assert_eq!(r5.replication, 2, "at most every member");
        let g = DictConfig::new(1, "g".into(), DictKind::Global, vec![1, 2, 3], 1, vec![]);
        assert_eq!(g.replicas(1), &[2, 3, 1]);
        assert!(g.same_spec(&DictConfig::new(9, "x".into(), DictKind::Global, vec![1, 2, 3], 0, vec![])));
        assert!(!g.same_spec(&DictConfig::new(9, "x".into(), DictKind::Global, vec![1, 2], 0, vec![])));
        assert!(!g.same_spec(&DictConfig::new(9, "x".into(), DictKind::Global, vec![1, 2, 3], 0, b"t".to_vec())));
        let mut bad = g.clone();
        bad.parts[3].push(9);
        assert_eq!(bad.check().unwrap_err().kind, ErrorKind::Protocol);
        // The hash is fixed: the same partition in every process and run.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition(b"a"), (0xaf63_dc4c_8601_ec8cu64 % 64) as u32);
    }

    #[test]
    fn a_write_is_answered_once_every_backup_applied_it() {
        let out: Out = Arc::default();
        let mut p = Part::default();
        let mut a = Vec::new();
        assert_eq!(p.write(set("k", "1"), &none, ReplyTo::Capture(out.clone()), b"r1".to_vec(), &[3, 4], &mut a), Some(1));
        assert!(a.is_empty(), "waits for 3 and 4");
        assert_eq!(p.store.get(&b"k"[..]).unwrap(), b"1", "applied on the primary");
        p.ack(1, 3, None, &mut a);
        p.ack(1, 3, None, &mut a);
        p.ack(1, 9, None, &mut a);
        assert!(a.is_empty());
        p.ack(1, 4, None, &mut a);
        assert_eq!(sent(a), vec![Ok(b"r1".to_vec())]);
        // No backup: answered at once.
        let mut a = Vec::new();
        assert_eq!(p.write(set("k", "2"), &none, ReplyTo::Capture(out.clone()), vec![], &[], &mut a), Some(2));
        assert_eq!(sent(a).len(), 1);
        // A backup's failure is the writer's; a lost backup fails what waits for it.
        let mut a = Vec::new();
        p.write(set("a", "x"), &none, ReplyTo::Capture(out.clone()), vec![], &[3], &mut a);
        p.write(set("b", "x"), &none, ReplyTo::Capture(out.clone()), vec![], &[4], &mut a);
        p.ack(3, 3, Some(Error::new(ErrorKind::Remote, "no f")), &mut a);
        assert_eq!(sent(std::mem::take(&mut a))[0].as_ref().unwrap_err().message, "no f");
        assert_eq!(p.waiting(), 1);
        // Backup 4 is gone: its write is on every surviving replica.
        p.keep_backups(&[3], &mut a);
        assert!(sent(a)[0].is_ok());
        assert_eq!(p.waiting(), 0);
        // A value function failing on the primary: nothing replicated.
        let mut a = Vec::new();
        let f = Effect::SetF { key: b"f".to_vec(), f: "nope".into(), args: vec![] };
        assert_eq!(p.write(f, &none, ReplyTo::Capture(out.clone()), vec![], &[3], &mut a), None);
        assert_eq!(sent(a)[0].as_ref().unwrap_err().kind, ErrorKind::Remote);
        assert_eq!(p.seq, 4);
    }

    #[test]
    fn a_batch_is_one_write_and_parks_reads_of_each_of_its_keys() {
        let out: Out = Arc::default();
        let mut p = Part::default();
        let mut a = Vec::new();
        let e = Effect::SetMany { pairs: vec![(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), b"2".to_vec())] };
        assert_eq!(p.write(e, &none, ReplyTo::Capture(out.clone()), vec![], &[3], &mut a), Some(1));
        assert_eq!((p.store.get(&b"x"[..]).unwrap(), p.store.get(&b"y"[..]).unwrap()), (&b"1".to_vec(), &b"2".to_vec()));
        p.read(b"y", ReplyTo::Capture(out.clone()), b"2".to_vec(), &mut a);
        p.read(b"z", ReplyTo::Capture(out.clone()), b"-".to_vec(), &mut a);
        assert_eq!(sent(std::mem::take(&mut a)), vec![Ok(b"-".to_vec())], "only the read of a key outside the batch is answered");
        p.ack(1, 3, None, &mut a);
        assert_eq!(sent(a).len(), 2, "the batch's writer and the parked read");
        // A backup applies it as one write.
        let mut b = Part::default();
        assert_eq!(b.replicate(1, Effect::SetMany { pairs: vec![(b"x".to_vec(), b"1".to_vec())] }, &none), vec![(1, None)]);
        assert_eq!(b.store.get(&b"x"[..]).unwrap(), b"1");
    }

    #[test]
    fn a_read_of_a_key_with_a_write_not_acknowledged_waits_for_it() {
        let out: Out = Arc::default();
        let mut p = Part::default();
        let mut a = Vec::new();
        p.write(set("k", "1"), &none, ReplyTo::Capture(out.clone()), b"w1".to_vec(), &[3], &mut a);
        p.read(b"other", ReplyTo::Capture(out.clone()), b"now".to_vec(), &mut a);
        assert_eq!(sent(std::mem::take(&mut a)), vec![Ok(b"now".to_vec())], "another key is read at once");
        p.read(b"k", ReplyTo::Capture(out.clone()), b"1".to_vec(), &mut a);
        p.write(set("k", "2"), &none, ReplyTo::Capture(out.clone()), b"w2".to_vec(), &[3], &mut a);
        p.read(b"k", ReplyTo::Capture(out.clone()), b"2".to_vec(), &mut a);
        assert!(a.is_empty());
        p.ack(1, 3, None, &mut a);
        assert_eq!(sent(std::mem::take(&mut a)), vec![Ok(b"w1".to_vec()), Ok(b"1".to_vec())]);
        p.ack(2, 3, None, &mut a);
        assert_eq!(sent(std::mem::take(&mut a)), vec![Ok(b"w2".to_vec()), Ok(b"2".to_vec())]);
        p.read(b"k", ReplyTo::Capture(out.clone()), b"2".to_vec(), &mut a);
        assert_eq!(sent(a).len(), 1, "nothing waits any more");
        // Failing everything fails the parked reads too.
        let mut a = Vec::new();
        p.write(set("k", "3"), &none, ReplyTo::Capture(out.clone()), vec![], &[3], &mut a);
        p.read(b"k", ReplyTo::Capture(out.clone()), b"3".to_vec(), &mut a);
        p.fail_all(&Error::new(ErrorKind::Shutdown, "bye"), &mut a);
        assert!(sent(a).iter().all(|r| r.is_err()));
    }

    #[test]
    fn a_backup_applies_in_sequence_order_and_once() {
        let mut p = Part::default();
        assert!(p.replicate(2, set("k", "2"), &none).is_empty(), "1 is missing");
        assert!(p.replicate(3, Effect::Delete { key: b"k".to_vec() }, &none).is_empty());
        assert_eq!(p.ahead(), 2);
        let done = p.replicate(1, set("k", "1"), &none);
        assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(p.store.is_empty(), "set 1, set 2, delete: in that order");
        assert_eq!(p.replicate(2, set("k", "again"), &none), vec![(2, None)], "a duplicate is acknowledged, not applied");
        assert!(p.store.is_empty());
        // A value function computed here; one that fails leaves the key absent.
        let myid = |f: &str, a: &[u8]| if f == "myid" { Ok([&b"7"[..], a].concat()) } else { Err(format!("no function {f}")) };
        p.store.insert(b"y".to_vec(), b"old".to_vec());
        let d = p.replicate(4, Effect::SetF { key: b"x".to_vec(), f: "myid".into(), args: b"!".to_vec() }, &myid);
        assert_eq!(d, vec![(4, None)]);
        assert_eq!(p.store.get(&b"x"[..]).unwrap(), b"7!");
        let d = p.replicate(5, Effect::SetF { key: b"y".to_vec(), f: "other".into(), args: vec![] }, &myid);
        assert_eq!(d, vec![(5, Some("no function other".to_string()))]);
        assert!(!p.store.contains_key(&b"y"[..]));
    }

    #[test]
    fn a_new_configuration_moves_the_primary_and_transfers_state() {
        let c = DictConfig::new(1, "d".into(), DictKind::Distributed, vec![2, 3, 4], 2, vec![]);
        let n = c.without(2);
        assert_eq!((n.epoch, n.members.clone()), (2, vec![3, 4]));
        // Partition 0 was [2, 3]: 3 is its primary, 4 its new backup.
        assert_eq!(n.replicas(0), &[3, 4]);
        assert_eq!(n.replicas(1), &[3, 4], "untouched but for order");
        assert!(n.lost.iter().all(|&l| l == 0));
        assert!(n.check().is_ok());
        // Replication 1: the dead member's partitions are lost, naming it.
        let one = DictConfig::new(1, "d".into(), DictKind::Distributed, vec![2, 3], 1, vec![]).without(3);
        assert_eq!(one.replicas(1), &[] as &[u32]);
        assert_eq!(one.lost[1], 3);
        assert_eq!(one.lost[0], 0);
        let g = DictConfig::new(1, "g".into(), DictKind::Global, vec![1, 2, 3], 0, vec![]).without(1);
        assert!(g.parts.iter().all(|l| l.len() == 2));
        // A backup promoted: what came beyond a gap goes; the state it
        // sends installs on a new backup, which then applies what waited.
        let out: Out = Arc::default();
        let mut b = Part::default();
        b.replicate(1, set("k", "1"), &none);
        b.replicate(3, set("k", "3"), &none);
        let mut a = Vec::new();
        let (pairs, seq) = b.become_primary(&[4], &mut a);
        assert_eq!((pairs.clone(), seq), (vec![(b"k".to_vec(), b"1".to_vec())], 1));
        assert_eq!(b.ahead(), 0);
        b.write(set("j", "2"), &none, ReplyTo::Capture(out.clone()), vec![], &[4], &mut a);
        let mut nb = Part { awaiting: true, ..Part::default() };
        assert!(nb.replicate(2, set("j", "2"), &none).is_empty(), "waits for the state");
        let done = nb.install_state(seq, pairs, &none);
        assert_eq!(done, vec![(2, None)]);
        assert_eq!(nb.store, b.store);
        // The state's ack stands for the writes it held.
        b.write(set("x", "3"), &none, ReplyTo::Capture(out.clone()), vec![], &[4], &mut a);
        b.state_acked(4, 2, &mut a);
        assert_eq!(sent(std::mem::take(&mut a)).len(), 1);
        assert_eq!(b.waiting(), 1);
    }

    #[test]
    fn a_backup_under_a_new_primary_drops_what_the_old_one_sent_beyond_a_gap() {
        // Backup 4 applied 1, missed 2, holds 3 and 4 from the dead primary.
        let mut b = Part::default();
        b.replicate(1, set("k", "1"), &none);
        b.replicate(3, set("k", "old 3"), &none);
        b.replicate(4, set("j", "old 4"), &none);
        assert_eq!(b.ahead(), 2);
        // The new primary had applied 1 and 2 only: its state ends at 2.
        let mut p = Part::default();
        p.replicate(1, set("k", "1"), &none);
        p.replicate(2, set("k", "2"), &none);
        let mut a = Vec::new();
        let (pairs, seq) = p.become_primary(&[4], &mut a);
        assert_eq!(seq, 2);
        let why = Error::new(ErrorKind::InvalidArgument, "reconfigured");
        b.become_backup(&why, &mut a);
        assert_eq!(b.ahead(), 0, "the old primary's writes beyond the gap go");
        let out: Out = Arc::default();
        p.write(set("k", "new 3"), &none, ReplyTo::Capture(out.clone()), vec![], &[4], &mut a);
        p.write(set("x", "new 4"), &none, ReplyTo::Capture(out.clone()), vec![], &[4], &mut a);
        // The new primary's write 3 may come before its state; both apply.
        assert!(b.replicate(3, set("k", "new 3"), &none).is_empty(), "waits for the state");
        assert_eq!(b.install_state(seq, pairs, &none), vec![(3, None)]);
        assert_eq!(b.replicate(4, set("x", "new 4"), &none), vec![(4, None)], "applied, not taken for a duplicate");
        assert_eq!(b.store, p.store, "the replicas agree");
        assert!(!b.store.contains_key(&b"j"[..]));
    }

    #[test]
    fn a_backup_answers_the_writes_it_owes_once_applied_and_the_primary_then_answers_nothing() {
        let answer = |request: u64| BackupAnswer { to: 9, request, op: 7, result: vec![] };
        // The backup: write 1 applies at once; 3 waits for 2, then both apply.
        let mut b = Part::default();
        b.answer_after(1, answer(11));
        assert_eq!(b.replicate(1, set("k", "1"), &none), vec![(1, None)]);
        assert_eq!(b.take_answer(1), Some(answer(11)));
        b.answer_after(3, answer(13));
        assert!(b.replicate(3, set("k", "3"), &none).is_empty(), "3 waits, its answer kept");
        let done = b.replicate(2, set("k", "2"), &none);
        assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!((b.take_answer(2), b.take_answer(3)), (None, Some(answer(13))));
        // A write seen before owes nothing again (its primary answers it if the first answer was lost).
        b.answer_after(3, answer(13));
        assert_eq!(b.take_answer(3), None);
        // A new primary's state supersedes what the old one's writes owed.
        b.answer_after(5, answer(15));
        b.become_backup(&Error::new(ErrorKind::InvalidArgument, "reconfigured"), &mut Vec::new());
        assert_eq!(b.take_answer(5), None);
        b.answer_after(5, answer(25));
        b.replicate(5, set("k", "5"), &none);
        assert!(b.install_state(4, vec![], &none) == vec![(5, None)]);
        assert_eq!(b.take_answer(5), Some(answer(25)), "a write after the state keeps its answer");

        // The primary: ACK_ANSWERED finishes the write without answering
        // the writer, but answers a read parked on it.
        let out: Out = Arc::default();
        let mut p = Part::default();
        let mut a = Vec::new();
        p.write(set("k", "v"), &none, ReplyTo::Capture(out.clone()), vec![], &[5], &mut a);
        p.read(b"k", ReplyTo::Capture(out.clone()), b"v".to_vec(), &mut a);
        assert!(a.is_empty());
        p.ack_answered(1, 5, &mut a);
        assert_eq!(p.waiting(), 0);
        let replies: Vec<_> = a.into_iter().filter(|Answer(r, _)| matches!(r, ReplyTo::Capture(_))).collect();
        assert_eq!(sent(replies), vec![Ok(b"v".to_vec())], "only the read is answered here");
        // Its backup dying first: the primary answers the writer itself.
        let mut a = Vec::new();
        p.write(set("k", "w"), &none, ReplyTo::Capture(out.clone()), vec![], &[5], &mut a);
        p.keep_backups(&[], &mut a);
        assert_eq!(sent(a), vec![Ok(vec![])]);
        p.ack_answered(2, 5, &mut Vec::new());
    }
}
