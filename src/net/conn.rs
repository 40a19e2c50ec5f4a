//! Connections. Each authenticated TCP connection has a reader role that
//! one thread holds at a time:
//!
//! - normally its background reader thread, which spins briefly on the
//!   socket after traffic and then blocks in `poll`;
//! - a caller waiting for a reply on this connection, which reads the
//!   socket itself instead of parking, so a round trip needs no wake-up;
//! - the background reader runs a short incoming call itself rather than
//!   waking another thread, and a rescuer thread takes over the reading
//!   when such a call runs long.
//!
//! Frames are dispatched in arrival order while the reader role is held;
//! writers share a mutex and write straight from the caller's buffers.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::wire::{self, FrameReader, Header, ReadOutcome};
use parking_lot::{Condvar, Mutex};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the owner of connections does with frames and lost connections.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one frame; runs under the reader role, so it must be quick.
    /// May return a job to run after the role is released.
    fn on_frame(self: &Arc<Self>, conn: &Arc<Conn>, frame: wire::Frame) -> Option<Job>;
    fn on_closed(self: &Arc<Self>, conn: &Arc<Conn>, why: Option<Error>);
    fn spin(&self) -> Duration;
    fn is_shutting_down(&self) -> bool;
    fn rescuer(&self) -> &Rescuer;
}

/// Work released by the reader role, run on the same thread.
pub type Job = Box<dyn FnOnce() + Send>;

pub struct Conn {
    stream: TcpStream,
    fd: RawFd,
    /// The process at the other end; 0 until it is known.
    pub peer: AtomicU32,
    /// The largest message the other end accepts (told at connection setup).
    pub peer_max: AtomicU64,
    /// Held while writing; holds responses corked while a batch of
    /// requests is served, written together at the end of the batch.
    write: Mutex<Vec<u8>>,
    has_corked: AtomicBool,
    /// The background reader is spinning on this connection and will write
    /// corked requests within microseconds: senders may cork small ones.
    reader_active: AtomicBool,
    read: Mutex<FrameReader>,
    drivers: AtomicU32,
    gate: Mutex<()>,
    gate_cv: Condvar,
    closed: AtomicBool,
    /// When the background reader started running a job (ns since `epoch`), 0 when not.
    job_since: AtomicU64,
    reader_gen: AtomicU64,
    epoch: Instant,
    /// When a request was last sent (ns since `epoch`): back-to-back
    /// requests are corked and written together.
    last_send: AtomicU64,
    corked_frames: AtomicU32,
    flusher: Arc<Flusher>,
}

impl Conn {
    pub fn new(stream: TcpStream, max_payload: u64, flusher: Arc<Flusher>) -> Result<Arc<Conn>> {
        stream.set_nonblocking(true).map_err(|e| Error::io("set_nonblocking", e))?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        Ok(Arc::new(Conn {
            stream,
            fd,
            peer: AtomicU32::new(0),
            peer_max: AtomicU64::new(max_payload),
            write: Mutex::new(Vec::new()),
            has_corked: AtomicBool::new(false),
            reader_active: AtomicBool::new(false),
            read: Mutex::new(FrameReader::new(max_payload)),
            drivers: AtomicU32::new(0),
            gate: Mutex::new(()),
            gate_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            job_since: AtomicU64::new(0),
            reader_gen: AtomicU64::new(0),
            epoch: Instant::now(),
            last_send: AtomicU64::new(0),
            corked_frames: AtomicU32::new(0),
            flusher,
        }))
    }

