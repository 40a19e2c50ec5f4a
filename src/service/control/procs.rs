//! The head's side of membership: launching workers (all or nothing),
//! removing them (ask, then SIGTERM, then SIGKILL), reaping the children
//! it launched (one thread for all of them), and shutdown.

use super::{op, Control, ID};
use crate::error::{Error, ErrorKind, Result};
use crate::launch::{LaunchOptions, LaunchSpec, Launcher};
use crate::node::peer_state::LAUNCHING;
use crate::node::{Future, Node, Peer, Topology, HEAD_ID};
use crate::sys;
use crate::wire::{Header, Kind};
use parking_lot::Mutex;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

fn control(node: &Node) -> Result<Arc<Control>> {
    node.service::<Control>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no control service on this node"))
}

/// Builds, on a library thread, the launcher of an `addprocs_with_async`
/// and says how many workers to start.
pub type MakeLauncher = Box<dyn FnOnce() -> Result<(Arc<dyn Launcher>, usize)> + Send>;

/// Membership operations, on any node with the control service.
pub trait ControlExt {
    /// Starts `n` workers and returns their ids once all are ready.
    /// All or nothing: if one fails, the others of this call are stopped.
    fn addprocs(&self, n: usize, opts: &LaunchOptions) -> Result<Vec<u32>>;
    /// `addprocs` on a thread of the library; the future's value is the
    /// new ids, 4 bytes each (little endian).
    fn addprocs_async(&self, n: usize, opts: &LaunchOptions) -> Result<Future>;
    /// `addprocs` with `launcher` for this call only (e.g. an
    /// `SshLauncher`), the node's own launcher unchanged.
    fn addprocs_with(&self, launcher: Arc<dyn Launcher>, n: usize, opts: &LaunchOptions) -> Result<Vec<u32>>;
    /// `addprocs_with` on a thread of the library; `make` builds the
    /// launcher there (it may ask hosts their core counts) and says how
    /// many workers to start. The value: the new ids, 4 bytes each.
    fn addprocs_with_async(&self, make: MakeLauncher, opts: &LaunchOptions) -> Result<Future>;
    /// Stops workers: asks them to leave, then terminates, then kills,
    /// each after a share of `timeout`. Returns once all are gone.
    fn rmprocs(&self, ids: &[u32], timeout: Duration) -> Result<()>;
    fn rmprocs_async(&self, ids: &[u32], timeout: Duration) -> Result<Future>;
    /// Stops every worker (head) and closes this node.
    fn shutdown(&self, timeout: Duration) -> Result<()>;
    fn shutdown_async(&self, timeout: Duration) -> Result<Future>;
    /// Head, while it has no workers: the topology of the workers to come.
    fn set_topology(&self, t: Topology) -> Result<()>;
    fn set_launcher(&self, launcher: Arc<dyn Launcher>) -> Result<()>;
    /// A worker tells the head it has registered its functions.
    fn ready(&self) -> Result<()>;
    /// `ready`, then blocks until asked to stop (Ok) or the head goes
    /// away (`HeadLost`). Threads mode only.
    fn serve(&self) -> Result<()>;
}

/// Runs `op` on a thread of its own and completes a future with its outcome.
fn on_thread(node: &Arc<Node>, name: &str, op: impl FnOnce(&Arc<Node>) -> Result<Vec<u8>> + Send + 'static) -> Result<Future> {
    node.check_open()?;
    let (fut, promise) = node.promise(node.myid());
    let n = node.clone();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(move || {
            promise.complete(op(&n));
        })
        .map_err(|e| Error::io("spawn", e))?;
    Ok(fut)
}

