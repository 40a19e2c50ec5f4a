//! References to futures: a future's value kept by its owner for as long
//! as any reference to it is in flight or held. The owner counts, per
//! holder process, the references it holds, so a holder that dies
//! releases what it held (`service::holders`, shared with channels).
//!
//! Protocol: the exporter adds an in-flight count (ADD_REF, a round trip
//! when it is not the owner); the importer claims it (ADD_CLIENT: in
//! flight -> held by the importer), fetches the value (FETCH_REF, answered
//! when the value is there) and releases it when its future is dropped
//! (DEL_REF).

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Departure, Future, FutureRef, Incoming, Node, Service};
use crate::node::slot::Slot;
use crate::service::holders::{Holders, Housekeeper};
use crate::wire::{self, ServiceId};
use parking_lot::Mutex;
use crate::node::fast_map::{self, FastMap};
use std::sync::Arc;
use std::time::Duration;

pub const ID: ServiceId = 3;

pub(crate) mod op {
    pub const ADD_REF: u16 = 1;
    pub const DEL_REF: u16 = 2;
    pub const FETCH_REF: u16 = 3;
    pub const ADD_CLIENT: u16 = 4;
}

/// A value this process keeps for references to it.
struct Owned {
    slot: Arc<Slot>,
    refs: Holders,
}

pub struct Refs {
    owned: Mutex<FastMap<u64, Owned>>,
    /// Messages that must not block their sender (finalizers, imports).
    housekeeping: Housekeeper,
}

impl Refs {
    pub fn new() -> Arc<Refs> {
        Arc::new(Refs { owned: Mutex::new(fast_map::new()), housekeeping: Housekeeper::new("cluster-refs", ID) })
    }

    fn defer(&self, node: &Arc<Node>, owner: u32, op: u16, id: u64) {
        self.housekeeping.send(node, owner, op, wire::encode_meta(&id), Vec::new());
    }

    /// An exported reference is on its way to some process.
    fn add_transit(&self, id: u64) -> bool {
        match self.owned.lock().get_mut(&id) {
            Some(e) => {
                e.refs.add_transit();
                true
            }
            None => false,
        }
    }

    /// `holder` imported a reference: it now holds it until it releases it or dies.
    fn claim(&self, id: u64, holder: u32) -> Option<Arc<Slot>> {
        let mut owned = self.owned.lock();
        let e = owned.get_mut(&id)?;
        e.refs.claim(holder);
        Some(e.slot.clone())
    }

    fn release(&self, id: u64, holder: u32) {
        let mut owned = self.owned.lock();
        if let Some(e) = owned.get_mut(&id) {
            e.refs.release(holder);
            if e.refs.unreferenced() {
                owned.remove(&id);
            }
        }
    }

    /// Number of values this process keeps for references held elsewhere.
    pub fn owned_count(&self) -> usize {
        self.owned.lock().len()
    }
}

fn freed(node: &Node, id: u64) -> Error {
    Error::at(ErrorKind::InvalidArgument, node.myid(), format!("future {id} on process {} was freed", node.myid()))
}

impl Service for Refs {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "refs"
    }

    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        let ref_id = parse(msg.op(), &msg.meta)?;
        match msg.op() {
            op::ADD_REF => {
                let r = if self.add_transit(ref_id) { Ok(&[][..]) } else { Err(freed(node, ref_id)) };
                msg.respond(node, r);
            }
            op::ADD_CLIENT => {
                self.claim(ref_id, msg.from);
            }
            op::DEL_REF => self.release(ref_id, msg.from),
            op::FETCH_REF => {
                let slot = self.owned.lock().get(&ref_id).map(|e| e.slot.clone());
                match slot {
                    None => msg.respond(node, Err(freed(node, ref_id))),
                    Some(slot) => {
                        let n = node.clone();
                        let reply = msg.reply;
                        slot.on_complete(move |r| {
                            let _ = reply.send(&n, r.as_ref().map(|v| &v[..]).map_err(|e| e.clone()));
                        });
                    }
                }
            }
            o => return Err(unknown_op("refs", o)),
        }
        Ok(None)
    }

    fn on_start(&self, node: &Arc<Node>) -> Result<()> {
        self.housekeeping.start(node)
    }

    /// A process died: the references it held are gone with it.
    fn on_peer_left(&self, _node: &Arc<Node>, pid: u32, _how: Departure) {
        self.owned.lock().retain(|_, e| {
            e.refs.drop_holder(pid);
            !e.refs.unreferenced()
        });
    }

    fn on_close(&self, _node: &Node) {
        self.housekeeping.stop();
    }
}

