//! The cluster: this process's node, its peers, membership (join, ready,
//! leave), the control service and the head's add/remove of workers.

use crate::auth::{self, Side};
use crate::error::{Error, ErrorKind, Result};
use crate::future::Slot;
use crate::host::{Event, HostQueue};
use crate::launch::{self, LaunchOptions, LaunchSpec, Launcher, LocalLauncher};
use crate::log::{Level, Logger};
use crate::rpc::{Dispatcher, IncomingCall};
use crate::sys;
use crate::transport::{Conn, Dispatch, Flusher, Job, Rescuer};
use crate::wire::{self, service, Frame, Header, Kind};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const HEAD_ID: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    /// Workers call each other over connections made on first use.
    AllToAll = 0,
    /// Workers talk only to the head.
    MasterWorker = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchMode {
    /// Handlers run on library threads.
    Threads,
    /// Handlers run only inside `poll`, on the host's thread.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Started,
    /// The worker left: `graceful` when asked to, false when it died.
    Exited { graceful: bool },
}

pub type LifecycleHook = Arc<dyn Fn(u32, Lifecycle) + Send + Sync>;

#[derive(Clone)]
pub struct Config {
    /// Address to listen on; loopback unless told otherwise.
    pub listen_host: String,
    /// The cluster secret; random on a head when `None`. A worker takes it
    /// from its launcher (stdin) or `LIBCLUSTER_COOKIE`, else from here.
    pub cookie: Option<String>,
    pub topology: Topology,
    pub dispatch: DispatchMode,
    /// How many calls run at once in `Threads` mode.
    pub handler_threads: usize,
    pub startup_timeout: Duration,
    pub max_message_bytes: u64,
    /// How long a thread spins for a reply or the next frame before it parks.
    pub spin: Duration,
    /// `None`: from `LIBCLUSTER_LOG`, else quiet.
    pub log_level: Option<Level>,
    /// A launched worker exits when its head goes away or cannot be reached.
    pub exit_on_head_loss: bool,
    /// Join this head as an elastic worker (overrides `LIBCLUSTER_HEAD`).
    pub join: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_host: "127.0.0.1".into(),
            cookie: None,
            topology: Topology::AllToAll,
            dispatch: DispatchMode::Threads,
            handler_threads: 1,
            startup_timeout: Duration::from_secs(60),
            max_message_bytes: 1 << 30,
            spin: Duration::from_micros(
                std::env::var("LIBCLUSTER_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(100),
            ),
            log_level: None,
            exit_on_head_loss: true,
            join: None,
        }
    }
}

// Control-service ops.
pub(crate) mod op {
    pub const JOIN: u16 = 1;
    pub const READY: u16 = 2;
    pub const PEER_JOINED: u16 = 3;
    pub const PEER_LEFT: u16 = 4;
    pub const HELLO: u16 = 5;
    pub const SHUTDOWN: u16 = 6;
    pub const INTERRUPT: u16 = 7;
    pub const ADD_REF: u16 = 8;
    pub const DEL_REF: u16 = 9;
    pub const FETCH_REF: u16 = 10;
    pub const ADD_CLIENT: u16 = 11;
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Join {
    id: u32,
    listen_addr: String,
    os_pid: u32,
    max_message: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Welcome {
    id: u32,
    topology: Topology,
    peers: Vec<(u32, String)>,
    max_message: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PeerInfo {
    pub id: u32,
    pub addr: String,
    pub max_message: u64,
}

const LAUNCHING: u8 = 0;
const CONNECTED: u8 = 1;
const READY: u8 = 2;
const GONE: u8 = 3;

pub(crate) struct Peer {
    pub id: u32,
    addr: Mutex<String>,
    conn: Mutex<Option<Arc<Conn>>>,
    extra_conns: Mutex<Vec<Arc<Conn>>>,
    connecting: Mutex<()>,
    pub pending: Mutex<HashMap<u64, Arc<Slot>>>,
    state: AtomicU8,
    graceful: AtomicBool,
    /// Set once the started callback ran: addprocs returns after it.
    announced: AtomicBool,
    os_pid: AtomicU32,
    child_alive: AtomicBool,
    exit_note: Mutex<Option<String>>,
}

impl Peer {
    fn new(id: u32, state: u8) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            addr: Mutex::new(String::new()),
            conn: Mutex::new(None),
            extra_conns: Mutex::new(Vec::new()),
            connecting: Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            state: AtomicU8::new(state),
            graceful: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            os_pid: AtomicU32::new(0),
            child_alive: AtomicBool::new(false),
            exit_note: Mutex::new(None),
        })
    }
    pub fn is_gone(&self) -> bool {
        self.state.load(Ordering::Acquire) == GONE
    }
    fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }
    /// Registers `slot` as awaiting a response; fails it at once if the
    /// peer is already gone (its pending set may have been drained).
    pub fn expect(&self, slot: &Arc<Slot>) -> bool {
        self.pending.lock().insert(slot.id, slot.clone());
        if self.is_gone() {
            self.pending.lock().remove(&slot.id);
            slot.complete(Err(Error::exited(self.id)));
            return false;
        }
        true
    }
}

