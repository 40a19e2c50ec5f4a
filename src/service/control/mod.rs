//! The control service: who is in the cluster. A worker joins its head
//! (JOIN, answered with a welcome listing the ready peers), says it is
//! ready (READY); the head introduces members to each other (PEER_JOINED,
//! PEER_LEFT) and asks workers to stop (SHUTDOWN). The head's side of
//! launching and removing workers is in `procs`.

mod join;
mod procs;

pub use join::Role;
pub use procs::ControlExt;

use crate::error::{Error, Result};
use crate::launch::{Launcher, LocalLauncher};
use crate::net::auth::Transcript;
use crate::net::{Conn, Job};
use crate::node::service::unknown_op;
use crate::node::{Departure, Incoming, Node, Service, HEAD_ID};
use crate::wire::{self, Frame, Header, Kind, ServiceId};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

pub const ID: ServiceId = 1;

#[doc(hidden)]
pub mod op {
    pub const JOIN: u16 = 1;
    pub const READY: u16 = 2;
    pub const PEER_JOINED: u16 = 3;
    pub const PEER_LEFT: u16 = 4;
    pub const SHUTDOWN: u16 = 5;
}

/// A worker's first message to its head.
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub struct Join {
    /// The id the head launched this worker as; 0 for an elastic worker.
    pub id: u32,
    pub listen_addr: String,
    pub os_pid: u32,
    pub max_message: u64,
    /// The host it runs on (`Node::hostname`).
    pub host: String,
    /// A launched worker's proof of its id: HMAC(launch key, "libcluster
    /// join", both handshake nonces, id). Zero for an elastic worker.
    pub proof: [u8; 32],
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub id: u32,
    pub topology: crate::node::Topology,
    /// The ready members, each with the key the new worker shares with it.
    pub peers: Vec<PeerInfo>,
    pub max_message: u64,
    /// The head's host.
    pub head_host: String,
}

/// A member as the head introduces it to one other member.
#[derive(Serialize, Deserialize)]
pub(crate) struct PeerInfo {
    pub id: u32,
    pub addr: String,
    /// The key the two workers share (all zero in PEER_LEFT): either
    /// proves its id to the other with it when it connects.
    pub key: [u8; 32],
    /// The host it runs on.
    pub host: String,
}

pub struct Control {
    role: Role,
    /// Head: the secret from which the keys of pairs of workers derive.
    pair_secret: [u8; 32],
    /// Head: the next worker id (ids are never reused).
    next_id: AtomicU32,
    workers_added: AtomicBool,
    launcher: RwLock<Arc<dyn Launcher>>,
    /// Head: launched children to reap.
    reaper: Mutex<Option<procs::Reaper>>,
}

impl Control {
    pub fn new(role: Role) -> Arc<Control> {
        Arc::new(Control {
            role,
            pair_secret: crate::net::auth::random_key().expect("random bytes from the kernel"),
            next_id: AtomicU32::new(2),
            workers_added: AtomicBool::new(false),
            launcher: RwLock::new(Arc::new(LocalLauncher)),
            reaper: Mutex::new(None),
        })
    }

    pub fn set_launcher(&self, launcher: Arc<dyn Launcher>) {
        *self.launcher.write() = launcher;
    }

    /// Head: the key workers `a` and `b` share, the same whichever asks.
    /// Only the head and those two know it.
    pub(crate) fn pair_key(&self, a: u32, b: u32) -> [u8; 32] {
        let (lo, hi) = (a.min(b), a.max(b));
        crate::net::auth::derive(&self.pair_secret, b"libcluster pair", &[&lo.to_le_bytes(), &hi.to_le_bytes()])
    }

    /// Head: worker `p` as introduced to worker `to`.
    pub(crate) fn introduce(&self, p: &crate::node::Peer, to: u32) -> PeerInfo {
        PeerInfo { id: p.id, addr: p.addr.lock().clone(), key: self.pair_key(p.id, to), host: p.host.lock().clone() }
    }