    pub fn peer(&self) -> u32 {
        self.peer.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends one frame. Blocks only while the socket buffer is full.
    pub fn send(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8]) -> Result<()> {
        if self.is_closed() {
            return Err(Error::exited(self.peer()));
        }
        let size = (meta.len() + payload.len()) as u64;
        let max = self.peer_max.load(Ordering::Relaxed);
        if size > max {
            return Err(Error::at(
                ErrorKind::TooLarge,
                self.peer(),
                format!("a message of {size} bytes exceeds the maximum of {max} bytes of process {}", self.peer()),
            ));
        }
        let mut out = self.write.lock();
        // Cork responses to a batch being served, and requests while the
        // reader is spinning here (it writes them out on its next turn):
        // many small messages then cost one write, not one each.
        let mut schedule = false;
        let cork = match header.kind {
            wire::Kind::Response => CORKED.with(|c| c.get()) == Arc::as_ptr(self) as usize,
            _ if self.reader_active.load(Ordering::SeqCst) => true,
            _ => {
                // Back-to-back requests: cork them, and have the flusher
                // write them out shortly unless a wait or a full batch does.
                let now = self.now_ns();
                let last = self.last_send.swap(now, Ordering::Relaxed);
                let back_to_back = last != 0 && now.saturating_sub(last) < BACK_TO_BACK_NS;
                schedule = back_to_back && out.is_empty();
                back_to_back && self.corked_frames.load(Ordering::Relaxed) < CORK_FRAMES
            }
        };
        if cork && size <= CORK_FRAME_MAX && out.len() < CORK_MAX {
            self.has_corked.store(true, Ordering::Release);
            self.corked_frames.fetch_add(1, Ordering::Relaxed);
            if schedule {
                self.flusher.schedule(self);
            }
            let mut h = header;
            h.meta_len = meta.len() as u16;
            h.payload_len = payload.len() as u64;
            out.extend_from_slice(&h.encode());
            out.extend_from_slice(meta);
            out.extend_from_slice(payload);
            return Ok(());
        }
        let r = if out.is_empty() {
            wire::write_frame(self.fd, header, meta, payload)
        } else {
            let r = wire::write_frame_after(self.fd, &out, header, meta, payload);
            out.clear();
            self.has_corked.store(false, Ordering::Release);
            self.corked_frames.store(0, Ordering::Relaxed);
            r
        };
        r.map_err(|e| {
            self.close();
            Error::at(ErrorKind::ProcessExited, self.peer(), format!("worker {} exited ({e})", self.peer()))
        })
    }

    /// Writes corked messages now. The unlocked check is only for threads
    /// that corked themselves; see `flush_locked`.
    pub fn flush(&self) {
        if !self.has_corked.load(Ordering::Acquire) {
            return;
        }
        self.flush_locked();
    }

    /// Writes corked messages after taking the write lock, so a sender that
    /// decided to cork (under that lock) before `reader_active` was cleared
    /// has its message written too.
    fn flush_locked(&self) {
        let mut out = self.write.lock();
        self.has_corked.store(false, Ordering::Release);
        self.corked_frames.store(0, Ordering::Relaxed);
        if out.is_empty() {
            return;
        }
        let r = sys::write_all_vectored(self.fd, &[&out]);
        out.clear();
        if r.is_err() {
            drop(out);
            self.close();
        }
    }

