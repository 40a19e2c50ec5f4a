//! The reactor: one epoll watches every idle connection of a node, so
//! threads do not grow with the number of peers.
//!
//! One thread at a time holds the reactor role. It reads a connection
//! that becomes readable and runs a short incoming call itself rather than
//! waking another thread; after traffic it keeps polling for `spin`
//! before it blocks, so back-to-back requests pay no wake-up. When a call
//! it runs takes longer than `RESCUE_AFTER`, the rescuer hands the role to
//! a fresh thread; the old one finishes its call and ends. A connection a
//! caller is reading itself (waiting for its reply) is left to that
//! caller and watched again once the caller has been gone a while.
//!
//! Connections use EPOLLONESHOT: whoever reads one to empty re-arms it.
//! One read directly (hot while the role spins, or left to a caller) is
//! out of epoll meanwhile: a socket on an epoll's wait queue pays epoll's
//! callback on every segment that arrives, armed or not.
//! Bytes a socket did not take are written by the drainer thread, which
//! polls only connections that have such a backlog.

use super::conn::{Conn, Dispatch, Job, PumpEnd, Watcher};
use crate::sys::{self, Epoll, EpollEvents, EventFd};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const WAKE: u64 = 0;
/// How a connection is watched: oneshot, re-armed by whoever reads it to empty.
const WATCH: u32 = sys::EPOLLIN | sys::EPOLLRDHUP | sys::EPOLLONESHOT;
const RESCUE_AFTER: Duration = Duration::from_millis(2);
/// A connection left to a caller is watched again once the caller has
/// been gone this long (it is checked every millisecond). A caller that
/// gives up reading (to park) hands it back at once.
const DRIVER_QUIET_NS: u64 = 200_000;
/// After this long without events, large buffers kept for reuse go back.
const IDLE: Duration = Duration::from_millis(250);
/// At most this many connections are read directly while spinning.
const HOT_MAX: usize = 8;

#[derive(Default)]
struct Slab {
    conns: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
}

pub struct Reactor<D: Dispatch> {
    owner: Weak<D>,
    epoll: Epoll,
    wake: EventFd,
    conns: Mutex<Slab>,
    /// The role's generation: a thread whose generation is stale ends.
    gen: AtomicU64,
    /// The number of the role holder's current job (from `jobs`), 0 when
    /// none runs. The rescuer times how long one number stays: no clock is
    /// read per job.
    running_job: AtomicU64,
    /// Jobs started, ever.
    jobs: AtomicU64,
    /// The connection the role holder is reading.
    current: Mutex<Option<Arc<Conn>>>,
    deferred: Mutex<Vec<Arc<Conn>>>,
    look_now: Mutex<Vec<Arc<Conn>>>,
    /// The connections the role's thread has yet to serve in its current
    /// batch (their epoll events are consumed): the rescuer hands them on
    /// with the role, or nobody would look at them again.
    batch: Mutex<std::collections::VecDeque<Arc<Conn>>>,
    /// Connections with traffic just now, read directly while the role
    /// holder spins (not through epoll: no re-arm per message).
    hot: Mutex<Vec<Arc<Conn>>>,
    started: AtomicBool,
    stopped: AtomicBool,
    epoch: Instant,
    rescuer: Mutex<Option<std::thread::Thread>>,
    rescuer_idle: AtomicBool,
    drainer: Drainer,
    /// Threads that ever held the role (for tests and figures).
    pub threads_started: AtomicU32,
}

/// The system resources of a reactor, made before its owner exists.
pub struct ReactorParts {
    epoll: Epoll,
    wake: EventFd,
    drainer: Drainer,
}

impl ReactorParts {
    pub fn new() -> std::io::Result<ReactorParts> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new()?;
        epoll.add(wake.fd(), WAKE, sys::EPOLLIN)?;
        Ok(ReactorParts { epoll, wake, drainer: Drainer::new()? })
    }
}

