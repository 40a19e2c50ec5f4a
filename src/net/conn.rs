//! Connections. Each authenticated TCP connection is read by one thread
//! at a time:
//!
//! - while idle, by the node's reactor (`reactor.rs`), which watches every
//!   idle connection with one epoll and runs a short incoming call itself
//!   rather than waking another thread;
//! - a caller waiting for a reply on this connection, which reads the
//!   socket itself instead of parking, so a round trip needs no wake-up.
//!
//! Frames are dispatched in arrival order by whoever reads. Writers never
//! hold a lock while a write waits: a sender finding the socket full
//! either queues the rest of its frame behind what is queued (responses,
//! library messages: they never wait) or, for a caller's own request,
//! marks itself the writer and waits for room with the lock released
//! (its payload is never copied); others queue behind it meanwhile.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::wire::{self, FrameReader, Header, ReadOutcome};
use parking_lot::{Condvar, Mutex};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// What the owner of connections does with frames and lost connections.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one frame; runs while reading, so it must be quick.
    /// May return a job to run once the frame is out of the way.
    fn on_frame(self: &Arc<Self>, conn: &Arc<Conn>, frame: wire::Frame) -> Option<Job>;
    fn on_closed(self: &Arc<Self>, conn: &Arc<Conn>, why: Option<Error>);
    fn spin(&self) -> Duration;
    fn is_shutting_down(&self) -> bool;
}

/// Work released by a reader, run on the same thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// Who watches a connection while nobody reads it.
pub(crate) trait Watcher: Send + Sync {
    /// Watch `conn` again (it was read to empty, or needs a look now).
    fn rearm(&self, conn: &Arc<Conn>);
    /// `conn` has bytes queued for the socket: wake when it takes them.
    fn want_write(&self, conn: &Arc<Conn>);
    fn forget(&self, conn: &Conn);
}

/// Bytes waiting for the socket, in order: corked frames and the rest of
/// frames the socket did not take.
struct Out {
    buf: Vec<u8>,
    /// A sender owns the socket and waits for room (lock released).
    writer: bool,
    /// Bytes of `buf` the socket did not take: wait for writability.
    backlog: bool,
}

pub struct Conn {
    stream: TcpStream,
    fd: RawFd,
    /// The process at the other end; 0 until it is known.
    pub peer: AtomicU32,
    /// The largest message the other end accepts (told at connection setup).
    pub peer_max: AtomicU64,
    out: Mutex<Out>,
    out_cv: Condvar,
    has_corked: AtomicBool,
    /// A reader is pumping this connection and will flush corked
    /// requests within microseconds: senders may cork small ones.
    reader_active: AtomicBool,
    read: Mutex<FrameReader>,
    pub(crate) drivers: AtomicU32,
    /// When a driver last stopped (ns since `epoch`).
    pub(crate) last_drive: AtomicU64,
    closed: AtomicBool,
    failed: AtomicBool,
    epoch: Instant,
    /// When bytes last arrived (ns since `epoch`): liveness.
    last_recv: AtomicU64,
    /// When a large frame or a backlog last went out in part: the peer
    /// is reading, though it cannot answer a ping queued behind it.
    last_out: AtomicU64,
    /// When a request was last sent (ns since `epoch`): back-to-back
    /// requests are corked and written together.
    last_send: AtomicU64,
    corked_frames: AtomicU32,
    flusher: Arc<Flusher>,
    pub(crate) watcher: OnceLock<Weak<dyn Watcher>>,
    pub(crate) token: AtomicU64,
    /// The reactor left it unwatched because a driver was reading it.
    pub(crate) deferred: AtomicBool,
}

/// How a sender treats a full socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait for room, lock released, writing straight from the caller's buffers.
    Wait,
    /// Never wait: queue what the socket does not take.
    Queue,
}