    /// Reads one frame, blocking until `deadline`: for connection setup,
    /// before any reader thread runs.
    pub fn read_frame_blocking(&self, deadline: Instant) -> Result<wire::Frame> {
        let mut reader = self.read.lock();
        loop {
            match reader.read_frame(self.fd)? {
                ReadOutcome::Frame(f) => return Ok(f),
                ReadOutcome::Closed => return Err(Error::new(ErrorKind::Io, "connection closed during setup")),
                ReadOutcome::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::new(ErrorKind::Timeout, "no first message in time"));
                    }
                    sys::poll_in(self.fd, Some(left)).map_err(|e| Error::io("poll", e))?;
                }
            }
        }
    }

    /// Hands a large received payload back for reuse by the next one.
    pub fn recycle(&self, v: Vec<u8>) {
        if v.capacity() >= 1 << 20 {
            if let Some(mut r) = self.read.try_lock() {
                r.recycle(v);
            }
        }
    }

    /// Closes the socket; the reader notices and reports the loss once.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        self.wake_reader();
    }

    fn wake_reader(&self) {
        let _g = self.gate.lock();
        self.gate_cv.notify_all();
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Starts the background reader thread.
    pub fn spawn_reader<D: Dispatch>(self: &Arc<Self>, owner: Arc<D>) {
        let gen = self.reader_gen.load(Ordering::Acquire);
        let conn = self.clone();
        let name = format!("cluster-rd-{}", self.peer());
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || conn.reader_loop(&owner, gen))
            .expect("spawn reader thread");
    }

    fn reader_loop<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, gen: u64) {
        loop {
            if self.reader_gen.load(Ordering::Acquire) != gen {
                return; // replaced by the rescuer while running a job
            }
            if self.is_closed() || owner.is_shutting_down() {
                break;
            }
            if self.drivers.load(Ordering::Acquire) > 0 {
                // A waiting caller reads for now; check back soon.
                let mut g = self.gate.lock();
                if self.drivers.load(Ordering::Acquire) > 0 && !self.is_closed() {
                    self.gate_cv.wait_for(&mut g, Duration::from_millis(1));
                }
                continue;
            }
            let buffered = self.read.try_lock().map(|r| r.may_have_frames()).unwrap_or(false);
            match if buffered { Ok(true) } else { sys::poll_in(self.fd, Some(Duration::from_millis(250))) } {
                Ok(true) => {}
                Ok(false) => {
                    // Idle: give back the large-payload buffer kept for reuse.
                    if let Some(mut r) = self.read.try_lock() {
                        r.release_spare();
                    }
                    continue;
                }
                Err(e) => {
                    self.fail(owner, Some(Error::io("poll", e)));
                    return;
                }
            }
            match self.pump(owner, owner.spin(), Some(gen)) {
                Pump::Continue => {}
                Pump::Replaced => return,
                Pump::Closed(why) => {
                    self.fail(owner, why);
                    return;
                }
            }
        }
        self.fail(owner, None);
    }

    fn fail<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, why: Option<Error>) {
        self.close();
        owner.on_closed(self, why);
    }

    /// Reads and dispatches frames while they come, spinning up to `spin`
    /// after the last one. `gen` is set when called by the background reader.
    fn pump<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, spin: Duration, gen: Option<u64>) -> Pump {
        if gen.is_none() {
            return self.pump_inner(owner, spin, gen);
        }
        self.reader_active.store(true, Ordering::SeqCst);
        let r = self.pump_inner(owner, spin, gen);
        // Stop corking before the last flush: a sender that saw the flag
        // set corked under the write lock, which the flush then takes.
        self.reader_active.store(false, Ordering::SeqCst);
        self.flush_locked();
        r
    }

    fn pump_inner<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, spin: Duration, gen: Option<u64>) -> Pump {
        let mut idle_since: Option<Instant> = None;
        loop {
            self.flush();
            if gen.is_some() && self.drivers.load(Ordering::Acquire) > 0 {
                self.flush();
                return Pump::Continue;
            }
            let job = match self.read_one(owner) {
                Step::Job(job) => job,
                Step::Dispatched => {
                    idle_since = None;
                    continue;
                }
                Step::Busy => {
                    self.flush();
                    return Pump::Continue;
                }
                Step::Empty => {
                    if idle_since.is_none() {
                        self.flush();
                    }
                    let t = *idle_since.get_or_insert_with(Instant::now);
                    if t.elapsed() >= spin {
                        return Pump::Continue;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                Step::Closed(why) => {
                    self.flush();
                    return Pump::Closed(why);
                }
            };
            idle_since = None;
            match gen {
                Some(g) => {
                    // More requests already read: cork the responses and
                    // write them together once the batch is served.
                    let batch = self.read.try_lock().map(|r| r.may_have_frames()).unwrap_or(false);
                    self.job_since.store(self.now_ns(), Ordering::Release);
                    owner.rescuer().job_started();
                    if batch {
                        CORKED.with(|c| c.set(Arc::as_ptr(self) as usize));
                    }
                    self.reader_active.store(false, Ordering::SeqCst);
                    self.flush_locked();
                    job();
                    self.reader_active.store(true, Ordering::SeqCst);
                    CORKED.with(|c| c.set(0));
                    self.job_since.store(0, Ordering::Release);
                    owner.rescuer().job_finished();
                    if self.reader_gen.load(Ordering::Acquire) != g {
                        self.flush();
                        return Pump::Replaced;
                    }
                }
                None => job(),
            }
        }
    }

    fn read_one<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>) -> Step {
        let Some(mut reader) = self.read.try_lock() else {
            return Step::Busy;
        };
        if self.is_closed() {
            return Step::Closed(None);
        }
        match reader.read_frame(self.fd) {
            Ok(ReadOutcome::Frame(f)) => match owner.on_frame(self, f) {
                Some(job) => Step::Job(job),
                None => Step::Dispatched,
            },
            Ok(ReadOutcome::WouldBlock) => Step::Empty,
            Ok(ReadOutcome::Closed) => Step::Closed(None),
            Err(e) => Step::Closed(Some(e)),
        }
    }

    /// Waits for `done()` by reading this connection on the caller's
    /// thread for up to `spin`; false when it is still not done.
    pub fn drive<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, spin: Duration, done: &dyn Fn() -> bool) -> bool {
        self.flush();
        // A caller that waits between requests is not pipelining: its next
        // request goes out at once.
        self.last_send.store(0, Ordering::Relaxed);
        if spin.is_zero() || self.is_closed() {
            return done();
        }
        self.drivers.fetch_add(1, Ordering::AcqRel);
        let start = Instant::now();
        let mut finished = false;
        let mut n = 0u32;
        loop {
            if done() {
                finished = true;
                break;
            }
            match self.read_one(owner) {
                Step::Job(job) => {
                    // Let the background reader serve while this thread runs it.
                    self.drivers.fetch_sub(1, Ordering::AcqRel);
                    self.wake_reader();
                    job();
                    self.drivers.fetch_add(1, Ordering::AcqRel);
                }
                Step::Dispatched => {}
                Step::Closed(why) => {
                    self.drivers.fetch_sub(1, Ordering::AcqRel);
                    self.fail(owner, why);
                    return done();
                }
                Step::Busy | Step::Empty => std::hint::spin_loop(),
            }
            n += 1;
            if n.is_multiple_of(8) && start.elapsed() >= spin {
                break;
            }
        }
        self.drivers.fetch_sub(1, Ordering::AcqRel);
        // Frames read along with the reply may sit in the buffer, where the
        // background reader's poll cannot see them: dispatch them now.
        while self.read.try_lock().map(|r| r.may_have_frames()) == Some(true) {
            match self.read_one(owner) {
                Step::Job(job) => job(),
                Step::Dispatched => {}
                Step::Closed(why) => {
                    self.fail(owner, why);
                    break;
                }
                Step::Busy | Step::Empty => break,
            }
        }
        if !finished {
            self.wake_reader();
        }
        finished
    }

    /// Called by the rescuer: a job has held this connection's reader role
    /// for longer than `after`; start a fresh reader thread.
    fn rescue_if_stuck<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, after: Duration) {
        let since = self.job_since.load(Ordering::Acquire);
        if since == 0 || self.is_closed() {
            return;
        }
        if self.now_ns().saturating_sub(since) < after.as_nanos() as u64 {
            return;
        }
        if self.job_since.compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.flush();
            self.reader_gen.fetch_add(1, Ordering::AcqRel);
            self.spawn_reader(owner.clone());
        }
    }
}