/// Messages that must not block their sender (finalizers, imports): a
/// thread sends them, in order.
enum Housekeeping {
    AddClient { owner: u32, id: u64 },
    DelRef { owner: u32, id: u64 },
}

/// One process's view and share of the cluster.
pub struct Node {
    pub(crate) cfg: Config,
    myid: AtomicU32,
    head: bool,
    cookie: String,
    listen_addr: String,
    listener_fd: i32,
    topology: AtomicU8,
    workers_added: AtomicBool,
    pub(crate) peers: RwLock<HashMap<u32, Arc<Peer>>>,
    next_id: AtomicU32,
    next_req: AtomicU64,
    membership: Mutex<()>,
    membership_cv: Condvar,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) host: Option<HostQueue>,
    pub(crate) owned: Mutex<HashMap<u64, crate::rpc::Owned>>,
    closing: AtomicBool,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    pub log: Logger,
    lifecycle: RwLock<Option<LifecycleHook>>,
    rr: AtomicUsize,
    rescuer: Rescuer,
    flusher: Arc<Flusher>,
    housekeeping: Mutex<Option<mpsc::Sender<Housekeeping>>>,
    launcher: RwLock<Arc<dyn Launcher>>,
}

/// The owner of a node: dropping it closes the node.
pub struct Cluster(Arc<Node>);