    /// The head introduces a worker that became ready to the others, and
    /// them to it: its welcome may predate workers that became ready since.
    fn on_ready(&self, node: &Arc<Node>, from: u32) {
        let Some(peer) = node.peer(from) else { return };
        let Some(conn) = peer.conn.lock().clone() else { return };
        let ready = node.mark_ready(&peer, crate::node::peer_state::CONNECTED, || {
            let joined = Header::new(Kind::Oneway, ID, op::PEER_JOINED, 0);
            for p in node.peers_where(|p| p.is_ready() && p.id != from) {
                if let Some(c) = p.conn.lock().clone() {
                    let _ = c.send_nowait(joined, &wire::encode_meta(&self.introduce(&peer, p.id)), &[]);
                }
                let _ = conn.send_nowait(joined, &wire::encode_meta(&self.introduce(&p, from)), &[]);
            }
        });
        if !ready {
            return;
        }
        node.log.info(format!("worker {from} is ready"));
        node.emit(crate::node::Lifecycle::Started.event(from));
        peer.announced.store(true, Ordering::Release);
        node.membership_changed();
    }
}

impl Service for Control {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "control"
    }

    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        // Only the head speaks for membership.
        let from_head = !node.is_head() && msg.from == HEAD_ID;
        match parse(msg.op(), &msg.meta)? {
            Message::Ready if node.is_head() => self.on_ready(node, msg.from),
            Message::PeerJoined(info) if from_head => node.add_announced_peer(info.id, info.addr, info.key, info.host),
            Message::PeerLeft(info) if from_head => node.peer_lost(info.id),
            Message::Shutdown if from_head => {
                node.log.info("asked to stop");
                node.request_stop();
            }
            _ => return Err(Error::new(crate::error::ErrorKind::Protocol, format!("control op {} from process {} refused", msg.op(), msg.from))),
        }
        Ok(None)
    }

    fn on_admit(&self, node: &Arc<Node>, conn: &Arc<Conn>, first: &Frame, transcript: &Transcript) -> Option<Result<()>> {
        admits(node.is_head(), &first.header).then(|| self.admit(node, conn, first, transcript))
    }

    fn on_start(&self, node: &Arc<Node>) -> Result<()> {
        self.start(node)
    }

    fn on_peer_left(&self, node: &Arc<Node>, pid: u32, how: Departure) {
        if node.is_head() && how.was_ready {
            let meta = wire::encode_meta(&PeerInfo { id: pid, addr: String::new(), key: [0; 32], host: String::new() });
            for p in node.peers_where(|p| p.is_ready()) {
                if let Some(c) = p.conn.lock().clone() {
                    let _ = c.send_nowait(Header::new(Kind::Oneway, ID, op::PEER_LEFT, 0), &meta, &[]);
                }
            }
        }
    }

    fn on_close(&self, _node: &Node) {
        if let Some(r) = self.reaper.lock().take() {
            r.stop();
        }
    }
}

/// A control message on an established connection, decoded.
pub(crate) enum Message {
    Ready,
    PeerJoined(PeerInfo),
    PeerLeft(PeerInfo),
    Shutdown,
}

/// Reads a message on an established connection as `on_message` does.
/// A JOIN is only ever a connection's first message (`admits`).
pub(crate) fn parse(op: u16, meta: &[u8]) -> Result<Message> {
    Ok(match op {
        op::READY => Message::Ready,
        op::PEER_JOINED => Message::PeerJoined(wire::decode_meta(meta)?),
        op::PEER_LEFT => Message::PeerLeft(wire::decode_meta(meta)?),
        op::SHUTDOWN => Message::Shutdown,
        o => return Err(unknown_op("control", o)),
    })
}

/// Whether a connection's first message is this service's to admit: a
/// JOIN, on the head.
pub(crate) fn admits(head: bool, first: &Header) -> bool {
    head && first.op == op::JOIN
}

/// Reads a JOIN as the head's admission does.
pub(crate) fn parse_join(meta: &[u8]) -> Result<Join> {
    wire::decode_meta(meta)
}

pub(crate) use join::read_welcome;

/// Decodes a control message exactly as the service does (for fuzzing):
/// on an established connection.
#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8]) -> Result<()> {
    parse(op, meta).map(drop)
}

/// Decodes a connection's first message as the head's admission does (for
/// fuzzing); `None` when it is not this service's to admit.
#[doc(hidden)]
pub fn decode_admit(head: bool, first: &Frame) -> Option<Result<()>> {
    admits(head, &first.header).then(|| parse_join(&first.meta).map(drop))
}

/// Decodes the head's answer to a JOIN as a joining worker does (for
/// fuzzing and tests): the number of members the welcome lists.
#[doc(hidden)]
pub fn decode_welcome(reply: &Frame) -> Result<usize> {
    read_welcome(reply).map(|w| w.peers.len())
}