/// Reads a refs message as `on_message` does: every op's meta is the
/// reference id.
pub(crate) fn parse(op: u16, meta: &[u8]) -> Result<u64> {
    let id: u64 = wire::decode_meta(meta)?;
    match op {
        op::ADD_REF | op::DEL_REF | op::FETCH_REF | op::ADD_CLIENT => Ok(id),
        o => Err(unknown_op("refs", o)),
    }
}

/// Decodes a refs message exactly as the service does (for fuzzing): the
/// reference id.
#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8]) -> Result<u64> {
    parse(op, meta)
}

fn refs(node: &Node) -> Result<Arc<Refs>> {
    node.service::<Refs>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no refs service on this node"))
}

/// Passing futures between processes.
pub trait RefsExt {
    /// A reference made by `export`, here or in another process.
    fn import(&self, r: FutureRef) -> Result<Future>;
    /// Number of values this process keeps for references held elsewhere.
    fn owned_refs(&self) -> usize;
}

/// A future's side of references.
pub trait FutureExt {
    /// A reference another process can import. The owner keeps the value
    /// until every reference made this way has been freed by its importer.
    fn export(&self) -> Result<FutureRef>;
    /// `export` as a future, at once: its value is the reference's 12 bytes
    /// (`FutureRef::to_bytes`). Only a future imported from another process
    /// needs the round trip that makes `export` wait.
    fn export_async(&self) -> Result<Future>;
}

impl FutureExt for Future {
    fn export(&self) -> Result<FutureRef> {
        let node = self.node();
        let r = refs(node)?;
        match self.source() {
            None => {
                let mut owned = r.owned.lock();
                let e = owned.entry(self.id()).or_insert_with(|| Owned { slot: self.slot.clone(), refs: Holders::default() });
                e.refs.add_transit();
                Ok(FutureRef { owner: node.myid(), id: self.id() })
            }
            Some(src) => {
                let ack = node.request(src.owner, ID, op::ADD_REF, &wire::encode_meta(&src.id), &[])?;
                ack.wait(Some(Duration::from_secs(30)))?;
                Ok(src)
            }
        }
    }

    fn export_async(&self) -> Result<Future> {
        let node = self.node();
        let Some(src) = self.source() else {
            let r = self.export()?;
            let (f, p) = node.promise(node.myid());
            p.complete(Ok(r.to_bytes().to_vec()));
            return Ok(f);
        };
        let ack = node.request(src.owner, ID, op::ADD_REF, &wire::encode_meta(&src.id), &[])?;
        let (f, p) = node.promise(src.owner);
        let bytes = src.to_bytes().to_vec();
        ack.on_complete(move |r| {
            p.complete(r.as_ref().map(|_| bytes).map_err(|e| e.clone()));
        });
        Ok(f.keeping(ack))
    }
}

impl RefsExt for Arc<Node> {
    fn import(&self, r: FutureRef) -> Result<Future> {
        let refs = refs(self)?;
        if r.owner == self.myid() {
            let slot = refs.claim(r.id, r.owner).ok_or_else(|| freed(self, r.id))?;
            let weak = Arc::downgrade(&refs);
            let (id, me) = (r.id, r.owner);
            return Ok(Future::from_slot(self, slot).on_drop(move || {
                if let Some(refs) = weak.upgrade() {
                    refs.release(id, me);
                }
            }));
        }
        if self.peer(r.owner).is_none() {
            return Err(self.unknown_process(r.owner));
        }
        refs.defer(self, r.owner, op::ADD_CLIENT, r.id);
        let weak = Arc::downgrade(&refs);
        let node = Arc::downgrade(self);
        let f = self.lazy_request(r.owner, ID, op::FETCH_REF, wire::encode_meta(&r.id));
        Ok(f.with_source(r).on_drop(move || {
            if let (Some(refs), Some(node)) = (weak.upgrade(), node.upgrade()) {
                refs.defer(&node, r.owner, op::DEL_REF, r.id);
            }
        }))
    }

