//! The node core: this process's identity, its peers and their
//! connections, and generic request / response / one-way messaging with
//! one pending-request table. Frames are routed by service id to the
//! services installed on the node (`service/`); the core knows none of
//! them. Its own small protocol (service 0, the session) identifies a
//! peer's connection and carries heartbeats.

pub mod admit;
mod config;
pub mod events;
mod future;
mod peer;
pub(crate) mod fast_map;
mod pending;
pub mod service;
pub(crate) mod slot;
mod timer;

pub use config::{Config, DispatchMode, TlsMode, Topology, ENV_TLS};
pub use events::{Event, Lifecycle, LifecycleHook, Notify};
pub use future::{Future, FutureRef, Promise, Value};
pub use peer::Peer;
pub use service::{Departure, Incoming, ReplyTo, Service};

use crate::error::{Error, ErrorKind, Result};
use crate::log::Logger;
use crate::net::auth::{self, Side, Transcript};
use crate::net::tls;
use crate::net::{Conn, Dispatch, Flusher, Job, Reactor, ReactorParts};
use crate::sys;
use crate::wire::{self, Frame, Header, Kind, ServiceId};
use events::HostQueue;
use parking_lot::{Condvar, Mutex, RwLock};
use peer::{GONE, READY};
use pending::PendingTable;
use serde::{Deserialize, Serialize};
use service::Services;
use slot::Slot;
use fast_map::FastMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    /// This thread is the host's, reading a connection in `drive_peer`.
    static HOST_DRIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread answered a request (`respond`) since it was cleared.
    static RESPONDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub const HEAD_ID: u32 = 1;

/// The session: the core's own messages.
pub mod session {
    use crate::wire::ServiceId;
    pub const ID: ServiceId = 0;
    /// First message of a worker-to-worker connection: who is calling.
    pub const HELLO: u16 = 1;
    /// Liveness: answered with PONG by the library itself, whatever the
    /// host is doing.
    pub const PING: u16 = 2;
    pub const PONG: u16 = 3;

    use super::Hello;
    use crate::error::Result;
    use crate::wire;

    /// Reads a HELLO's meta, as admission does.
    pub(crate) fn decode_hello(meta: &[u8]) -> Result<Hello> {
        wire::decode_meta(meta)
    }

    /// Decodes a session message as the core does (for fuzzing): a HELLO
    /// is read at admission (the first message of a worker-to-worker
    /// connection); PING and PONG carry nothing. On an established
    /// connection the core answers a PING and reads nothing of the rest.
    #[doc(hidden)]
    pub fn decode(op: u16, meta: &[u8]) -> Result<()> {
        match op {
            HELLO => decode_hello(meta).map(drop),
            PING | PONG => Ok(()),
            o => Err(crate::node::service::unknown_op("session", o)),
        }
    }
}

/// The first message of a worker-to-worker connection: who is calling,
/// and its proof (see `admit`).
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub struct Hello {
    pub id: u32,
    pub addr: String,
    pub max_message: u64,
    /// HMAC(key from the head, "libcluster hello", both nonces, caller id, callee id).
    pub proof: [u8; 32],
}

/// A waiter about to park may lend what it holds (a handler slot) so the
/// work it waits for can run; `reclaim` takes it back after.
pub trait Lender: Send + Sync {
    fn lend(&self, node: &Arc<Node>) -> bool;
    fn reclaim(&self);
}

/// One process's view and share of the cluster.
pub struct Node {
    pub(crate) cfg: Config,
    myid: AtomicU32,
    /// The peer whose service message was read last: where a wait for
    /// something another process will send here (a take from a channel
    /// kept here) reads while it spins (`Future::drive`).
    last_sender: AtomicU32,
    head: bool,
    cookie: String,
    listen_addr: String,
    /// The host this process runs on, as it tells others when it joins.
    hostname: String,
    listener: Mutex<Option<TcpListener>>,
    listener_fd: i32,
    topology: AtomicU8,
    peers: RwLock<FastMap<u32, Arc<Peer>>>,
    /// The largest process id this node has known: an unknown id at or
    /// below it belonged to a process that has left.
    max_known: AtomicU32,
    next_req: AtomicU64,
    pending: PendingTable,
    membership: Mutex<()>,
    membership_cv: Condvar,
    pub(crate) host: Option<HostQueue>,
    closing: AtomicBool,
    stop: Mutex<Stop>,
    stop_cv: Condvar,
    pub log: Logger,
    lifecycle: RwLock<Option<LifecycleHook>>,
    pub(crate) reactor: Arc<Reactor<Node>>,
    pub(crate) flusher: Arc<Flusher>,
    tls_keys: OnceLock<Result<Arc<tls::Keys>>>,
    installing: Mutex<Services>,
    services: OnceLock<Services>,
    lender: OnceLock<Arc<dyn Lender>>,
    timers: timer::Timers,
    admission: admit::Counters,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    Asked,
    HeadLost,
}

/// How long `drive_following` reads before it yields the CPU once.
const FOLLOW_SLICE: Duration = Duration::from_micros(5);

/// Listens on `spec`: a host (any free port), or `host:first-last`, the
/// first free port of a range (clusters whose firewalls allow only some).
pub(crate) fn listen(spec: &str) -> Result<TcpListener> {
    let range = spec.rsplit_once(':').and_then(|(h, r)| {
        let (a, b) = r.split_once('-')?;
        Some((h.trim_matches(['[', ']']), a.parse::<u16>().ok()?, b.parse::<u16>().ok()?))
    });
    let Some((host, first, last)) = range else {
        return TcpListener::bind((spec, 0)).map_err(|e| Error::io(&format!("listen on {spec}"), e));
    };
    if first == 0 || first > last {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("bad port range in {spec}")));
    }
    let mut last_err = None;
    for port in first..=last {
        match TcpListener::bind((host, port)) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(Error::io(&format!("listen on {spec}: no free port in the range"), last_err.expect("a port was tried")))
}

/// The address to give others for a listener bound to `local`: itself,
/// unless it is a wildcard (0.0.0.0, ::), then the address this process
/// has on the connection `via` (the interface that reaches the head).
pub(crate) fn reachable_addr(local: &str, via: &TcpStream) -> String {
    match (local.parse::<SocketAddr>(), via.local_addr()) {
        (Ok(l), Ok(v)) if l.ip().is_unspecified() => SocketAddr::new(v.ip(), l.port()).to_string(),
        _ => local.to_string(),
    }
}