fn ids_bytes(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

impl ControlExt for Arc<Node> {
    fn addprocs(&self, n: usize, opts: &LaunchOptions) -> Result<Vec<u32>> {
        let c = control(self)?;
        let launcher = c.launcher.read().clone();
        c.addprocs(self, launcher, n, opts)
    }
    fn addprocs_with(&self, launcher: Arc<dyn Launcher>, n: usize, opts: &LaunchOptions) -> Result<Vec<u32>> {
        control(self)?.addprocs(self, launcher, n, opts)
    }
    fn addprocs_with_async(&self, make: MakeLauncher, opts: &LaunchOptions) -> Result<Future> {
        self.require_head()?;
        let (c, opts) = (control(self)?, opts.clone());
        on_thread(self, "cluster-addprocs", move |node| {
            let (launcher, n) = make()?;
            c.addprocs(node, launcher, n, &opts).map(|ids| ids_bytes(&ids))
        })
    }
    fn addprocs_async(&self, n: usize, opts: &LaunchOptions) -> Result<Future> {
        self.require_head()?;
        let (c, opts) = (control(self)?, opts.clone());
        on_thread(self, "cluster-addprocs", move |node| {
            let launcher = c.launcher.read().clone();
            c.addprocs(node, launcher, n, &opts).map(|ids| ids_bytes(&ids))
        })
    }
    fn rmprocs(&self, ids: &[u32], timeout: Duration) -> Result<()> {
        control(self)?.rmprocs(self, ids, timeout)
    }
    fn rmprocs_async(&self, ids: &[u32], timeout: Duration) -> Result<Future> {
        self.require_head()?;
        let (c, ids) = (control(self)?, ids.to_vec());
        on_thread(self, "cluster-rmprocs", move |node| c.rmprocs(node, &ids, timeout).map(|_| Vec::new()))
    }
    fn shutdown(&self, timeout: Duration) -> Result<()> {
        let r = if self.is_head() {
            let ids: Vec<u32> = self.peers_where(|p| !p.is_gone()).iter().map(|p| p.id).collect();
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
    fn shutdown_async(&self, timeout: Duration) -> Result<Future> {
        let (fut, promise) = self.promise(self.myid());
        let n = self.clone();
        std::thread::Builder::new()
            .name("cluster-shutdown".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                promise.complete(n.shutdown(timeout).map(|_| Vec::new()));
            })
            .map_err(|e| Error::io("spawn", e))?;
        Ok(fut)
    }
    fn set_topology(&self, t: Topology) -> Result<()> {
        self.require_head()?;
        let c = control(self)?;
        let live = self.peers_where(|p| !p.is_gone()).len();
        if c.workers_added.load(Ordering::Acquire) && live > 0 && t != self.topology() {
            return Err(Error::new(ErrorKind::Topology, "the topology can change only while the head has no workers"));
        }
        self.store_topology(t);
        Ok(())
    }
    fn set_launcher(&self, launcher: Arc<dyn Launcher>) -> Result<()> {
        control(self)?.set_launcher(launcher);
        Ok(())
    }
    fn ready(&self) -> Result<()> {
        if self.is_head() {
            return Ok(());
        }
        self.send_oneway(HEAD_ID, ID, op::READY, &[], &[])
    }
    fn serve(&self) -> Result<()> {
        if self.host.is_some() {
            return Err(Error::new(ErrorKind::WrongMode, "serve is for thread dispatch; in host mode drive with poll"));
        }
        self.ready()?;
        self.wait_stop()
    }
}

impl Control {
    fn addprocs(&self, node: &Arc<Node>, launcher: Arc<dyn Launcher>, n: usize, opts: &LaunchOptions) -> Result<Vec<u32>> {
        node.require_head()?;
        node.check_open()?;
        self.workers_added.store(true, Ordering::Release);
        let mut ids = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n);
        let mut failures: Vec<String> = Vec::new();
        let mut specs = Vec::with_capacity(n);
        let startup_timeout = opts.startup_timeout.unwrap_or(node.config().startup_timeout);
        for _ in 0..n {
            let id = self.next_id.fetch_add(1, Ordering::AcqRel);
            ids.push(id);
            peers.push(node.add_peer(id, LAUNCHING));
            match LaunchSpec::new(id, opts, node.address(), node.cookie(), startup_timeout) {
                Ok(spec) => specs.push(spec.with_join_key(self.join_key(id)).with_tls(node.config().tls)),
                Err(e) => {
                    failures.push(e.to_string());
                    node.peer_lost(id);
                }
            }
        }
        let launched = if failures.is_empty() { launcher.launch_all(&specs) } else { Vec::new() };
        for (spec, l) in specs.iter().zip(launched) {
            let Some(peer) = node.peer(spec.id) else { continue };
            match l {
                Ok(l) => {
                    if let Some(pid) = l.os_pid {
                        peer.os_pid.store(pid, Ordering::Release);
                    }
                    if let Some(child) = l.child {
                        peer.child_alive.store(true, Ordering::Release);
                        self.reap(node, peer.clone(), child);
                    }
                }
                Err(e) => {
                    failures.push(e.to_string());
                    node.peer_lost(spec.id);
                }
            }
        }
        let deadline = Instant::now() + startup_timeout + Duration::from_secs(2);
        node.wait_membership(deadline, || peers.iter().all(|p| p.announced.load(Ordering::Acquire) || p.is_gone()));
        for p in &peers {
            if p.is_ready() {
                continue;
            }
            let why = if p.is_gone() {
                p.exit_note.lock().clone().unwrap_or_else(|| "exited before it was ready".into())
            } else {
                format!("not ready within the startup timeout of {startup_timeout:?}")
            };
            if !failures.iter().any(|f| f.starts_with(&format!("worker {}:", p.id))) {
                failures.push(format!("worker {}: {why}", p.id));
            }
        }
        if failures.is_empty() {
            return Ok(ids);
        }
        let joined: Vec<u32> = peers.iter().filter(|p| p.is_ready()).map(|p| p.id).collect();
        if opts.tolerate_failures && !joined.is_empty() {
            for p in peers.iter().filter(|p| !p.is_ready()) {
                p.graceful.store(false, Ordering::Release);
                kill_peer(p);
                node.peer_lost(p.id);
            }
            for f in &failures {
                node.log.warn(format!("addprocs: {f}"));
            }
            return Ok(joined);
        }
        // Leave no orphans: stop every worker of this call.
        for p in &peers {
            p.graceful.store(false, Ordering::Release);
            kill_peer(p);
        }
        let wait_until = Instant::now() + Duration::from_secs(5);
        node.wait_membership(wait_until, || peers.iter().all(|p| !p.child_alive.load(Ordering::Acquire)));
        for p in &peers {
            node.peer_lost(p.id);
        }
        Err(Error::new(ErrorKind::Launch, format!("addprocs failed: {}", failures.join("; "))))
    }

    fn rmprocs(&self, node: &Arc<Node>, ids: &[u32], timeout: Duration) -> Result<()> {
        node.require_head()?;
        let mut peers = Vec::new();
        for &id in ids {
            if id == HEAD_ID {
                return Err(Error::new(ErrorKind::InvalidArgument, "process 1 cannot be removed"));
            }
            match node.peer(id) {
                Some(p) => peers.push(p),
                // Gone already: nothing to stop.
                None if node.unknown_process(id).kind == ErrorKind::ProcessExited => {}
                None => return Err(node.unknown_process(id)),
            }
        }
        for p in &peers {
            p.graceful.store(true, Ordering::Release);
            if let Some(c) = p.conn.lock().clone() {
                let _ = c.send_nowait(Header::new(Kind::Oneway, ID, op::SHUTDOWN, 0), &[], &[]);
            }
        }
        let start = Instant::now();
        let gone = |p: &Arc<Peer>| p.has_departed() && !p.child_alive.load(Ordering::Acquire);
        node.wait_membership(start + timeout / 2, || peers.iter().all(gone));
        for (phase, sig) in [(3u32, sys::SIGTERM), (4, sys::SIGKILL)] {
            for p in peers.iter().filter(|p| !gone(p)) {
                let pid = p.os_pid.load(Ordering::Acquire);
                if pid != 0 && p.child_alive.load(Ordering::Acquire) {
                    sys::kill(pid, sig);
                } else if let Some(c) = p.conn.lock().clone() {
                    c.close();
                }
            }
            node.wait_membership(start + timeout * phase / 4, || peers.iter().all(gone));
        }
        let left: Vec<String> = peers.iter().filter(|p| !gone(p)).map(|p| p.id.to_string()).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Timeout, format!("workers still running after {timeout:?}: {}", left.join(", "))))
        }
    }

    fn reap(&self, node: &Arc<Node>, peer: Arc<Peer>, child: Child) {
        let mut r = self.reaper.lock();
        if r.is_none() {
            *r = Some(Reaper::start(Arc::downgrade(node)));
        }
        if let Some(r) = r.as_ref() {
            r.add(peer, child);
        }
    }
}