/// Frames up to this size queue behind a waiting writer instead of waiting.
const QUEUE_MAX: usize = 1 << 20;
/// A waiting sender of a large frame holds back while this much is queued.
const BACKLOG_MAX: usize = 64 << 20;

impl Conn {
    pub fn new(stream: TcpStream, max_payload: u64, flusher: Arc<Flusher>) -> Result<Arc<Conn>> {
        stream.set_nonblocking(true).map_err(|e| Error::io("set_nonblocking", e))?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let epoch = Instant::now();
        Ok(Arc::new(Conn {
            stream,
            fd,
            peer: AtomicU32::new(0),
            peer_max: AtomicU64::new(max_payload),
            out: Mutex::new(Out { buf: Vec::new(), writer: false, backlog: false }),
            out_cv: Condvar::new(),
            has_corked: AtomicBool::new(false),
            reader_active: AtomicBool::new(false),
            read: Mutex::new(FrameReader::new(max_payload)),
            drivers: AtomicU32::new(0),
            last_drive: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            epoch,
            last_recv: AtomicU64::new(1),
            last_out: AtomicU64::new(0),
            last_send: AtomicU64::new(0),
            corked_frames: AtomicU32::new(0),
            flusher,
            watcher: OnceLock::new(),
            token: AtomicU64::new(0),
            deferred: AtomicBool::new(false),
        }))
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn peer(&self) -> u32 {
        self.peer.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// How long the peer has shown no sign of life: nothing received,
    /// and no large write to it making progress.
    pub fn silent_for(&self) -> Duration {
        let last = self.last_recv.load(Ordering::Relaxed).max(self.last_out.load(Ordering::Relaxed));
        Duration::from_nanos(self.now_ns().saturating_sub(last))
    }

    /// True while part of a frame has arrived and the rest has not.
    pub fn mid_frame(&self) -> bool {
        self.read.try_lock().map(|r| r.mid_frame()).unwrap_or(false)
    }

    /// Bytes queued for the socket.
    pub fn queued_bytes(&self) -> usize {
        self.out.lock().buf.len()
    }

    fn watcher(&self) -> Option<Arc<dyn Watcher>> {
        self.watcher.get().and_then(|w| w.upgrade())
    }

    /// Sends one frame. A request or one-way message waits (without
    /// holding any lock) while the socket is full; a response never waits.
    pub fn send(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8]) -> Result<()> {
        let mode = if header.kind == wire::Kind::Response { Mode::Queue } else { Mode::Wait };
        self.send_mode(header, meta, payload, mode)
    }

    /// Sends one frame without ever waiting: what the socket does not take
    /// now is queued and written when it has room.
    pub fn send_nowait(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8]) -> Result<()> {
        self.send_mode(header, meta, payload, Mode::Queue)
    }

    fn check_size(&self, size: u64) -> Result<()> {
        let max = self.peer_max.load(Ordering::Relaxed);
        if size > max {
            return Err(Error::at(
                ErrorKind::TooLarge,
                self.peer(),
                format!("a message of {size} bytes exceeds the maximum of {max} bytes of process {}", self.peer()),
            ));
        }
        Ok(())
    }

    fn exited(&self, e: impl std::fmt::Display) -> Error {
        Error::at(ErrorKind::ProcessExited, self.peer(), format!("worker {} exited ({e})", self.peer()))
    }