impl<D: Dispatch> Reactor<D> {
    pub fn new(owner: Weak<D>, parts: ReactorParts) -> Reactor<D> {
        let ReactorParts { epoll, wake, drainer } = parts;
        Reactor {
            owner,
            epoll,
            wake,
            conns: Mutex::new(Slab::default()),
            gen: AtomicU64::new(0),
            running_job: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            current: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            look_now: Mutex::new(Vec::new()),
            batch: Mutex::new(std::collections::VecDeque::new()),
            hot: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            epoch: Instant::now(),
            rescuer: Mutex::new(None),
            rescuer_idle: AtomicBool::new(true),
            drainer,
            threads_started: AtomicU32::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Watches `conn` from now on; it must not be read by anyone else
    /// but callers waiting for replies.
    pub fn register(self: &Arc<Self>, conn: &Arc<Conn>) {
        let token = {
            let mut s = self.conns.lock();
            let idx = match s.free.pop() {
                Some(i) => i,
                None => {
                    s.conns.push(None);
                    s.conns.len() - 1
                }
            };
            s.conns[idx] = Some(conn.clone());
            idx as u64 + 1
        };
        conn.token.store(token, Ordering::Release);
        let weak: Weak<dyn Watcher> = Arc::downgrade(self) as Weak<dyn Watcher>;
        let _ = conn.watcher.set(weak);
        if !self.started.swap(true, Ordering::AcqRel) {
            self.spawn_role(0);
            self.start_rescuer();
        }
        // Frames may already be buffered (read during setup): look now.
        let added = {
            let mut in_epoll = conn.in_epoll.lock();
            *in_epoll = self.epoll.add(conn.fd(), token, WATCH).is_ok();
            *in_epoll
        };
        if !added {
            self.forget(conn);
            if let Some(owner) = self.owner.upgrade() {
                conn.fail(&owner, None);
            }
            return;
        }
        self.rearm(conn);
    }

    /// Stops the reactor's threads; connections are dropped.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.signal();
        self.drainer.stop();
        if let Some(t) = self.rescuer.lock().as_ref() {
            t.unpark();
        }
    }

    /// Connections currently watched.
    pub fn watched(&self) -> usize {
        self.conns.lock().conns.iter().filter(|c| c.is_some()).count()
    }

    fn spawn_role(self: &Arc<Self>, gen: u64) {
        let r = self.clone();
        self.threads_started.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new().name("cluster-reactor".into()).stack_size(512 * 1024).spawn(move || r.run(gen)).expect("spawn reactor thread");
    }

    /// Watches `conn` through epoll again (oneshot): re-arms it, or adds
    /// it back if it was taken out.
    fn arm(&self, conn: &Conn) {
        let mut in_epoll = conn.in_epoll.lock();
        // Read under the lock: `forget` clears the token before it takes it.
        let token = conn.token.load(Ordering::Acquire);
        if token == 0 || conn.is_failed() {
            return;
        }
        if *in_epoll {
            let _ = self.epoll.modify(conn.fd(), token, WATCH);
        } else {
            // Level-triggered at the add: bytes that came meanwhile are reported.
            *in_epoll = self.epoll.add(conn.fd(), token, WATCH).is_ok();
        }
    }

    /// Takes `conn` out of epoll while it is read directly (hot, or by a
    /// driver), so its arriving segments skip epoll's wake-up callback.
    fn unwatch(&self, conn: &Conn) {
        let mut in_epoll = conn.in_epoll.lock();
        if *in_epoll {
            self.epoll.delete(conn.fd());
            *in_epoll = false;
        }
    }

    /// Leaves `conn` to the caller reading it, out of epoll, until the
    /// caller is gone (`left_to_caller`).
    fn defer(&self, conn: &Arc<Conn>) {
        // Also when already listed: it may have been armed since.
        self.unwatch(conn);
        if !conn.deferred.swap(true, Ordering::AcqRel) {
            self.deferred.lock().push(conn.clone());
        }
    }

    fn lookup(&self, token: u64) -> Option<Arc<Conn>> {
        self.conns.lock().conns.get(token as usize - 1).and_then(|c| c.clone())
    }

    fn run(self: Arc<Self>, gen: u64) {
        let mut evs = EpollEvents::new(64);
        let mut last_traffic: Option<Instant> = None;
        let mut spins = 0u64;
        loop {
            if self.gen.load(Ordering::Acquire) != gen {
                return;
            }
            let Some(owner) = self.owner.upgrade() else { return self.shut() };
            if self.stopped.load(Ordering::Acquire) || owner.is_shutting_down() {
                return self.shut();
            }
            let spin = owner.spin();
            // Connections to look at now, and those callers left a while ago.
            let mut work: Vec<Arc<Conn>> = std::mem::take(&mut *self.look_now.lock());
            self.deferred.lock().retain(|c| {
                let quiet = !left_to_caller(c);
                if quiet || c.is_closed() {
                    c.deferred.store(false, Ordering::Release);
                    work.push(c.clone());
                }
                !(quiet || c.is_closed())
            });
            if self.serve_batch(&owner, work, gen, false, &mut last_traffic) {
                return;
            }
            let mut spinning = last_traffic.is_some_and(|t| t.elapsed() < spin);
            if spinning {
                // Read the hot connections directly; epoll only now and then.
                // Copied out (serving one may change the list), on the stack:
                // no allocation per round of the spin.
                let mut hot: [Option<Arc<Conn>>; HOT_MAX] = Default::default();
                let count = {
                    let list = self.hot.lock();
                    for (to, c) in hot.iter_mut().zip(list.iter()) {
                        *to = Some(c.clone());
                    }
                    list.len().min(HOT_MAX)
                };
                for c in hot.iter().flatten() {
                    if c.drivers.load(Ordering::Acquire) > 0 {
                        continue;
                    }
                    match self.serve(&owner, c, gen, true) {
                        Served::Replaced => return,
                        Served::Traffic => last_traffic = Some(Instant::now()),
                        Served::Idle => {}
                    }
                }
                spins += 1;
                if count > 0 && !spins.is_multiple_of(8) {
                    std::hint::spin_loop();
                    continue;
                }
            } else {
                self.cool_down();
            }
            spinning = spinning && last_traffic.is_some_and(|t| t.elapsed() < spin);
            if !spinning {
                // Never block with a connection nobody watches.
                self.cool_down();
            }
            let timeout = if spinning {
                Some(Duration::ZERO)
            } else if !self.deferred.lock().is_empty() {
                Some(Duration::from_millis(1))
            } else {
                Some(IDLE)
            };
            drop(owner);
            let n = match self.epoll.wait(&mut evs, timeout) {
                Ok(n) => n,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if n == 0 {
                if spinning {
                    // Let a thread waiting for this CPU run (on a machine
                    // with fewer cores than spinning threads, the peer this
                    // thread waits for may be the one).
                    sys::spin_yield(spins as u32);
                } else if timeout == Some(IDLE) {
                    self.idle();
                }
                continue;
            }
            let Some(owner) = self.owner.upgrade() else { return self.shut() };
            let mut ready = Vec::with_capacity(n);
            for i in 0..n {
                let (token, _bits) = evs.get(i);
                if token == WAKE {
                    self.wake.drain();
                    continue;
                }
                let Some(conn) = self.lookup(token) else { continue };
                if conn.drivers.load(Ordering::Acquire) > 0 {
                    self.defer(&conn);
                    continue;
                }
                ready.push(conn);
            }
            if self.serve_batch(&owner, ready, gen, true, &mut last_traffic) {
                return;
            }
        }
    }

    /// Serves `conns` in turn, those not served yet waiting in `batch`
    /// (where the rescuer finds them if a job holds this thread). True
    /// when the role was handed on meanwhile.
    fn serve_batch(self: &Arc<Self>, owner: &Arc<D>, conns: Vec<Arc<Conn>>, gen: u64, may_stay_hot: bool, last_traffic: &mut Option<Instant>) -> bool {
        if conns.is_empty() {
            return false;
        }
        self.batch.lock().extend(conns);
        loop {
            let Some(c) = self.batch.lock().pop_front() else { return false };
            match self.serve(owner, &c, gen, may_stay_hot) {
                Served::Replaced => return true,
                Served::Traffic => *last_traffic = Some(Instant::now()),
                Served::Idle => {}
            }
        }
    }

    /// Spinning is over: the hot connections go back to epoll (or to the
    /// callers reading them).
    fn cool_down(&self) {
        let hot: Vec<Arc<Conn>> = std::mem::take(&mut *self.hot.lock());
        for c in hot {
            if c.drivers.load(Ordering::Acquire) > 0 {
                self.defer(&c);
            } else {
                self.arm(&c);
            }
        }
    }

    /// Reads `conn` to empty, running its jobs here, then watches it again:
    /// through epoll, or (`may_stay_hot`, after traffic) directly while
    /// this thread spins.
    fn serve(self: &Arc<Self>, owner: &Arc<D>, conn: &Arc<Conn>, gen: u64, may_stay_hot: bool) -> Served {
        if conn.is_failed() {
            self.forget(conn);
            self.hot.lock().retain(|c| !Arc::ptr_eq(c, conn));
            return Served::Idle;
        }
        *self.current.lock() = Some(conn.clone());
        let mut frames = 0usize;
        let end = conn.pump(owner, &mut frames, &mut |_, job| self.run_job(job, gen));
        match end {
            PumpEnd::Replaced => return Served::Replaced,
            PumpEnd::Empty => {
                *self.current.lock() = None;
                let mut hot = self.hot.lock();
                let is_hot = hot.iter().any(|c| Arc::ptr_eq(c, conn));
                if may_stay_hot && left_to_caller(conn) {
                    // A caller read it just now and is likely back with its
                    // next call: left to it, as while it reads. Armed, the
                    // socket would wake this thread for each reply the
                    // caller reads, preempting a spinning thread each time.
                    hot.retain(|c| !Arc::ptr_eq(c, conn));
                    drop(hot);
                    self.defer(conn);
                } else if !is_hot && may_stay_hot && frames > 0 && hot.len() < HOT_MAX {
                    hot.push(conn.clone());
                    drop(hot);
                    self.unwatch(conn);
                } else if !is_hot {
                    drop(hot);
                    self.arm(conn);
                }
            }
            PumpEnd::Busy => {
                *self.current.lock() = None;
                self.hot.lock().retain(|c| !Arc::ptr_eq(c, conn));
                self.defer(conn);
            }
            PumpEnd::Closed => {
                *self.current.lock() = None;
                self.hot.lock().retain(|c| !Arc::ptr_eq(c, conn));
            }
        }
        if frames > 0 {
            Served::Traffic
        } else {
            Served::Idle
        }
    }

    /// Runs a job under the role; false when the role was handed on meanwhile.
    fn run_job(&self, job: Job, gen: u64) -> bool {
        let job_number = self.jobs.fetch_add(1, Ordering::Relaxed) + 1;
        self.running_job.store(job_number, Ordering::Release);
        if self.rescuer_idle.load(Ordering::Acquire) {
            if let Some(t) = self.rescuer.lock().as_ref() {
                t.unpark();
            }
        }
        job();
        // Clear only this job's mark: a holder that was rescued must not
        // clear the mark of the job its successor runs now (that job would
        // then look rescued too, and its thread leave with nobody taking
        // the role).
        let mine = self.running_job.compare_exchange(job_number, 0, Ordering::AcqRel, Ordering::Acquire).is_ok();
        mine && self.gen.load(Ordering::Acquire) == gen
    }

    /// Idle for a while: give back the large-payload buffers kept for reuse.
    fn idle(&self) {
        let conns: Vec<Arc<Conn>> = self.conns.lock().conns.iter().flatten().cloned().collect();
        for c in conns {
            c.release_spare();
        }
    }

    fn shut(&self) {
        let all: Vec<Arc<Conn>> = {
            let mut s = self.conns.lock();
            s.free.clear();
            s.conns.drain(..).flatten().collect()
        };
        for c in &all {
            self.unwatch(c);
        }
        self.deferred.lock().clear();
        self.look_now.lock().clear();
        self.batch.lock().clear();
        self.hot.lock().clear();
        *self.current.lock() = None;
        drop(all);
    }

    fn start_rescuer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let t = std::thread::Builder::new()
            .name("cluster-rescue".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                // The job seen running, and since when; the job count, and
                // when it last changed.
                let (mut seen, mut seen_at) = (0u64, 0u64);
                let (mut count, mut count_at) = (0u64, 0u64);
                loop {
                    let Some(r) = weak.upgrade() else { return };
                    if r.stopped.load(Ordering::Acquire) {
                        return;
                    }
                    let running = r.running_job.load(Ordering::Acquire);
                    let now = r.now_ns();
                    let jobs = r.jobs.load(Ordering::Relaxed);
                    if jobs != count {
                        (count, count_at) = (jobs, now);
                    }
                    if running != seen {
                        (seen, seen_at) = (running, now);
                    }
                    if running == 0 {
                        let quiet = now.saturating_sub(count_at) > 100_000_000;
                        if quiet {
                            r.rescuer_idle.store(true, Ordering::Release);
                            if r.running_job.load(Ordering::Acquire) == 0 {
                                drop(r);
                                std::thread::park_timeout(Duration::from_millis(500));
                                continue;
                            }
                        }
                    } else if now.saturating_sub(seen_at) >= RESCUE_AFTER.as_nanos() as u64 * 3 / 4
                        && r.running_job.compare_exchange(running, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
                    {
                        // Still the job a tick before saw (3/4 of a tick: a
                        // park may end a little early), 2-4 ms into it: the
                        // holder is stuck in a long job, a fresh thread takes the role.
                        let gen = r.gen.fetch_add(1, Ordering::AcqRel) + 1;
                        if let Some(c) = r.current.lock().take() {
                            c.flush();
                            r.look_now.lock().push(c);
                        }
                        // The stuck thread's hot connections are nobody's now,
                        // nor the rest of its batch (their events are spent).
                        let hot: Vec<Arc<Conn>> = std::mem::take(&mut *r.hot.lock());
                        r.look_now.lock().extend(hot);
                        let rest: Vec<Arc<Conn>> = r.batch.lock().drain(..).collect();
                        r.look_now.lock().extend(rest);
                        r.spawn_role(gen);
                    }
                    r.rescuer_idle.store(false, Ordering::Release);
                    drop(r);
                    std::thread::park_timeout(RESCUE_AFTER);
                }
            })
            .expect("spawn rescuer thread");
        *self.rescuer.lock() = Some(t.thread().clone());
    }
}

/// Whether a caller reads `conn`, or read it less than `DRIVER_QUIET_NS`
/// ago and is likely back with its next call.
fn left_to_caller(conn: &Conn) -> bool {
    conn.drivers.load(Ordering::Acquire) > 0 || conn.driven_lately(DRIVER_QUIET_NS)
}

enum Served {
    Traffic,
    Idle,
    Replaced,
}

impl<D: Dispatch> Watcher for Reactor<D> {
    fn rearm(&self, conn: &Arc<Conn>) {
        self.look_now.lock().push(conn.clone());
        self.wake.signal();
    }
    fn want_write(&self, conn: &Arc<Conn>) {
        self.drainer.add(conn);
    }
    fn forget(&self, conn: &Conn) {
        let token = conn.token.swap(0, Ordering::AcqRel);
        if token == 0 {
            return;
        }
        self.unwatch(conn);
        let mut s = self.conns.lock();
        let idx = token as usize - 1;
        if let Some(slot) = s.conns.get_mut(idx) {
            let old = slot.take();
            s.free.push(idx);
            drop(s);
            drop(old);
        }
    }
}

/// Writes the bytes sockets did not take, when they have room. Its thread
/// polls only the connections with such a backlog, and exists only while
/// there are some.
struct Drainer {
    shared: Arc<DrainShared>,
}

struct DrainShared {
    conns: Mutex<Vec<Arc<Conn>>>,
    wake: EventFd,
    running: AtomicBool,
    stopped: AtomicBool,
    /// Times the drainer polled (for tests).
    rounds: AtomicU64,
}

impl Drainer {
    fn new() -> std::io::Result<Drainer> {
        Ok(Drainer {
            shared: Arc::new(DrainShared {
                conns: Mutex::new(Vec::new()),
                wake: EventFd::new()?,
                running: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                rounds: AtomicU64::new(0),
            }),
        })
    }