pub(crate) fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("bad address {addr}: {e}")))?
        .next()
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("bad address {addr}")))
}

impl Node {
    /// A node listening on `cfg.listen_host`, with no services and no
    /// threads yet: install services, then `start`.
    pub fn new(cfg: Config, head: bool, cookie: String) -> Result<Arc<Node>> {
        let listener = listen(&cfg.listen_host)?;
        Node::with_listener(cfg, head, cookie, Some(listener))
    }

    /// A node without a listening socket, that nobody can connect to: for
    /// testing services without sockets.
    pub fn detached(cfg: Config, head: bool) -> Result<Arc<Node>> {
        Node::with_listener(cfg, head, "detached".into(), None)
    }

    fn with_listener(cfg: Config, head: bool, cookie: String, listener: Option<TcpListener>) -> Result<Arc<Node>> {
        if cfg.handler_threads == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "handler_threads must be at least 1"));
        }
        let log = Logger::new(cfg.log_level.unwrap_or_else(Logger::level_from_env));
        let listen_addr = match &listener {
            Some(l) => l.local_addr().map_err(|e| Error::io("local_addr", e))?.to_string(),
            None => String::new(),
        };
        let host = match cfg.dispatch {
            DispatchMode::Host => Some(HostQueue::new()?),
            DispatchMode::Threads => None,
        };
        if host.is_some() {
            log.set_hold(true);
        }
        if head {
            log.set_who("head".into());
        }
        let parts = ReactorParts::new().map_err(|e| Error::io("epoll", e))?;
        Ok(Arc::new_cyclic(|weak| Node {
            topology: AtomicU8::new(cfg.topology as u8),
            cfg,
            myid: AtomicU32::new(if head { HEAD_ID } else { 0 }),
            last_sender: AtomicU32::new(0),
            head,
            cookie,
            listen_addr,
            hostname: crate::sys::host_name(),
            listener_fd: listener.as_ref().map(|l| l.as_raw_fd()).unwrap_or(-1),
            listener: Mutex::new(listener),
            peers: RwLock::new(fast_map::new()),
            max_known: AtomicU32::new(HEAD_ID),
            next_req: AtomicU64::new(1),
            pending: PendingTable::new(),
            membership: Mutex::new(()),
            membership_cv: Condvar::new(),
            host,
            closing: AtomicBool::new(false),
            stop: Mutex::new(Stop::Running),
            stop_cv: Condvar::new(),
            log,
            lifecycle: RwLock::new(None),
            reactor: Arc::new(Reactor::new(weak.clone(), parts)),
            flusher: Flusher::start(),
            tls_keys: OnceLock::new(),
            installing: Mutex::new(Services::default()),
            services: OnceLock::new(),
            lender: OnceLock::new(),
            timers: timer::Timers::default(),
            admission: admit::Counters::default(),
        }))
    }

    /// Adds a service; only before `start`.
    pub fn install<S: Service>(&self, s: Arc<S>) -> Result<()> {
        if self.services.get().is_some() {
            return Err(Error::new(ErrorKind::InvalidArgument, "services are installed before start"));
        }
        self.installing.lock().add(s)
    }

    pub fn set_lender(&self, l: Arc<dyn Lender>) {
        let _ = self.lender.set(l);
    }

    /// Starts the services (a worker joins here), then serves connections.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let services = std::mem::take(&mut *self.installing.lock());
        if self.services.set(services).is_err() {
            return Err(Error::new(ErrorKind::InvalidArgument, "the node was already started"));
        }
        for s in self.services().all() {
            s.on_start(self)?;
        }
        if let Some(l) = self.listener.lock().take() {
            admit::spawn(self, l);
        }
        self.schedule_heartbeat();
        Ok(())
    }

    // ---- liveness ------------------------------------------------------

    fn schedule_heartbeat(self: &Arc<Self>) {
        let hb = self.cfg.heartbeat_timeout;
        if hb.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        self.after((hb / 4).max(Duration::from_millis(20)), move || {
            if let Some(n) = weak.upgrade() {
                if !n.is_closing() {
                    n.heartbeat();
                    n.schedule_heartbeat();
                }
            }
        });
    }

    /// The head watches every worker, a worker its head: a peer silent for
    /// the heartbeat timeout is declared dead; one silent for a third of
    /// it is pinged (the library answers, whatever its host is doing).
    fn heartbeat(self: &Arc<Self>) {
        let hb = self.cfg.heartbeat_timeout;
        let watched = if self.head { self.peers_where(|p| !p.is_gone()) } else { self.peer(HEAD_ID).into_iter().collect() };
        for p in watched {
            let Some(conn) = p.conn.lock().clone() else { continue };
            let silent = conn.silent_for();
            if silent >= hb {
                self.declare_dead(&p, &conn, silent);
            } else if silent >= hb / 3 {
                let _ = conn.send_nowait(Header::new(Kind::Oneway, session::ID, session::PING, 0), &[], &[]);
            }
        }
        // A stranger's half-sent frame on any other connection is bounded too.
        for p in self.peers_where(|_| true) {
            for c in p.extra_conns.lock().iter() {
                if c.mid_frame() && c.silent_for() >= hb {
                    c.close();
                }
            }
        }
    }

    fn declare_dead(self: &Arc<Self>, p: &Arc<Peer>, conn: &Arc<Conn>, silent: Duration) {
        let what = if p.id == HEAD_ID { "the head".to_string() } else { format!("worker {}", p.id) };
        let note = format!("{what} stopped answering (nothing received for {:.1} s) and was declared dead", silent.as_secs_f64());
        self.log.warn(&note);
        *p.exit_note.lock() = Some(note);
        // A worker this head launched is killed, so it cannot come back.
        let os_pid = p.os_pid.load(Ordering::Acquire);
        if self.head && os_pid != 0 && p.child_alive.load(Ordering::Acquire) {
            sys::kill(os_pid, sys::SIGKILL);
        }
        conn.close();
        self.peer_lost(p.id);
    }

    /// The error for requests to a process that left, with why if known.
    pub(crate) fn exited_error(&self, id: u32, note: Option<String>) -> Error {
        match note {
            Some(n) => Error::at(ErrorKind::ProcessExited, id, n),
            None => Error::exited(id),
        }
    }

    fn services(&self) -> &Services {
        static EMPTY: OnceLock<Services> = OnceLock::new();
        self.services.get().unwrap_or_else(|| EMPTY.get_or_init(Services::default))
    }

    /// The installed service of type `S`.
    pub fn service<S: Service>(&self) -> Option<Arc<S>> {
        self.services().get::<S>()
    }

    // ---- identity ------------------------------------------------------

    pub fn myid(&self) -> u32 {
        self.myid.load(Ordering::Acquire)
    }
    pub(crate) fn set_myid(&self, id: u32) {
        self.myid.store(id, Ordering::Release);
        self.log.set_who(format!("worker {id}"));
    }
    pub fn is_head(&self) -> bool {
        self.head
    }
    pub fn cookie(&self) -> &str {
        &self.cookie
    }
    /// The address workers and peers connect to.
    pub fn address(&self) -> &str {
        &self.listen_addr
    }
    /// The host this process runs on: `LIBCLUSTER_HOSTNAME` when set, else
    /// gethostname(). Every member learns it with membership.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn topology(&self) -> Topology {
        if self.topology.load(Ordering::Acquire) == 1 {
            Topology::MasterWorker
        } else {
            Topology::AllToAll
        }
    }
    pub(crate) fn store_topology(&self, t: Topology) {
        self.topology.store(t as u8, Ordering::Release);
    }

    pub(crate) fn require_head(&self) -> Result<()> {
        if self.head {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::NotHead, ErrorKind::NotHead.describe()))
        }
    }

    // ---- membership ----------------------------------------------------

    /// Every live process, sorted, this one included.
    pub fn procs(&self) -> Vec<u32> {
        let me = self.myid();
        let mut v: Vec<u32> = self.peers.read().values().filter(|p| p.is_ready()).map(|p| p.id).collect();
        v.push(me);
        v.sort_unstable();
        v.dedup();
        v
    }
    /// All processes but the head; `[1]` when the head is alone.
    pub fn workers(&self) -> Vec<u32> {
        let v: Vec<u32> = self.procs().into_iter().filter(|&p| p != HEAD_ID).collect();
        if v.is_empty() {
            vec![HEAD_ID]
        } else {
            v
        }
    }
    pub fn nprocs(&self) -> usize {
        self.procs().len()
    }
    pub fn nworkers(&self) -> usize {
        self.workers().len()
    }
    pub fn other_procs(&self) -> Vec<u32> {
        let me = self.myid();
        self.procs().into_iter().filter(|&p| p != me).collect()
    }
    pub fn other_workers(&self) -> Vec<u32> {
        let me = self.myid();
        self.workers().into_iter().filter(|&p| p != me).collect()
    }

    /// The connection to the peer whose service message was read last.
    pub(crate) fn last_sender_conn(&self) -> Option<Arc<Conn>> {
        let pid = self.last_sender.load(Ordering::Relaxed);
        if pid == 0 {
            return None;
        }
        self.peer(pid).and_then(|p| p.conn.lock().clone())
    }

    pub(crate) fn peer(&self, id: u32) -> Option<Arc<Peer>> {
        self.peers.read().get(&id).cloned()
    }

    pub(crate) fn peers_where(&self, f: impl Fn(&Peer) -> bool) -> Vec<Arc<Peer>> {
        self.peers.read().values().filter(|p| f(p)).cloned().collect()
    }

    /// A worker learns of a member from the head: its address, and the
    /// key the two share to prove who they are to each other.
    pub(crate) fn add_announced_peer(&self, id: u32, addr: String, key: [u8; 32], host: String) {
        if id == self.myid() || id == HEAD_ID {
            return;
        }
        let p = self.add_peer(id, READY);
        *p.addr.lock() = addr;
        *p.key.lock() = Some(key);
        *p.host.lock() = host;
    }

    /// Whether this process's connection to `pid` runs under TLS; `None`
    /// while there is none (a worker connects to another on first use).
    pub fn connection_encrypted(&self, pid: u32) -> Option<bool> {
        let peer = self.peer(pid)?;
        let conn = peer.conn.lock().clone();
        conn.map(|c| c.is_encrypted())
    }

    /// The host process `pid` runs on, as membership told it (no message).
    pub fn host_of(&self, pid: u32) -> Result<String> {
        if pid == self.myid() {
            return Ok(self.hostname.clone());
        }
        match self.peer(pid) {
            Some(p) if p.is_ready() => Ok(p.host.lock().clone()),
            Some(p) if p.is_gone() => Err(Error::exited(pid)),
            Some(_) => Err(Error::at(ErrorKind::NotReady, pid, format!("process {pid} has not joined yet"))),
            None => Err(self.unknown_process(pid)),
        }
    }

    /// Every live process with its host, ascending by id.
    pub fn hosts(&self) -> Vec<(u32, String)> {
        self.procs().into_iter().filter_map(|p| self.host_of(p).ok().map(|h| (p, h))).collect()
    }

    /// The peer `id`, made with `state` if this node did not know it.
    pub(crate) fn add_peer(&self, id: u32, state: u8) -> Arc<Peer> {
        self.max_known.fetch_max(id, Ordering::AcqRel);
        self.peers.write().entry(id).or_insert_with(|| Peer::new(id, state)).clone()
    }

    /// The error for a process this node does not hold a peer for.
    pub(crate) fn unknown_process(&self, pid: u32) -> Error {
        if pid != 0 && pid <= self.max_known.load(Ordering::Acquire) {
            Error::exited(pid)
        } else {
            Error::at(ErrorKind::NoSuchProcess, pid, format!("no process {pid} in this cluster"))
        }
    }

    /// Wakes what waits for a membership change.
    pub(crate) fn membership_changed(&self) {
        let _g = self.membership.lock();
        self.membership_cv.notify_all();
    }

    /// Waits until `done()` or `deadline`, woken by membership changes.
    pub(crate) fn wait_membership(&self, deadline: Instant, done: impl Fn() -> bool) -> bool {
        let mut g = self.membership.lock();
        loop {
            if done() || self.is_closing() {
                return done();
            }
            let step = Instant::now() + Duration::from_millis(20);
            if self.membership_cv.wait_until(&mut g, step.min(deadline)).timed_out() && Instant::now() >= deadline {
                return done();
            }
        }
    }

    /// Marks `peer` ready and announces it, under the membership lock so
    /// `introduce` runs before anyone sees it ready.
    pub(crate) fn mark_ready(self: &Arc<Self>, peer: &Arc<Peer>, from: u8, introduce: impl FnOnce()) -> bool {
        let g = self.membership.lock();
        if peer.state.compare_exchange(from, READY, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        introduce();
        drop(g);
        for s in self.services().all() {
            s.on_peer_joined(self, peer.id);
        }
        true
    }

    pub fn set_lifecycle_hook(&self, hook: Option<LifecycleHook>) {
        *self.lifecycle.write() = hook;
    }

    pub(crate) fn lifecycle_hook(&self) -> Option<LifecycleHook> {
        self.lifecycle.read().clone()
    }

    /// Reports an event: queued for the host in host mode, else the
    /// lifecycle hook (if it is a lifecycle change) runs now.
    pub fn emit(&self, ev: Event) {
        match &self.host {
            Some(h) => h.push_event(ev),
            None => {
                if let Some((pid, l)) = Lifecycle::of(&ev) {
                    if let Some(hook) = self.lifecycle_hook() {
                        hook(pid, l);
                    }
                }
            }
        }
    }

    /// Marks a peer gone, once: fails what waits on it, closes its
    /// connections and tells the services.
    pub(crate) fn peer_lost(self: &Arc<Self>, id: u32) {
        let Some(peer) = self.peer(id) else { return };
        // Its connections close before anyone can see it gone: a service
        // that answers an asker on one of them (a channel handing out an
        // element) finds it closed from then on. Dropping them here (not
        // only closing them) releases their sockets once their readers let go.
        let conns: Vec<Arc<Conn>> = peer.conn.lock().take().into_iter().chain(peer.extra_conns.lock().drain(..)).collect();
        for c in &conns {
            c.close();
        }
        drop(conns);
        let was = peer.state.swap(GONE, Ordering::AcqRel);
        if was == GONE {
            return;
        }
        let note = peer.exit_note.lock().clone();
        self.pending.fail_peer(id, || self.exited_error(id, note.clone()));
        let graceful = peer.graceful.load(Ordering::Acquire);
        self.log.info(format!("process {id} left ({})", if graceful { "stopped" } else { "died" }));
        self.membership_changed();
        let how = Departure { graceful, was_ready: was == READY };
        for s in self.services().all() {
            s.on_peer_left(self, id, how);
        }
        if self.head {
            if was == READY {
                self.emit(Lifecycle::Exited { graceful }.event(id));
            }
        } else if id == HEAD_ID && !self.is_closing() {
            self.log.warn("the head went away");
            self.stop_with(Stop::HeadLost);
        }
        // SeqCst with child_reaped: one of the two sees the other's store.
        peer.departed.store(true, Ordering::SeqCst);
        // Keep launched children listed until reaped; forget the rest.
        if !peer.child_alive.load(Ordering::SeqCst) {
            self.peers.write().remove(&id);
        }
        self.membership_changed();
    }

    /// A launched child was reaped: forget its peer if it is gone.
    pub(crate) fn child_reaped(self: &Arc<Self>, peer: &Arc<Peer>) {
        peer.child_alive.store(false, Ordering::SeqCst);
        if peer.departed.load(Ordering::SeqCst) {
            self.peers.write().remove(&peer.id);
            self.membership_changed();
        } else if !peer.is_gone() {
            self.peer_lost(peer.id);
        }
        // (Gone but not departed: peer_lost is running and forgets it at its end.)
    }

    // ---- connections -------------------------------------------------

    /// Adopts an authenticated connection to `peer` and starts reading it.
    pub(crate) fn adopt(self: &Arc<Self>, conn: &Arc<Conn>) {
        self.reactor.register(conn);
    }

    /// A new connection over an authenticated stream, in plain (tests).
    #[cfg(test)]
    pub(crate) fn new_conn(&self, stream: TcpStream) -> Result<Arc<Conn>> {
        self.conn_over(stream, None)
    }

    fn conn_over(&self, stream: TcpStream, tls: Option<tls::Session>) -> Result<Arc<Conn>> {
        Conn::with_tls(stream, self.cfg.max_message_bytes, self.flusher.clone(), tls)
    }

    /// The cluster's TLS identity, derived from the cookie on first use.
    fn tls_keys(&self) -> Result<Arc<tls::Keys>> {
        self.tls_keys.get_or_init(|| tls::Keys::derive(self.cookie.as_bytes()).map(Arc::new)).clone()
    }

    /// Whether this process asks for TLS on a connection with `peer`.
    pub(crate) fn wants_tls(&self, peer: Option<std::net::IpAddr>) -> bool {
        self.cfg.tls.wants(peer)
    }

    /// Authenticates a stream this process opened (the cookie handshake,
    /// asking for TLS as its setting says) by `deadline`.
    pub(crate) fn dial_handshake(&self, s: &mut TcpStream, deadline: Instant, check: &mut dyn FnMut() -> Result<()>) -> Result<Transcript> {
        let tls = self.wants_tls(s.peer_addr().ok().map(|a| a.ip()));
        auth::handshake_tls_until(s, self.cookie.as_bytes(), Side::Client, tls, deadline, check)
    }

    /// The connection over a stream this process opened and authenticated:
    /// under TLS, its handshake completed here by `deadline`.
    pub(crate) fn dialed_conn(&self, stream: TcpStream, transcript: &Transcript, deadline: Instant) -> Result<Arc<Conn>> {
        let session = match transcript.tls {
            false => None,
            true => {
                stream.set_nonblocking(true).map_err(|e| Error::io("set_nonblocking", e))?;
                Some(tls::Session::client(&*self.tls_keys()?, stream.as_raw_fd(), deadline.max(Instant::now() + Duration::from_millis(500)))?)
            }
        };
        self.conn_over(stream, session)
    }

    /// The connection over an accepted, authenticated stream: under TLS,
    /// its handshake completes in the reads of the first frame.
    pub(crate) fn accepted_conn(&self, stream: TcpStream, transcript: &Transcript) -> Result<Arc<Conn>> {
        let session = if transcript.tls { Some(tls::Session::server(&*self.tls_keys()?)?) } else { None };
        self.conn_over(stream, session)
    }

    /// The connection to `pid`, made now on a first worker-to-worker use.
    pub fn conn_for(self: &Arc<Self>, pid: u32) -> Result<Arc<Conn>> {
        self.check_open()?;
        if !self.head && pid != HEAD_ID && self.topology() == Topology::MasterWorker {
            return Err(Error::at(ErrorKind::Topology, pid, format!("worker {} cannot call worker {pid}: topology is master_worker", self.myid())));
        }
        let peer = self.peer(pid).ok_or_else(|| self.unknown_process(pid))?;
        if peer.is_gone() {
            return Err(Error::exited(pid));
        }
        let existing = peer.conn.lock().clone();
        if let Some(c) = existing {
            return Ok(c);
        }
        if self.head {
            return Err(Error::at(ErrorKind::NotReady, pid, format!("worker {pid} is not connected yet")));
        }
        let conn = {
            let _g = peer.connecting.lock();
            let existing = peer.conn.lock().clone();
            match existing {
                Some(c) => c,
                None => {
                    let c = self.connect_peer(&peer)?;
                    let mut primary = peer.conn.lock();
                    match primary.clone() {
                        None => {
                            *primary = Some(c.clone());
                            c
                        }
                        // The peer connected to us meanwhile. Both sides
                        // make the connection the lower id opened their
                        // primary, so both write on the one both read.
                        Some(accepted) if self.myid() < pid => {
                            peer.extra_conns.lock().push(accepted);
                            *primary = Some(c.clone());
                            c
                        }
                        Some(accepted) => {
                            peer.extra_conns.lock().push(c);
                            accepted
                        }
                    }
                }
            }
        };
        if peer.is_gone() {
            conn.close();
            return Err(Error::exited(pid));
        }
        Ok(conn)
    }

    /// Connects to worker `peer` and says who calls, with the proof the
    /// head's key for the pair allows.
    fn connect_peer(self: &Arc<Self>, peer: &Peer) -> Result<Arc<Conn>> {
        let pid = peer.id;
        let addr = peer.addr.lock().clone();
        let key = peer.key.lock().ok_or_else(|| Error::at(ErrorKind::Protocol, pid, format!("the head gave no key for worker {pid}")))?;
        let sa = resolve(&addr)?;
        let deadline = Instant::now() + self.cfg.handshake_timeout;
        let (s, transcript) = loop {
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
                .map_err(|e| Error::at(ErrorKind::ProcessExited, pid, format!("cannot connect to worker {pid} at {addr}: {e}")))?;
            match self.dial_handshake(&mut s, deadline, &mut || Ok(())) {
                Ok(t) => break (s, t),
                // A busy peer sheds connections still authenticating: again.
                Err(e) if e.kind == ErrorKind::Io && Instant::now() + Duration::from_millis(20) < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::at(e.kind, pid, format!("cannot connect to worker {pid} at {addr}: {}", e.message))),
            }
        };
        let conn = self
            .dialed_conn(s, &transcript, deadline)
            .map_err(|e| Error::at(e.kind, pid, format!("cannot connect to worker {pid} at {addr}: {}", e.message)))?;
        conn.peer.store(pid, Ordering::Release);
        conn.dialed.store(true, Ordering::Release);
        let me = self.myid();
        let proof = transcript.prove(&key, admit::HELLO_LABEL, &[&me.to_le_bytes(), &pid.to_le_bytes()]);
        let hello = Hello { id: me, addr: self.listen_addr.clone(), max_message: self.cfg.max_message_bytes, proof };
        conn.send(Header::new(Kind::Oneway, session::ID, session::HELLO, 0), &wire::encode_meta(&hello), &[])?;
        self.adopt(&conn);
        Ok(conn)
    }

    // ---- messaging -----------------------------------------------------

    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_slot(self: &Arc<Self>, pid: u32) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(self.next_request_id(), pid));
        self.watch(&slot);
        slot
    }

    /// In host mode, completion of `slot` becomes a FUTURE_READY event.
    fn watch(self: &Arc<Self>, slot: &Arc<Slot>) {
        if self.host.is_some() {
            let weak = Arc::downgrade(self);
            let id = slot.id;
            slot.on_complete(move |r| {
                if let Some(h) = weak.upgrade().as_ref().and_then(|n| n.host.as_ref()) {
                    h.push_event(Event::future_ready(id, r.as_ref().err().map(|e| e.kind as i32).unwrap_or(0)));
                }
            });
        }
    }

    /// A future completed here, with its slot.
    pub(crate) fn local_future(self: &Arc<Self>, pid: u32) -> (Future, Arc<Slot>) {
        let slot = self.new_slot(pid);
        (Future::new(self, slot.clone(), None), slot)
    }

    /// Runs `action` after `delay` on the node's timer thread; it must be quick.
    pub fn after(&self, delay: Duration, action: impl FnOnce() + Send + 'static) {
        self.timers.after(delay, action);
    }

    /// Sends a request and returns its future at once. `payload` is
    /// written to the socket before this returns, uncopied.
    pub fn request(self: &Arc<Self>, pid: u32, service: ServiceId, op: u16, meta: &[u8], payload: &[u8]) -> Result<Future> {
        let conn = self.conn_for(pid)?;
        let slot = self.new_slot(pid);
        self.send_request(&conn, &slot, service, op, meta, payload)?;
        Ok(Future::new(self, slot, Some(conn)))
    }

    /// A request whose future only this library waits on (a part of
    /// another future): in host mode its completion is no host event, so
    /// the host's loop is not woken for it.
    pub(crate) fn request_quiet(self: &Arc<Self>, pid: u32, service: ServiceId, op: u16, meta: &[u8], payload: &[u8]) -> Result<Future> {
        let conn = self.conn_for(pid)?;
        let slot = Arc::new(Slot::new(self.next_request_id(), pid));
        self.send_request(&conn, &slot, service, op, meta, payload)?;
        Ok(Future::new(self, slot, Some(conn)))
    }

    /// The open connection to `pid`, if there is one (none is made).
    pub(crate) fn open_conn(&self, pid: u32) -> Option<Arc<Conn>> {
        self.peer(pid).and_then(|p| p.conn.lock().clone()).filter(|c| !c.is_closed())
    }

    /// `request_quiet` to `pid` whose response may come from the process
    /// `also` names instead, over its open connection, which waiters then
    /// read (a dict write its backup answers).
    pub(crate) fn request_quiet_answered_by(
        self: &Arc<Self>,
        pid: u32,
        also: (u32, Arc<Conn>),
        service: ServiceId,
        op: u16,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<Future> {
        let (also, also_conn) = also;
        let conn = self.conn_for(pid)?;
        let slot = Arc::new(Slot::new(self.next_request_id(), pid).also_answered_by(also));
        self.send_request(&conn, &slot, service, op, meta, payload)?;
        Ok(Future::new(self, slot, Some(also_conn)).sent_on(conn))
    }

    /// Sends a request for `slot` on `conn`: registered as pending first,
    /// removed and failed if it cannot be sent.
    pub(crate) fn send_request(&self, conn: &Arc<Conn>, slot: &Arc<Slot>, service: ServiceId, op: u16, meta: &[u8], payload: &[u8]) -> Result<()> {
        self.pending.insert(slot);
        let gone = self.peer(slot.pid).is_none_or(|p| p.is_gone());
        let sent = if gone { Err(Error::exited(slot.pid)) } else { conn.send(Header::new(Kind::Request, service, op, slot.id), meta, payload) };
        if let Err(e) = sent {
            self.pending.remove(slot.id);
            slot.complete(Err(e.clone()));
            return Err(e);
        }
        Ok(())
    }

    /// Sends a request whose future goes out lazily, on its first wait.
    pub(crate) fn lazy_request(self: &Arc<Self>, pid: u32, service: ServiceId, op: u16, meta: Vec<u8>) -> Future {
        let slot = self.new_slot(pid);
        Future::new(self, slot, None).lazy(move |f| match f.node.conn_for(pid) {
            Err(e) => {
                f.slot.complete(Err(e));
            }
            Ok(conn) => {
                f.set_conn(conn.clone());
                let _ = f.node.send_request(&conn, &f.slot, service, op, &meta, &[]);
            }
        })
    }

    /// Sends a one-way message.
    pub fn send_oneway(self: &Arc<Self>, pid: u32, service: ServiceId, op: u16, meta: &[u8], payload: &[u8]) -> Result<()> {
        let conn = self.conn_for(pid)?;
        conn.send(Header::new(Kind::Oneway, service, op, 0), meta, payload)
    }

    /// Sends a one-way message without ever waiting for the socket.
    pub(crate) fn send_oneway_nowait(self: &Arc<Self>, pid: u32, service: ServiceId, op: u16, meta: &[u8], payload: &[u8]) -> Result<()> {
        let conn = self.conn_for(pid)?;
        conn.send_nowait(Header::new(Kind::Oneway, service, op, 0), meta, payload)
    }

    /// Sends a one-way message written out now, never corked behind other
    /// work nor waiting for the socket (a step of a protocol whose next
    /// step waits for it: a collective's round).
    pub(crate) fn send_oneway_now(self: &Arc<Self>, pid: u32, service: ServiceId, op: u16, meta: &[u8], payload: &[u8]) -> Result<()> {
        self.conn_for(pid)?.send_now(Header::new(Kind::Oneway, service, op, 0), meta, payload)
    }

    /// Sends the response to request `h` on `conn`.
    pub(crate) fn respond(&self, conn: &Arc<Conn>, h: &Header, outcome: std::result::Result<&[u8], Error>) {
        self.respond_how(conn, h, outcome, false);
    }

    /// `respond`, written out at once, never corked: an answer given for
    /// another process (a dict backup's for its primary), outside any
    /// batch this thread serves. True when it was written or queued.
    pub(crate) fn respond_now(&self, conn: &Arc<Conn>, h: &Header, outcome: std::result::Result<&[u8], Error>) -> bool {
        self.respond_how(conn, h, outcome, true)
    }

    fn respond_how(&self, conn: &Arc<Conn>, h: &Header, outcome: std::result::Result<&[u8], Error>, now: bool) -> bool {
        let send = |r: Header, p: &[u8]| if now { conn.send_now(r, &[], p) } else { conn.send(r, &[], p) };
        if self.host.is_some() {
            // Read by on_frame's nudge (host mode only).
            RESPONDED.with(|r| r.set(true));
        }
        let r = Header::new(Kind::Response, h.service, h.op, h.id);
        let send_err = |mut r: Header, e: &Error| {
            r.status = e.kind as u8;
            r.aux = if e.pid != 0 { e.pid } else { self.myid() };
            send(r, e.message.as_bytes())
        };
        let sent = match outcome {
            Ok(v) => match send(r, v) {
                // The value is too large for the caller: tell it so.
                Err(e) if e.kind == ErrorKind::TooLarge => {
                    let max = conn.peer_max.load(Ordering::Relaxed);
                    let msg = format!("the result of {} bytes exceeds the caller's maximum message size of {max} bytes", v.len());
                    send_err(r, &Error::at(ErrorKind::TooLarge, self.myid(), msg))
                }
                other => other,
            },
            Err(e) => send_err(r, &e),
        };
        match sent {
            Ok(()) => true,
            Err(e) => {
                self.log.debug(format!("response to process {} not sent: {e}", conn.peer()));
                false
            }
        }
    }

    fn on_response(&self, conn: &Arc<Conn>, f: Frame) {
        let from = conn.peer();
        let Some(slot) = self.pending.take(f.header.id, from) else {
            return self.log.debug(format!("late or unknown response {} from {from}", f.header.id));
        };
        slot.complete(response_outcome(&f.header, from, f.payload));
    }

    /// Waits for `slot`: reads the reply connection itself for a while,
    /// then parks, lending what this thread holds meanwhile.
    pub(crate) fn wait_slot(self: &Arc<Self>, slot: &Arc<Slot>, conn: Option<&Arc<Conn>>, deadline: Option<Instant>) -> bool {
        if slot.is_done() {
            return true;
        }
        // A thread that waits sends what it left lingering first.
        crate::net::conn::flush_lingering();
        let spin = self.cfg.spin;
        let done = match conn {
            Some(c) => c.drive(self, spin, &|| slot.is_done()),
            None => sys::spin_until(spin, || slot.is_done()),
        };
        if done {
            return true;
        }
        self.park_slot(slot, deadline)
    }

    /// Reads, for up to `spin`, the connection of the process whose
    /// message `next` names (0: none), following it as it changes: a
    /// future that a protocol of several steps completes, each step's
    /// message from another process (a collective's rounds). True when
    /// `slot` is done.
    /// `share`: yield the CPU between short slices (more processes wait
    /// for each other than there are cores).
    pub(crate) fn drive_following(self: &Arc<Self>, slot: &Arc<Slot>, next: &AtomicU32, share: bool, spin: Duration) -> bool {
        let end = Instant::now() + spin;
        loop {
            if slot.is_done() {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let pid = next.load(Ordering::Acquire);
            let moved = || slot.is_done() || next.load(Ordering::Acquire) != pid;
            // The peer writes on its primary connection, which is ours
            // (`conn_for`); others are the reactor's to read.
            let conn = if pid == 0 { None } else { self.peer(pid).and_then(|p| p.conn.lock().clone()) };
            // In short slices, yielding between them: the process awaited
            // may be waiting for a CPU this thread would otherwise hold
            // (more processes than cores).
            let slice = if share { left.min(FOLLOW_SLICE) } else { left };
            let done = match conn {
                Some(c) => c.drive(self, slice, &moved),
                None => sys::spin_until(slice, moved),
            };
            if share && !done {
                std::thread::yield_now();
            }
        }
    }

    /// `wait_slot` for a future `drive_following` reads for.
    pub(crate) fn wait_slot_following(self: &Arc<Self>, slot: &Arc<Slot>, next: &AtomicU32, share: bool, deadline: Option<Instant>) -> bool {
        crate::net::conn::flush_lingering();
        if self.drive_following(slot, next, share, self.cfg.spin) {
            return true;
        }
        self.park_slot(slot, deadline)
    }

    /// Parks until `slot` is done or `deadline`, lending what this thread
    /// holds meanwhile.
    fn park_slot(self: &Arc<Self>, slot: &Arc<Slot>, deadline: Option<Instant>) -> bool {
        let lender = self.lender.get().filter(|l| l.lend(self));
        let done = slot.park_until(deadline);
        if let Some(l) = lender {
            l.reclaim();
        }
        done
    }

    // ---- host-driven mode ------------------------------------------------

    pub(crate) fn host_or_err(&self) -> Result<&HostQueue> {
        self.host.as_ref().ok_or_else(|| Error::new(ErrorKind::WrongMode, "only in host-driven dispatch mode"))
    }

    /// Host-driven mode: runs queued tasks (incoming calls) on this
    /// thread, delivers held log records and lifecycle hooks, and returns
    /// up to `max_events` events. Never blocks.
    pub fn poll(self: &Arc<Self>, max_events: usize) -> Result<Vec<Event>> {
        crate::net::conn::flush_lingering();
        let host = self.host_or_err()?;
        let (tasks, events) = host.take(max_events);
        for t in tasks {
            t();
        }
        self.log.drain_held();
        if let Some(hook) = self.lifecycle_hook() {
            for (pid, l) in events.iter().filter_map(Lifecycle::of) {
                hook(pid, l);
            }
        }
        Ok(events)
    }

    /// Host-driven mode: reads the connection to `pid` on this thread for
    /// up to `spin`, until work is queued for `poll` (an incoming call, an
    /// event), dispatching what it reads as a reader thread would. Never
    /// parks and never connects: without an open connection to `pid` it
    /// returns at once. True when work is pending.
    pub fn drive_peer(self: &Arc<Self>, pid: u32, spin: Duration) -> Result<bool> {
        self.drive_peer_served(pid, spin, false).map(|(pending, _)| pending)
    }

    /// `drive_peer`, also saying whether it served traffic on the
    /// connection (requests its services answered on this thread): a host
    /// keeps reading then, or the next such request needs a wake-up of
    /// the reactor.
    ///
    /// `polls_next`: the caller polls whenever this returns pending, so
    /// what the drive itself queues signals neither the eventfd nor the
    /// notify hook (a host event loop waits on those only after polling).
    pub fn drive_peer_served(self: &Arc<Self>, pid: u32, spin: Duration, polls_next: bool) -> Result<(bool, bool)> {
        let host = self.host_or_err()?;
        if host.is_pending() || spin.is_zero() {
            return Ok((host.is_pending(), false));
        }
        match self.peer(pid).and_then(|p| p.conn.lock().clone()) {
            Some(c) if !c.is_closed() => {
                HOST_DRIVING.with(|d| d.set(true));
                let drive = || c.drive_served(self, spin, &|| host.is_pending());
                let r = if polls_next { host.polling_next(drive) } else { drive() };
                HOST_DRIVING.with(|d| d.set(false));
                Ok(r)
            }
            _ => Ok((host.is_pending(), false)),
        }
    }

    /// Host-driven mode: from now on the responses this thread sends to
    /// `pid` are held and written together when `uncork` (or corking
    /// another process) ends it, or by the flusher within about a
    /// millisecond; `None` ends it. No open connection: nothing is held.
    pub fn cork_peer(self: &Arc<Self>, pid: Option<u32>) -> Result<()> {
        self.host_or_err()?;
        let conn = pid.and_then(|p| self.peer(p)).and_then(|p| p.conn.lock().clone());
        crate::net::conn::host_cork(conn.as_ref());
        Ok(())
    }

    /// The eventfd a host event loop watches (host-driven mode).
    pub fn event_fd(&self) -> Result<i32> {
        Ok(self.host_or_err()?.event_fd())
    }

    pub fn set_notify(&self, notify: Option<Notify>) -> Result<()> {
        self.host_or_err()?.set_notify(notify);
        Ok(())
    }

    /// Runs `task` on the host's thread (host mode) or returns it.
    pub(crate) fn to_host(&self, task: events::Task) -> Option<events::Task> {
        match &self.host {
            Some(h) => {
                h.push_task(task);
                None
            }
            None => Some(task),
        }
    }

    // ---- stopping ----------------------------------------------------------

    /// Blocks until asked to stop (Ok) or the head goes away (HeadLost).
    pub fn wait_stop(&self) -> Result<()> {
        let mut g = self.stop.lock();
        while *g == Stop::Running {
            self.stop_cv.wait(&mut g);
        }
        match *g {
            Stop::HeadLost => Err(Error::at(ErrorKind::HeadLost, HEAD_ID, "the head went away")),
            _ => Ok(()),
        }
    }

    pub fn stop_requested(&self) -> bool {
        *self.stop.lock() != Stop::Running
    }

    pub(crate) fn request_stop(&self) {
        self.stop_with(Stop::Asked);
    }

    fn stop_with(&self, why: Stop) {
        let mut g = self.stop.lock();
        if *g != Stop::Running {
            return;
        }
        *g = why;
        self.stop_cv.notify_all();
        drop(g);
        self.emit(Event::core(if why == Stop::HeadLost { events::core::HEAD_LOST } else { events::core::SHUTDOWN }, 0));
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closing() {
            Err(Error::new(ErrorKind::Shutdown, "the cluster is shut down"))
        } else {
            Ok(())
        }
    }

    /// Closes every connection and fails what is pending; never blocks.
    /// Workers notice their head is gone.
    pub fn close(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.listener_fd >= 0 {
            sys::shutdown_socket(self.listener_fd);
        }
        self.flusher.stop();
        self.timers.stop();
        self.reactor.stop();
        let peers: Vec<Arc<Peer>> = self.peers.read().values().cloned().collect();
        for p in &peers {
            p.state.store(GONE, Ordering::Release);
            for c in p.conns() {
                c.close();
            }
        }
        self.pending.fail_all(|| Error::new(ErrorKind::Shutdown, "the cluster was shut down"));
        for s in self.services().all() {
            s.on_close(self);
        }
        self.request_stop();
        self.membership_changed();
    }
}

impl Dispatch for Node {
    fn on_frame(self: &Arc<Self>, conn: &Arc<Conn>, f: Frame) -> Option<Job> {
        if f.header.kind == Kind::Response {
            self.on_response(conn, f);
            return None;
        }
        if f.header.service == session::ID {
            if f.header.op == session::PING {
                let _ = conn.send_nowait(Header::new(Kind::Oneway, session::ID, session::PONG, 0), &[], &[]);
            }
            return None;
        }
        let Some(svc) = self.services().by_id(f.header.service) else {
            let e = Error::at(ErrorKind::Protocol, self.myid(), format!("no service {} on process {}", f.header.service, self.myid()));
            if f.header.kind == Kind::Request {
                self.respond(conn, &f.header, Err(e));
            }
            return None;
        };
        let reply = match f.header.kind {
            Kind::Request => ReplyTo::Remote { conn: conn.clone(), header: f.header },
            _ => ReplyTo::Nobody,
        };
        let from = conn.peer();
        if self.last_sender.load(Ordering::Relaxed) != from {
            self.last_sender.store(from, Ordering::Relaxed);
        }
        // Host mode: a request a service answered at once on a library
        // thread (not the host's own drive) nudges the host to read its
        // connections, so that the next one needs no wake-up of that
        // thread. One answered later (a write waiting for its backups)
        // does not: the host would only add a thread spinning for CPUs the
        // library's threads need.
        let nudge = self.host.is_some() && f.header.kind == Kind::Request && !HOST_DRIVING.with(|d| d.get());
        if nudge {
            RESPONDED.with(|r| r.set(false));
        }
        let msg = Incoming { from, header: f.header, meta: f.meta, payload: f.payload, reply };
        let r = svc.on_message(self, msg);
        if nudge && RESPONDED.with(|r| r.get()) {
            if let Some(h) = &self.host {
                h.nudge();
            }
        }
        match r {
            Ok(job) => job,
            Err(e) => {
                self.log.error(format!("closing connection to process {}: {e}", conn.peer()));
                conn.close();
                None
            }
        }
    }

    fn on_closed(self: &Arc<Self>, conn: &Arc<Conn>, why: Option<Error>) {
        let pid = conn.peer();
        if let Some(e) = &why {
            if !self.is_closing() {
                self.log.error(format!("connection to process {pid} closed: {e}"));
            }
        }
        if pid == 0 {
            return;
        }
        // Only the primary connection speaks for the peer: a second one
        // it opened (or a stranger claiming its id) going away does not.
        let primary = self.peer(pid).and_then(|p| p.conn.lock().clone()).is_some_and(|c| Arc::ptr_eq(&c, conn));
        if primary && (self.head || pid == HEAD_ID) {
            self.peer_lost(pid);
        } else if primary {
            // A worker believes only the head about who left: the peer
            // may still live (the head says when it does not), so only the
            // requests sent on this connection fail, and the next use
            // connects again.
            if let Some(p) = self.peer(pid) {
                let mut c = p.conn.lock();
                if c.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                    *c = None;
                }
            }
            self.pending.fail_peer(pid, || Error::exited(pid));
        } else if let Some(p) = self.peer(pid) {
            p.extra_conns.lock().retain(|c| !Arc::ptr_eq(c, conn));
        }
    }

    fn spin(&self) -> Duration {
        self.cfg.spin
    }

    fn is_shutting_down(&self) -> bool {
        self.is_closing()
    }
}

