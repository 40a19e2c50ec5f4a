//! The table behind C handles. A handle is `kind << 56 | generation << 32
//! | (slot + 1)`; looking one up checks all three, so a freed, reused or
//! wrong-kind handle is refused instead of dereferenced. This table is the
//! one process-wide structure, and it belongs to the C layer only.

use crate::error::{Error, ErrorKind};
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Cluster = 1,
    Future = 2,
    Call = 3,
    Buffer = 4,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster_ctx",
            Kind::Future => "cluster_future",
            Kind::Call => "cluster_call",
            Kind::Buffer => "cluster_buffer",
        }
    }
}

type Object = Arc<dyn std::any::Any + Send + Sync>;

struct Entry {
    gen: u32,
    kind: Kind,
    obj: Option<Object>,
}

struct Table {
    entries: Vec<Entry>,
    free: Vec<u32>,
}

static TABLE: Mutex<Table> = Mutex::new(Table { entries: Vec::new(), free: Vec::new() });

fn split(h: u64) -> Option<(u8, u32, usize)> {
    let kind = (h >> 56) as u8;
    let gen = ((h >> 32) & 0x00FF_FFFF) as u32;
    let idx = (h & 0xFFFF_FFFF) as usize;
    if idx == 0 {
        return None;
    }
    Some((kind, gen, idx - 1))
}

pub(crate) fn insert<T: Send + Sync + 'static>(kind: Kind, obj: Arc<T>) -> Result<u64, Error> {
    let mut t = TABLE.lock();
    let idx = match t.free.pop() {
        Some(i) => i as usize,
        None => {
            t.entries.push(Entry { gen: 0, kind, obj: None });
            t.entries.len() - 1
        }
    };
    let e = &mut t.entries[idx];
    e.gen = (e.gen + 1) & 0x00FF_FFFF;
    e.kind = kind;
    e.obj = Some(obj);
    Ok(((kind as u64) << 56) | ((e.gen as u64) << 32) | (idx as u64 + 1))
}

pub(crate) fn bad(kind: Kind, why: &str) -> Error {
    Error::new(ErrorKind::BadHandle, format!("invalid {} handle: {why}", kind.name()))
}

fn locate(t: &Table, h: u64, kind: Kind) -> Result<usize, Error> {
    if h == 0 {
        return Err(bad(kind, "NULL"));
    }
    let (k, gen, idx) = split(h).ok_or_else(|| bad(kind, "not a handle"))?;
    if k != kind as u8 {
        return Err(bad(kind, "a handle of another kind"));
    }
    match t.entries.get(idx) {
        Some(e) if e.gen == gen && e.kind == kind && e.obj.is_some() => Ok(idx),
        Some(_) => Err(bad(kind, "already freed")),
        None => Err(bad(kind, "not a handle")),
    }
}

pub(crate) fn get<T: Send + Sync + 'static>(kind: Kind, h: u64) -> Result<Arc<T>, Error> {
    let t = TABLE.lock();
    let idx = locate(&t, h, kind)?;
    let obj = t.entries[idx].obj.clone().unwrap();
    drop(t);
    obj.downcast::<T>().map_err(|_| bad(kind, "wrong object"))
}

/// Removes the handle; its object is dropped by the caller, outside the lock.
pub(crate) fn remove(kind: Kind, h: u64) -> Result<Object, Error> {
    let mut t = TABLE.lock();
    let idx = locate(&t, h, kind)?;
    let obj = t.entries[idx].obj.take().unwrap();
    t.free.push(idx as u32);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        remove(Kind::Future, h2).unwrap();
    }
}
