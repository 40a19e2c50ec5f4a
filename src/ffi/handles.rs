//! The table behind C handles, the one process-wide structure, owned by
//! the C layer.
//!
//! A handle is `kind << 56 | generation << 24 | slot`: 8 bits of kind, 32
//! of generation, 24 of slot (numbered from 1, so no handle is 0). Looking
//! one up checks all three, so a freed, reused or wrong-kind handle is
//! refused instead of dereferenced.
//!
//! A (slot, generation) pair is never issued twice: each insert into a slot
//! takes the next generation, and a slot whose generation reaches the limit
//! is retired for good when freed rather than wrapping round. A stale handle
//! therefore stays refused however long the program runs. In normal use
//! the free list keeps the table at the peak number of live handles (one
//! slot is retired per 2^32 reuses); should every slot be live or retired,
//! creating a handle fails instead of reusing one.

use crate::{Error, ErrorKind};
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Cluster = 1,
    Future = 2,
    Call = 3,
    Buffer = 4,
    Channel = 5,
    // Work distribution (kinds 16 and up, clear of other services' objects).
    Pool = 16,
    Pmap = 17,
    WorkerSet = 18,
    TaskQueue = 19,
    // Dictionaries.
    Dict = 20,
    DictEntries = 21,
    DictValue = 22,
    // Shared memory.
    Shm = 23,
    Stasks = 24,
    // Fork (kinds 32 and up).
    ForkResults = 32,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster_ctx",
            Kind::Future => "cluster_future",
            Kind::Call => "cluster_call",
            Kind::Buffer => "cluster_buffer",
            Kind::Channel => "cluster_channel",
            Kind::Pool => "cluster_pool",
            Kind::Pmap => "cluster_pmap",
            Kind::WorkerSet => "cluster_workerset",
            Kind::TaskQueue => "cluster_taskqueue",
            Kind::Dict => "cluster_dict",
            Kind::DictEntries => "cluster_dict_entries",
            Kind::DictValue => "cluster_value",
            Kind::Shm => "cluster_shm",
            Kind::Stasks => "cluster_stasks",
            Kind::ForkResults => "cluster_fork_results",
        }
    }
}

const KIND_SHIFT: u32 = 56;
const GEN_SHIFT: u32 = 24;
const SLOT_MASK: u64 = (1 << GEN_SHIFT) - 1;
/// Slots a handle can name (slot numbers 1..=SLOT_MASK).
const MAX_SLOTS: usize = SLOT_MASK as usize;

type Object = Arc<dyn std::any::Any + Send + Sync>;

struct Entry {
    /// The generation of the last handle issued for this slot (0: none yet).
    gen: u32,
    kind: Kind,
    obj: Option<Object>,
}

pub(crate) struct Table {
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// The last generation a slot may carry; then it is retired.
    max_gen: u32,
    max_slots: usize,
}

static TABLE: Mutex<Table> = Mutex::new(Table::new());

fn encode(kind: Kind, gen: u32, idx: usize) -> u64 {
    ((kind as u64) << KIND_SHIFT) | ((gen as u64) << GEN_SHIFT) | (idx as u64 + 1)
}

/// (kind, generation, slot index), or None for what cannot be a handle.
fn decode(h: u64) -> Option<(u8, u32, usize)> {
    let slot = (h & SLOT_MASK) as usize;
    if slot == 0 {
        return None;
    }
    Some(((h >> KIND_SHIFT) as u8, (h >> GEN_SHIFT) as u32, slot - 1))
}

pub(crate) fn bad(kind: Kind, why: &str) -> Error {
    Error::new(ErrorKind::BadHandle, format!("invalid {} handle: {why}", kind.name()))
}

impl Table {
    pub(crate) const fn new() -> Table {
        Table::with_limits(u32::MAX, MAX_SLOTS)
    }

    /// A table whose slots retire after `max_gen` uses, with at most
    /// `max_slots` slots (tests force exhaustion with small limits).
    const fn with_limits(max_gen: u32, max_slots: usize) -> Table {
        Table { entries: Vec::new(), free: Vec::new(), max_gen, max_slots }
    }

    fn insert(&mut self, kind: Kind, obj: Object) -> Result<u64, Error> {
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                if self.entries.len() >= self.max_slots {
                    return Err(Error::new(ErrorKind::TooLarge, format!("no {} handle left: {} slots live or retired", kind.name(), self.entries.len())));
                }
                self.entries.push(Entry { gen: 0, kind, obj: None });
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[idx];
        // Only slots below the limit are on the free list: this never wraps.
        e.gen += 1;
        e.kind = kind;
        e.obj = Some(obj);
        Ok(encode(kind, e.gen, idx))
    }