    fn send_mode(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8], mode: Mode) -> Result<()> {
        if self.is_closed() {
            return Err(Error::exited(self.peer()));
        }
        let size = (meta.len() + payload.len()) as u64;
        self.check_size(size)?;
        let mut h = header;
        h.meta_len = meta.len() as u16;
        h.payload_len = payload.len() as u64;
        let hb = h.encode();
        let frame_len = hb.len() + meta.len() + payload.len();
        let mut out = self.out.lock();
        // Cork responses to a batch being served, and requests while a
        // reader is pumping here (it writes them out on its next turn):
        // many small messages then cost one write, not one each.
        let mut schedule = false;
        let cork = match header.kind {
            wire::Kind::Response if CORKED.with(|c| c.get()) == Arc::as_ptr(self) as usize => {
                // A host thread's cork ends when it says so, or at the
                // latest when the flusher comes by.
                schedule = out.buf.is_empty() && host_corking(self);
                true
            }
            wire::Kind::Response => false,
            _ if self.reader_active.load(Ordering::SeqCst) => true,
            _ => {
                // Back-to-back requests: cork them, and have the flusher
                // write them out shortly unless a wait or a full batch does.
                let now = self.now_ns();
                let last = self.last_send.swap(now, Ordering::Relaxed);
                let back_to_back = last != 0 && now.saturating_sub(last) < BACK_TO_BACK_NS;
                schedule = back_to_back && out.buf.is_empty();
                back_to_back && self.corked_frames.load(Ordering::Relaxed) < CORK_FRAMES
            }
        };
        if cork && size <= CORK_FRAME_MAX && out.buf.len() < CORK_MAX && !out.backlog && !out.writer {
            self.has_corked.store(true, Ordering::Release);
            self.corked_frames.fetch_add(1, Ordering::Relaxed);
            if schedule {
                self.flusher.schedule(self);
            }
            push_frame(&mut out.buf, &hb, meta, payload);
            return Ok(());
        }
        if out.writer || out.backlog {
            // Someone waits for room, or bytes wait for writability:
            // queue behind them, or (a large request) wait for them.
            if mode == Mode::Queue || frame_len <= QUEUE_MAX {
                push_frame(&mut out.buf, &hb, meta, payload);
                return Ok(());
            }
            while (out.writer || out.buf.len() > BACKLOG_MAX) && !self.is_closed() {
                self.out_cv.wait_for(&mut out, Duration::from_millis(100));
            }
            if self.is_closed() {
                return Err(Error::exited(self.peer()));
            }
        }
        // Nobody writes now: what is queued goes first, then this frame.
        out.backlog = false;
        let corked = std::mem::take(&mut out.buf);
        self.has_corked.store(false, Ordering::Release);
        self.corked_frames.store(0, Ordering::Relaxed);
        let parts: [&[u8]; 4] = [&corked, &hb, meta, payload];
        let total = corked.len() + frame_len;
        let wrote = match sys::write_some_vectored(self.fd, &parts, 0) {
            Ok(n) => n,
            Err(e) => {
                drop(out);
                self.close();
                return Err(self.exited(e));
            }
        };
        if wrote == total {
            out.buf = recycle_buf(corked);
            return Ok(());
        }
        if mode == Mode::Queue || total - wrote <= QUEUE_MAX {
            out.buf = rest_of(&parts, wrote);
            out.backlog = true;
            drop(out);
            self.want_write();
            return Ok(());
        }
        // A large request: wait for room ourselves, with the lock released.
        out.writer = true;
        drop(out);
        let r = self.write_rest(&parts, wrote);
        let mut out = self.out.lock();
        out.writer = false;
        self.out_cv.notify_all();
        let queued = !out.buf.is_empty();
        drop(out);
        if queued {
            self.flush();
        }
        r
    }

    /// Writes `parts` from byte `skip` on, waiting for room; gives up
    /// when the connection is closed (e.g. its peer was declared dead).
    fn write_rest(self: &Arc<Self>, parts: &[&[u8]], mut skip: usize) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        while skip < total {
            if self.is_closed() {
                return Err(Error::exited(self.peer()));
            }
            match sys::write_some_vectored(self.fd, parts, skip) {
                Ok(0) => {
                    let _ = sys::poll_out(self.fd, Some(Duration::from_millis(100)));
                }
                Ok(n) => {
                    skip += n;
                    self.last_out.store(self.now_ns(), Ordering::Relaxed);
                }
                Err(e) => {
                    self.close();
                    return Err(self.exited(e));
                }
            }
        }
        Ok(())
    }

    fn want_write(self: &Arc<Self>) {
        match self.watcher() {
            Some(w) => w.want_write(self),
            // Not watched (being set up): the flusher retries.
            None => self.flusher.schedule(self),
        }
    }

    /// Writes queued bytes that the socket takes now; never waits. The
    /// unlocked check is only for threads that corked themselves.
    pub fn flush(self: &Arc<Self>) {
        if !self.has_corked.load(Ordering::Acquire) && !self.out.try_lock().is_some_and(|o| o.backlog) {
            return;
        }
        self.flush_locked();
    }

    /// Writes queued bytes after taking the lock, so a sender that decided
    /// to cork (under that lock) before `reader_active` was cleared has
    /// its message written too.
    fn flush_locked(self: &Arc<Self>) {
        let mut out = self.out.lock();
        self.has_corked.store(false, Ordering::Release);
        self.corked_frames.store(0, Ordering::Relaxed);
        if out.buf.is_empty() || out.writer {
            return;
        }
        match sys::write_some_vectored(self.fd, &[&out.buf], 0) {
            Ok(n) if n == out.buf.len() => {
                out.buf.clear();
                out.backlog = false;
                self.out_cv.notify_all();
            }
            Ok(n) => {
                if n > 0 && out.backlog {
                    self.last_out.store(self.now_ns(), Ordering::Relaxed);
                }
                out.buf.drain(..n);
                out.backlog = true;
                drop(out);
                self.want_write();
            }
            Err(_) => {
                out.buf.clear();
                out.backlog = false;
                drop(out);
                self.close();
            }
        }
    }

    /// Reads one frame, blocking until `deadline`: for connection setup,
    /// before anyone else reads.
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

    /// Gives back the large-payload buffer kept for reuse (when idle).
    pub(crate) fn release_spare(&self) {
        if let Some(mut r) = self.read.try_lock() {
            r.release_spare();
        }
    }

    /// Closes the socket; its reader notices and reports the loss once.
    pub fn close(self: &Arc<Self>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.stream.shutdown(Shutdown::Both);
            self.out_cv.notify_all();
            if let Some(w) = self.watcher() {
                w.rearm(self);
            }
        }
    }

    /// Reports the connection lost to its owner, once.
    pub(crate) fn fail<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, why: Option<Error>) {
        self.close();
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(w) = self.watcher() {
            w.forget(self);
        }
        owner.on_closed(self, why);
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Reads and dispatches frames until the socket is empty; jobs run on
    /// this thread, `run_job` around each. False when the connection ended.
    pub(crate) fn pump<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, frames: &mut usize, run_job: &mut dyn FnMut(&Arc<Conn>, Job) -> bool) -> PumpEnd {
        self.reader_active.store(true, Ordering::SeqCst);
        let end = loop {
            self.flush();
            match self.read_one(owner) {
                Step::Dispatched => *frames += 1,
                Step::Job(job) => {
                    *frames += 1;
                    // More requests already read: cork the responses and
                    // write them together once the batch is served.
                    let batch = self.read.try_lock().map(|r| r.may_have_frames()).unwrap_or(false);
                    if batch {
                        CORKED.with(|c| c.set(Arc::as_ptr(self) as usize));
                    }
                    self.reader_active.store(false, Ordering::SeqCst);
                    self.flush_locked();
                    let keep_going = run_job(self, job);
                    CORKED.with(|c| c.set(0));
                    if !keep_going {
                        break PumpEnd::Replaced;
                    }
                    self.reader_active.store(true, Ordering::SeqCst);
                }
                Step::Empty => break PumpEnd::Empty,
                Step::Busy => break PumpEnd::Busy,
                Step::Closed(why) => {
                    self.reader_active.store(false, Ordering::SeqCst);
                    self.fail(owner, why);
                    return PumpEnd::Closed;
                }
            }
        };
        // Stop corking before the last flush: a sender that saw the flag
        // set corked under the write lock, which the flush then takes.
        self.reader_active.store(false, Ordering::SeqCst);
        self.flush_locked();
        end
    }

    fn read_one<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>) -> Step {
        let Some(mut reader) = self.read.try_lock() else {
            return Step::Busy;
        };
        if self.is_closed() {
            return Step::Closed(None);
        }
        let before = reader.bytes_read();
        let r = reader.read_frame(self.fd);
        if reader.bytes_read() != before {
            self.last_recv.store(self.now_ns(), Ordering::Relaxed);
        }
        match r {
            Ok(ReadOutcome::Frame(f)) => {
                drop(reader);
                match owner.on_frame(self, f) {
                    Some(job) => Step::Job(job),
                    None => Step::Dispatched,
                }
            }
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
                    // Let the reactor serve this connection while this thread runs it.
                    self.drivers.fetch_sub(1, Ordering::AcqRel);
                    self.watch_now();
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
        self.last_drive.store(self.now_ns(), Ordering::Relaxed);
        self.drivers.fetch_sub(1, Ordering::AcqRel);
        // Frames read along with the reply may sit in the buffer, where
        // epoll cannot see them: dispatch them now.
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
            // The caller parks: the reactor must watch this connection now.
            self.watch_now();
        }
        finished
    }

    /// Asks the reactor to look at this connection now if it left it
    /// unwatched for a driver.
    fn watch_now(self: &Arc<Self>) {
        if self.deferred.load(Ordering::Acquire) {
            if let Some(w) = self.watcher() {
                w.rearm(self);
            }
        }
    }
}