fn kill_peer(p: &Peer) {
    if let Some(c) = p.conn.lock().clone() {
        c.close();
    }
    let pid = p.os_pid.load(Ordering::Acquire);
    if pid != 0 && p.child_alive.load(Ordering::Acquire) {
        sys::kill(pid, sys::SIGKILL);
    }
}

struct Reaped {
    peer: Arc<Peer>,
    child: Child,
    fd: Option<sys::PidFd>,
}

struct ReaperShared {
    children: Mutex<Vec<Reaped>>,
    wake: sys::EventFd,
    stop: AtomicBool,
}

/// One thread waits for every launched child at once (pidfds in one
/// poll), so threads do not grow with the number of workers.
pub(super) struct Reaper(Arc<ReaperShared>);

impl Reaper {
    fn start(node: Weak<Node>) -> Reaper {
        let shared = Arc::new(ReaperShared { children: Mutex::new(Vec::new()), wake: sys::EventFd::new().expect("eventfd"), stop: AtomicBool::new(false) });
        let s = shared.clone();
        std::thread::Builder::new().name("cluster-reap".into()).stack_size(128 * 1024).spawn(move || Reaper::run(&s, &node)).expect("spawn reaper thread");
        Reaper(shared)
    }

    fn add(&self, peer: Arc<Peer>, child: Child) {
        let fd = sys::PidFd::open(child.id()).ok();
        self.0.children.lock().push(Reaped { peer, child, fd });
        self.0.wake.signal();
    }