impl std::ops::Deref for Cluster {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Cluster {
    /// Starts this process's node: a worker when `cfg.join` is set or the
    /// process was launched as one (`LIBCLUSTER_HEAD`), else the head.
    pub fn init(cfg: Config) -> Result<Cluster> {
        Node::init(cfg).map(Cluster)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("bad address {addr}: {e}")))?
        .next()
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("bad address {addr}")))
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    fn init(mut cfg: Config) -> Result<Arc<Node>> {
        if cfg.handler_threads == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "handler_threads must be at least 1"));
        }
        let launched_id = std::env::var(launch::ENV_ID).ok().and_then(|v| v.parse::<u32>().ok());
        let head_addr = cfg.join.clone().or_else(|| std::env::var(launch::ENV_HEAD).ok());
        if let Some(ms) = env_u64(launch::ENV_STARTUP_TIMEOUT_MS) {
            cfg.startup_timeout = Duration::from_millis(ms);
        }
        let log = Logger::new(cfg.log_level.unwrap_or_else(Logger::level_from_env));
        let result = match head_addr {
            None => Node::init_head(cfg, log),
            Some(addr) => {
                let launched = cfg.join.is_none() && launched_id.is_some();
                let exit_on_fail = launched && cfg.exit_on_head_loss;
                let id = if launched { launched_id.unwrap_or(0) } else { 0 };
                let r = Node::init_worker(cfg, log, &addr, id);
                if let (Err(e), true) = (&r, exit_on_fail) {
                    eprintln!("libcluster worker {}: {e}; exiting", launched_id.unwrap_or(0));
                    std::process::exit(3);
                }
                r
            }
        };
        let node = result?;
        node.start_threads();
        Ok(node)
    }

    fn blank(cfg: Config, log: Logger, head: bool, cookie: String, listener: &TcpListener) -> Result<Node> {
        let listen_addr = listener.local_addr().map_err(|e| Error::io("local_addr", e))?.to_string();
        let host = match cfg.dispatch {
            DispatchMode::Host => Some(HostQueue::new()?),
            DispatchMode::Threads => None,
        };
        if host.is_some() {
            log.set_hold(true);
        }
        let slots = cfg.handler_threads;
        Ok(Node {
            topology: AtomicU8::new(cfg.topology as u8),
            cfg,
            myid: AtomicU32::new(if head { HEAD_ID } else { 0 }),
            head,
            cookie,
            listen_addr,
            listener_fd: listener.as_raw_fd(),
            workers_added: AtomicBool::new(false),
            peers: RwLock::new(HashMap::new()),
            next_id: AtomicU32::new(2),
            next_req: AtomicU64::new(1),
            membership: Mutex::new(()),
            membership_cv: Condvar::new(),
            dispatcher: Dispatcher::new(slots),
            host,
            owned: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            log,
            lifecycle: RwLock::new(None),
            rr: AtomicUsize::new(0),
            rescuer: Rescuer::default(),
            flusher: Flusher::start(),
            housekeeping: Mutex::new(None),
            launcher: RwLock::new(Arc::new(LocalLauncher)),
        })
    }

    fn bind(cfg: &Config) -> Result<TcpListener> {
        TcpListener::bind((cfg.listen_host.as_str(), 0))
            .map_err(|e| Error::io(&format!("listen on {}", cfg.listen_host), e))
    }

    fn init_head(cfg: Config, log: Logger) -> Result<Arc<Node>> {
        let cookie = match &cfg.cookie {
            Some(c) if !c.is_empty() => c.clone(),
            Some(_) => return Err(Error::new(ErrorKind::InvalidArgument, "the cookie must not be empty")),
            None => auth::random_cookie()?,
        };
        let listener = Node::bind(&cfg)?;
        log.set_who("head".into());
        let node = Arc::new(Node::blank(cfg, log, true, cookie, &listener)?);
        node.spawn_acceptor(listener);
        Ok(node)
    }

    fn init_worker(cfg: Config, log: Logger, head_addr: &str, id: u32) -> Result<Arc<Node>> {
        let cookie = if std::env::var(launch::ENV_COOKIE_STDIN).is_ok() && cfg.join.is_none() {
            launch::read_cookie_from_stdin()?
        } else if let Some(c) = cfg.cookie.clone().or_else(|| std::env::var(launch::ENV_COOKIE).ok()) {
            c
        } else {
            return Err(Error::new(ErrorKind::Auth, "no cookie: set it in the config or LIBCLUSTER_COOKIE"));
        };
        let addr = resolve(head_addr)?;
        let deadline = Instant::now() + cfg.startup_timeout;
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::new(
                        ErrorKind::Launch,
                        format!("could not reach the head at {head_addr} within {:?}: {e}", cfg.startup_timeout),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        auth::handshake(&mut stream, cookie.as_bytes(), Side::Client, HANDSHAKE_TIMEOUT)?;
        let listener = Node::bind(&cfg)?;
        let max = cfg.max_message_bytes;
        let node = Arc::new(Node::blank(cfg, log, false, cookie, &listener)?);
        let conn = Conn::new(stream, max, node.flusher.clone())?;
        conn.peer.store(HEAD_ID, Ordering::Release);
        let join = Join { id, listen_addr: node.listen_addr.clone(), os_pid: std::process::id(), max_message: max };
        conn.send(Header::new(Kind::Request, service::CONTROL, op::JOIN, 1), &wire::encode_meta(&join), &[])?;
        let reply = conn.read_frame_blocking(deadline.max(Instant::now() + HANDSHAKE_TIMEOUT))?;
        if reply.header.status != 0 {
            return Err(Error::new(ErrorKind::Launch, format!("the head refused to join: {}", String::from_utf8_lossy(&reply.payload))));
        }
        let welcome: Welcome = reply.meta_as()?;
        conn.peer_max.store(welcome.max_message, Ordering::Relaxed);
        node.myid.store(welcome.id, Ordering::Release);
        node.topology.store(welcome.topology as u8, Ordering::Release);
        node.log.set_who(format!("worker {}", welcome.id));
        {
            let mut peers = node.peers.write();
            let head = Peer::new(HEAD_ID, READY);
            *head.conn.lock() = Some(conn.clone());
            peers.insert(HEAD_ID, head);
            for (pid, addr) in welcome.peers {
                if pid != welcome.id {
                    let p = Peer::new(pid, READY);
                    *p.addr.lock() = addr;
                    peers.insert(pid, p);
                }
            }
        }
        conn.spawn_reader(node.clone());
        node.spawn_acceptor(listener);
        Ok(node)
    }

    fn start_threads(self: &Arc<Self>) {
        Rescuer::start(self, |n: &Node| n.all_conns());
        let (tx, rx) = mpsc::channel::<Housekeeping>();
        *self.housekeeping.lock() = Some(tx);
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("cluster-house".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let Some(node) = weak.upgrade() else { return };
                    let (owner, id, op) = match job {
                        Housekeeping::AddClient { owner, id } => (owner, id, op::ADD_CLIENT),
                        Housekeeping::DelRef { owner, id } => (owner, id, op::DEL_REF),
                    };
                    if let Ok((_, conn)) = node.conn_for(owner) {
                        let h = Header::new(Kind::Oneway, service::CONTROL, op, 0);
                        let _ = conn.send(h, &wire::encode_meta(&id), &[]);
                    }
                }
            })
            .expect("spawn housekeeping thread");
    }

    pub(crate) fn defer_del_ref(&self, owner: u32, id: u64) {
        if let Some(tx) = self.housekeeping.lock().as_ref() {
            let _ = tx.send(Housekeeping::DelRef { owner, id });
        }
    }

    pub(crate) fn defer_add_client(&self, owner: u32, id: u64) {
        if let Some(tx) = self.housekeeping.lock().as_ref() {
            let _ = tx.send(Housekeeping::AddClient { owner, id });
        }
    }

    fn all_conns(&self) -> Vec<Arc<Conn>> {
        let peers = self.peers.read();
        let mut v = Vec::new();
        for p in peers.values() {
            if let Some(c) = p.conn.lock().clone() {
                v.push(c);
            }
            v.extend(p.extra_conns.lock().iter().cloned());
        }
        v
    }

    fn spawn_acceptor(self: &Arc<Self>, listener: TcpListener) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("cluster-accept".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for incoming in listener.incoming() {
                    let Some(node) = weak.upgrade() else { return };
                    if node.is_closing() {
                        return;
                    }
                    match incoming {
                        Ok(stream) => {
                            let n = node.clone();
                            let _ = std::thread::Builder::new()
                                .name("cluster-join".into())
                                .stack_size(256 * 1024)
                                .spawn(move || n.serve_incoming(stream));
                        }
                        Err(e) => {
                            node.log.warn(format!("accept failed: {e}"));
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .expect("spawn accept thread");
    }

    /// Authenticates a new connection and registers it by its first frame.
    fn serve_incoming(self: &Arc<Self>, mut stream: TcpStream) {
        let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        if let Err(e) = auth::handshake(&mut stream, self.cookie.as_bytes(), Side::Server, HANDSHAKE_TIMEOUT) {
            self.log.warn(format!("rejected connection from {from}: {e}"));
            return;
        }
        let conn = match Conn::new(stream, self.cfg.max_message_bytes, self.flusher.clone()) {
            Ok(c) => c,
            Err(e) => return self.log.warn(format!("connection from {from}: {e}")),
        };
        let outcome = conn.read_frame_blocking(Instant::now() + HANDSHAKE_TIMEOUT).and_then(|f| {
            match (f.header.service, f.header.op) {
                (service::CONTROL, op::JOIN) if self.head => self.on_join(&conn, &f),
                (service::CONTROL, op::HELLO) if !self.head => self.on_hello(&conn, &f),
                _ => Err(Error::new(ErrorKind::Protocol, "unexpected first message")),
            }
        });
        match outcome {
            Ok(()) => conn.spawn_reader(self.clone()),
            Err(e) => {
                self.log.error(format!("dropping connection from {from}: {e}"));
                conn.close();
            }
        }
    }

    fn on_join(self: &Arc<Self>, conn: &Arc<Conn>, f: &Frame) -> Result<()> {
        let join: Join = f.meta_as()?;
        let peer = if join.id == 0 {
            let id = self.next_id.fetch_add(1, Ordering::AcqRel);
            let p = Peer::new(id, LAUNCHING);
            self.peers.write().insert(id, p.clone());
            self.log.info(format!("elastic worker {id} joining from {}", join.listen_addr));
            p
        } else {
            let p = self.peers.read().get(&join.id).cloned();
            match p {
                Some(p) if p.state.load(Ordering::Acquire) == LAUNCHING && p.conn.lock().is_none() => p,
                _ => {
                    let msg = format!("unknown or already joined worker id {}", join.id);
                    let mut h = Header::new(Kind::Response, service::CONTROL, op::JOIN, f.header.id);
                    h.status = ErrorKind::Launch as u8;
                    let _ = conn.send(h, &[], msg.as_bytes());
                    return Err(Error::new(ErrorKind::Protocol, msg));
                }
            }
        };
        *peer.addr.lock() = join.listen_addr;
        peer.os_pid.store(join.os_pid, Ordering::Release);
        conn.peer.store(peer.id, Ordering::Release);
        conn.peer_max.store(join.max_message, Ordering::Relaxed);
        *peer.conn.lock() = Some(conn.clone());
        peer.state.store(CONNECTED, Ordering::Release);
        let welcome = Welcome {
            id: peer.id,
            topology: self.topology(),
            peers: self.ready_worker_addrs(),
            max_message: self.cfg.max_message_bytes,
        };
        let h = Header::new(Kind::Response, service::CONTROL, op::JOIN, f.header.id);
        conn.send(h, &wire::encode_meta(&welcome), &[])
    }

    fn on_hello(self: &Arc<Self>, conn: &Arc<Conn>, f: &Frame) -> Result<()> {
        if self.topology() == Topology::MasterWorker {
            return Err(Error::new(ErrorKind::Topology, "worker-to-worker connections are disabled (topology master_worker)"));
        }
        let info: PeerInfo = f.meta_as()?;
        conn.peer.store(info.id, Ordering::Release);
        conn.peer_max.store(info.max_message, Ordering::Relaxed);
        let peer = {
            let mut peers = self.peers.write();
            peers.entry(info.id).or_insert_with(|| Peer::new(info.id, READY)).clone()
        };
        if peer.is_gone() {
            return Err(Error::exited(info.id));
        }
        *peer.addr.lock() = info.addr;
        let mut primary = peer.conn.lock();
        if primary.is_none() {
            *primary = Some(conn.clone());
        } else {
            peer.extra_conns.lock().push(conn.clone());
        }
        Ok(())
    }

    fn ready_worker_addrs(&self) -> Vec<(u32, String)> {
        self.peers
            .read()
            .values()
            .filter(|p| p.is_ready())
            .map(|p| (p.id, p.addr.lock().clone()))
            .collect()
    }

    // ---- membership -------------------------------------------------

    pub fn myid(&self) -> u32 {
        self.myid.load(Ordering::Acquire)
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
    pub fn topology(&self) -> Topology {
        if self.topology.load(Ordering::Acquire) == 1 {
            Topology::MasterWorker
        } else {
            Topology::AllToAll
        }
    }
    pub fn set_topology(&self, t: Topology) -> Result<()> {
        self.require_head()?;
        if self.workers_added.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::InvalidArgument, "the topology is fixed once workers were added"));
        }
        self.topology.store(t as u8, Ordering::Release);
        Ok(())
    }

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

    pub(crate) fn require_head(&self) -> Result<()> {
        if self.head {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::NotHead, ErrorKind::NotHead.describe()))
        }
    }

    pub fn set_lifecycle_hook(&self, hook: Option<LifecycleHook>) {
        *self.lifecycle.write() = hook;
    }

    pub fn set_launcher(&self, launcher: Arc<dyn Launcher>) {
        *self.launcher.write() = launcher;
    }

    fn lifecycle_event(&self, pid: u32, ev: Lifecycle) {
        match &self.host {
            Some(h) => h.push_event(match ev {
                Lifecycle::Started => Event::WorkerStarted(pid),
                Lifecycle::Exited { graceful } => Event::WorkerExited { pid, graceful },
            }),
            None => {
                let hook = self.lifecycle.read().clone();
                if let Some(hook) = hook {
                    hook(pid, ev);
                }
            }
        }
    }

    pub(crate) fn lifecycle_hook(&self) -> Option<LifecycleHook> {
        self.lifecycle.read().clone()
    }

    /// Starts `n` workers and returns their ids once all are ready.
    /// All or nothing: if one fails, the others of this call are stopped.
    pub fn addprocs(self: &Arc<Self>, n: usize, opts: &LaunchOptions) -> Result<Vec<u32>> {
        self.require_head()?;
        self.check_open()?;
        self.workers_added.store(true, Ordering::Release);
        let launcher = self.launcher.read().clone();
        let mut ids = Vec::with_capacity(n);
        let mut failures: Vec<String> = Vec::new();
        for _ in 0..n {
            let id = self.next_id.fetch_add(1, Ordering::AcqRel);
            ids.push(id);
            let peer = Peer::new(id, LAUNCHING);
            self.peers.write().insert(id, peer.clone());
            let launched = LaunchSpec::new(id, opts, &self.listen_addr, &self.cookie, self.cfg.startup_timeout)
                .and_then(|spec| launcher.launch(&spec));
            match launched {
                Ok(l) => {
                    if let Some(pid) = l.os_pid {
                        peer.os_pid.store(pid, Ordering::Release);
                    }
                    if let Some(child) = l.child {
                        peer.child_alive.store(true, Ordering::Release);
                        self.spawn_reaper(peer.clone(), child);
                    }
                }
                Err(e) => {
                    failures.push(e.to_string());
                    peer.state.store(GONE, Ordering::Release);
                }
            }
        }
        let deadline = Instant::now() + self.cfg.startup_timeout + Duration::from_secs(2);
        let peers: Vec<Arc<Peer>> = ids.iter().filter_map(|id| self.peers.read().get(id).cloned()).collect();
        {
            let mut g = self.membership.lock();
            loop {
                if peers.iter().all(|p| p.announced.load(Ordering::Acquire) || p.is_gone()) || self.is_closing() {
                    break;
                }
                if self.membership_cv.wait_until(&mut g, deadline).timed_out() {
                    break;
                }
            }
        }
        for p in &peers {
            if p.is_ready() {
                continue;
            }
            let why = if p.is_gone() {
                p.exit_note.lock().clone().unwrap_or_else(|| "exited before it was ready".into())
            } else {
                format!("not ready within the startup timeout of {:?}", self.cfg.startup_timeout)
            };
            if !failures.iter().any(|f| f.starts_with(&format!("worker {}:", p.id))) {
                failures.push(format!("worker {}: {why}", p.id));
            }
        }
        if failures.is_empty() {
            return Ok(ids);
        }
        // Leave no orphans: stop every worker of this call.
        for p in &peers {
            p.graceful.store(false, Ordering::Release);
            self.kill_peer(p);
        }
        let wait_until = Instant::now() + Duration::from_secs(5);
        for p in &peers {
            while p.child_alive.load(Ordering::Acquire) && Instant::now() < wait_until {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.peer_lost(p.id);
        }
        Err(Error::new(ErrorKind::Launch, format!("addprocs failed: {}", failures.join("; "))))
    }

    fn kill_peer(&self, p: &Peer) {
        if let Some(c) = p.conn.lock().clone() {
            c.close();
        }
        let pid = p.os_pid.load(Ordering::Acquire);
        if pid != 0 && p.child_alive.load(Ordering::Acquire) {
            sys::kill(pid, sys::SIGKILL);
        }
    }

    fn spawn_reaper(self: &Arc<Self>, peer: Arc<Peer>, mut child: std::process::Child) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(format!("cluster-reap-{}", peer.id))
            .stack_size(64 * 1024)
            .spawn(move || {
                let note = match child.wait() {
                    Ok(st) => match (st.code(), std::os::unix::process::ExitStatusExt::signal(&st)) {
                        (Some(c), _) => format!("exited with status {c}"),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        _ => "exited".into(),
                    },
                    Err(e) => format!("could not be waited for: {e}"),
                };
                *peer.exit_note.lock() = Some(format!("worker {} {note}", peer.id));
                peer.child_alive.store(false, Ordering::Release);
                if let Some(node) = weak.upgrade() {
                    node.peer_lost(peer.id);
                }
            })
            .expect("spawn reaper thread");
    }

    /// Stops workers: asks them to leave, then terminates, then kills,
    /// each after a share of `timeout`. Returns once all are gone.
    pub fn rmprocs(self: &Arc<Self>, ids: &[u32], timeout: Duration) -> Result<()> {
        self.require_head()?;
        let mut peers = Vec::new();
        for &id in ids {
            if id == HEAD_ID {
                return Err(Error::new(ErrorKind::InvalidArgument, "process 1 cannot be removed"));
            }
            match self.peers.read().get(&id) {
                Some(p) => peers.push(p.clone()),
                None => return Err(Error::at(ErrorKind::NoSuchProcess, id, format!("no process {id}"))),
            }
        }
        for p in &peers {
            p.graceful.store(true, Ordering::Release);
            if let Some(c) = p.conn.lock().clone() {
                let _ = c.send(Header::new(Kind::Oneway, service::CONTROL, op::SHUTDOWN, 0), &[], &[]);
            }
        }
        let start = Instant::now();
        let gone = |p: &Arc<Peer>| p.is_gone() && !p.child_alive.load(Ordering::Acquire);
        let wait_phase = |until: Instant| {
            while Instant::now() < until && !peers.iter().all(gone) {
                let mut g = self.membership.lock();
                self.membership_cv.wait_for(&mut g, Duration::from_millis(10));
            }
        };
        wait_phase(start + timeout / 2);
        for (phase, sig) in [(3u32, sys::SIGTERM), (4, sys::SIGKILL)] {
            for p in peers.iter().filter(|p| !gone(p)) {
                let pid = p.os_pid.load(Ordering::Acquire);
                if pid != 0 && p.child_alive.load(Ordering::Acquire) {
                    sys::kill(pid, sig);
                } else if let Some(c) = p.conn.lock().clone() {
                    c.close();
                }
            }
            wait_phase(start + timeout * phase / 4);
        }
        let left: Vec<String> = peers.iter().filter(|p| !gone(p)).map(|p| p.id.to_string()).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Timeout, format!("workers still running after {timeout:?}: {}", left.join(", "))))
        }
    }

    /// Marks a peer gone, once: fails what waits on it and tells others.
    pub(crate) fn peer_lost(self: &Arc<Self>, id: u32) {
        let Some(peer) = self.peers.read().get(&id).cloned() else { return };
        let was = peer.state.swap(GONE, Ordering::AcqRel);
        if was == GONE {
            return;
        }
        if let Some(c) = peer.conn.lock().clone() {
            c.close();
        }
        for c in peer.extra_conns.lock().drain(..) {
            c.close();
        }
        let pending: Vec<Arc<Slot>> = peer.pending.lock().drain().map(|(_, s)| s).collect();
        for s in pending {
            s.complete(Err(Error::exited(id)));
        }
        self.drop_holder(id);
        let graceful = peer.graceful.load(Ordering::Acquire);
        self.log.info(format!("process {id} left ({})", if graceful { "stopped" } else { "died" }));
        {
            let _g = self.membership.lock();
            self.membership_cv.notify_all();
        }
        if self.head {
            if was == READY {
                let meta = wire::encode_meta(&PeerInfo { id, addr: String::new(), max_message: 0 });
                for p in self.peers.read().values().filter(|p| p.is_ready()) {
                    if let Some(c) = p.conn.lock().clone() {
                        let _ = c.send(Header::new(Kind::Oneway, service::CONTROL, op::PEER_LEFT, 0), &meta, &[]);
                    }
                }
                self.lifecycle_event(id, Lifecycle::Exited { graceful });
            }
        } else if id == HEAD_ID {
            self.request_stop();
            if self.cfg.exit_on_head_loss && !self.is_closing() {
                self.log.warn("the head went away; exiting");
                std::process::exit(0);
            }
        }
    }

    /// The connection to `pid`, made now if this is a first worker-to-worker use.
    pub(crate) fn conn_for(self: &Arc<Self>, pid: u32) -> Result<(Arc<Peer>, Arc<Conn>)> {
        self.check_open()?;
        if !self.head && pid != HEAD_ID && self.topology() == Topology::MasterWorker {
            return Err(Error::at(
                ErrorKind::Topology,
                pid,
                format!("worker {} cannot call worker {pid}: topology is master_worker", self.myid()),
            ));
        }
        let peer = self
            .peers
            .read()
            .get(&pid)
            .cloned()
            .ok_or_else(|| Error::at(ErrorKind::NoSuchProcess, pid, format!("no process {pid} in this cluster")))?;
        if peer.is_gone() {
            return Err(Error::exited(pid));
        }
        let existing = peer.conn.lock().clone();
        if let Some(c) = existing {
            return Ok((peer, c));
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
                    let addr = peer.addr.lock().clone();
                    let c = self.connect_peer(pid, &addr)?;
                    *peer.conn.lock() = Some(c.clone());
                    c
                }
            }
        };
        if peer.is_gone() {
            conn.close();
            return Err(Error::exited(pid));
        }
        Ok((peer, conn))
    }

    fn connect_peer(self: &Arc<Self>, pid: u32, addr: &str) -> Result<Arc<Conn>> {
        let sa = resolve(addr)?;
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
            .map_err(|e| Error::at(ErrorKind::ProcessExited, pid, format!("cannot connect to worker {pid} at {addr}: {e}")))?;
        auth::handshake(&mut s, self.cookie.as_bytes(), Side::Client, HANDSHAKE_TIMEOUT)?;
        let conn = Conn::new(s, self.cfg.max_message_bytes, self.flusher.clone())?;
        conn.peer.store(pid, Ordering::Release);
        let hello = PeerInfo { id: self.myid(), addr: self.listen_addr.clone(), max_message: self.cfg.max_message_bytes };
        conn.send(Header::new(Kind::Oneway, service::CONTROL, op::HELLO, 0), &wire::encode_meta(&hello), &[])?;
        conn.spawn_reader(self.clone());
        Ok(conn)
    }

    // ---- serving and stopping ---------------------------------------

    /// A worker tells the head it has registered its functions.
    pub fn ready(self: &Arc<Self>) -> Result<()> {
        if self.head {
            return Ok(());
        }
        let (_, conn) = self.conn_for(HEAD_ID)?;
        conn.send(Header::new(Kind::Oneway, service::CONTROL, op::READY, 0), &[], &[])
    }

    /// `ready`, then blocks until asked to stop or the head goes away.
    pub fn serve(self: &Arc<Self>) -> Result<()> {
        if self.host.is_some() {
            return Err(Error::new(ErrorKind::WrongMode, "serve is for thread dispatch; in host mode drive with poll"));
        }
        self.ready()?;
        let mut g = self.stop.lock();
        while !*g {
            self.stop_cv.wait(&mut g);
        }
        Ok(())
    }

    pub fn stop_requested(&self) -> bool {
        *self.stop.lock()
    }

    pub(crate) fn request_stop(&self) {
        let mut g = self.stop.lock();
        *g = true;
        self.stop_cv.notify_all();
        drop(g);
        if let Some(h) = &self.host {
            h.push_event(Event::Shutdown);
        }
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

    /// Stops every worker (head) and closes this node.
    pub fn shutdown(self: &Arc<Self>, timeout: Duration) -> Result<()> {
        let r = if self.head {
            let ids: Vec<u32> = self.peers.read().values().filter(|p| !p.is_gone()).map(|p| p.id).collect();
            if ids.is_empty() {
                Ok(())
            } else {
                self.rmprocs(&ids, timeout)
            }
        } else {
            Ok(())
        };
        self.close();
        r
    }

    /// Closes every connection and fails what is pending; never blocks.
    /// Workers notice their head is gone and exit.
    pub fn close(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        sys::shutdown_socket(self.listener_fd);
        *self.housekeeping.lock() = None;
        self.flusher.stop();
        let peers: Vec<Arc<Peer>> = self.peers.read().values().cloned().collect();
        for p in &peers {
            p.state.store(GONE, Ordering::Release);
            if let Some(c) = p.conn.lock().clone() {
                c.close();
            }
            for c in p.extra_conns.lock().iter() {
                c.close();
            }
            let pending: Vec<Arc<Slot>> = p.pending.lock().drain().map(|(_, s)| s).collect();
            for s in pending {
                s.complete(Err(Error::new(ErrorKind::Shutdown, "the cluster was shut down")));
            }
        }
        self.request_stop();
        let _g = self.membership.lock();
        self.membership_cv.notify_all();
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn round_robin(&self, n: usize) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed) % n
    }

    // ---- control service ---------------------------------------------

    fn on_control(self: &Arc<Self>, conn: &Arc<Conn>, f: Frame) -> Result<Option<Job>> {
        let from = conn.peer();
        match f.header.op {
            op::READY if self.head => {
                let Some(peer) = self.peers.read().get(&from).cloned() else { return Ok(None) };
                // Under the membership lock, so addprocs sees a worker ready
                // only once the others have been told about it.
                let membership = self.membership.lock();
                if peer.state.compare_exchange(CONNECTED, READY, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    return Ok(None);
                }
                // Introduce the new worker and the ready ones to each other:
                // its welcome may predate workers that became ready since.
                let joined = Header::new(Kind::Oneway, service::CONTROL, op::PEER_JOINED, 0);
                let meta = wire::encode_meta(&PeerInfo { id: from, addr: peer.addr.lock().clone(), max_message: 0 });
                for p in self.peers.read().values().filter(|p| p.is_ready() && p.id != from) {
                    if let Some(c) = p.conn.lock().clone() {
                        let _ = c.send(joined, &meta, &[]);
                    }
                    let theirs = wire::encode_meta(&PeerInfo { id: p.id, addr: p.addr.lock().clone(), max_message: 0 });
                    let _ = conn.send(joined, &theirs, &[]);
                }
                drop(membership);
                self.log.info(format!("worker {from} is ready"));
                self.lifecycle_event(from, Lifecycle::Started);
                peer.announced.store(true, Ordering::Release);
                let _g = self.membership.lock();
                self.membership_cv.notify_all();
            }
            op::PEER_JOINED if !self.head => {
                let info: PeerInfo = f.meta_as()?;
                let mut peers = self.peers.write();
                let p = peers.entry(info.id).or_insert_with(|| Peer::new(info.id, READY));
                *p.addr.lock() = info.addr;
            }
            op::PEER_LEFT if !self.head => {
                let info: PeerInfo = f.meta_as()?;
                self.peer_lost(info.id);
            }
            op::SHUTDOWN if !self.head => {
                self.log.info("asked to stop");
                self.request_stop();
            }
            op::INTERRUPT => self.interrupt_local(),
            op::ADD_REF => {
                let ref_id: u64 = f.meta_as()?;
                let r = if self.add_transit(ref_id) { Ok(&[][..]) } else { Err(self.freed_ref(ref_id)) };
                self.respond(conn, &f.header, r);
            }
            op::ADD_CLIENT => {
                self.claim_ref(f.meta_as()?, from);
            }
            op::DEL_REF => self.release_ref(f.meta_as()?, from),
            op::FETCH_REF => {
                let ref_id: u64 = f.meta_as()?;
                let slot = self.owned.lock().get(&ref_id).map(|e| e.slot.clone());
                match slot {
                    None => self.respond(conn, &f.header, Err(self.freed_ref(ref_id))),
                    Some(slot) => {
                        let (node, conn, h) = (self.clone(), conn.clone(), f.header);
                        slot.on_complete(move |r| node.respond(&conn, &h, r.as_ref().map(|v| &v[..]).map_err(|e| e.clone())));
                    }
                }
            }
            _ => return Err(Error::new(ErrorKind::Protocol, format!("unexpected control op {}", f.header.op))),
        }
        Ok(None)
    }

    fn freed_ref(&self, id: u64) -> Error {
        Error::at(ErrorKind::InvalidArgument, self.myid(), format!("future {id} on process {} was freed", self.myid()))
    }

    /// Sends the response to request `h` on `conn`.
    pub(crate) fn respond(&self, conn: &Arc<Conn>, h: &Header, outcome: std::result::Result<&[u8], Error>) {
        let r = Header::new(Kind::Response, h.service, h.op, h.id);
        let send_err = |mut r: Header, e: &Error| {
            r.status = e.kind as u8;
            r.aux = if e.pid != 0 { e.pid } else { self.myid() };
            conn.send(r, &[], e.message.as_bytes())
        };
        let sent = match outcome {
            Ok(v) => match conn.send(r, &[], v) {
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
        if let Err(e) = sent {
            self.log.debug(format!("response to process {} not sent: {e}", conn.peer()));
        }
    }

    fn on_response(&self, conn: &Arc<Conn>, f: Frame) {
        let from = conn.peer();
        let Some(peer) = self.peers.read().get(&from).cloned() else { return };
        let Some(slot) = peer.pending.lock().remove(&f.header.id) else {
            return self.log.debug(format!("late or unknown response {} from {from}", f.header.id));
        };
        let outcome = if f.header.status == 0 {
            Ok(f.payload)
        } else {
            let kind = ErrorKind::from_code(f.header.status).unwrap_or(ErrorKind::Remote);
            let pid = if f.header.aux != 0 { f.header.aux } else { from };
            Err(Error::at(kind, pid, String::from_utf8_lossy(&f.payload).into_owned()))
        };
        slot.complete(outcome);
    }

    pub(crate) fn host_or_err(&self) -> Result<&HostQueue> {
        self.host.as_ref().ok_or_else(|| Error::new(ErrorKind::WrongMode, "only in host-driven dispatch mode"))
    }

    pub(crate) fn enqueue_call(self: &Arc<Self>, call: IncomingCall) -> Option<Job> {
        match &self.host {
            Some(h) => {
                h.push_call(call);
                None
            }
            None => self.dispatcher.offer(call).map(|c| {
                let node = self.clone();
                Box::new(move || node.run_calls(c)) as Job
            }),
        }
    }
}

impl Dispatch for Node {
    fn on_frame(self: &Arc<Self>, conn: &Arc<Conn>, f: Frame) -> Option<Job> {
        if f.header.kind == Kind::Response {
            self.on_response(conn, f);
            return None;
        }
        let r = match f.header.service {
            service::RPC => self.on_rpc(conn, f),
            service::CONTROL => self.on_control(conn, f),
            s => Err(Error::new(ErrorKind::Protocol, format!("unknown service {s}"))),
        };
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
        if pid != 0 {
            self.peer_lost(pid);
        }
    }

    fn spin(&self) -> Duration {
        self.cfg.spin
    }

    fn is_shutting_down(&self) -> bool {
        self.is_closing()
    }

    fn rescuer(&self) -> &Rescuer {
        &self.rescuer
    }
}
