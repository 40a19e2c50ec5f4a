//! Another process as this one knows it.

use crate::net::Conn;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

pub(crate) const LAUNCHING: u8 = 0;
pub(crate) const CONNECTED: u8 = 1;
pub(crate) const READY: u8 = 2;
pub(crate) const GONE: u8 = 3;

pub struct Peer {
    pub id: u32,
    pub(crate) addr: Mutex<String>,
    /// The host it runs on, as it said when it joined.
    pub(crate) host: Mutex<String>,
    pub(crate) conn: Mutex<Option<Arc<Conn>>>,
    /// Connections the peer opened to us while ours existed.
    pub(crate) extra_conns: Mutex<Vec<Arc<Conn>>>,
    pub(crate) connecting: Mutex<()>,
    pub(crate) state: AtomicU8,
    pub(crate) graceful: AtomicBool,
    /// Set once the started callback ran: addprocs returns after it.
    pub(crate) announced: AtomicBool,
    /// Set once its departure was fully handled (services told, exit
    /// callbacks run): rmprocs returns after it.
    pub(crate) departed: AtomicBool,
    /// The operating-system process, when this head launched it.
    pub(crate) os_pid: AtomicU32,
    pub(crate) child_alive: AtomicBool,
    pub(crate) exit_note: Mutex<Option<String>>,
    /// Worker to worker: the key this process and the peer share, from
    /// the head; a HELLO claiming the peer's id must prove it.
    pub(crate) key: Mutex<Option<[u8; 32]>>,
}

impl Peer {
    pub(crate) fn new(id: u32, state: u8) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            addr: Mutex::new(String::new()),
            host: Mutex::new(String::new()),
            conn: Mutex::new(None),
            extra_conns: Mutex::new(Vec::new()),
            connecting: Mutex::new(()),
            state: AtomicU8::new(state),
            graceful: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            departed: AtomicBool::new(false),
            os_pid: AtomicU32::new(0),
            child_alive: AtomicBool::new(false),
            exit_note: Mutex::new(None),
            key: Mutex::new(None),
        })
    }
    pub fn is_gone(&self) -> bool {
        self.state.load(Ordering::Acquire) == GONE
    }
    /// Gone, and its departure fully handled.
    pub fn has_departed(&self) -> bool {
        self.departed.load(Ordering::Acquire)
    }
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
    /// Every connection to this peer.
    pub(crate) fn conns(&self) -> Vec<Arc<Conn>> {
        let mut v: Vec<Arc<Conn>> = self.conn.lock().iter().cloned().collect();
        v.extend(self.extra_conns.lock().iter().cloned());
        v
    }
}