    fn add(&self, conn: &Arc<Conn>) {
        let s = &self.shared;
        let added = {
            let mut c = s.conns.lock();
            let added = !c.iter().any(|x| Arc::ptr_eq(x, conn));
            if added {
                c.push(conn.clone());
            }
            added
        };
        // Only a connection it does not poll yet wakes the drainer: its
        // own flush of a full socket lands here, and a wake-up then would
        // make it poll again at once, spinning while the peer reads nothing.
        if added {
            s.wake.signal();
        }
        if !s.running.swap(true, Ordering::AcqRel) {
            let s = s.clone();
            std::thread::Builder::new().name("cluster-drain".into()).stack_size(128 * 1024).spawn(move || Drainer::run(&s)).expect("spawn drain thread");
        }
    }

    fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake.signal();
    }

    fn run(s: &DrainShared) {
        loop {
            let conns: Vec<Arc<Conn>> = {
                let mut c = s.conns.lock();
                // TLS records the socket did not take wait in the session,
                // with nothing queued: they are a backlog too.
                c.retain(|x| !x.is_closed() && (x.queued_bytes() > 0 || x.cipher_waiting()));
                if c.is_empty() || s.stopped.load(Ordering::Acquire) {
                    c.clear();
                    s.running.store(false, Ordering::Release);
                    return;
                }
                c.clone()
            };
            s.rounds.fetch_add(1, Ordering::Relaxed);
            let mut fds = vec![s.wake.fd()];
            fds.extend(conns.iter().map(|c| c.fd()));
            let _ = sys::poll_many_out(&fds, 1, Some(Duration::from_millis(100)));
            s.wake.drain();
            for c in &conns {
                c.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Regressions for the races the model tests (`tests/model_conn.rs`)
    //! found, each forced here on real sockets.
    use super::*;
    use crate::error::Error;
    use crate::net::Flusher;
    use crate::wire::{self, Header, Kind};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    fn pair() -> (Arc<Conn>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Conn::new(a, 1 << 30, Flusher::start()).unwrap(), b)
    }

    fn frame(kind: Kind, op: u16, id: u64) -> Vec<u8> {
        Header::new(kind, 1, op, id).encode().to_vec()
    }

    /// The rest of a test dispatcher: nothing on close, a 50 us spin.
    macro_rules! dispatch_rest {
        () => {
            fn on_closed(self: &Arc<Self>, _conn: &Arc<Conn>, _why: Option<Error>) {}
            fn spin(&self) -> Duration {
                Duration::from_micros(50)
            }
            fn is_shutting_down(&self) -> bool {
                false
            }
        };
    }

    /// Hands backlogs to a drainer of its own.
    struct ToDrainer(Drainer);

    impl Watcher for ToDrainer {
        fn rearm(&self, _conn: &Arc<Conn>) {}
        fn want_write(&self, conn: &Arc<Conn>) {
            self.0.add(conn);
        }
        fn forget(&self, _conn: &Conn) {}
    }

    /// Model: `finds_pre_fix_drainer_waking_itself`. The drainer's own
    /// flush of a full socket signalled its wake-up, so it polled again at
    /// once: a busy loop for as long as the peer read nothing.
    #[test]
    fn the_drainer_sleeps_while_the_socket_stays_full() {
        let (c, _peer) = pair();
        let w = Arc::new(ToDrainer(Drainer::new().unwrap()));
        let weak: Weak<dyn Watcher> = Arc::downgrade(&w) as Weak<dyn Watcher>;
        let _ = c.watcher.set(weak);
        // The peer reads nothing: responses (which never wait) fill the
        // socket, however far the kernel lets its buffers grow, and leave
        // a backlog for the drainer.
        let payload = vec![0u8; 1 << 20];
        let t = Instant::now();
        while c.queued_bytes() < 32 << 20 {
            assert!(t.elapsed() < Duration::from_secs(10), "no backlog");
            c.send_nowait(Header::new(Kind::Response, 1, 1, 1), &[], &payload).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let before = w.0.shared.rounds.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        let rounds = w.0.shared.rounds.load(Ordering::Relaxed) - before;
        assert!(c.queued_bytes() > 0, "the socket took everything: nothing tested");
        w.0.stop();
        // It polls every 100 ms without progress; a spinning one polls
        // hundreds of thousands of times.
        assert!(rounds < 50, "the drainer polled {rounds} times in 300 ms with the socket full");
    }

    /// Review finding: a TLS frame taken whole by the session while the
    /// socket took only part of its ciphertext left nothing queued, and the
    /// drainer dropped the connection: the frame's end waited for
    /// unrelated traffic (a worker-to-worker connection, forever).
    #[test]
    fn the_drainer_keeps_a_tls_connection_until_its_ciphertext_is_out() {
        use std::os::unix::io::AsRawFd;
        let (client, a, server, b) = crate::net::tls::tests::pair(b"k", b"k");
        let client = client.unwrap();
        sys::set_socket_buffers(a.as_raw_fd(), 32 << 10).unwrap();
        sys::set_socket_buffers(b.as_raw_fd(), 32 << 10).unwrap();
        let c = Conn::with_tls(b, 1 << 30, Flusher::start(), Some(server)).unwrap();
        let w = Arc::new(ToDrainer(Drainer::new().unwrap()));
        let weak: Weak<dyn Watcher> = Arc::downgrade(&w) as Weak<dyn Watcher>;
        let _ = c.watcher.set(weak);
        for size in [100_000usize, 300_000, 1 << 20] {
            let payload = vec![7u8; size];
            c.send_nowait(Header::new(Kind::Response, 1, 1, 1), &[], &payload).unwrap();
            let want = wire::HEADER_LEN + size;
            let (mut got, mut buf) = (0usize, vec![0u8; 16 << 10]);
            let t = Instant::now();
            while got < want {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "{size} B: stalled at {got} of {want} bytes (queued {}, TLS records waiting: {})",
                    c.queued_bytes(),
                    c.cipher_waiting()
                );
                match client.read(a.as_raw_fd(), &mut buf).unwrap() {
                    Some(0) => panic!("closed"),
                    Some(n) => got += n,
                    None => {
                        sys::poll_in(a.as_raw_fd(), Some(Duration::from_millis(20))).unwrap();
                    }
                }
            }
            assert_eq!(got, want);
        }
        w.0.stop();
    }

    /// One side sends once, the other waits for it.
    type Signal = (Mutex<Option<mpsc::Sender<()>>>, Mutex<Option<mpsc::Receiver<()>>>);

    /// Calls: op 1 waits until op 2 has started, op 2 until op 1 has
    /// ended, op 3 is noted.
    struct Calls {
        b_started: Signal,
        a_ended: Signal,
        third: AtomicBool,
    }

    impl Dispatch for Calls {
        fn on_frame(self: &Arc<Self>, _conn: &Arc<Conn>, frame: wire::Frame) -> Option<Job> {
            let me = self.clone();
            match frame.header.op {
                1 => Some(Box::new(move || {
                    let rx = me.b_started.1.lock().take().unwrap();
                    rx.recv_timeout(Duration::from_secs(5)).expect("call 2 never started");
                    me.a_ended.0.lock().take().unwrap().send(()).unwrap();
                })),
                2 => Some(Box::new(move || {
                    me.b_started.0.lock().take().unwrap().send(()).unwrap();
                    let rx = me.a_ended.1.lock().take().unwrap();
                    rx.recv_timeout(Duration::from_secs(5)).expect("call 1 never ended");
                    // Call 1's thread has cleared its mark by now.
                    std::thread::sleep(Duration::from_millis(20));
                })),
                _ => {
                    self.third.store(true, Ordering::SeqCst);
                    None
                }
            }
        }
        dispatch_rest!();
    }

    /// Model: `finds_pre_fix_job_since_clobbered`. A rescued holder ending
    /// its call while its successor ran another cleared the successor's
    /// mark (`running_job.swap(0)`); the successor then took itself for
    /// replaced and left, and no thread held the role: nothing was read
    /// any more.
    #[test]
    fn a_rescued_call_ending_does_not_end_the_reactor() {
        let (b_tx, b_rx) = mpsc::channel();
        let (a_tx, a_rx) = mpsc::channel();
        let calls = Arc::new(Calls {
            b_started: (Mutex::new(Some(b_tx)), Mutex::new(Some(b_rx))),
            a_ended: (Mutex::new(Some(a_tx)), Mutex::new(Some(a_rx))),
            third: AtomicBool::new(false),
        });
        let r = Arc::new(Reactor::new(Arc::downgrade(&calls), ReactorParts::new().unwrap()));
        let (c, mut peer) = pair();
        r.register(&c);
        // Call 1 runs on the role's thread until call 2 has started, which
        // only a second thread can do: the rescuer hands the role on.
        peer.write_all(&frame(Kind::Request, 1, 1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        peer.write_all(&frame(Kind::Request, 2, 2)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        peer.write_all(&frame(Kind::Oneway, 3, 3)).unwrap();
        let t = Instant::now();
        while !calls.third.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(10), "nothing is read any more: no thread holds the reactor's role");
            std::thread::sleep(Duration::from_millis(5));
        }
        r.stop();
    }

    /// Jobs: op 4 says it started and runs 30 ms; op 5 runs 50 ms, then
    /// is counted.
    struct Slow {
        started: Mutex<Option<mpsc::Sender<()>>>,
        done: std::sync::atomic::AtomicU32,
    }

    impl Dispatch for Slow {
        fn on_frame(self: &Arc<Self>, _conn: &Arc<Conn>, frame: wire::Frame) -> Option<Job> {
            let me = self.clone();
            Some(match frame.header.op {
                4 => Box::new(move || {
                    if let Some(tx) = me.started.lock().take() {
                        let _ = tx.send(());
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }),
                _ => Box::new(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    me.done.fetch_add(1, Ordering::SeqCst);
                }),
            })
        }
        dispatch_rest!();
    }

    /// Two connections ready in one epoll batch, the first running a long
    /// job: the rescuer handed on the role but not the rest of the batch,
    /// whose events were spent, so the second connection was never read
    /// again (found by tests/dicts.rs: a worker stopped reading the
    /// connections of two peers for good).
    #[test]
    fn the_rest_of_a_batch_goes_on_with_the_role() {
        let (tx, rx) = mpsc::channel();
        let slow = Arc::new(Slow { started: Mutex::new(Some(tx)), done: Default::default() });
        let r = Arc::new(Reactor::new(Arc::downgrade(&slow), ReactorParts::new().unwrap()));
        let (c0, mut p0) = pair();
        let (c1, mut p1) = pair();
        let (c2, mut p2) = pair();
        for c in [&c0, &c1, &c2] {
            r.register(c);
        }
        std::thread::sleep(Duration::from_millis(20));
        // While a job holds the role's thread, both become readable: the
        // thread that takes the role finds them in one batch.
        p0.write_all(&frame(Kind::Request, 4, 1)).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).expect("the first job never started");
        p1.write_all(&frame(Kind::Request, 5, 2)).unwrap();
        p2.write_all(&frame(Kind::Request, 5, 3)).unwrap();
        let t = Instant::now();
        while slow.done.load(Ordering::SeqCst) < 2 {
            assert!(t.elapsed() < Duration::from_secs(5), "a connection of the batch was never read: {} of 2 jobs ran", slow.done.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(5));
        }
        r.stop();
    }

    /// Counts the frames it is given.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicU32);

    impl Dispatch for Count {
        fn on_frame(self: &Arc<Self>, _conn: &Arc<Conn>, _frame: wire::Frame) -> Option<Job> {
            self.0.fetch_add(1, Ordering::SeqCst);
            None
        }
        dispatch_rest!();
    }

    /// A connection a caller keeps reading (one call after another) stays
    /// the caller's: the reactor leaves it until the caller has been gone
    /// `DRIVER_QUIET_NS` (200 us). It compared its own clock with the
    /// connection's, whose epoch is later, so a connection made after the
    /// reactor always looked quiet: re-armed at once, it woke the reactor
    /// for replies its caller read (a wake-up and a preempted spinner per
    /// call).
    #[test]
    fn a_connection_its_caller_keeps_reading_stays_the_callers() {
        let count = Arc::new(Count::default());
        let r = Arc::new(Reactor::new(Arc::downgrade(&count), ReactorParts::new().unwrap()));
        // The reactor's clock runs well ahead of the connection's.
        std::thread::sleep(Duration::from_millis(50));
        let (c, mut peer) = pair();
        r.register(&c);
        std::thread::sleep(Duration::from_millis(20));
        let mut conclusive = 0;
        for round in 1..=20u64 {
            // A caller is reading: the frame that comes is left to it.
            c.drivers.fetch_add(1, Ordering::AcqRel);
            peer.write_all(&frame(Kind::Oneway, 3, round)).unwrap();
            let t = Instant::now();
            while !c.deferred.load(Ordering::Acquire) {
                assert!(t.elapsed() < Duration::from_secs(5), "the reactor never looked at the connection");
                std::thread::sleep(Duration::from_micros(100));
            }
            // Its call ends, and (as if more followed without a pause) it
            // reads on for the next 20 ms: its last read stamped ahead, so
            // that no stall of this thread makes the caller look gone. (Less
            // than the clocks' 70 ms offset: a reactor reading the stamp
            // against its own clock takes the caller for gone at once.)
            let until = Instant::now() + Duration::from_millis(20);
            c.last_drive.store(c.now_ns() + 20_000_000, Ordering::Relaxed);
            c.drivers.fetch_sub(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_millis(5));
            let read_meanwhile = count.0.load(Ordering::SeqCst) >= round as u32;
            // Checked well inside the window (a stalled test thread may be late).
            let in_window = Instant::now() + Duration::from_nanos(DRIVER_QUIET_NS) < until;
            // The caller is gone: the reactor reads the frame.
            let t = Instant::now();
            while count.0.load(Ordering::SeqCst) < round as u32 {
                assert!(t.elapsed() < Duration::from_secs(5), "the frame was never read once the caller left");
                std::thread::sleep(Duration::from_millis(1));
            }
            if in_window {
                assert!(!read_meanwhile, "round {round}: the reactor read a connection its caller was still reading");
                conclusive += 1;
                if conclusive == 3 {
                    break;
                }
            }
        }
        assert!(conclusive > 0, "this thread never looked within 20 ms: nothing tested");
        r.stop();
    }

    /// A caller whose wait ended is taken to be back soon; one that gave
    /// up reading (to park) is not, so the reactor reads for it at once.
    #[test]
    fn a_caller_that_gives_up_hands_the_connection_back() {
        let count = Arc::new(Count::default());
        let r = Arc::new(Reactor::new(Arc::downgrade(&count), ReactorParts::new().unwrap()));
        let (c, _peer) = pair();
        r.register(&c);
        assert!(c.drive(&count, Duration::from_millis(5), &|| true));
        assert!(c.driven_lately(DRIVER_QUIET_NS), "a finished wait counts as a caller about to come back");
        assert!(!c.drive(&count, Duration::from_micros(200), &|| false));
        assert!(!c.driven_lately(DRIVER_QUIET_NS), "a caller that gave up still holds the connection");
        r.stop();
    }
}