fn push_frame(buf: &mut Vec<u8>, h: &[u8], meta: &[u8], payload: &[u8]) {
    buf.reserve(h.len() + meta.len() + payload.len());
    buf.extend_from_slice(h);
    buf.extend_from_slice(meta);
    buf.extend_from_slice(payload);
}

/// The bytes of `parts` from `skip` on, in one buffer.
fn rest_of(parts: &[&[u8]], mut skip: usize) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut v = Vec::with_capacity(total.saturating_sub(skip));
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        v.extend_from_slice(&p[skip..]);
        skip = 0;
    }
    v
}

/// Keeps a small cork buffer's allocation for next time.
fn recycle_buf(mut v: Vec<u8>) -> Vec<u8> {
    if v.capacity() > CORK_MAX * 2 {
        return Vec::new();
    }
    v.clear();
    v
}

thread_local! {
    /// The connection whose responses this thread corks, while it serves
    /// a batch of requests read together.
    static CORKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The connection a host thread corks its responses on (`host_cork`),
    /// kept alive and flushed when the cork ends.
    static HOST_CORKED: std::cell::RefCell<Option<Arc<Conn>>> = const { std::cell::RefCell::new(None) };
}

/// A host thread corks the responses it sends on `conn` (`None`: it stops,
/// and what it held is written). Held responses are also written by the
/// flusher thread within `FLUSH_DELAY`, so a host that is slow to end the
/// cork delays them by no more than that.
pub(crate) fn host_cork(conn: Option<&Arc<Conn>>) {
    let prev = HOST_CORKED.with(|h| h.replace(conn.cloned()));
    CORKED.with(|c| c.set(conn.map(|c| Arc::as_ptr(c) as usize).unwrap_or(0)));
    if let Some(p) = prev {
        p.flush();
    }
}

fn host_corking(conn: &Conn) -> bool {
    HOST_CORKED.with(|h| h.borrow().as_ref().is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), conn)))
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
    queue: Mutex<Vec<Weak<Conn>>>,
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

/// How a pump of one connection ended.
pub(crate) enum PumpEnd {
    /// Read to empty: watch it again.
    Empty,
    /// Someone else is reading it.
    Busy,
    /// This thread lost the reactor role while running a job.
    Replaced,
    Closed,
}