/// What a response from process `from` says: status 0 is the value (the
/// payload), else an error of that code (an unknown code is `Remote`)
/// from the process in `aux` (the sender when 0), the payload its text.
#[doc(hidden)]
pub fn response_outcome(h: &Header, from: u32, payload: Vec<u8>) -> Result<Vec<u8>> {
    if h.status == 0 {
        return Ok(payload);
    }
    let kind = ErrorKind::from_code(h.status).unwrap_or(ErrorKind::Remote);
    let pid = if h.aux != 0 { h.aux } else { from };
    Err(Error::at(kind, pid, String::from_utf8_lossy(&payload).into_owned()))
}

/// Peer states, for services that drive membership.
pub(crate) mod peer_state {
    pub(crate) use super::peer::{CONNECTED, LAUNCHING, READY};
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[test]
    fn a_port_range_takes_its_first_free_port_and_a_full_one_fails() {
        let a = listen("127.0.0.1:47400-47402").unwrap();
        let b = listen("127.0.0.1:47400-47402").unwrap();
        assert_eq!(a.local_addr().unwrap().port(), 47400);
        assert_eq!(b.local_addr().unwrap().port(), 47401);
        let _c = listen("127.0.0.1:47400-47402").unwrap();
        assert!(listen("127.0.0.1:47400-47402").unwrap_err().message.contains("no free port"));
        assert!(listen("127.0.0.1:9-3").is_err());
        assert_ne!(listen("127.0.0.1").unwrap().local_addr().unwrap().port(), 0);
    }

    #[test]
    fn a_wildcard_listener_is_told_by_the_interface_that_reaches_the_head() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(reachable_addr("0.0.0.0:5000", &s), "127.0.0.1:5000");
        assert_eq!(reachable_addr("10.1.2.3:5000", &s), "10.1.2.3:5000");
    }
}