    fn owned_refs(&self) -> usize {
        refs(self).map(|r| r.owned_count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    //! The service alone: messages handed to it directly, responses captured.
    use super::*;
    use crate::node::{Config, Incoming};
    use crate::wire::{Header, Kind};
    use parking_lot::Mutex;

    fn node() -> (Arc<Node>, Arc<Refs>) {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        let r = Refs::new();
        n.install(r.clone()).unwrap();
        n.start().unwrap();
        (n, r)
    }

    type Out = Arc<Mutex<Vec<Result<Vec<u8>>>>>;

    fn send(n: &Arc<Node>, r: &Refs, from: u32, op: u16, id: u64, out: &Out) {
        let kind = if matches!(op, op::ADD_REF | op::FETCH_REF) { Kind::Request } else { Kind::Oneway };
        let msg = Incoming::test(from, Header::new(kind, ID, op, 1), wire::encode_meta(&id), Vec::new(), out);
        assert!(r.on_message(n, msg).unwrap().is_none());
    }

    #[test]
    fn a_value_lives_while_a_reference_is_in_flight_or_held() {
        let (n, r) = node();
        let out: Out = Arc::default();
        let (fut, promise) = n.promise(1);
        let re = fut.export().unwrap();
        drop(fut);
        assert_eq!(r.owned_count(), 1, "in flight: kept");
        // Process 5 imports it, another export goes to 6 through 5.
        send(&n, &r, 5, op::ADD_CLIENT, re.id, &out);
        send(&n, &r, 5, op::ADD_REF, re.id, &out);
        assert!(out.lock().pop().unwrap().is_ok());
        send(&n, &r, 6, op::ADD_CLIENT, re.id, &out);
        // 6 fetches before the value exists: answered once it does.
        send(&n, &r, 6, op::FETCH_REF, re.id, &out);
        assert!(out.lock().is_empty());
        promise.complete(Ok(b"v".to_vec()));
        assert_eq!(out.lock().pop().unwrap().unwrap(), b"v");
        send(&n, &r, 5, op::DEL_REF, re.id, &out);
        assert_eq!(r.owned_count(), 1, "6 still holds it");
        send(&n, &r, 6, op::DEL_REF, re.id, &out);
        assert_eq!(r.owned_count(), 0, "released by its last holder");
        // A freed value: a clear error, never a hang.
        send(&n, &r, 6, op::FETCH_REF, re.id, &out);
        let e = out.lock().pop().unwrap().unwrap_err();
        assert!(e.message.contains("was freed"), "{e}");
        n.close();
    }

    #[test]
    fn a_holder_that_dies_releases_what_it_held() {
        let (n, r) = node();
        let out: Out = Arc::default();
        let (fut, _promise) = n.promise(1);
        let a = fut.export().unwrap();
        let b = fut.export().unwrap();
        send(&n, &r, 7, op::ADD_CLIENT, a.id, &out);
        send(&n, &r, 7, op::ADD_CLIENT, b.id, &out);
        assert_eq!(r.owned_count(), 1);
        r.on_peer_left(&n, 8, Departure { graceful: false, was_ready: true });
        assert_eq!(r.owned_count(), 1, "another process's death changes nothing");
        r.on_peer_left(&n, 7, Departure { graceful: false, was_ready: true });
        assert_eq!(r.owned_count(), 0, "both references died with process 7");
        n.close();
    }

    #[test]
    fn malformed_and_unknown_messages_are_errors() {
        let (n, r) = node();
        let out: Out = Arc::default();
        let bad = Incoming::test(5, Header::new(Kind::Oneway, ID, op::DEL_REF, 0), vec![0xff; 3], Vec::new(), &out);
        assert!(r.on_message(&n, bad).is_err());
        let unknown = Incoming::test(5, Header::new(Kind::Oneway, ID, 99, 0), wire::encode_meta(&1u64), Vec::new(), &out);
        assert!(r.on_message(&n, unknown).is_err());
        n.close();
    }
}