thread_local! {
    /// The connection whose responses this thread corks, while it serves
    /// a batch of requests read together.
    static CORKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

const CORK_FRAME_MAX: u64 = 4096;
const CORK_MAX: usize = 256 * 1024;
const CORK_FRAMES: u32 = 64;
const BACK_TO_BACK_NS: u64 = 20_000;
const FLUSH_DELAY: Duration = Duration::from_micros(30);

/// Writes out requests corked by senders that went on with other work.
/// Its thread sleeps until a sender corks into an empty buffer, so the
/// wake-up is paid once per batch, not per message.
pub struct Flusher {
    queue: Mutex<Vec<std::sync::Weak<Conn>>>,
    thread: Mutex<Option<std::thread::Thread>>,
    stop: AtomicBool,
}

impl Flusher {
    pub fn start() -> Arc<Flusher> {
        let f = Arc::new(Flusher { queue: Mutex::new(Vec::new()), thread: Mutex::new(None), stop: AtomicBool::new(false) });
        let weak = Arc::downgrade(&f);
        let t = std::thread::Builder::new()
            .name("cluster-flush".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                std::thread::park_timeout(Duration::from_millis(500));
                let Some(f) = weak.upgrade() else { return };
                if f.stop.load(Ordering::Acquire) {
                    return;
                }
                loop {
                    if f.queue.lock().is_empty() {
                        break;
                    }
                    std::thread::sleep(FLUSH_DELAY);
                    let conns: Vec<_> = std::mem::take(&mut *f.queue.lock());
                    for c in conns.iter().filter_map(|w| w.upgrade()) {
                        c.flush();
                    }
                }
            })
            .expect("spawn flusher thread");
        *f.thread.lock() = Some(t.thread().clone());
        f
    }

    fn schedule(&self, conn: &Arc<Conn>) {
        self.queue.lock().push(Arc::downgrade(conn));
        if let Some(t) = self.thread.lock().as_ref() {
            t.unpark();
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().as_ref() {
            t.unpark();
        }
    }
}

enum Step {
    Job(Job),
    Dispatched,
    Busy,
    Empty,
    Closed(Option<Error>),
}

enum Pump {
    Continue,
    Replaced,
    Closed(Option<Error>),
}

/// Watches for background readers stuck in a long job. It ticks only
/// while jobs run (and briefly after), so an idle process stays asleep.
pub struct Rescuer {
    running: AtomicU32,
    idle: AtomicBool,
    last_job: Mutex<Instant>,
    thread: Mutex<Option<std::thread::Thread>>,
}

impl Default for Rescuer {
    fn default() -> Self {
        Rescuer {
            running: AtomicU32::new(0),
            idle: AtomicBool::new(true),
            last_job: Mutex::new(Instant::now()),
            thread: Mutex::new(None),
        }
    }
}

const RESCUE_AFTER: Duration = Duration::from_millis(2);

impl Rescuer {
    fn job_started(&self) {
        self.running.fetch_add(1, Ordering::AcqRel);
        if self.idle.load(Ordering::Acquire) {
            if let Some(t) = self.thread.lock().as_ref() {
                t.unpark();
            }
        }
    }

    fn job_finished(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        *self.last_job.lock() = Instant::now();
    }

    /// Runs the rescuer on a new thread; `conns` lists live connections.
    pub fn start<D: Dispatch>(owner: &Arc<D>, conns: impl Fn(&D) -> Vec<Arc<Conn>> + Send + 'static) {
        let weak = Arc::downgrade(owner);
        let handle = std::thread::Builder::new()
            .name("cluster-rescue".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                let Some(owner) = weak.upgrade() else { return };
                if owner.is_shutting_down() {
                    return;
                }
                let r = owner.rescuer();
                let quiet = r.running.load(Ordering::Acquire) == 0
                    && r.last_job.lock().elapsed() > Duration::from_millis(100);
                if quiet {
                    r.idle.store(true, Ordering::Release);
                    if r.running.load(Ordering::Acquire) == 0 {
                        drop(owner);
                        std::thread::park_timeout(Duration::from_millis(500));
                    }
                    continue;
                }
                r.idle.store(false, Ordering::Release);
                for c in conns(&owner) {
                    c.rescue_if_stuck(&owner, RESCUE_AFTER);
                }
                drop(owner);
                std::thread::park_timeout(RESCUE_AFTER);
            })
            .expect("spawn rescuer thread");
        *owner.rescuer().thread.lock() = Some(handle.thread().clone());
    }
}
