//! The service interface: how a capability plugs into the node core.
//!
//! A service owns its state and its message types. The core routes it the
//! frames carrying its id, and tells it of peers joining and leaving and
//! of the node closing. Responses never reach services: the core matches
//! them to the waiting future through its one pending-request table.

use super::slot::Slot;
use super::Node;
use crate::error::{Error, ErrorKind, Result};
use crate::net::auth::Transcript;
use crate::net::{Conn, Job};
use crate::wire::{self, Frame, Header, ServiceId};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::sync::Arc;

/// How a peer left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departure {
    /// It was asked to leave (rmprocs, shutdown), rather than died.
    pub graceful: bool,
    /// It had become ready (a member others knew of).
    pub was_ready: bool,
}

pub trait Service: Send + Sync + 'static {
    /// The service's number on the wire, unique in the node.
    fn id(&self) -> ServiceId;
    fn name(&self) -> &'static str;
    /// A request or one-way message for this service. Runs under the
    /// connection's reader role, so it must be quick: long work goes in
    /// the returned job, run once the role is released. An error closes
    /// the connection (a malformed message).
    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>>;
    /// The first message of a new, authenticated connection. `None`:
    /// not this service's to admit. `transcript` is the connection's
    /// handshake, to check proofs bound to it. Runs on the admission
    /// thread, which serves every connection being set up: it must be quick.
    fn on_admit(&self, _node: &Arc<Node>, _conn: &Arc<Conn>, _first: &Frame, _transcript: &Transcript) -> Option<Result<()>> {
        None
    }
    /// Once every service is installed, before any connection is served
    /// (a worker joins its head here).
    fn on_start(&self, _node: &Arc<Node>) -> Result<()> {
        Ok(())
    }
    fn on_peer_joined(&self, _node: &Arc<Node>, _pid: u32) {}
    fn on_peer_left(&self, _node: &Arc<Node>, _pid: u32, _how: Departure) {}
    /// The node is closing: fail what waits, drop what is held. Never blocks.
    fn on_close(&self, _node: &Node) {}
}

/// Where the response to a message goes.
pub enum ReplyTo {
    /// Back over the connection the request came on.
    Remote { conn: Arc<Conn>, header: Header },
    /// A call this process made to itself.
    Local(Arc<Slot>),
    /// Kept for inspection (unit tests of a service, without sockets).
    Capture(Arc<Mutex<Vec<Result<Vec<u8>>>>>),
    /// A one-way message: nobody waits.
    Nobody,
}

impl ReplyTo {
    pub fn expects_reply(&self) -> bool {
        !matches!(self, ReplyTo::Nobody)
    }

    /// Whether the asker is gone: its connection is closed (its process
    /// left), so nothing sent there arrives.
    pub fn is_gone(&self) -> bool {
        matches!(self, ReplyTo::Remote { conn, .. } if conn.is_closed())
    }

    /// Sends the outcome where it is awaited; a one-way message's failure
    /// is returned for the service to log.
    pub fn send(self, node: &Node, outcome: std::result::Result<&[u8], Error>) -> Option<Error> {
        match self {
            ReplyTo::Remote { conn, header } => {
                node.respond(&conn, &header, outcome);
                None
            }
            ReplyTo::Local(slot) => {
                slot.complete(outcome.map(|v| v.to_vec()));
                None
            }
            ReplyTo::Capture(v) => {
                v.lock().push(outcome.map(|v| v.to_vec()));
                None
            }
            ReplyTo::Nobody => outcome.err(),
        }
    }
}

/// One message for a service.
pub struct Incoming {
    /// The sending process.
    pub from: u32,
    pub header: Header,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
    pub reply: ReplyTo,
}

impl Incoming {
    pub fn op(&self) -> u16 {
        self.header.op
    }
    pub fn meta_as<T: DeserializeOwned>(&self) -> Result<T> {
        wire::decode_meta(&self.meta)
    }
    pub fn respond(self, node: &Node, outcome: std::result::Result<&[u8], Error>) {
        if let Some(e) = self.reply.send(node, outcome) {
            node.log.debug(format!("one-way message from {} failed: {e}", self.from));
        }
    }
    /// A message as a unit test hands it to a service, with its responses
    /// captured in `out`.
    pub fn test(from: u32, header: Header, meta: Vec<u8>, payload: Vec<u8>, out: &Arc<Mutex<Vec<Result<Vec<u8>>>>>) -> Incoming {
        Incoming { from, header, meta, payload, reply: ReplyTo::Capture(out.clone()) }
    }
}

pub(crate) fn unknown_op(service: &str, op: u16) -> Error {
    Error::new(ErrorKind::Protocol, format!("unknown {service} op {op}"))
}

/// The services of a node, by wire id and by type.
#[derive(Default)]
pub(crate) struct Services {
    by_id: Vec<Option<Arc<dyn Service>>>,
    typed: Vec<Arc<dyn Any + Send + Sync>>,
}

impl Services {
    pub fn add<S: Service>(&mut self, s: Arc<S>) -> Result<()> {
        let id = s.id() as usize;
        if self.by_id.get(id).is_some_and(|x| x.is_some()) {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("service id {id} is taken")));
        }
        if self.by_id.len() <= id {
            self.by_id.resize_with(id + 1, || None);
        }
        self.by_id[id] = Some(s.clone());
        self.typed.push(s);
        Ok(())
    }

    pub fn by_id(&self, id: ServiceId) -> Option<&Arc<dyn Service>> {
        self.by_id.get(id as usize).and_then(|s| s.as_ref())
    }

    /// Found by type first, then cloned: cloning each one tried would
    /// touch the count of every service before it (a shared cache line
    /// per service, on every call).
    pub fn get<S: Service>(&self) -> Option<Arc<S>> {
        let s = self.typed.iter().find(|s| (***s).is::<S>())?;
        s.clone().downcast::<S>().ok()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.by_id.iter().flatten()
    }
}
