//! What services that keep an object for other processes share (refs keeps
//! futures' values, channel keeps channels):
//!
//! - `Holders`: the references to one kept object, counted per holder
//!   process, plus those in flight (exported, not yet claimed by their
//!   importer). The owner frees the object once it is `unreferenced`; a
//!   holder that dies releases everything it held (`drop_holder`).
//! - `Housekeeper`: one thread per service that sends, in order, the
//!   one-way messages that must not block their sender (a finalizer's
//!   release, an import's claim: a first message to a worker may have to
//!   connect to it first). It starts on first use.
//!
//! The protocol both services follow: the exporter adds an in-flight count
//! (ADD_REF, a round trip when it is not the owner); the importer claims
//! it (ADD_CLIENT: in flight -> held by the importer) and releases it when
//! its handle is dropped (DEL_REF); both go through the housekeeper, so a
//! release never overtakes its claim.

use crate::error::{Error, Result};
use crate::node::Node;
use crate::wire::ServiceId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Weak};

/// The references to one kept object.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    in_transit: u64,
    held: HashMap<u32, u64>,
}

impl Holders {
    /// Held once, by `holder` (its creator).
    pub fn held_by(holder: u32) -> Holders {
        let mut h = Holders::default();
        h.held.insert(holder, 1);
        h
    }

    /// An exported reference is on its way to some process.
    pub fn add_transit(&mut self) {
        self.in_transit += 1;
    }

    /// `holder` imported a reference: it now holds it until it releases
    /// it or dies.
    pub fn claim(&mut self, holder: u32) {
        self.in_transit = self.in_transit.saturating_sub(1);
        *self.held.entry(holder).or_insert(0) += 1;
    }

    /// `holder` released one reference it held.
    pub fn release(&mut self, holder: u32) {
        if let Some(n) = self.held.get_mut(&holder) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&holder);
            }
        }
    }

    /// `holder` left: whatever it held is released. True if it held any.
    pub fn drop_holder(&mut self, holder: u32) -> bool {
        self.held.remove(&holder).is_some()
    }

    pub fn unreferenced(&self) -> bool {
        self.in_transit == 0 && self.held.is_empty()
    }

    /// References held by `holder` (for tests and gauges).
    #[cfg(test)]
    pub fn held_by_count(&self, holder: u32) -> u64 {
        self.held.get(&holder).copied().unwrap_or(0)
    }
}

/// A one-way message for the housekeeper to send.
struct Outgoing {
    to: u32,
    op: u16,
    meta: Vec<u8>,
    payload: Vec<u8>,
}

/// Sends one service's non-blocking one-way messages from one thread, in
/// the order they were handed over.
pub(crate) struct Housekeeper {
    name: &'static str,
    service: ServiceId,
    /// None before the first use and after `stop`.
    tx: Mutex<Option<mpsc::Sender<Outgoing>>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Housekeeper {
    pub fn new(name: &'static str, service: ServiceId) -> Housekeeper {
        Housekeeper { name, service, tx: Mutex::new(None), stopped: Default::default() }
    }

    /// Starts the thread now (a service that wants it from the start).
    pub fn start(&self, node: &Arc<Node>) -> Result<()> {
        let mut tx = self.tx.lock();
        if tx.is_none() && !self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            *tx = Some(self.spawn(Arc::downgrade(node))?);
        }
        Ok(())
    }

    fn spawn(&self, node: Weak<Node>) -> Result<mpsc::Sender<Outgoing>> {
        let (tx, rx) = mpsc::channel::<Outgoing>();
        let service = self.service;
        std::thread::Builder::new()
            .name(self.name.into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(m) = rx.recv() {
                    let Some(node) = node.upgrade() else { return };
                    let _ = node.send_oneway_nowait(m.to, service, m.op, &m.meta, &m.payload);
                }
            })
            .map_err(|e| Error::io("spawn", e))?;
        Ok(tx)
    }

    /// Queues a one-way message to `to`; never blocks. Dropped once the
    /// node is closing (nobody is there to tell).
    pub fn send(&self, node: &Arc<Node>, to: u32, op: u16, meta: Vec<u8>, payload: Vec<u8>) {
        let mut tx = self.tx.lock();
        if tx.is_none() {
            if self.stopped.load(std::sync::atomic::Ordering::Acquire) || node.is_closing() {
                return;
            }
            match self.spawn(Arc::downgrade(node)) {
                Ok(t) => *tx = Some(t),
                Err(e) => return node.log.error(format!("{}: {e}", self.name)),
            }
        }
        if let Some(t) = tx.as_ref() {
            let _ = t.send(Outgoing { to, op, meta, payload });
        }
    }

    /// The node closes: the thread ends, later messages are dropped.
    pub fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Release);
        *self.tx.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_lives_while_a_reference_is_in_flight_or_held() {
        let mut h = Holders::held_by(1);
        h.add_transit();
        h.release(1);
        assert!(!h.unreferenced(), "in flight");
        h.claim(5);
        h.claim(5); // a claim without an export (a stray one) still counts
        assert_eq!(h.held_by_count(5), 2);
        h.release(5);
        assert!(!h.unreferenced());
        h.release(9); // never held: nothing
        assert!(h.drop_holder(5));
        assert!(!h.drop_holder(5));
        assert!(h.unreferenced());
    }
}