    fn locate(&self, h: u64, kind: Kind) -> Result<usize, Error> {
        if h == 0 {
            return Err(bad(kind, "NULL"));
        }
        let (k, gen, idx) = decode(h).ok_or_else(|| bad(kind, "not a handle"))?;
        if k != kind as u8 {
            return Err(bad(kind, "a handle of another kind"));
        }
        match self.entries.get(idx) {
            Some(e) if e.gen == gen && e.kind == kind && e.obj.is_some() => Ok(idx),
            Some(e) if gen == 0 || gen > e.gen => Err(bad(kind, "not a handle")),
            Some(_) => Err(bad(kind, "already freed")),
            None => Err(bad(kind, "not a handle")),
        }
    }

    fn get(&self, h: u64, kind: Kind) -> Result<Object, Error> {
        let idx = self.locate(h, kind)?;
        Ok(self.entries[idx].obj.clone().expect("located entries are live"))
    }

    fn remove(&mut self, h: u64, kind: Kind) -> Result<Object, Error> {
        let idx = self.locate(h, kind)?;
        let e = &mut self.entries[idx];
        let obj = e.obj.take().expect("located entries are live");
        if e.gen < self.max_gen {
            self.free.push(idx as u32);
        } // else: every generation of this slot was used; it stays retired.
        Ok(obj)
    }
}

// In a pfork child the table's lock may be held by a thread that does not
// exist there: every use is refused before taking it (ffi/fork.rs).

pub(crate) fn insert<T: Send + Sync + 'static>(kind: Kind, obj: Arc<T>) -> Result<u64, Error> {
    super::fork::refuse_in_child(kind.name())?;
    TABLE.lock().insert(kind, obj)
}

pub(crate) fn get<T: Send + Sync + 'static>(kind: Kind, h: u64) -> Result<Arc<T>, Error> {
    super::fork::refuse_in_child(kind.name())?;
    let obj = TABLE.lock().get(h, kind)?;
    obj.downcast::<T>().map_err(|_| bad(kind, "wrong object"))
}