    pub(super) fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        self.0.wake.signal();
    }

    fn run(s: &ReaperShared, node: &Weak<Node>) {
        loop {
            let mut fds = vec![s.wake.fd()];
            let any_without_fd = {
                let c = s.children.lock();
                fds.extend(c.iter().filter_map(|r| r.fd.as_ref().map(|f| f.fd())));
                c.iter().any(|r| r.fd.is_none())
            };
            // Without pidfds (old kernels) children are polled every 50 ms.
            let timeout = if any_without_fd { Some(Duration::from_millis(50)) } else { Some(Duration::from_millis(1000)) };
            let _ = sys::poll_many(&fds, timeout);
            s.wake.drain();
            let mut exited = Vec::new();
            s.children.lock().retain_mut(|r| match r.child.try_wait() {
                Ok(Some(st)) => {
                    exited.push((r.peer.clone(), describe(st)));
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    exited.push((r.peer.clone(), format!("could not be waited for: {e}")));
                    false
                }
            });
            for (peer, note) in exited {
                *peer.exit_note.lock() = Some(format!("worker {} {note}", peer.id));
                match node.upgrade() {
                    Some(n) => n.child_reaped(&peer),
                    None => peer.child_alive.store(false, Ordering::Release),
                }
            }
            if s.stop.load(Ordering::Acquire) && s.children.lock().is_empty() {
                return;
            }
            if node.strong_count() == 0 && s.children.lock().is_empty() {
                return;
            }
        }
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), std::os::unix::process::ExitStatusExt::signal(&st)) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "exited".into(),
    }
}