/// Removes the handle; its object is dropped by the caller, outside the lock.
pub(crate) fn remove(kind: Kind, h: u64) -> Result<Object, Error> {
    super::fork::refuse_in_child(kind.name())?;
    TABLE.lock().remove(h, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn obj(v: u32) -> Object {
        Arc::new(v)
    }

    fn value(t: &Table, h: u64, kind: Kind) -> Result<u32, Error> {
        t.get(h, kind).map(|o| *o.downcast::<u32>().unwrap())
    }

    #[test]
    fn stale_wrong_kind_and_garbage_handles_are_refused() {
        let h = insert(Kind::Future, Arc::new(5u32)).unwrap();
        assert_eq!(*get::<u32>(Kind::Future, h).unwrap(), 5);
        assert_eq!(get::<u32>(Kind::Call, h).unwrap_err().kind, ErrorKind::BadHandle);
        remove(Kind::Future, h).unwrap();
        assert_eq!(get::<u32>(Kind::Future, h).unwrap_err().kind, ErrorKind::BadHandle);
        assert!(remove(Kind::Future, h).is_err());
        let h2 = insert(Kind::Future, Arc::new(6u32)).unwrap();
        assert!(get::<u32>(Kind::Future, h).is_err(), "a reused slot must not revive the old handle");
        assert_eq!(*get::<u32>(Kind::Future, h2).unwrap(), 6);
        assert!(get::<u32>(Kind::Future, 0xdead_beef).is_err());
        assert!(get::<u32>(Kind::Future, 0).is_err());
        assert_eq!(get::<String>(Kind::Future, h2).unwrap_err().kind, ErrorKind::BadHandle);
        remove(Kind::Future, h2).unwrap();
    }

    #[test]
    fn the_layout_is_kind_generation_slot() {
        let mut t = Table::new();
        let h = t.insert(Kind::Buffer, obj(1)).unwrap();
        assert_eq!(h, (4u64 << 56) | (1 << 24) | 1);
        assert_eq!(decode(h), Some((4, 1, 0)));
        // The top generation bit is a generation bit, not part of the kind.
        assert_eq!(decode(encode(Kind::Call, u32::MAX, SLOT_MASK as usize - 1)), Some((3, u32::MAX, MAX_SLOTS - 1)));
    }

    /// A slot with a small generation limit: once the last generation is
    /// freed the slot is retired, and no handle it ever carried comes back,
    /// however many create/free cycles follow.
    #[test]
    fn a_handle_is_never_accepted_again_after_its_slot_exhausts_its_generations() {
        let mut t = Table::with_limits(3, 1000);
        let mut issued: Vec<(u64, Kind)> = Vec::new();
        for i in 0..600u32 {
            let kind = if i % 2 == 0 { Kind::Future } else { Kind::Call };
            let h = t.insert(kind, obj(i)).unwrap();
            assert_eq!(value(&t, h, kind).unwrap(), i);
            for &(old, k) in &issued {
                let e = t.get(old, k).unwrap_err();
                assert_eq!(e.kind, ErrorKind::BadHandle, "handle {old:#x} came back after {i} cycles");
                assert!(t.remove(old, k).is_err());
            }
            t.remove(h, kind).unwrap();
            issued.push((h, kind));
        }
        let distinct: HashSet<u64> = issued.iter().map(|&(h, _)| h).collect();
        assert_eq!(distinct.len(), issued.len(), "a (slot, generation) pair was issued twice");
        // One slot per three cycles: each retired, none reused.
        assert_eq!(t.entries.len(), 200);
        assert!(t.entries.iter().all(|e| e.gen == 3 && e.obj.is_none()));
        assert!(t.free.is_empty());
    }

    /// The real 32-bit limit: a slot forced to its last generations retires
    /// instead of wrapping to generation 0 and 1 (the 24-bit table wrapped).
    #[test]
    fn the_32_bit_generation_does_not_wrap() {
        let mut t = Table::new();
        let first = t.insert(Kind::Future, obj(0)).unwrap();
        t.remove(first, Kind::Future).unwrap();
        t.entries[0].gen = u32::MAX - 2;
        let a = t.insert(Kind::Future, obj(1)).unwrap();
        t.remove(a, Kind::Future).unwrap();
        let b = t.insert(Kind::Future, obj(2)).unwrap();
        assert_eq!(decode(b), Some((Kind::Future as u8, u32::MAX, 0)));
        t.remove(b, Kind::Future).unwrap();
        assert!(t.free.is_empty(), "slot 0 is retired");
        let c = t.insert(Kind::Future, obj(3)).unwrap();
        assert_eq!(decode(c), Some((Kind::Future as u8, 1, 1)), "a fresh slot, not slot 0 again");
        for old in [first, a, b] {
            assert_eq!(t.get(old, Kind::Future).unwrap_err().kind, ErrorKind::BadHandle);
        }
        // What a wrapped slot 0 would have issued is no handle either.
        for gen in [0u32, 1, 2] {
            assert!(t.get(encode(Kind::Future, gen, 0), Kind::Future).is_err());
        }
        assert_eq!(value(&t, c, Kind::Future).unwrap(), 3);
    }

    /// The fault this layout fixes, at full size: with 24-bit generations
    /// a handle freed 2^24 cycles ago was accepted again.
    #[test]
    fn a_handle_freed_2_pow_24_cycles_ago_stays_refused() {
        let mut t = Table::new();
        let o = obj(7);
        let first = t.insert(Kind::Future, o.clone()).unwrap();
        t.remove(first, Kind::Future).unwrap();
        for _ in 0..(1u32 << 24) {
            let h = t.insert(Kind::Future, o.clone()).unwrap();
            assert_ne!(h, first);
            t.remove(h, Kind::Future).unwrap();
        }
        let h = t.insert(Kind::Future, o.clone()).unwrap();
        assert_eq!(t.get(first, Kind::Future).unwrap_err().kind, ErrorKind::BadHandle);
        assert_eq!(t.entries.len(), 1);
        t.remove(h, Kind::Future).unwrap();
    }

    /// When every slot is live or retired, creating a handle fails rather
    /// than reusing one.
    #[test]
    fn an_exhausted_table_refuses_new_handles() {
        let mut t = Table::with_limits(2, 3);
        let mut old = Vec::new();
        for i in 0..6 {
            let h = t.insert(Kind::Future, obj(i)).unwrap();
            t.remove(h, Kind::Future).unwrap();
            old.push(h);
        }
        let e = t.insert(Kind::Future, obj(9)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        for h in old {
            assert!(t.get(h, Kind::Future).is_err());
        }
    }

    /// Normal use, with the real limits: create/free cycles with a few live
    /// handles at a time keep the table at its peak of live handles.
    #[test]
    fn the_table_does_not_grow_in_normal_use() {
        let mut t = Table::new();
        let mut live = std::collections::VecDeque::new();
        for i in 0..200_000u32 {
            live.push_back(t.insert(Kind::Future, obj(i)).unwrap());
            if live.len() > 8 {
                let h = live.pop_front().unwrap();
                t.remove(h, Kind::Future).unwrap();
            }
        }
        assert!(t.entries.len() <= 9, "{} slots for at most 9 live handles", t.entries.len());
        for h in live {
            t.remove(h, Kind::Future).unwrap();
        }
        assert_eq!(t.free.len(), t.entries.len());
    }
}
